/* One cycle of the loop: read, law, safety, write, in one C call (see kernel.h). */
#include "kernel.h"

#include <limits.h>
#include <math.h>
#include <sched.h>
#include <string.h>

/* The pose the laws use: O_T_EE, corrected by ee_offset where one is set. */
void fill_pose(Kernel *self) {
    if (self->has_offset)
        mat4_mul_cm(self->b[B_EE_RAW], self->ee_offset, self->b[B_EE]);
    else if (self->b[B_EE] != self->b[B_EE_RAW])
        memcpy(self->b[B_EE], self->b[B_EE_RAW], 16 * sizeof(double));
}

/* The law of `mode` on the state arrays, with parameters packed as cycle()
 * keeps them in last_params, into tau_desired. `paused`: impedance with zero
 * target velocity (the rescue thread: a trajectory pauses, not runs on). */
void kernel_law(Kernel *self, int mode, const double *p, int paused) {
    const double *q = self->b[B_Q], *dq = self->b[B_DQ];
    double *tau = self->b[B_TAU_DES];
    if (mode == MODE_IMPEDANCE) {
        static const double still[7] = {0};
        law_impedance(q, dq, p, paused ? still : p + 7, p + 14, p + 21, tau);
    } else if (mode == MODE_OSC) {
        law_osc(q, dq, self->b[B_EE], p, p + 16, p + 22, p + 28, p + 35, p + 42, &self->osc, self->b[B_JAC], tau);
    } else {
        memcpy(tau, p, 7 * sizeof(double));
    }
}

/* The safety filter on tau_desired into tau_command (see law_safety). */
int kernel_safety(Kernel *self, double scale) {
    return law_safety(self->b[B_TAU_DES], scale, self->b[B_Q], self->b[B_DQ], self->b[B_TAU_LAST], &self->safety,
                      self->b[B_TAU_CMD]);
}

PyObject *command_list(Kernel *self) { return double_list(self->b[B_TAU_CMD], 7); }

/* fill(q, dq, O_T_EE): copy a state's lists into the arrays (pose corrected). */
PyObject *Kernel_fill(Kernel *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "fill(q, dq, O_T_EE) takes 3 arguments");
        return NULL;
    }
    if (read_seq(args[0], self->b[B_Q], 7, "q") < 0 || read_seq(args[1], self->b[B_DQ], 7, "dq") < 0 ||
        read_seq(args[2], self->b[B_EE_RAW], 16, "O_T_EE") < 0)
        return NULL;
    fill_pose(self);
    Py_RETURN_NONE;
}

/* finish(scale) -> list of 7 floats, or None if the law's output was not finite.
 * tau_desired *= scale; add the joint-limit guard; rate-limit against tau_last;
 * saturate. The command is stored in tau_command (and returned); tau_last is
 * updated by the caller after the write succeeded (update_last()). */
PyObject *Kernel_finish(Kernel *self, PyObject *arg) {
    double scale = PyFloat_AsDouble(arg);
    if (scale == -1.0 && PyErr_Occurred()) return NULL;
    if (!kernel_safety(self, scale)) Py_RETURN_NONE;
    return command_list(self);
}

/* update_last(): tau_last = tau_command; returns True if the command is all zero. */
PyObject *Kernel_update_last(Kernel *self, PyObject *Py_UNUSED(ignored)) {
    int zero = 1;
    for (int i = 0; i < 7; i++) {
        self->b[B_TAU_LAST][i] = self->b[B_TAU_CMD][i];
        if (self->b[B_TAU_CMD][i] != 0.0) zero = 0;
    }
    return PyBool_FromLong(zero);
}

/* Book-keeping after any cycle's write, by the loop, the guardian or the
 * rescue thread (the writer holds the cycle lock): lost states, the time
 * written, the recorder's row, and the rescue thread's watchdog. */
void note_written(Kernel *self, long long time_ms, int finished, const cycle_info *info) {
    if (self->last_time_ms >= 0 && time_ms - self->last_time_ms > 1) self->lost += time_ms - self->last_time_ms - 1;
    self->last_time_ms = time_ms;
    if (finished) atomic_store(&self->finished, 1);
    long long now = now_ns();
    atomic_store(&self->last_write_ns, now);
    if (atomic_load_explicit(&self->rec_on, memory_order_relaxed)) record_row(self, time_ms, now, info);
    /* Then the rescue thread sleeps on (armed after the store: having consumed
     * an expiration, it reads this write or a later one). */
    if (self->r_timer >= 0 && !atomic_load(&self->k_primary)) timer_arm(self->r_timer, now + self->r_after_ns);
}

/* ---- the cycle lock ------------------------------------------------------
 * Taken by Kernel.cycle for the duration of the call (where no other Python
 * thread can run) and by the rescue thread around its cycle; never held while
 * waiting for the GIL. (The loop and the guardian also share a Python lock
 * around their bookkeeping; the rescue thread never takes that one.) */

int lock_try(Kernel *self) {
    int expected = 0;
    return atomic_compare_exchange_strong(&self->lock_word, &expected, 1);
}

void lock_release(Kernel *self) { atomic_store(&self->lock_word, 0); }

/* claim_next(): a Python thread (the guardian taking over, or the loop that
 * found its state taken) wants to serve from now on: the rescue thread ends
 * its run and steps in again only after RESCUE_AFTER without any cycle. */
PyObject *Kernel_claim_next(Kernel *self, PyObject *Py_UNUSED(ignored)) {
    atomic_store(&self->py_claim, 1);
    Py_RETURN_NONE;
}

/* cycle(ctl, Torques, mode, scale, flags, *params)
 *   flags bit 0: finish if the command is zero; bit 1: the guardian serves
 *   (the recorder's server column)
 *   mode 0: params = (q_desired, dq_desired, kp, kd)
 *   mode 1: params = (ee_desired, ee_kp, ee_kd, q_null, null_kp, null_kd)
 *   mode 2: params = (torque,)
 * Reads a state, computes the law and the safety filter, writes the command,
 * all in C: the interpreter's eval loop does not run between readOnce and
 * writeOnce, so no other thread can take the GIL in between. A law whose
 * parameters are unusable, or whose output is not finite, yields a step
 * towards zero. The cycle claims the published deadline as it starts and,
 * once written, publishes the next (watch.c). Returns (state, time_ms,
 * success_rate, t_call_ns, t_read_ns, t_write_ns, flags) with flags bit 0:
 * output was not finite, bit 1: the command was zero and written with
 * motion_finished. */
PyObject *Kernel_cycle(Kernel *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 5) {
        PyErr_SetString(PyExc_TypeError, "cycle(ctl, Torques, mode, scale, flags, *params)");
        return NULL;
    }
    schedule_claim(self); /* before anything can fail: this cycle is being served */
    long long due = atomic_load(&self->s_due); /* for attrib.c: when the state we serve was due */
    PyObject *ctl = args[0], *torques_type = args[1];
    long mode = PyLong_AsLong(args[2]);
    double scale = PyFloat_AsDouble(args[3]);
    long cycle_flags = PyLong_AsLong(args[4]);
    if (PyErr_Occurred()) return NULL;
    int finish_if_zero = (int)(cycle_flags & 1);
    static const Py_ssize_t counts[3] = {4, 6, 1};
    static const Py_ssize_t lens[3][6] = {{7, 7, 7, 7, 0, 0}, {16, 6, 6, 7, 7, 7}, {7, 0, 0, 0, 0, 0}};
    if (mode < 0 || mode > 2 || nargs - 5 != counts[mode]) {
        PyErr_SetString(PyExc_ValueError, "cycle: bad mode or parameter count");
        return NULL;
    }
    if (atomic_load(&self->r_error_kind)) return rescue_raise(self);
    if (atomic_load(&self->k_primary)) {
        PyErr_SetString(PyExc_RuntimeError, "the kernel serves the cycles (rescue_stop() first)");
        return NULL;
    }
    Py_buffer v[6];
    Py_ssize_t held = 0;
    for (; held < counts[mode]; held++)
        if (get_vec(args[5 + held], &v[held], lens[mode][held], "cycle parameter") < 0) goto fail_buffers;

    /* The cycle lock is held only inside this call, where no other Python
     * thread can run: a thread holding it while it waits for the GIL would
     * lock the rescue thread out. A rescue cycle holds it for microseconds. */
    while (!lock_try(self)) sched_yield();
    if (atomic_load(&self->r_error_kind)) {
        /* The rescue thread met libfranka's error while we waited for the lock:
         * after a reflex only one Move response comes, so a second readOnce
         * would wait for it forever. */
        lock_release(self);
        for (Py_ssize_t i = 0; i < held; i++) PyBuffer_Release(&v[i]);
        return rescue_raise(self);
    }
    if (atomic_load(&self->finished)) {
        /* Another Python thread (the guardian, or the loop) met libfranka's
         * error, or wrote motion_finished: nothing more to read. Its own
         * error reaches the session; reading again would wait forever. */
        lock_release(self);
        for (Py_ssize_t i = 0; i < held; i++) PyBuffer_Release(&v[i]);
        Py_RETURN_NONE;
    }
    if (atomic_load(&self->rescued_last) && self->r_fd >= 0 && !state_waiting(self->r_fd, 0)) {
        /* The rescue thread served the state that woke us: nothing to read. */
        lock_release(self);
        for (Py_ssize_t i = 0; i < held; i++) PyBuffer_Release(&v[i]);
        Py_RETURN_NONE;
    }
    {   /* the law reads its parameters from here, as the rescue thread does */
        double *dst = self->last_params;
        for (Py_ssize_t i = 0; i < held; i++) {
            memcpy(dst, v[i].buf, (size_t)v[i].len);
            dst += v[i].len / 8;
            PyBuffer_Release(&v[i]);
        }
        held = 0;
        self->last_mode = (int)mode;
        self->last_scale = scale;
    }
    attrib_begin(self);
    long long t_call = now_ns();
    PyObject *pair = PyObject_CallMethodNoArgs(ctl, s_readOnce);
    if (!pair) goto fail_libfranka;
    long long t_read = now_ns();
    PyObject *state = PyTuple_Check(pair) && PyTuple_GET_SIZE(pair) > 0 ? PyTuple_GET_ITEM(pair, 0) : pair;
    Py_INCREF(state);
    Py_DECREF(pair);
    if (read_attr(state, s_q, self->b[B_Q], 7) < 0 || read_attr(state, s_dq, self->b[B_DQ], 7) < 0 ||
        read_attr(state, s_O_T_EE, self->b[B_EE_RAW], 16) < 0)
        goto fail_state;
    fill_pose(self);
    PyObject *tobj = PyObject_GetAttr(state, s_time);
    if (!tobj) goto fail_state;
    PyObject *secs = PyObject_CallMethodNoArgs(tobj, s_to_sec);
    Py_DECREF(tobj);
    if (!secs) goto fail_state;
    double sec = PyFloat_AsDouble(secs);
    Py_DECREF(secs);
    PyObject *sr = PyObject_GetAttr(state, s_success);
    if (!sr) goto fail_state;
    double success = PyFloat_AsDouble(sr);
    Py_DECREF(sr);
    if (PyErr_Occurred()) goto fail_state;

    kernel_law(self, (int)mode, self->last_params, 0);
    int finite = kernel_safety(self, scale);
    int zero = 1;
    for (int i = 0; i < 7; i++)
        if (self->b[B_TAU_CMD][i] != 0.0) zero = 0;
    PyObject *list = command_list(self);
    if (!list) goto fail_state;
    PyObject *command = PyObject_CallOneArg(torques_type, list);
    Py_DECREF(list);
    if (!command) goto fail_state;
    int finished = finish_if_zero && zero;
    if (finished && PyObject_SetAttr(command, s_motion_finished, Py_True) < 0) {
        Py_DECREF(command);
        goto fail_state;
    }
    long long t_write = now_ns();
    PyObject *ok = PyObject_CallMethodOneArg(ctl, s_writeOnce, command);
    Py_DECREF(command);
    if (!ok) {
        Py_DECREF(state);
        goto fail_libfranka;
    }
    Py_DECREF(ok);
    memcpy(self->b[B_TAU_LAST], self->b[B_TAU_CMD], 7 * sizeof(double));
    long long time_ms = llround(sec * 1000.0);
    cycle_info info = {(cycle_flags & 2) ? SERVER_GUARDIAN : SERVER_LOOP, success, t_read, t_write, NULL,
                       self->last_params, self->last_mode};
    double tau_measured[7];
    if (atomic_load_explicit(&self->rec_on, memory_order_relaxed) && self->rec_col[RF_TAU_MEAS] >= 0) {
        /* Read here, outside the recorder's busy section (a getattr may run
         * Python); from the C++ object where the layout is known: the getter
         * builds a list (~3 us). */
        const unsigned char *cpp = state_value(self, state);
        if (cpp) {
            memcpy(tau_measured, cpp + self->r_off[R_TAU_J], sizeof tau_measured);
            info.tau_measured = tau_measured;
        } else if (read_attr(state, s_tau_J, tau_measured, 7) == 0) {
            info.tau_measured = tau_measured;
        } else {
            PyErr_Clear(); /* a state without tau_J (a test double): recorded as NaN */
        }
    }
    note_written(self, time_ms, finished, &info);
    attrib_cycle(self, 0, time_ms, due, t_call, t_read, t_write);
    schedule_observe(self, t_read, time_ms, finished);
    self->last_success = success;
    atomic_store(&self->rescued_last, 0);
    atomic_store(&self->py_claim, 0);
    if (self->has_pub && publish(self, state, (double)time_ms, success) < 0) goto fail_state;
    lock_release(self);
    int flags = (finite ? 0 : 1) | (finished ? 2 : 0);
    return Py_BuildValue("(NLdLLLi)", state, time_ms, success, t_call, t_read, t_write, flags);

fail_libfranka:
    /* libfranka failed (a reflex, a lost connection): the session is over.
     * The rescue thread must not read again: it would wait forever for the
     * Move response this thread already consumed. */
    atomic_store(&self->finished, 1);
    goto fail_locked;
fail_state:
    Py_DECREF(state);
fail_locked:
    lock_release(self);
fail_buffers:
    for (Py_ssize_t i = 0; i < held; i++) PyBuffer_Release(&v[i]);
    return NULL;
}

/* new_session(): before a session opens: clear the counters and flags. */
PyObject *Kernel_new_session(Kernel *self, PyObject *Py_UNUSED(ignored)) {
    self->last_time_ms = -1;
    self->lost = 0;
    atomic_store(&self->finished, 0);
    atomic_store(&self->last_write_ns, 0);
    atomic_store(&self->rescued, 0);
    atomic_store(&self->r_episodes, 0);
    atomic_store(&self->r_longest_ns, 0);
    atomic_store(&self->r_error_kind, 0);
    atomic_store(&self->py_claim, 0);
    atomic_store(&self->rescued_last, 0);
    atomic_store(&self->k_primary, 0);
    atomic_store(&self->k_served, 0);
    atomic_store(&self->k_wake_ms, LLONG_MAX);
    self->k_wake = -1;
    self->k_starved = self->k_late = self->k_switches = 0;
    self->k_ramp_left = self->k_ramp_total = -1;
    self->k_failed = 0;
    serve_release(self);
    self->last_success = 0.0;
    self->last_mode = MODE_TORQUE;
    self->last_scale = 0.0;
    memset(self->last_params, 0, sizeof self->last_params);
    schedule_reset(self);
    Py_RETURN_NONE;
}

/* seq() -> the rescue thread's write sequence (odd while it writes the arrays). */
PyObject *Kernel_seq(Kernel *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromUnsignedLongLong(atomic_load(&self->seq));
}

/* read_anyway(): the next Kernel.cycle reads even if no state is waiting
 * (the loop heard nothing for long: libfranka's own timeout then reports a
 * lost connection), although the rescue thread wrote the last cycle. */
PyObject *Kernel_read_anyway(Kernel *self, PyObject *Py_UNUSED(ignored)) {
    atomic_store(&self->rescued_last, 0);
    Py_RETURN_NONE;
}

/* counters() -> (lost, rescued, rescue_episodes, longest_rescue_ns, rescuing,
 * rescue_error): rescue_error is the kind of libfranka error the rescue
 * thread met this session (0 none, 1 ControlException, 2 NetworkException,
 * 3 other). */
PyObject *Kernel_counters(Kernel *self, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("(LLLLii)", self->lost, (long long)atomic_load(&self->rescued),
                         (long long)atomic_load(&self->r_episodes), (long long)atomic_load(&self->r_longest_ns),
                         self->r_started, atomic_load(&self->r_error_kind));
}
