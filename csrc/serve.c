/* Kernel serving: the rescue thread serves every cycle (see docs/kernel-serving.md).
 *
 * With serving on, Python is off the 1 kHz path: the rescue thread, which
 * never takes the GIL, waits on libfranka's UDP socket and serves each state
 * as it comes (rescue.c, rescue_cycle with primary=1). Python publishes what
 * the law reads (set_law), hands over whole target rows that the thread
 * indexes by robot time (play_rows), asks for a stop ramp (ramp), and sleeps
 * on an eventfd the thread writes only when the robot clock reaches a time
 * Python waits for (wake_at), or when the session ends or the law fails.
 *
 * Everything here that the serving thread reads is changed under the cycle
 * lock, which the thread holds from each state read to its command written
 * (microseconds) and Python takes only inside these calls, with no Python
 * code run while holding it. Serving ends only with the thread (rescue_stop),
 * so no Python read can overlap one of the thread's. */
#include "kernel.h"

#include <limits.h>
#include <sched.h>
#include <string.h>

static void lock_spin(Kernel *self) {
    while (!lock_try(self)) sched_yield();
}

static void rows_release(target_rows *r) {
    for (int i = 0; i < r->nviews; i++) PyBuffer_Release(&r->views[i]);
    r->nviews = 0;
}

/* Drop what the thread switched out (the caller holds the GIL, not the lock). */
static void release_old(Kernel *self) {
    target_rows old;
    int had;
    lock_spin(self);
    had = self->k_has_old;
    old = self->k_old;
    self->k_has_old = 0;
    lock_release(self);
    if (had) rows_release(&old);
}

/* All rows go (session end, dealloc); the thread is stopped or not serving. */
void serve_release(Kernel *self) {
    if (self->k_has_rows) rows_release(&self->k_rows);
    if (self->k_has_next) rows_release(&self->k_next);
    if (self->k_has_old) rows_release(&self->k_old);
    self->k_has_rows = self->k_has_next = self->k_has_old = 0;
}

/* ---- on the serving thread, under the cycle lock --------------------------- */

/* The law's inputs for the state of robot time t, into params/mode/scale:
 * what Python published, the target row of time t (a pending play switches in
 * once its start is due), and the ramp. Returns 1 while the session should
 * end with this command if it is zero (motion_finished). */
int serve_prepare(Kernel *self, long long t, double *p, int *mode, double *scale) {
    memcpy(p, self->last_params, sizeof self->last_params);
    *mode = self->last_mode;
    *scale = self->last_scale;
    if (self->k_has_next && t >= self->k_next.start_ms) {
        if (t > self->k_next.start_ms) self->k_late++;
        if (self->k_has_rows) { /* empty: every play_rows released it first */
            self->k_old = self->k_rows;
            self->k_has_old = 1;
        }
        self->k_rows = self->k_next;
        self->k_has_rows = 1;
        self->k_has_next = 0;
        self->k_switches++;
    }
    if (self->k_has_rows) {
        const target_rows *r = &self->k_rows;
        long long k = t - r->start_ms;
        if (k < 0) k = 0;
        if (k >= r->n) { /* past the last row it is held */
            k = r->n - 1;
            self->k_starved++;
        }
        if (r->joint && *mode == MODE_IMPEDANCE) {
            memcpy(p, r->pos + 7 * k, 7 * sizeof(double));
            memcpy(p + 7, r->vel + 7 * k, 7 * sizeof(double));
        } else if (r->joint && *mode == MODE_OSC) {
            memcpy(p + 28, r->pos + 7 * k, 7 * sizeof(double)); /* the null-space target */
        } else if (!r->joint && *mode == MODE_OSC) {
            memcpy(p, r->pose + 16 * k, 16 * sizeof(double));
        }
    }
    int finishing = 0;
    if (self->k_failed) {
        *scale = 0.0;
        finishing = 1;
    } else if (self->k_ramp_left >= 0) {
        if (self->k_ramp_left > 0) self->k_ramp_left--;
        *scale = (double)self->k_ramp_left / (double)self->k_ramp_total;
        finishing = self->k_ramp_left == 0;
    }
    if (*scale == 0.0) { /* as the loop does: zero torque, stepped down at the rate limit */
        *mode = MODE_TORQUE;
        memset(p, 0, 7 * sizeof(double));
    }
    return finishing;
}

/* After a cycle was written: note a failed law, wake Python if it waits. */
void serve_after(Kernel *self, long long t, int finite, int finished) {
    int wake = finished;
    if (!finite && !self->k_failed) {
        self->k_failed = 1;
        wake = 1;
    }
    if (wake || t >= atomic_load(&self->k_wake_ms)) {
        atomic_store(&self->k_wake_ms, LLONG_MAX);
        if (self->k_wake >= 0) event_signal(self->k_wake);
    }
}

/* ---- called from Python ------------------------------------------------------ */

/* serve_start(wake_fd): the rescue thread (running) serves every state from
 * now on; it writes wake_fd (an eventfd Python owns) when Python should look. */
PyObject *Kernel_serve_start(Kernel *self, PyObject *arg) {
    int fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred()) return NULL;
    if (!self->r_started) {
        PyErr_SetString(PyExc_RuntimeError, "kernel serving needs the rescue thread running (rescue_start)");
        return NULL;
    }
    lock_spin(self);
    self->k_wake = fd;
    atomic_store(&self->k_wake_ms, LLONG_MAX);
    atomic_store(&self->k_primary, 1);
    lock_release(self);
    timer_arm(self->r_timer, now_ns()); /* wake the thread from its watchdog sleep now */
    Py_RETURN_NONE;
}

/* set_law(mode, scale, *params): what the law reads from the next cycle on,
 * packed as Kernel.cycle takes it (the caller validated the values). */
PyObject *Kernel_set_law(Kernel *self, PyObject *const *args, Py_ssize_t nargs) {
    static const Py_ssize_t counts[3] = {4, 6, 1};
    static const Py_ssize_t lens[3][6] = {{7, 7, 7, 7, 0, 0}, {16, 6, 6, 7, 7, 7}, {7, 0, 0, 0, 0, 0}};
    if (nargs < 2) {
        PyErr_SetString(PyExc_TypeError, "set_law(mode, scale, *params)");
        return NULL;
    }
    long mode = PyLong_AsLong(args[0]);
    double scale = PyFloat_AsDouble(args[1]);
    if (PyErr_Occurred()) return NULL;
    if (mode < 0 || mode > 2 || nargs - 2 != counts[mode]) {
        PyErr_SetString(PyExc_ValueError, "set_law: bad mode or parameter count");
        return NULL;
    }
    double packed[49];
    double *dst = packed;
    for (Py_ssize_t i = 0; i < counts[mode]; i++) {
        Py_buffer v;
        if (get_vec(args[2 + i], &v, lens[mode][i], "law parameter") < 0) return NULL;
        memcpy(dst, v.buf, (size_t)v.len);
        dst += v.len / 8;
        PyBuffer_Release(&v);
    }
    lock_spin(self);
    memcpy(self->last_params, packed, (size_t)(dst - packed) * sizeof(double));
    self->last_mode = (int)mode;
    self->last_scale = scale;
    lock_release(self);
    Py_RETURN_NONE;
}

static int rows_view(PyObject *obj, Py_buffer *v, Py_ssize_t n, Py_ssize_t width, const char *what) {
    if (PyObject_GetBuffer(obj, v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_ND) < 0) return -1;
    if (v->itemsize != 8 || strcmp(v->format, "d") != 0 || v->ndim != 2 || v->shape[1] != width ||
        (n >= 0 && v->shape[0] != n) || v->shape[0] < 1) {
        PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous float64 array of shape (n, %zd)", what, width);
        PyBuffer_Release(v);
        return -1;
    }
    return 0;
}

/* play_rows(start_ms, positions, velocities) or play_rows(start_ms, None, None, poses):
 * rows the thread switches to once robot time reaches start_ms, replacing a
 * play not yet started. */
PyObject *Kernel_play_rows(Kernel *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 && nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "play_rows(start_ms, positions, velocities[, poses])");
        return NULL;
    }
    target_rows r;
    memset(&r, 0, sizeof r);
    r.start_ms = PyLong_AsLongLong(args[0]);
    if (r.start_ms == -1 && PyErr_Occurred()) return NULL;
    r.joint = args[1] != Py_None;
    if (r.joint) {
        if (rows_view(args[1], &r.views[0], -1, 7, "positions") < 0) return NULL;
        r.nviews = 1;
        r.n = r.views[0].shape[0];
        if (rows_view(args[2], &r.views[1], r.n, 7, "velocities") < 0) {
            rows_release(&r);
            return NULL;
        }
        r.nviews = 2;
        r.pos = r.views[0].buf;
        r.vel = r.views[1].buf;
    } else {
        if (nargs != 4 || rows_view(args[3], &r.views[0], -1, 16, "poses") < 0) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "play_rows needs positions or poses");
            return NULL;
        }
        r.nviews = 1;
        r.n = r.views[0].shape[0];
        r.pose = r.views[0].buf;
    }
    release_old(self);
    target_rows replaced;
    int had;
    lock_spin(self);
    had = self->k_has_next;
    replaced = self->k_next;
    self->k_next = r;
    self->k_has_next = 1;
    lock_release(self);
    if (had) rows_release(&replaced);
    Py_RETURN_NONE;
}

/* clear_rows(): no rows from the next cycle on (the law reads set_law's targets). */
PyObject *Kernel_clear_rows(Kernel *self, PyObject *Py_UNUSED(ignored)) {
    target_rows cur, next, old;
    int has_cur, has_next, has_old;
    lock_spin(self);
    cur = self->k_rows; next = self->k_next; old = self->k_old;
    has_cur = self->k_has_rows; has_next = self->k_has_next; has_old = self->k_has_old;
    self->k_has_rows = self->k_has_next = self->k_has_old = 0;
    lock_release(self);
    if (has_cur) rows_release(&cur);
    if (has_next) rows_release(&next);
    if (has_old) rows_release(&old);
    Py_RETURN_NONE;
}

/* rows_status() -> (switches, held_cycles, late_switches, current_start_ms or None, next_start_ms or None) */
PyObject *Kernel_rows_status(Kernel *self, PyObject *Py_UNUSED(ignored)) {
    release_old(self);
    lock_spin(self);
    long long sw = self->k_switches, st = self->k_starved, late = self->k_late;
    long long cur = self->k_has_rows ? self->k_rows.start_ms : LLONG_MIN;
    long long next = self->k_has_next ? self->k_next.start_ms : LLONG_MIN;
    lock_release(self);
    PyObject *c = cur == LLONG_MIN ? Py_NewRef(Py_None) : PyLong_FromLongLong(cur);
    PyObject *n = next == LLONG_MIN ? Py_NewRef(Py_None) : PyLong_FromLongLong(next);
    return Py_BuildValue("(LLLNN)", sw, st, late, c, n);
}

/* wake_at(time_ms): write the wake fd once the robot time reaches time_ms
 * (a huge value: only for the session's end or a failed law). */
PyObject *Kernel_wake_at(Kernel *self, PyObject *arg) {
    long long t = PyLong_AsLongLong(arg);
    if (t == -1 && PyErr_Occurred()) return NULL;
    atomic_store(&self->k_wake_ms, t);
    Py_RETURN_NONE;
}

/* ramp(cycles): scale the command down to zero over `cycles` cycles, then
 * write motion_finished once it is zero; a ramp under way is not restarted. */
PyObject *Kernel_ramp(Kernel *self, PyObject *arg) {
    long long n = PyLong_AsLongLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "ramp: cycles must be at least 1");
        return NULL;
    }
    lock_spin(self);
    if (self->k_ramp_left < 0) self->k_ramp_left = self->k_ramp_total = n;
    lock_release(self);
    Py_RETURN_NONE;
}

/* serve_status() -> (serving, law_failed, finished, rescue_error, time_ms, served) */
PyObject *Kernel_serve_status(Kernel *self, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("(iiiiLL)", atomic_load(&self->k_primary), self->k_failed, atomic_load(&self->finished),
                         atomic_load(&self->r_error_kind), self->last_time_ms,
                         (long long)atomic_load(&self->k_served));
}

/* refresh_state(state): write the last served state's q, dq, O_T_EE, tau_J,
 * tau_ext_hat_filtered, success rate and time into a pylibfranka RobotState
 * (so libfranka's model functions see the current state). Call it between
 * two reads of seq() that agree. Returns False where the layout is unknown. */
PyObject *Kernel_refresh_state(Kernel *self, PyObject *arg) {
    unsigned char *cpp = (unsigned char *)state_value(self, arg);
    if (!cpp) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    const long *off = self->r_off;
    uint64_t ms = self->last_time_ms < 0 ? 0 : (uint64_t)self->last_time_ms;
    memcpy(cpp + off[R_Q], self->b[B_Q], 7 * sizeof(double));
    memcpy(cpp + off[R_DQ], self->b[B_DQ], 7 * sizeof(double));
    memcpy(cpp + off[R_EE], self->b[B_EE_RAW], 16 * sizeof(double));
    memcpy(cpp + off[R_TAU_J], self->k_extra, 7 * sizeof(double));
    memcpy(cpp + off[R_TAU_EXT], self->k_extra + 7, 7 * sizeof(double));
    memcpy(cpp + off[R_SUCCESS], &self->last_success, sizeof(double));
    memcpy(cpp + off[R_TIME], &ms, sizeof ms);
    Py_RETURN_TRUE;
}
