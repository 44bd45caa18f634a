/*
 * aiofranka._kernel: the 1 kHz cycle of the control loop in C.
 *
 * One `Kernel` object per controller holds pointers into preallocated
 * float64 numpy arrays (state, Jacobian, torques) handed over at
 * construction. `Kernel.cycle` serves one whole cycle in one call: readOnce,
 * the law, the safety filter, writeOnce (and, in server mode, the state frame
 * published under a seqlock). A rescue thread that never takes the GIL can
 * serve the same cycle while Python cannot (rescue.c, direct.cpp). Nothing on
 * the cycle's path allocates except the command list pylibfranka needs, and
 * nothing validates user input: that is done in Python where values are
 * handed in. See docs/controller.md, docs/timing.md and docs/guardian.md.
 *
 * The units, one concern each:
 *   laws.c     kinematics, laws, safety filter: pure functions of arrays
 *   cycle.c    one cycle (read, law, safety, write) and its bookkeeping
 *   seqlock.c  the seqlocked state frame of server mode
 *   rescue.c   the GIL-free rescue thread; direct.cpp the libfranka calls
 *   serve.c    kernel serving: the rescue thread serves every cycle, Python
 *              publishes the law's inputs, target rows and a stop ramp
 *   watch.c    when the next state is due, and the watch thread that wakes
 *              the guardian only when a due cycle went unclaimed
 *   attrib.c   a ring of the cycles that saw a gap in robot time (why states were lost)
 *   abi.c      what is checked before reading a pybind11 object's C++ value
 *   clock.c    CLOCK_MONOTONIC time, timerfd, spin_until, wake_probe
 *   record.c   the 1 kHz recorder: one row per cycle written, into a matrix
 *   testing.c  the entry points only tests use (named _test_*)
 *   core.c     the Kernel type, its method table, the module
 */
#ifndef AIOFRANKA_KERNEL_H
#define AIOFRANKA_KERNEL_H

#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "laws.h"

/* The arrays handed to Kernel(): index, length and name. */
enum { B_Q, B_DQ, B_EE_RAW, B_EE, B_JAC, B_TAU_DES, B_TAU_CMD, B_TAU_LAST, B_DTAU, B_TAU_MAX, B_QMIN, B_QMAX,
       B_COUNT };

/* Layout of a published state frame, in float64 slots. Slot 0 holds the
 * seqlock sequence number as a uint64 (odd while a write is under way).
 * Matrices are column-major, as libfranka lays them out. */
enum { F_SEQ = 0, F_TIME = 1, F_SUCCESS = 2, F_COUNT = 3, F_Q = 4, F_DQ = 11, F_EE = 18, F_JAC = 34, F_MASS = 76,
       F_TAU_CMD = 125, F_TAU_EXT = 132, F_TAU_J = 139, F_LEN = 146 };

/* The field offsets rescue_start is given: in RobotState, then in Torques. */
enum { R_Q, R_DQ, R_EE, R_TAU_J, R_TAU_EXT, R_SUCCESS, R_TIME, R_TQ_TAU, R_TQ_FINISHED, R_COUNT };

/* cycle() modes. */
enum { MODE_IMPEDANCE = 0, MODE_OSC = 1, MODE_TORQUE = 2 };

/* Who served a cycle (the recorder's server column). */
enum { SERVER_LOOP = 0, SERVER_GUARDIAN = 1, SERVER_RESCUE = 2, SERVER_KERNEL = 3 };

/* Target rows Python handed to the kernel (serve.c): (n, 7) positions and
 * velocities, or (n, 16) row-major poses, C-contiguous float64, indexed by
 * robot time from start_ms. The views are acquired and released only by
 * Python-called functions; the serving thread only moves slots. */
typedef struct {
    Py_buffer views[2];
    int nviews, joint;
    const double *pos, *vel, *pose;
    long long start_ms, n;
} target_rows;

/* The recorder's fields (record.c has their names and widths). */
enum { RF_TIME_MS, RF_T, RF_Q, RF_DQ, RF_Q_DESIRED, RF_EE, RF_EE_DESIRED, RF_TAU_CMD, RF_TAU_MEAS, RF_COMPUTE,
       RF_SERVER, RF_SUCCESS, RF_MODE, RF_COUNT };

/* What the writer of a cycle knows that the kernel's arrays do not hold. */
typedef struct {
    int server;
    double success;
    long long t_read, t_write;    /* CLOCK_MONOTONIC ns: readOnce returned, writeOnce called */
    const double *tau_measured;   /* the state's tau_J, or NULL where not read */
    const double *params;         /* the law's inputs this cycle (packed as last_params) */
    int mode;                     /* and its mode */
} cycle_info;

typedef struct {
    PyObject_HEAD
    Py_buffer views[B_COUNT];
    int held;
    double *b[B_COUNT];
    double ee_offset[16]; /* column-major; identity when unused */
    int has_offset;
    safety_params safety; /* its arrays point into b[] */
    osc_params osc;
    /* Optional per-cycle state publication (server mode): a seqlocked frame in
     * shared memory, and the model's mass-matrix function. */
    Py_buffer pub;
    int has_pub;
    PyObject *mass_fn;
    double stage[F_LEN];
    double published;
    /* Held around each cycle written (see "the cycle lock" in cycle.c). */
    atomic_int lock_word;
    /* Every cycle written, whoever wrote it: when (CLOCK_MONOTONIC ns), the
     * robot time (ms, -1 before the first), and the states lost in between. */
    atomic_llong last_write_ns;
    long long last_time_ms;
    long long lost;
    atomic_int finished; /* motion_finished was written: nothing more to serve */
    atomic_int py_claim; /* a Python server wants the states: the rescue thread yields */
    atomic_int rescued_last; /* the last cycle written was the rescue thread's */
    atomic_ullong seq; /* odd while the rescue thread writes the state arrays */
    double last_success;
    /* The law's inputs as of the last cycle, for the rescue thread. */
    int last_mode;
    double last_scale;
    double last_params[49];
    /* The state schedule (watch.c): when the next state is due, learned from
     * the read times of the cycles Python serves. s_due is published with
     * s_epoch (bumped after each Python cycle); a Python cycle claims the
     * epoch it serves (s_claimed) as it starts. */
    long long s_anchor_t, s_anchor_ms, s_base_t, s_base_ms;
    int s_begun;
    atomic_llong s_period, s_next_due, s_due, s_epoch, s_claimed;
    /* The watch thread (watch.c): w_timer fires at s_due + w_threshold_ns
     * unless the next Python cycle re-armed it first. */
    pthread_t w_thread;
    int w_started;
    atomic_int w_run;
    int w_timer, w_stop, w_wake, w_state_fd, w_priority;
    long long w_threshold_ns;
    atomic_llong w_stalled, w_fires, w_reports;
    /* The rescue thread (rescue.c). r_timer fires r_after_ns after the last
     * cycle written, unless another write re-armed it first. */
    pthread_t r_thread;
    int r_started;
    atomic_int r_run;
    int r_fd, r_priority, r_timer, r_stop;
    long long r_after_ns, r_grace_ns;
    void *r_ctl, *r_read, *r_write;
    unsigned char *r_tq; /* the Torques object's C++ storage */
    PyObject *r_ctl_obj, *r_tq_obj, *r_exc[3];
    long r_off[R_COUNT];
    unsigned char *r_state;
    atomic_int r_error_kind;
    char r_error[512];
    atomic_llong rescued, r_episodes, r_longest_ns;
    /* Kernel serving (serve.c): while k_primary the rescue thread serves every
     * state as it comes, with the law's inputs Python published (set_law), the
     * target rows of k_rows (k_next switches in at its start_ms) and the stop
     * ramp; it writes k_wake (an eventfd) once the robot time reaches k_wake_ms,
     * and when the session ends or the law fails. All of it under the cycle lock. */
    atomic_int k_primary;
    int k_wake;
    atomic_llong k_wake_ms;
    int k_has_rows, k_has_next, k_has_old;
    target_rows k_rows, k_next, k_old; /* k_old: switched out, released by the next Python call */
    long long k_starved, k_late, k_switches;
    atomic_llong k_served;               /* cycles served this way this session */
    long long k_ramp_left, k_ramp_total; /* -1: no ramp */
    int k_failed;                        /* the law's output was not finite: ramped to zero at once */
    double k_extra[14];                  /* tau_J and tau_ext_hat_filtered of the last state served */
    /* Placement of the C thread (place.c): p_mode PLACE_AUTO, PLACE_OFF, PLACE_LEAST_BUSY or a CPU to pin to. */
    int p_mode;
    struct place *place;
    atomic_int p_cpu;
    atomic_llong p_moves;
    atomic_int p_follows; /* the states' CPU is known and followed */
    unsigned int p_robot_ip; /* the robot's IPv4 address, network order; 0: unknown */
    /* The recorder (record.c): rows of rec_width float64 in rec_rows, one per
     * cycle written while rec_on; rec_col[f] is field f's first column or -1. */
    Py_buffer rec_view;
    int rec_held, rec_width, rec_wrap;
    int rec_col[RF_COUNT];
    double *rec_rows;
    long long rec_cap;
    atomic_int rec_on, rec_busy;
    atomic_llong rec_written, rec_dropped;
    /* Reading a field of a Python-served state from its C++ object (abi.c):
     * the RobotState type checked once, and r_off valid (a rescue_start
     * succeeded on this kernel). */
    PyTypeObject *rs_type;
    int rs_layout;
    /* Why states were lost (attrib.c): NULL until attrib_start(). */
    struct attrib *attrib;
} Kernel;

/* Interned attribute names (core.c). */
extern PyObject *s_readOnce, *s_writeOnce, *s_q, *s_dq, *s_O_T_EE, *s_time, *s_to_sec, *s_success,
    *s_motion_finished, *s_tau_ext, *s_tau_J;

/* core.c: reading Python values */
int read_seq(PyObject *seq, double *out, Py_ssize_t n, const char *what);
int read_attr(PyObject *state, PyObject *name, double *dst, Py_ssize_t n);
int get_vec(PyObject *obj, Py_buffer *view, Py_ssize_t n, const char *what);
PyObject *double_list(const double *values, Py_ssize_t n);

/* cycle.c */
void fill_pose(Kernel *self);
void kernel_law(Kernel *self, int mode, const double *params, int paused);
int kernel_safety(Kernel *self, double scale);
PyObject *command_list(Kernel *self);
void note_written(Kernel *self, long long time_ms, int finished, const cycle_info *info);
int lock_try(Kernel *self);
void lock_release(Kernel *self);
PyObject *Kernel_cycle(Kernel *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *Kernel_fill(Kernel *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *Kernel_finish(Kernel *self, PyObject *arg);
PyObject *Kernel_update_last(Kernel *self, PyObject *ignored);
PyObject *Kernel_claim_next(Kernel *self, PyObject *ignored);
PyObject *Kernel_new_session(Kernel *self, PyObject *ignored);
PyObject *Kernel_seq(Kernel *self, PyObject *ignored);
PyObject *Kernel_read_anyway(Kernel *self, PyObject *ignored);
PyObject *Kernel_counters(Kernel *self, PyObject *ignored);

/* seqlock.c */
void seqlock_store(double *frame, const double *src, Py_ssize_t n);
int get_frame(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t n, const char *what);
void stage_common(Kernel *self, double time_ms, double success);
int publish(Kernel *self, PyObject *state, double time_ms, double success);
void Kernel_unpublish(Kernel *self);
PyObject *Kernel_publish_to(Kernel *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *k_seqlock_read(PyObject *mod, PyObject *const *args, Py_ssize_t nargs);

/* rescue.c */
extern const char *const rescue_unavailable; /* NULL where the rescue thread is built */
void rescue_join(Kernel *self);
PyObject *rescue_raise(Kernel *self);
PyObject *Kernel_rescue_start(Kernel *self, PyObject *args);
PyObject *Kernel_rescue_stop(Kernel *self, PyObject *ignored);

/* serve.c */
void serve_release(Kernel *self);
int serve_prepare(Kernel *self, long long time_ms, double *params, int *mode, double *scale);
void serve_after(Kernel *self, long long time_ms, int finite, int finished);
PyObject *Kernel_serve_start(Kernel *self, PyObject *arg);
PyObject *Kernel_set_law(Kernel *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *Kernel_play_rows(Kernel *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *Kernel_clear_rows(Kernel *self, PyObject *ignored);
PyObject *Kernel_rows_status(Kernel *self, PyObject *ignored);
PyObject *Kernel_wake_at(Kernel *self, PyObject *arg);
PyObject *Kernel_ramp(Kernel *self, PyObject *arg);
PyObject *Kernel_serve_status(Kernel *self, PyObject *ignored);
PyObject *Kernel_refresh_state(Kernel *self, PyObject *arg);

/* watch.c */
void schedule_reset(Kernel *self);
void schedule_claim(Kernel *self);
void schedule_observe(Kernel *self, long long t_read, long long time_ms, int finished);
void watch_join(Kernel *self);
PyObject *Kernel_watch_start(Kernel *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *Kernel_watch_stop(Kernel *self, PyObject *ignored);
PyObject *Kernel_watch_counters(Kernel *self, PyObject *ignored);
PyObject *Kernel_due(Kernel *self, PyObject *ignored);
PyObject *Kernel_restart_schedule(Kernel *self, PyObject *ignored);
extern PyGetSetDef Kernel_schedule_getset[];

/* place.c */
#define PLACE_AUTO (-1)
#define PLACE_OFF (-2)
#define PLACE_LEAST_BUSY (-3)
int place_open(Kernel *self);
void place_close(Kernel *self);
void place_thread_start(Kernel *self);
void place_tick(Kernel *self);
void place_peer(Kernel *self);
PyObject *Kernel_place(Kernel *self, PyObject *args);
PyObject *Kernel_place_status(Kernel *self, PyObject *ignored);

/* attrib.c */
void attrib_free(Kernel *self);
void attrib_begin(Kernel *self);
void attrib_cycle(Kernel *self, int kind, long long time_ms, long long due, long long t_call, long long t_read,
                  long long t_write);
void attrib_probe(Kernel *self);
PyObject *Kernel_attrib_start(Kernel *self, PyObject *ignored);
PyObject *Kernel_attrib_read(Kernel *self, PyObject *arg);
PyObject *k_attrib_fields(PyObject *mod, PyObject *ignored);

/* abi.c */
int pybind11_value(PyObject *obj, const char *class_name, void **value, char *err, size_t n);
PyObject *k_peek_value(PyObject *mod, PyObject *const *args, Py_ssize_t nargs);
const unsigned char *state_value(Kernel *self, PyObject *state);

/* clock.c */
long long now_ns(void);
void sleep_until_ns(long long t);
int state_waiting(int fd, int timeout_ms);
int fd_wait(int fd, int stop_fd, int timeout_ms);
int timer_fired(int timer_fd);
void timer_arm(int timer_fd, long long deadline_ns);
int event_fd(void);
void event_signal(int fd);
PyObject *k_timerfd_create(PyObject *mod, PyObject *ignored);
PyObject *k_timerfd_arm(PyObject *mod, PyObject *const *args, Py_ssize_t nargs);
PyObject *k_timerfd_clear(PyObject *mod, PyObject *arg);
PyObject *k_spin_until(PyObject *mod, PyObject *arg);
PyObject *k_wake_probe(PyObject *mod, PyObject *const *args, Py_ssize_t nargs);

/* record.c */
void record_row(Kernel *self, long long time_ms, long long t_write_ns, const cycle_info *c);
void record_release(Kernel *self);
PyObject *record_fields(void);
PyObject *Kernel_record_start(Kernel *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *Kernel_record_stop(Kernel *self, PyObject *ignored);
PyObject *Kernel_record_counts(Kernel *self, PyObject *ignored);

/* testing.c: test-only entry points */
PyObject *Kernel_test_impedance(Kernel *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *Kernel_test_osc(Kernel *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *Kernel_test_torque(Kernel *self, PyObject *arg);
PyObject *Kernel_test_record_rows(Kernel *self, PyObject *arg);
PyObject *k_test_flange_pose(PyObject *mod, PyObject *arg);
PyObject *k_test_jacobian_at(PyObject *mod, PyObject *const *args, Py_ssize_t nargs);
PyObject *k_test_seqlock_write(PyObject *mod, PyObject *const *args, Py_ssize_t nargs);

#endif
