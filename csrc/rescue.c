/* The rescue thread: serves the robot from C while Python cannot (see
 * docs/guardian.md#the-rescue-thread; its ABI contract: docs/rescue-abi.md).
 *
 * A plain pthread, real-time above the loop and the guardian, that never
 * takes the GIL. While Python serves the robot it sleeps on a watchdog timer
 * that every cycle written pushes r_after_ns on, so it does not wake. If no
 * cycle has been written for r_after_ns and a state has then waited
 * r_grace_ns unserved, it takes the cycle lock
 * and serves that state itself: libfranka's readOnce, the law with the last
 * targets and gains the loop used (impedance with zero target velocity, so a
 * trajectory pauses rather than runs on), the same safety filter, writeOnce.
 * It keeps serving each state that waits r_grace_ns unserved until a cycle
 * written by someone else shows that Python is back. As a rescuer it never
 * writes motion_finished; a libfranka error ends its serving and is raised by
 * the next cycle Python runs. Under kernel serving (serve.c) the same thread
 * serves every state as it comes, ramps down and writes motion_finished
 * itself, and wakes Python for an error. */
#include "kernel.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/timerfd.h>
#endif

/* direct.cpp calls libfranka with the x86-64 System V convention for a
 * returned struct (its address as a hidden first argument); on ARM64 it
 * travels in x8 instead, so anywhere else the first rescue would corrupt
 * memory. setup.py defines AIOFRANKA_RESCUE (and compiles direct.cpp) only
 * on x86-64 Linux; this #if refuses any other target as well. */
#if defined(AIOFRANKA_RESCUE) && defined(__x86_64__) && defined(__linux__)
#define RESCUE_BUILT 1
const char *const rescue_unavailable = NULL;
#elif defined(__x86_64__) && defined(__linux__)
#define RESCUE_BUILT 0
const char *const rescue_unavailable =
    "this build of aiofranka._kernel has no rescue thread (built without AIOFRANKA_RESCUE and csrc/direct.cpp)";
#else
#define RESCUE_BUILT 0
const char *const rescue_unavailable =
    "the rescue thread needs x86-64 Linux: it calls libfranka's readOnce() with the x86-64 convention for a "
    "returned struct, and this extension was built for another machine";
#endif

void rescue_join(Kernel *self) {
    atomic_store(&self->k_primary, 0); /* no thread serves: Python's cycles may read again */
    if (self->r_started) {
        atomic_store(&self->r_run, 0);
        event_signal(self->r_stop);
        pthread_join(self->r_thread, NULL);
        self->r_started = 0;
    }
    int timer = self->r_timer, stop = self->r_stop;
    self->r_timer = self->r_stop = -1; /* before closing: every cycle written arms r_timer if set */
    if (timer >= 0) close(timer);
    if (stop >= 0) close(stop);
    place_close(self);
    Py_CLEAR(self->r_ctl_obj);
    Py_CLEAR(self->r_tq_obj);
    for (int i = 0; i < 3; i++) Py_CLEAR(self->r_exc[i]);
    PyMem_Free(self->r_state);
    self->r_state = NULL;
    self->r_fd = -1;
}

#if RESCUE_BUILT
/* direct.cpp: libfranka's readOnce/writeOnce without the GIL. */
int afd_bind(void *ctl, void **read_fn, void **write_fn, char *err, size_t n);
int afd_read(void *fn, void *ctl, void *result, char *msg, size_t n);
int afd_write(void *fn, void *ctl, const void *torques, char *msg, size_t n);

/* One cycle on the C++ objects. `primary`: kernel serving (serve.c): the
 * law's inputs of this state's robot time, the ramp and motion_finished; the
 * cycle lock is taken once the state is read (no other thread reads then, and
 * a read that waits for libfranka's timeout must not hold it). Otherwise a
 * rescue (the last inputs, paused), the caller holding the lock throughout.
 * 0, or -1 after storing libfranka's error. */
static int rescue_cycle(Kernel *self, int primary) {
    long long due = atomic_load(&self->s_due); /* for attrib.c: when the state we serve was due */
    if (primary) attrib_begin(self);
    long long t_call = now_ns();
    int kind = afd_read(self->r_read, self->r_ctl, self->r_state, self->r_error, sizeof self->r_error);
    if (primary) {
        /* Python holds it only inside a set_law/play_rows call (microseconds). If this
         * thread preempted that holder on this CPU, sched_yield never lets a lower
         * priority run: after a few tries sleep 20 us at a time so the holder can finish. */
        for (int tries = 0; !lock_try(self); tries++) {
            if (tries < 50)
                sched_yield();
            else
                sleep_until_ns(now_ns() + 20000);
        }
    }
    if (kind) {
        atomic_store(&self->r_error_kind, kind);
        if (primary) lock_release(self);
        return -1;
    }
    /* seq goes odd below, even again once the arrays are whole */
    const unsigned char *st = self->r_state;
    const long *off = self->r_off;
    atomic_fetch_add(&self->seq, 1);
    memcpy(self->b[B_Q], st + off[R_Q], 7 * sizeof(double));
    memcpy(self->b[B_DQ], st + off[R_DQ], 7 * sizeof(double));
    memcpy(self->b[B_EE_RAW], st + off[R_EE], 16 * sizeof(double));
    memcpy(self->k_extra, st + off[R_TAU_J], 7 * sizeof(double));
    memcpy(self->k_extra + 7, st + off[R_TAU_EXT], 7 * sizeof(double));
    fill_pose(self);
    double success;
    uint64_t time_ms;
    long long t_read = now_ns();
    memcpy(&success, st + off[R_SUCCESS], sizeof success);
    memcpy(&time_ms, st + off[R_TIME], sizeof time_ms);
    int mode = self->last_mode, finishing = 0;
    double scale = self->last_scale, params[49];
    const double *p = self->last_params;
    if (primary) {
        finishing = serve_prepare(self, (long long)time_ms, params, &mode, &scale);
        p = params;
    }
    kernel_law(self, mode, p, !primary);
    int finite = kernel_safety(self, scale);
    int finished = 0;
    if (finishing) {
        finished = 1;
        for (int i = 0; i < 7; i++)
            if (self->b[B_TAU_CMD][i] != 0.0) finished = 0;
    }
    memcpy(self->r_tq + off[R_TQ_TAU], self->b[B_TAU_CMD], 7 * sizeof(double));
    self->r_tq[off[R_TQ_FINISHED]] = (unsigned char)finished;
    long long t_write = now_ns();
    kind = afd_write(self->r_write, self->r_ctl, self->r_tq, self->r_error, sizeof self->r_error);
    if (kind) {
        atomic_fetch_add(&self->seq, 1);
        atomic_store(&self->r_error_kind, kind);
        if (primary) lock_release(self);
        return -1;
    }
    memcpy(self->b[B_TAU_LAST], self->b[B_TAU_CMD], 7 * sizeof(double));
    cycle_info info = {primary ? SERVER_KERNEL : SERVER_RESCUE, success, t_read, t_write,
                       (const double *)(st + off[R_TAU_J]), p, mode};
    note_written(self, (long long)time_ms, finished, &info);
    attrib_cycle(self, primary ? 2 : 1, (long long)time_ms, due, t_call, t_read, t_write);
    if (primary) schedule_observe(self, t_read, (long long)time_ms, finished); /* the next state's deadline */
    self->last_success = success;
    atomic_store(&self->rescued_last, 1);
    atomic_fetch_add(&self->seq, 1);
    atomic_fetch_add(primary ? &self->k_served : &self->rescued, 1);
    if (self->has_pub) {
        stage_common(self, (double)time_ms, success);
        memcpy(self->stage + F_TAU_EXT, st + off[R_TAU_EXT], 7 * sizeof(double));
        memcpy(self->stage + F_TAU_J, st + off[R_TAU_J], 7 * sizeof(double));
        seqlock_store((double *)self->pub.buf, self->stage, F_LEN);
    }
    if (primary) {
        serve_after(self, (long long)time_ms, finite, finished);
        lock_release(self);
    }
    return 0;
}

/* Kernel serving: serve each state as it comes, until serving stops. After
 * 100 ms without a state it reads anyway: the robot streams states for as long
 * as a session is open, so libfranka's own timeout then reports the lost
 * connection (or a late state is served). */
static void serve_states(Kernel *self) {
    fd_wait(self->r_fd, self->r_stop, 100); /* no other thread reads while the kernel serves */
    if (!atomic_load(&self->r_run) || !atomic_load(&self->k_primary) || atomic_load(&self->finished) ||
        atomic_load(&self->r_error_kind))
        return;
    place_peer(self);
    if (rescue_cycle(self, 1) < 0) {
        if (self->k_wake >= 0) event_signal(self->k_wake); /* Python raises libfranka's error */
        return;
    }
    place_tick(self); /* twice a second: off a CPU another thread keeps busy (place.c) */
}

static void *rescue_main(void *arg) {
    Kernel *self = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals belong to Python's main thread */
    pthread_setname_np(pthread_self(), "aiofranka-resc");
    if (self->r_priority > 0) {
        struct sched_param sp = {.sched_priority = self->r_priority};
        pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp); /* best effort */
    }
    place_thread_start(self);
    int active = 0;
    long long mine = 0, episode_start = 0;
    while (atomic_load(&self->r_run)) {
        if (atomic_load(&self->finished) || atomic_load(&self->r_error_kind)) {
            sleep_until_ns(now_ns() + 1000000);
            continue;
        }
        if (atomic_load(&self->k_primary)) {
            serve_states(self);
            continue;
        }
        long long last = atomic_load(&self->last_write_ns);
        if (active && (last != mine || atomic_load(&self->py_claim))) { /* Python is back (or coming) */
            active = 0;
            long long took = now_ns() - episode_start;
            if (took > atomic_load(&self->r_longest_ns)) atomic_store(&self->r_longest_ns, took);
        }
        if (!active && now_ns() < last + self->r_after_ns) {
            /* Every cycle written re-arms r_timer for r_after_ns later: it
             * fires only once none came that long (1 s: a safety net). */
            fd_wait(self->r_timer, self->r_stop, 1000);
            timer_fired(self->r_timer);
            continue;
        }
        if (!state_waiting(self->r_fd, 5)) continue;
        sleep_until_ns(now_ns() + self->r_grace_ns);
        if (!atomic_load(&self->r_run) || atomic_load(&self->last_write_ns) != last || !state_waiting(self->r_fd, 0))
            continue; /* served meanwhile (or being served) */
        if (!lock_try(self)) continue;
        if (atomic_load(&self->last_write_ns) == last && !atomic_load(&self->finished) &&
            !atomic_load(&self->r_error_kind) && state_waiting(self->r_fd, 0) && rescue_cycle(self, 0) == 0) {
            mine = atomic_load(&self->last_write_ns);
            if (!active) {
                /* Whoever claimed the states has not written for RESCUE_AFTER: void the claim. */
                atomic_store(&self->py_claim, 0);
                active = 1;
                episode_start = now_ns();
                atomic_fetch_add(&self->r_episodes, 1);
            }
        }
        lock_release(self);
    }
    if (active) {
        long long took = now_ns() - episode_start;
        if (took > atomic_load(&self->r_longest_ns)) atomic_store(&self->r_longest_ns, took);
    }
    return NULL;
}
#endif /* RESCUE_BUILT */

/* rescue_start(ctl, torques, fd, offsets, state_size, after_ns, grace_ns,
 *              priority, exceptions)
 *   ctl: pylibfranka's ActiveControlBase of the open torque session
 *   torques: a pylibfranka Torques the thread writes its commands into
 *   fd: libfranka's UDP state socket
 *   offsets: byte offsets (q, dq, O_T_EE, tau_J, tau_ext_hat_filtered,
 *            control_command_success_rate, time) in RobotState, then
 *            (tau_J, motion_finished) in Torques
 *   state_size: room for readOnce's (RobotState, Duration) result
 *   exceptions: (ControlException, NetworkException, other) types to raise
 * Checks the objects (abi.c) and the control object against libfranka
 * (direct.cpp) and starts the thread. Raises TypeError for objects of the
 * wrong type and RuntimeError (the reason) if this build, this machine or
 * this pylibfranka cannot be driven directly. */
PyObject *Kernel_rescue_start(Kernel *self, PyObject *args) {
    PyObject *ctl, *tq, *offsets, *exc;
    int fd, priority;
    Py_ssize_t state_size;
    long long after_ns, grace_ns;
    if (!PyArg_ParseTuple(args, "OOiOnLLiO", &ctl, &tq, &fd, &offsets, &state_size, &after_ns, &grace_ns,
                          &priority, &exc))
        return NULL;
    if (rescue_unavailable) {
        PyErr_SetString(PyExc_RuntimeError, rescue_unavailable);
        return NULL;
    }
    if (self->r_started) {
        PyErr_SetString(PyExc_RuntimeError, "the rescue thread is already running");
        return NULL;
    }
    if (!PyTuple_Check(offsets) || PyTuple_GET_SIZE(offsets) != R_COUNT || !PyTuple_Check(exc) ||
        PyTuple_GET_SIZE(exc) != 3) {
        PyErr_SetString(PyExc_TypeError, "offsets must be a tuple of 9 ints and exceptions a tuple of 3 types");
        return NULL;
    }
    for (int i = 0; i < R_COUNT; i++) {
        self->r_off[i] = PyLong_AsLong(PyTuple_GET_ITEM(offsets, i));
        if (PyErr_Occurred()) return NULL;
        long width = i == R_EE ? 128 : i == R_SUCCESS || i == R_TIME ? 8 : i == R_TQ_FINISHED ? 1 : 56;
        long room = i >= R_TQ_TAU ? 1024 : (long)state_size;
        if (self->r_off[i] < 0 || self->r_off[i] + width > room) {
            PyErr_Format(PyExc_ValueError, "offset %d out of range", i);
            return NULL;
        }
    }
    if (state_size <= 0 || after_ns <= 0 || grace_ns <= 0) {
        PyErr_SetString(PyExc_ValueError, "state_size, after_ns and grace_ns must be positive");
        return NULL;
    }
    void *c = NULL, *t = NULL, *rd = NULL, *wr = NULL;
    char err[256];
    int rc = pybind11_value(ctl, "ActiveControlBase", &c, err, sizeof err);
    if (rc == 0) rc = pybind11_value(tq, "Torques", &t, err, sizeof err);
    if (rc == -1) {
        PyErr_Format(PyExc_TypeError, "rescue_start needs pylibfranka's ActiveControlBase and Torques: %s", err);
        return NULL;
    }
    if (rc < 0) {
        PyErr_Format(PyExc_RuntimeError, "cannot drive libfranka directly: %s", err);
        return NULL;
    }
#if RESCUE_BUILT
    if (afd_bind(c, &rd, &wr, err, sizeof err) < 0) {
        PyErr_Format(PyExc_RuntimeError, "cannot drive libfranka directly: %s", err);
        return NULL;
    }
#endif
#ifdef __linux__
    self->r_timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    self->r_stop = event_fd();
    if (self->r_timer < 0 || self->r_stop < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        rescue_join(self);
        return NULL;
    }
#endif
    if (place_open(self) < 0) {
        rescue_join(self);
        return NULL;
    }
    /* Twice the measured size and a page more: the returned pair only adds a Duration. */
    self->r_state = PyMem_Calloc(1, (size_t)state_size * 2 + 4096);
    if (!self->r_state) {
        rescue_join(self);
        return PyErr_NoMemory();
    }
    self->r_ctl = c;
    self->r_tq = t;
    self->r_read = rd;
    self->r_write = wr;
    self->r_fd = fd;
    self->r_after_ns = after_ns;
    self->r_grace_ns = grace_ns;
    self->r_priority = priority;
    Py_INCREF(ctl);
    self->r_ctl_obj = ctl;
    Py_INCREF(tq);
    self->r_tq_obj = tq;
    for (int i = 0; i < 3; i++) {
        self->r_exc[i] = PyTuple_GET_ITEM(exc, i);
        Py_INCREF(self->r_exc[i]);
    }
    atomic_store(&self->r_error_kind, 0);
    timer_arm(self->r_timer, atomic_load(&self->last_write_ns) + after_ns); /* later writes re-arm it */
    atomic_store(&self->r_run, 1);
#if RESCUE_BUILT
    rc = pthread_create(&self->r_thread, NULL, rescue_main, self);
#else
    rc = ENOSYS; /* not reached: rescue_unavailable refused above */
#endif
    if (rc != 0) {
        rescue_join(self);
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->r_started = 1;
    self->rs_layout = 1; /* the offsets were checked: cycles may read the state's C++ object too (abi.c) */
    Py_RETURN_NONE;
}

/* rescue_stop(): stop and join the rescue thread (GIL released meanwhile) and
 * drop its references. Idempotent. */
PyObject *Kernel_rescue_stop(Kernel *self, PyObject *Py_UNUSED(ignored)) {
    atomic_store(&self->k_primary, 0);
    if (self->r_started) {
        atomic_store(&self->r_run, 0);
        event_signal(self->r_stop);
        Py_BEGIN_ALLOW_THREADS
        pthread_join(self->r_thread, NULL);
        Py_END_ALLOW_THREADS
        self->r_started = 0;
    }
    rescue_join(self);
    Py_RETURN_NONE;
}

/* A libfranka error met by the rescue thread, raised as pylibfranka's own type. */
PyObject *rescue_raise(Kernel *self) {
    int kind = atomic_load(&self->r_error_kind);
    PyObject *type = kind >= 1 && kind <= 3 ? self->r_exc[kind - 1] : NULL;
    PyErr_SetString(type ? type : PyExc_RuntimeError, self->r_error);
    return NULL;
}
