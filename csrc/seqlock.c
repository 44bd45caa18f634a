/* The state frame of server mode: one writer, any number of readers, no torn
 * snapshots (a seqlock over float64 slots; see docs/server.md). */
#include "kernel.h"

#include <sched.h>
#include <string.h>

/* Copy n doubles (src[1..n-1]) into frame[1..n-1] under the sequence word frame[0]. */
void seqlock_store(double *frame, const double *src, Py_ssize_t n) {
    uint64_t *seq = (uint64_t *)frame;
    uint64_t s = __atomic_load_n(seq, __ATOMIC_RELAXED);
    __atomic_store_n(seq, s + 1, __ATOMIC_RELAXED); /* odd: a write is under way */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    memcpy(frame + 1, src + 1, (size_t)(n - 1) * sizeof(double));
    __atomic_store_n(seq, s + 2, __ATOMIC_RELEASE);
}

/* Copy a consistent frame into dst; returns its (even) sequence number, or 1
 * when none was had before deadline_ns (CLOCK_MONOTONIC). It spins first (a
 * write takes well under a microsecond), then yields the CPU between tries: a
 * writer preempted mid-write needs a core to finish. Only a writer that died
 * mid-write leaves the word odd for ever. */
static uint64_t seqlock_load(const double *frame, double *dst, Py_ssize_t n, long long deadline_ns) {
    const uint64_t *seq = (const uint64_t *)frame;
    for (long i = 0;; i++) {
        uint64_t s1 = __atomic_load_n(seq, __ATOMIC_ACQUIRE);
        if (!(s1 & 1)) {
            memcpy(dst + 1, frame + 1, (size_t)(n - 1) * sizeof(double));
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            if (__atomic_load_n(seq, __ATOMIC_RELAXED) == s1) {
                memcpy(dst, &s1, sizeof s1);
                return s1;
            }
        }
        if (i >= 1000) {
            if (now_ns() >= deadline_ns) return 1;
            sched_yield();
        }
    }
}

int get_frame(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t n, const char *what) {
    if (PyObject_GetBuffer(obj, view, (writable ? PyBUF_WRITABLE : 0) | PyBUF_C_CONTIGUOUS) < 0) return -1;
    if (view->len < n * 8 || ((uintptr_t)view->buf & 7) != 0) {
        PyErr_Format(PyExc_ValueError, "%s must be an 8-byte aligned buffer of at least %zd bytes", what, n * 8);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* seqlock_read(frame, out, timeout=1.0) -> sequence number (even), or None
 * if no consistent copy was had within timeout seconds. The GIL is released
 * only once the first tries failed (a writer preempted mid-write). */
PyObject *k_seqlock_read(PyObject *Py_UNUSED(mod), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "seqlock_read(frame, out, timeout=1.0)");
        return NULL;
    }
    double timeout = nargs == 3 ? PyFloat_AsDouble(args[2]) : 1.0;
    if (timeout == -1.0 && PyErr_Occurred()) return NULL;
    if (!(timeout >= 0.0)) {
        PyErr_SetString(PyExc_ValueError, "timeout must be >= 0 seconds");
        return NULL;
    }
    Py_buffer src, dst;
    if (get_frame(args[1], &dst, 1, 1, "out") < 0) return NULL;
    Py_ssize_t n = dst.len / 8;
    if (get_frame(args[0], &src, 0, n, "frame") < 0) {
        PyBuffer_Release(&dst);
        return NULL;
    }
    long long deadline = now_ns() + (long long)(timeout * 1e9);
    uint64_t seq = seqlock_load((const double *)src.buf, (double *)dst.buf, n, now_ns());
    if (seq & 1) {
        Py_BEGIN_ALLOW_THREADS
        seq = seqlock_load((const double *)src.buf, (double *)dst.buf, n, deadline);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&dst);
    PyBuffer_Release(&src);
    if (seq & 1) Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(seq);
}

void Kernel_unpublish(Kernel *self) {
    if (self->has_pub) PyBuffer_Release(&self->pub);
    self->has_pub = 0;
    Py_CLEAR(self->mass_fn);
}

/* publish_to(frame, mass_fn) / publish_to(None): after every cycle, write the
 * state, the command and the dynamics into `frame` (F_LEN float64 slots) under
 * the seqlock. mass_fn(state) returns libfranka's mass matrix (49 values). */
PyObject *Kernel_publish_to(Kernel *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "publish_to(frame, mass_fn=None)");
        return NULL;
    }
    Kernel_unpublish(self);
    if (args[0] == Py_None) Py_RETURN_NONE;
    if (get_frame(args[0], &self->pub, 1, F_LEN, "frame") < 0) return NULL;
    self->has_pub = 1;
    if (nargs == 2 && args[1] != Py_None) {
        Py_INCREF(args[1]);
        self->mass_fn = args[1];
    }
    memset(self->stage, 0, sizeof self->stage);
    self->published = 0.0;
    Py_RETURN_NONE;
}

/* The frame's slots every cycle fills the same way, whoever served it. */
void stage_common(Kernel *self, double time_ms, double success) {
    double *st = self->stage;
    st[F_TIME] = time_ms;
    st[F_SUCCESS] = success;
    st[F_COUNT] = ++self->published;
    memcpy(st + F_Q, self->b[B_Q], 7 * sizeof(double));
    memcpy(st + F_DQ, self->b[B_DQ], 7 * sizeof(double));
    memcpy(st + F_EE, self->b[B_EE], 16 * sizeof(double));
    memcpy(st + F_TAU_CMD, self->b[B_TAU_CMD], 7 * sizeof(double));
    const double *ee = self->b[B_EE];
    double point[3] = {ee[12], ee[13], ee[14]};
    fr3_jacobian(self->b[B_Q], point, st + F_JAC);
}

/* Publish a cycle Python served (the state is pylibfranka's object). */
int publish(Kernel *self, PyObject *state, double time_ms, double success) {
    double *st = self->stage;
    stage_common(self, time_ms, success);
    if (read_attr(state, s_tau_ext, st + F_TAU_EXT, 7) < 0 || read_attr(state, s_tau_J, st + F_TAU_J, 7) < 0)
        return -1;
    if (self->mass_fn) {
        PyObject *m = PyObject_CallOneArg(self->mass_fn, state);
        if (!m) return -1;
        int rc = read_seq(m, st + F_MASS, 49, "mass");
        Py_DECREF(m);
        if (rc < 0) return -1;
    }
    seqlock_store((double *)self->pub.buf, st, F_LEN);
    return 0;
}
