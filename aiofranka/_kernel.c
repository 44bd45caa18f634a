/*
 * aiofranka._kernel: the per-cycle arithmetic of the control loop in C.
 *
 * One `Kernel` object per controller holds pointers into preallocated float64
 * numpy arrays (state, Jacobian, torques) handed over at construction. Each
 * cycle the controller calls `fill` with pylibfranka's lists, one law
 * (`impedance`, `osc` or `torque`), then `finish`, which applies the ramp
 * scale, the joint-limit guard and the safety filter and returns the command
 * as a list ready for `pylibfranka.Torques`. Nothing here allocates except
 * that list, validates user input (done in Python where values are handed
 * in) or releases the GIL (every call is a few microseconds).
 *
 * Storage conventions, matching libfranka: poses and the Jacobian are stored
 * column-major (pose element (r, c) at [c*4 + r], Jacobian (r, c) at
 * [c*6 + r]); targets handed in from numpy (ee_desired) are row-major 4x4.
 *
 * The reference implementation of every law is aiofranka/control.py; the
 * tests check this file against it.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <string.h>
#include <errno.h>
#include <stdint.h>
#include <sched.h>
#include <unistd.h>
#include <stdatomic.h>
#include <pthread.h>
#include <poll.h>
#include <signal.h>
#ifdef __linux__
#include <sys/timerfd.h>
#include <time.h>
#endif

/* aiofranka/_direct.cpp: libfranka's readOnce/writeOnce without the GIL. */
int afd_bind(void *ctl, void **read_fn, void **write_fn, char *err, size_t n);
int afd_read(void *fn, void *ctl, void *result, char *msg, size_t n);
int afd_write(void *fn, void *ctl, const void *torques, char *msg, size_t n);

/* FR3 kinematics, modified (Craig) Denavit-Hartenberg parameters per joint:
 * a_{i-1}, d_i, alpha_{i-1}; then the flange (d = 0.107). */
static const double DH_A[8] = {0.0, 0.0, 0.0, 0.0825, -0.0825, 0.0, 0.088, 0.0};
static const double DH_D[8] = {0.333, 0.0, 0.316, 0.0, 0.384, 0.0, 0.0, 0.107};
static const double DH_ALPHA[8] = {0.0, -M_PI_2, M_PI_2, M_PI_2, -M_PI_2, M_PI_2, M_PI_2, 0.0};

enum { B_Q, B_DQ, B_EE_RAW, B_EE, B_JAC, B_TAU_DES, B_TAU_CMD, B_TAU_LAST, B_DTAU, B_TAU_MAX, B_QMIN, B_QMAX,
       B_COUNT };
static const Py_ssize_t B_LEN[B_COUNT] = {7, 7, 16, 16, 42, 7, 7, 7, 7, 7, 7, 7};
static const char *B_NAME[B_COUNT] = {"q", "dq", "ee_raw", "ee", "jacobian", "tau_desired", "tau_command",
                                      "tau_last", "dtau_max", "tau_max", "q_min", "q_max"};

/* Layout of a published state frame, in float64 slots. Slot 0 holds the
 * seqlock sequence number as a uint64 (odd while a write is under way).
 * Matrices are column-major, as libfranka lays them out. */
enum { F_SEQ = 0, F_TIME = 1, F_SUCCESS = 2, F_COUNT = 3, F_Q = 4, F_DQ = 11, F_EE = 18, F_JAC = 34, F_MASS = 76,
       F_TAU_CMD = 125, F_TAU_EXT = 132, F_TAU_J = 139, F_LEN = 146 };

typedef struct {
    PyObject_HEAD
    Py_buffer views[B_COUNT];
    int held;
    double *b[B_COUNT];
    double ee_offset[16]; /* column-major; identity when unused */
    int has_offset;
    double margin, stiffness, damping;
    double max_translation, max_rotation, null_damping;
    /* Optional per-cycle state publication (server mode): a seqlocked frame in
     * shared memory, and the model's mass-matrix function. */
    Py_buffer pub;
    int has_pub;
    PyObject *mass_fn;
    double stage[F_LEN];
    double published;
    /* Held around each cycle written (see "the cycle lock"). */
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
    /* The rescue thread (see "rescue" below). */
    pthread_t r_thread;
    int r_started;
    atomic_int r_run;
    int r_fd, r_priority;
    long long r_after_ns, r_grace_ns;
    void *r_ctl, *r_read, *r_write;
    unsigned char *r_tq; /* the Torques object's C++ storage */
    PyObject *r_ctl_obj, *r_tq_obj, *r_exc[3];
    long r_off[9];
    unsigned char *r_state;
    atomic_int r_error_kind;
    char r_error[512];
    atomic_llong rescued, r_episodes, r_longest_ns;
} Kernel;

/* ---- helpers ------------------------------------------------------------ */

static int read_seq(PyObject *seq, double *out, Py_ssize_t n, const char *what) {
    if (PyList_CheckExact(seq) && PyList_GET_SIZE(seq) == n) {
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *item = PyList_GET_ITEM(seq, i);
            out[i] = PyFloat_CheckExact(item) ? PyFloat_AS_DOUBLE(item) : PyFloat_AsDouble(item);
        }
        return PyErr_Occurred() ? -1 : 0;
    }
    PyObject *fast = PySequence_Fast(seq, what);
    if (!fast) return -1;
    if (PySequence_Fast_GET_SIZE(fast) != n) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "%s must have %zd values", what, n);
        return -1;
    }
    PyObject **items = PySequence_Fast_ITEMS(fast);
    for (Py_ssize_t i = 0; i < n; i++) out[i] = PyFloat_AsDouble(items[i]);
    Py_DECREF(fast);
    return PyErr_Occurred() ? -1 : 0;
}

/* A read-only float64 buffer of exactly n values (targets and gains). */
static int get_vec(PyObject *obj, Py_buffer *view, Py_ssize_t n, const char *what) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    if (view->itemsize != 8 || !view->format || strcmp(view->format, "d") != 0 ||
        view->len != n * (Py_ssize_t)sizeof(double)) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_TypeError, "%s must be a contiguous float64 array of %zd values", what, n);
        return -1;
    }
    return 0;
}

/* out(4x4, col-major) = a(col-major) * b(col-major) */
static void mat4_mul_cm(const double *a, const double *b, double *out) {
    double tmp[16];
    for (int c = 0; c < 4; c++)
        for (int r = 0; r < 4; r++) {
            double s = 0.0;
            for (int k = 0; k < 4; k++) s += a[k * 4 + r] * b[c * 4 + k];
            tmp[c * 4 + r] = s;
        }
    memcpy(out, tmp, sizeof tmp);
}

/* Frames of the joints and the flange: origin p[i] and z axis z[i] of joint i
 * (i = 0..6) and the flange transform (col-major) in `flange`. */
static void fr3_frames(const double *q, double p[7][3], double z[7][3], double *flange) {
    double t[16] = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1}; /* col-major identity */
    for (int i = 0; i < 8; i++) {
        double theta = i < 7 ? q[i] : 0.0;
        double ct = cos(theta), st = sin(theta);
        double ca = cos(DH_ALPHA[i]), sa = sin(DH_ALPHA[i]);
        double a = DH_A[i], d = DH_D[i];
        /* RotX(alpha) TransX(a) RotZ(theta) TransZ(d), col-major */
        double m[16] = {ct, st * ca, st * sa, 0.0,
                        -st, ct * ca, ct * sa, 0.0,
                        0.0, -sa, ca, 0.0,
                        a, -sa * d, ca * d, 1.0};
        mat4_mul_cm(t, m, t);
        if (i < 7) {
            p[i][0] = t[12]; p[i][1] = t[13]; p[i][2] = t[14];
            z[i][0] = t[8]; z[i][1] = t[9]; z[i][2] = t[10];
        }
    }
    memcpy(flange, t, 16 * sizeof(double));
}

/* Zero Jacobian (col-major 6x7) of the point `pee` (base frame). */
static void fr3_jacobian(const double *q, const double *pee, double *jac) {
    double p[7][3], z[7][3], flange[16];
    fr3_frames(q, p, z, flange);
    for (int j = 0; j < 7; j++) {
        double rx = pee[0] - p[j][0], ry = pee[1] - p[j][1], rz = pee[2] - p[j][2];
        double *col = jac + 6 * j;
        col[0] = z[j][1] * rz - z[j][2] * ry;
        col[1] = z[j][2] * rx - z[j][0] * rz;
        col[2] = z[j][0] * ry - z[j][1] * rx;
        col[3] = z[j][0];
        col[4] = z[j][1];
        col[5] = z[j][2];
    }
}

/* Solve the symmetric positive definite 6x6 system A x = b in place (Cholesky). */
static int chol_solve6(double A[6][6], double *b) {
    double L[6][6] = {{0}};
    for (int i = 0; i < 6; i++) {
        for (int j = 0; j <= i; j++) {
            double s = A[i][j];
            for (int k = 0; k < j; k++) s -= L[i][k] * L[j][k];
            if (i == j) {
                if (s <= 0.0) return -1;
                L[i][i] = sqrt(s);
            } else {
                L[i][j] = s / L[j][j];
            }
        }
    }
    for (int i = 0; i < 6; i++) { /* L y = b */
        double s = b[i];
        for (int k = 0; k < i; k++) s -= L[i][k] * b[k];
        b[i] = s / L[i][i];
    }
    for (int i = 5; i >= 0; i--) { /* L^T x = y */
        double s = b[i];
        for (int k = i + 1; k < 6; k++) s -= L[k][i] * b[k];
        b[i] = s / L[i][i];
    }
    return 0;
}

/* ---- the type ----------------------------------------------------------- */

static void Kernel_release(Kernel *self) {
    for (int i = 0; i < self->held; i++) PyBuffer_Release(&self->views[i]);
    self->held = 0;
}

static void Kernel_unpublish(Kernel *self) {
    if (self->has_pub) PyBuffer_Release(&self->pub);
    self->has_pub = 0;
    Py_CLEAR(self->mass_fn);
}

static void rescue_join(Kernel *self);

static void Kernel_dealloc(Kernel *self) {
    rescue_join(self);
    Kernel_release(self);
    Kernel_unpublish(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Kernel_init(Kernel *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"q", "dq", "ee_raw", "ee", "jacobian", "tau_desired", "tau_command", "tau_last",
                             "dtau_max", "tau_max", "q_min", "q_max", "ee_offset", "margin", "stiffness",
                             "damping", "max_translation", "max_rotation", "null_damping", NULL};
    PyObject *objs[B_COUNT];
    PyObject *offset = Py_None;
    Kernel_release(self);
    self->last_time_ms = -1;
    self->r_fd = -1;
    self->margin = 0.1; self->stiffness = 100.0; self->damping = 5.0;
    self->max_translation = 0.05; self->max_rotation = 0.3; self->null_damping = 1e-3;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOOOOOOOO|Odddddd", kwlist, &objs[0], &objs[1], &objs[2],
                                     &objs[3], &objs[4], &objs[5], &objs[6], &objs[7], &objs[8], &objs[9],
                                     &objs[10], &objs[11], &offset, &self->margin, &self->stiffness,
                                     &self->damping, &self->max_translation, &self->max_rotation,
                                     &self->null_damping))
        return -1;
    for (int i = 0; i < B_COUNT; i++) {
        Py_buffer *v = &self->views[i];
        if (PyObject_GetBuffer(objs[i], v, PyBUF_WRITABLE | PyBUF_ANY_CONTIGUOUS | PyBUF_FORMAT) < 0) {
            Kernel_release(self);
            return -1;
        }
        self->held = i + 1;
        if (v->itemsize != 8 || strcmp(v->format, "d") != 0 || v->len != B_LEN[i] * 8) {
            PyErr_Format(PyExc_TypeError, "%s must be a writable contiguous float64 array of %zd values",
                         B_NAME[i], B_LEN[i]);
            Kernel_release(self);
            return -1;
        }
        self->b[i] = (double *)v->buf;
    }
    self->has_offset = offset != Py_None;
    if (self->has_offset) {
        /* row-major 4x4 from numpy -> col-major */
        double rm[16];
        if (read_seq(offset, rm, 16, "ee_offset (16 values, row-major)") < 0) {
            Kernel_release(self);
            return -1;
        }
        for (int r = 0; r < 4; r++)
            for (int c = 0; c < 4; c++) self->ee_offset[c * 4 + r] = rm[r * 4 + c];
    }
    return 0;
}

/* ---- laws on raw pointers (shared by the per-law methods and cycle) ------- */

static void law_impedance(Kernel *self, const double *qd, const double *dqd, const double *kp, const double *kd) {
    const double *q = self->b[B_Q], *dq = self->b[B_DQ];
    double *tau = self->b[B_TAU_DES];
    for (int i = 0; i < 7; i++) tau[i] = kp[i] * (qd[i] - q[i]) + kd[i] * (dqd[i] - dq[i]);
}

static void law_osc(Kernel *self, const double *Td, const double *kp, const double *kd, const double *qn,
                    const double *nkp, const double *nkd);

static void fill_pose(Kernel *self) {
    if (self->has_offset)
        mat4_mul_cm(self->b[B_EE_RAW], self->ee_offset, self->b[B_EE]);
    else if (self->b[B_EE] != self->b[B_EE_RAW])
        memcpy(self->b[B_EE], self->b[B_EE_RAW], 16 * sizeof(double));
}

/* fill(q, dq, O_T_EE): copy a state's lists into the arrays (pose corrected). */
static PyObject *Kernel_fill(Kernel *self, PyObject *const *args, Py_ssize_t nargs) {
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

/* impedance(q_desired, dq_desired, kp, kd) -> tau_desired */
static PyObject *Kernel_impedance(Kernel *self, PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer v[4];
    static const char *names[4] = {"q_desired", "dq_desired", "kp", "kd"};
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "impedance(q_desired, dq_desired, kp, kd) takes 4 arguments");
        return NULL;
    }
    for (int i = 0; i < 4; i++)
        if (get_vec(args[i], &v[i], 7, names[i]) < 0) {
            for (int k = 0; k < i; k++) PyBuffer_Release(&v[k]);
            return NULL;
        }
    law_impedance(self, v[0].buf, v[1].buf, v[2].buf, v[3].buf);
    for (int i = 0; i < 4; i++) PyBuffer_Release(&v[i]);
    Py_RETURN_NONE;
}

/* torque(tau) -> tau_desired */
static PyObject *Kernel_torque(Kernel *self, PyObject *arg) {
    Py_buffer v;
    if (get_vec(arg, &v, 7, "torque") < 0) return NULL;
    memcpy(self->b[B_TAU_DES], v.buf, 7 * sizeof(double));
    PyBuffer_Release(&v);
    Py_RETURN_NONE;
}

/* osc(ee_desired(row-major 4x4), ee_kp, ee_kd, q_null, null_kp, null_kd) -> tau_desired.
 * Computes the Jacobian first (stored in the jacobian array). */
static PyObject *Kernel_osc(Kernel *self, PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer v[6];
    static const char *names[6] = {"ee_desired", "ee_kp", "ee_kd", "q_null", "null_kp", "null_kd"};
    static const Py_ssize_t lens[6] = {16, 6, 6, 7, 7, 7};
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "osc(ee_desired, ee_kp, ee_kd, q_null, null_kp, null_kd) takes 6 arguments");
        return NULL;
    }
    for (int i = 0; i < 6; i++)
        if (get_vec(args[i], &v[i], lens[i], names[i]) < 0) {
            for (int k = 0; k < i; k++) PyBuffer_Release(&v[k]);
            return NULL;
        }
    law_osc(self, v[0].buf, v[1].buf, v[2].buf, v[3].buf, v[4].buf, v[5].buf);
    for (int i = 0; i < 6; i++) PyBuffer_Release(&v[i]);
    Py_RETURN_NONE;
}

static void law_osc(Kernel *self, const double *Td, const double *kp, const double *kd, const double *qn,
                    const double *nkp, const double *nkd) {
    const double *q = self->b[B_Q], *dq = self->b[B_DQ], *T = self->b[B_EE];
    double *J = self->b[B_JAC], *tau = self->b[B_TAU_DES];
    fr3_jacobian(q, T + 12, J);

    double e[6];
    e[0] = Td[3] - T[12];
    e[1] = Td[7] - T[13];
    e[2] = Td[11] - T[14];
    /* S = Rd R^T; e_rot = vee(skew(S)) = sin(angle) axis. R(r,c) = T[c*4+r], Rd(r,c) = Td[r*4+c]. */
    double S[3][3];
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 3; c++) {
            double s = 0.0;
            for (int k = 0; k < 3; k++) s += Td[r * 4 + k] * T[k * 4 + c];
            S[r][c] = s;
        }
    e[3] = 0.5 * (S[2][1] - S[1][2]);
    e[4] = 0.5 * (S[0][2] - S[2][0]);
    e[5] = 0.5 * (S[1][0] - S[0][1]);
    double n = sqrt(e[0] * e[0] + e[1] * e[1] + e[2] * e[2]);
    if (n > self->max_translation) for (int i = 0; i < 3; i++) e[i] *= self->max_translation / n;
    n = sqrt(e[3] * e[3] + e[4] * e[4] + e[5] * e[5]);
    if (n > self->max_rotation) for (int i = 3; i < 6; i++) e[i] *= self->max_rotation / n;

    double f[6];
    for (int r = 0; r < 6; r++) {
        double v6 = 0.0;
        for (int c = 0; c < 7; c++) v6 += J[c * 6 + r] * dq[c];
        f[r] = kp[r] * e[r] - kd[r] * v6;
    }
    double tn[7], y[6];
    for (int c = 0; c < 7; c++) {
        double s = 0.0;
        for (int r = 0; r < 6; r++) s += J[c * 6 + r] * f[r];
        tau[c] = s;
        tn[c] = nkp[c] * (qn[c] - q[c]) - nkd[c] * dq[c];
    }
    /* Null space: tau += tn - J^T (J J^T + lambda I)^-1 J tn */
    double A[6][6];
    for (int r = 0; r < 6; r++) {
        double s = 0.0;
        for (int c = 0; c < 7; c++) s += J[c * 6 + r] * tn[c];
        y[r] = s;
        for (int k = 0; k <= r; k++) {
            double a = 0.0;
            for (int c = 0; c < 7; c++) a += J[c * 6 + r] * J[c * 6 + k];
            A[r][k] = A[k][r] = a;
        }
        A[r][r] += self->null_damping;
    }
    if (chol_solve6(A, y) < 0) {
        for (int c = 0; c < 7; c++) tau[c] = NAN; /* caught by the safety filter */
        return;
    }
    for (int c = 0; c < 7; c++) {
        double s = 0.0;
        for (int r = 0; r < 6; r++) s += J[c * 6 + r] * y[r];
        tau[c] += tn[c] - s;
    }
}

/* finish(scale) -> list of 7 floats, or None if the law's output was not finite.
 * tau_desired *= scale; add the joint-limit guard; rate-limit against tau_last;
 * saturate. The command is stored in tau_command (and returned); tau_last is
 * updated by the caller after the write succeeded (update_last()). */
/* Scale, guard, rate-limit and saturate tau_desired into tau_command.
 * Returns 1 if the law's output was finite, 0 if it was not (the command is
 * then one rate-limited step towards zero). */
static int apply_safety(Kernel *self, double scale) {
    double *tau = self->b[B_TAU_DES], *cmd = self->b[B_TAU_CMD];
    const double *last = self->b[B_TAU_LAST], *dmax = self->b[B_DTAU], *tmax = self->b[B_TAU_MAX];
    const double *q = self->b[B_Q], *dq = self->b[B_DQ], *qmin = self->b[B_QMIN], *qmax = self->b[B_QMAX];
    int finite = 1;
    for (int i = 0; i < 7; i++) {
        double t = tau[i] * scale;
        double depth = self->margin - (q[i] - qmin[i]);
        if (depth > 0.0) {
            t += self->stiffness * depth - (dq[i] < 0.0 ? self->damping * dq[i] : 0.0);
        } else {
            depth = self->margin - (qmax[i] - q[i]);
            if (depth > 0.0) t -= self->stiffness * depth + (dq[i] > 0.0 ? self->damping * dq[i] : 0.0);
        }
        tau[i] = t;
        if (!isfinite(t)) finite = 0;
    }
    for (int i = 0; i < 7; i++) {
        double c;
        if (finite) {
            double d = tau[i] - last[i];
            if (d > dmax[i]) d = dmax[i];
            else if (d < -dmax[i]) d = -dmax[i];
            c = last[i] + d;
            if (c > tmax[i]) c = tmax[i];
            else if (c < -tmax[i]) c = -tmax[i];
        } else { /* one rate-limited step towards zero */
            double d = last[i];
            if (d > dmax[i]) d = dmax[i];
            else if (d < -dmax[i]) d = -dmax[i];
            c = last[i] - d;
        }
        cmd[i] = c;
    }
    return finite;
}

static PyObject *command_list(Kernel *self) {
    PyObject *out = PyList_New(7);
    if (!out) return NULL;
    for (int i = 0; i < 7; i++) {
        PyObject *f = PyFloat_FromDouble(self->b[B_TAU_CMD][i]);
        if (!f) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, f);
    }
    return out;
}

/* finish(scale) -> list of 7 floats, or None if the law's output was not finite.
 * tau_desired *= scale; add the joint-limit guard; rate-limit against tau_last;
 * saturate. The command is stored in tau_command (and returned); tau_last is
 * updated by the caller after the write succeeded (update_last()). */
static PyObject *Kernel_finish(Kernel *self, PyObject *arg) {
    double scale = PyFloat_AsDouble(arg);
    if (scale == -1.0 && PyErr_Occurred()) return NULL;
    if (!apply_safety(self, scale)) Py_RETURN_NONE;
    return command_list(self);
}

/* update_last(): tau_last = tau_command; returns True if the command is all zero. */
static PyObject *Kernel_update_last(Kernel *self, PyObject *Py_UNUSED(ignored)) {
    int zero = 1;
    for (int i = 0; i < 7; i++) {
        self->b[B_TAU_LAST][i] = self->b[B_TAU_CMD][i];
        if (self->b[B_TAU_CMD][i] != 0.0) zero = 0;
    }
    return PyBool_FromLong(zero);
}

/* flange_pose(q) -> list of 16 (col-major), for tests and tools. */
static PyObject *Kernel_flange_pose(PyObject *Py_UNUSED(mod), PyObject *arg) {
    double q[7], p[7][3], z[7][3], flange[16];
    if (read_seq(arg, q, 7, "q") < 0) return NULL;
    fr3_frames(q, p, z, flange);
    PyObject *out = PyList_New(16);
    if (!out) return NULL;
    for (int i = 0; i < 16; i++) PyList_SET_ITEM(out, i, PyFloat_FromDouble(flange[i]));
    return out;
}

/* jacobian_at(q, point) -> list of 42 (col-major), for tests and tools. */
static PyObject *Kernel_jacobian_at(PyObject *Py_UNUSED(mod), PyObject *const *args, Py_ssize_t nargs) {
    double q[7], pee[3], jac[42];
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "jacobian_at(q, point) takes 2 arguments");
        return NULL;
    }
    if (read_seq(args[0], q, 7, "q") < 0 || read_seq(args[1], pee, 3, "point") < 0) return NULL;
    fr3_jacobian(q, pee, jac);
    PyObject *out = PyList_New(42);
    if (!out) return NULL;
    for (int i = 0; i < 42; i++) PyList_SET_ITEM(out, i, PyFloat_FromDouble(jac[i]));
    return out;
}

/* ---- seqlock: one writer, any number of readers, no torn snapshots ------- */

/* Copy n doubles (src[1..n-1]) into frame[1..n-1] under the sequence word frame[0]. */
static void seqlock_store(double *frame, const double *src, Py_ssize_t n) {
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
static long long now_ns(void);

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

static int get_frame(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t n, const char *what) {
    if (PyObject_GetBuffer(obj, view, (writable ? PyBUF_WRITABLE : 0) | PyBUF_C_CONTIGUOUS) < 0) return -1;
    if (view->len < n * 8 || ((uintptr_t)view->buf & 7) != 0) {
        PyErr_Format(PyExc_ValueError, "%s must be an 8-byte aligned buffer of at least %zd bytes", what, n * 8);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* seqlock_write(frame, values): publish values[1:] into frame (values[0] ignored). */
static PyObject *k_seqlock_write(PyObject *Py_UNUSED(mod), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "seqlock_write(frame, values) takes 2 arguments");
        return NULL;
    }
    Py_buffer dst, src;
    if (get_frame(args[1], &src, 0, 1, "values") < 0) return NULL;
    Py_ssize_t n = src.len / 8;
    if (get_frame(args[0], &dst, 1, n, "frame") < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    seqlock_store((double *)dst.buf, (const double *)src.buf, n);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&src);
    Py_RETURN_NONE;
}

/* seqlock_read(frame, out, timeout=1.0) -> sequence number (even), or None
 * if no consistent copy was had within timeout seconds. The GIL is released
 * only once the first tries failed (a writer preempted mid-write). */
static PyObject *k_seqlock_read(PyObject *Py_UNUSED(mod), PyObject *const *args, Py_ssize_t nargs) {
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

/* publish_to(frame, mass_fn) / publish_to(None): after every cycle, write the
 * state, the command and the dynamics into `frame` (F_LEN float64 slots) under
 * the seqlock. mass_fn(state) returns libfranka's mass matrix (49 values). */
static PyObject *Kernel_publish_to(Kernel *self, PyObject *const *args, Py_ssize_t nargs) {
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

static PyObject *s_tau_ext, *s_tau_J;
static int read_attr(PyObject *state, PyObject *name, double *dst, Py_ssize_t n);

/* The frame's slots every cycle fills the same way, whoever served it. */
static void stage_common(Kernel *self, double time_ms, double success) {
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

static int publish(Kernel *self, PyObject *state, double time_ms, double success) {
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

/* ---- one whole cycle without returning to the interpreter ----------------- */

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static PyObject *s_readOnce, *s_writeOnce, *s_q, *s_dq, *s_O_T_EE, *s_time, *s_to_sec, *s_success,
    *s_motion_finished;

/* Read one attribute list of a state into dst (n values). */
static int read_attr(PyObject *state, PyObject *name, double *dst, Py_ssize_t n) {
    PyObject *v = PyObject_GetAttr(state, name);
    if (!v) return -1;
    int rc = read_seq(v, dst, n, PyUnicode_AsUTF8(name));
    Py_DECREF(v);
    return rc;
}

/* Book-keeping after any cycle's write (the writer holds the cycle lock). */
static void note_written(Kernel *self, long long time_ms, int finished) {
    if (self->last_time_ms >= 0 && time_ms - self->last_time_ms > 1) self->lost += time_ms - self->last_time_ms - 1;
    self->last_time_ms = time_ms;
    if (finished) atomic_store(&self->finished, 1);
    atomic_store(&self->last_write_ns, now_ns());
}

/* claim_next(): a Python thread (the guardian taking over, or the loop that
 * found its state taken) wants to serve from now on: the rescue thread ends
 * its run and steps in again only after RESCUE_AFTER without any cycle. */
static PyObject *Kernel_claim_next(Kernel *self, PyObject *Py_UNUSED(ignored)) {
    atomic_store(&self->py_claim, 1);
    Py_RETURN_NONE;
}

static PyObject *rescue_raise(Kernel *self);
static int lock_try(Kernel *self);
static void lock_release(Kernel *self);
static int state_waiting(int fd, int timeout_ms);

/* cycle(ctl, Torques, mode, scale, finish_if_zero, *params)
 *   mode 0: params = (q_desired, dq_desired, kp, kd)
 *   mode 1: params = (ee_desired, ee_kp, ee_kd, q_null, null_kp, null_kd)
 *   mode 2: params = (torque,)
 * Reads a state, computes the law and the safety filter, writes the command,
 * all in C: the interpreter's eval loop does not run between readOnce and
 * writeOnce, so no other thread can take the GIL in between. A law whose
 * parameters are unusable, or whose output is not finite, yields a step
 * towards zero. Returns (state, time_ms, success_rate, t_call_ns, t_read_ns,
 * t_write_ns, flags) with flags bit 0: output was not finite, bit 1: the
 * command was zero and written with motion_finished. */
static PyObject *Kernel_cycle(Kernel *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 5) {
        PyErr_SetString(PyExc_TypeError, "cycle(ctl, Torques, mode, scale, finish_if_zero, *params)");
        return NULL;
    }
    PyObject *ctl = args[0], *torques_type = args[1];
    long mode = PyLong_AsLong(args[2]);
    double scale = PyFloat_AsDouble(args[3]);
    int finish_if_zero = PyObject_IsTrue(args[4]);
    if (PyErr_Occurred()) return NULL;
    static const Py_ssize_t counts[3] = {4, 6, 1};
    static const Py_ssize_t lens[3][6] = {{7, 7, 7, 7, 0, 0}, {16, 6, 6, 7, 7, 7}, {7, 0, 0, 0, 0, 0}};
    if (mode < 0 || mode > 2 || nargs - 5 != counts[mode]) {
        PyErr_SetString(PyExc_ValueError, "cycle: bad mode or parameter count");
        return NULL;
    }
    if (atomic_load(&self->r_error_kind)) return rescue_raise(self);
    Py_buffer v[6];
    Py_ssize_t held = 0;
    for (; held < counts[mode]; held++)
        if (get_vec(args[5 + held], &v[held], lens[mode][held], "cycle parameter") < 0) goto fail_buffers;

    /* The cycle lock is held only inside this call, where no other Python
     * thread can run: a thread holding it while it waits for the GIL would
     * lock the rescue thread out. A rescue cycle holds it for microseconds. */
    while (!lock_try(self)) sched_yield();
    if (atomic_load(&self->rescued_last) && self->r_fd >= 0 && !state_waiting(self->r_fd, 0)) {
        /* The rescue thread served the state that woke us: nothing to read. */
        lock_release(self);
        for (Py_ssize_t i = 0; i < held; i++) PyBuffer_Release(&v[i]);
        Py_RETURN_NONE;
    }
    {   /* kept for the rescue thread, which has no access to Python objects */
        double *dst = self->last_params;
        for (Py_ssize_t i = 0; i < held; i++) {
            memcpy(dst, v[i].buf, (size_t)v[i].len);
            dst += v[i].len / 8;
        }
        self->last_mode = (int)mode;
        self->last_scale = scale;
    }
    long long t_call = now_ns();
    PyObject *pair = PyObject_CallMethodNoArgs(ctl, s_readOnce);
    if (!pair) goto fail_locked;
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

    if (mode == 0)
        law_impedance(self, v[0].buf, v[1].buf, v[2].buf, v[3].buf);
    else if (mode == 1)
        law_osc(self, v[0].buf, v[1].buf, v[2].buf, v[3].buf, v[4].buf, v[5].buf);
    else
        memcpy(self->b[B_TAU_DES], v[0].buf, 7 * sizeof(double));
    for (Py_ssize_t i = 0; i < held; i++) PyBuffer_Release(&v[i]);
    held = 0;
    int finite = apply_safety(self, scale);
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
    if (!ok) goto fail_state;
    Py_DECREF(ok);
    memcpy(self->b[B_TAU_LAST], self->b[B_TAU_CMD], 7 * sizeof(double));
    long long time_ms = llround(sec * 1000.0);
    note_written(self, time_ms, finished);
    self->last_success = success;
    atomic_store(&self->rescued_last, 0);
    atomic_store(&self->py_claim, 0);
    if (self->has_pub && publish(self, state, (double)time_ms, success) < 0) goto fail_state;
    lock_release(self);
    int flags = (finite ? 0 : 1) | (finished ? 2 : 0);
    return Py_BuildValue("(NLdLLLi)", state, time_ms, success, t_call, t_read, t_write, flags);

fail_state:
    Py_DECREF(state);
fail_locked:
    lock_release(self);
fail_buffers:
    for (Py_ssize_t i = 0; i < held; i++) PyBuffer_Release(&v[i]);
    return NULL;
}

/* ---- the cycle lock ------------------------------------------------------
 * Taken by Kernel.cycle for the duration of the call (where no other Python
 * thread can run) and by the rescue thread around its cycle; never held while
 * waiting for the GIL. (The loop and the guardian also share a Python lock
 * around their bookkeeping; the rescue thread never takes that one.) */

static int lock_try(Kernel *self) {
    int expected = 0;
    return atomic_compare_exchange_strong(&self->lock_word, &expected, 1);
}

static void lock_release(Kernel *self) { atomic_store(&self->lock_word, 0); }

/* ---- the rescue thread -----------------------------------------------------
 * A plain pthread, real-time above the loop and the guardian, that never
 * takes the GIL. While Python serves the robot it only wakes now and then to
 * see that cycles are being written. If none has been written for r_after_ns
 * and a state has then waited r_grace_ns unserved, it takes the cycle lock
 * and serves that state itself: libfranka's readOnce, the law with the last
 * targets and gains the loop used (impedance with zero target velocity, so a
 * trajectory pauses rather than runs on), the same safety filter, writeOnce.
 * It keeps serving each state that waits r_grace_ns unserved until a cycle
 * written by someone else shows that Python is back. It never writes
 * motion_finished; a libfranka error ends its serving and is raised by the
 * next cycle Python runs. */

enum { R_Q, R_DQ, R_EE, R_TAU_J, R_TAU_EXT, R_SUCCESS, R_TIME, R_TQ_TAU, R_TQ_FINISHED, R_COUNT };

static void sleep_until_ns(long long t) {
    struct timespec ts = {(time_t)(t / 1000000000LL), (long)(t % 1000000000LL)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static int state_waiting(int fd, int timeout_ms) {
    struct pollfd pfd = {fd, POLLIN, 0};
    return poll(&pfd, 1, timeout_ms) > 0 && (pfd.revents & POLLIN);
}

/* One cycle on the C++ objects; the caller holds the cycle lock. 0, or -1
 * after storing libfranka's error. */
static int rescue_cycle(Kernel *self) {
    int kind = afd_read(self->r_read, self->r_ctl, self->r_state, self->r_error, sizeof self->r_error);
    if (kind) {
        atomic_store(&self->r_error_kind, kind);
        return -1;
    }
    /* seq goes odd below, even again once the arrays are whole */
    const unsigned char *st = self->r_state;
    const long *off = self->r_off;
    atomic_fetch_add(&self->seq, 1);
    memcpy(self->b[B_Q], st + off[R_Q], 7 * sizeof(double));
    memcpy(self->b[B_DQ], st + off[R_DQ], 7 * sizeof(double));
    memcpy(self->b[B_EE_RAW], st + off[R_EE], 16 * sizeof(double));
    fill_pose(self);
    double success;
    uint64_t time_ms;
    memcpy(&success, st + off[R_SUCCESS], sizeof success);
    memcpy(&time_ms, st + off[R_TIME], sizeof time_ms);
    const double *p = self->last_params;
    if (self->last_mode == 0) {
        static const double still[7] = {0};
        law_impedance(self, p, still, p + 14, p + 21);
    } else if (self->last_mode == 1) {
        law_osc(self, p, p + 16, p + 22, p + 28, p + 35, p + 42);
    } else {
        memcpy(self->b[B_TAU_DES], p, 7 * sizeof(double));
    }
    apply_safety(self, self->last_scale);
    memcpy(self->r_tq + off[R_TQ_TAU], self->b[B_TAU_CMD], 7 * sizeof(double));
    self->r_tq[off[R_TQ_FINISHED]] = 0;
    kind = afd_write(self->r_write, self->r_ctl, self->r_tq, self->r_error, sizeof self->r_error);
    if (kind) {
        atomic_fetch_add(&self->seq, 1);
        atomic_store(&self->r_error_kind, kind);
        return -1;
    }
    memcpy(self->b[B_TAU_LAST], self->b[B_TAU_CMD], 7 * sizeof(double));
    note_written(self, (long long)time_ms, 0);
    self->last_success = success;
    atomic_store(&self->rescued_last, 1);
    atomic_fetch_add(&self->seq, 1);
    atomic_fetch_add(&self->rescued, 1);
    if (self->has_pub) {
        stage_common(self, (double)time_ms, success);
        memcpy(self->stage + F_TAU_EXT, st + off[R_TAU_EXT], 7 * sizeof(double));
        memcpy(self->stage + F_TAU_J, st + off[R_TAU_J], 7 * sizeof(double));
        seqlock_store((double *)self->pub.buf, self->stage, F_LEN);
    }
    return 0;
}

static void *rescue_main(void *arg) {
    Kernel *self = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals belong to Python's main thread */
    if (self->r_priority > 0) {
        struct sched_param sp = {.sched_priority = self->r_priority};
        pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp); /* best effort */
    }
    int active = 0;
    long long mine = 0, episode_start = 0;
    while (atomic_load(&self->r_run)) {
        if (atomic_load(&self->finished) || atomic_load(&self->r_error_kind)) {
            sleep_until_ns(now_ns() + 1000000);
            continue;
        }
        long long last = atomic_load(&self->last_write_ns);
        if (active && (last != mine || atomic_load(&self->py_claim))) { /* Python is back (or coming) */
            active = 0;
            long long took = now_ns() - episode_start;
            if (took > atomic_load(&self->r_longest_ns)) atomic_store(&self->r_longest_ns, took);
        }
        if (!active) {
            long long wake = last + self->r_after_ns, now = now_ns();
            if (now < wake) {
                sleep_until_ns(wake < now + 10000000 ? wake : now + 10000000);
                continue;
            }
        }
        if (!state_waiting(self->r_fd, 5)) continue;
        sleep_until_ns(now_ns() + self->r_grace_ns);
        if (!atomic_load(&self->r_run) || atomic_load(&self->last_write_ns) != last || !state_waiting(self->r_fd, 0))
            continue; /* served meanwhile (or being served) */
        if (!lock_try(self)) continue;
        if (atomic_load(&self->last_write_ns) == last && !atomic_load(&self->finished) &&
            !atomic_load(&self->r_error_kind) && state_waiting(self->r_fd, 0) && rescue_cycle(self) == 0) {
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

static void rescue_join(Kernel *self) {
    if (self->r_started) {
        atomic_store(&self->r_run, 0);
        pthread_join(self->r_thread, NULL);
        self->r_started = 0;
    }
    Py_CLEAR(self->r_ctl_obj);
    Py_CLEAR(self->r_tq_obj);
    for (int i = 0; i < 3; i++) Py_CLEAR(self->r_exc[i]);
    PyMem_Free(self->r_state);
    self->r_state = NULL;
    self->r_fd = -1;
}

/* The C++ object a pybind11 instance holds (its simple-layout value pointer). */
static void *cpp_value(PyObject *obj) {
    if ((size_t)Py_TYPE(obj)->tp_basicsize < sizeof(PyObject) + sizeof(void *)) return NULL;
    return *(void **)((char *)obj + sizeof(PyObject));
}

/* peek_value(obj, nbytes) -> bytes: up to nbytes of the C++ object behind a
 * pybind11 instance, for measuring field offsets (fewer where the memory
 * past the object's end is not mapped). */
static PyObject *k_peek_value(PyObject *Py_UNUSED(mod), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "peek_value(obj, nbytes) takes 2 arguments");
        return NULL;
    }
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n <= 0 || n > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError, "nbytes must be in 1..1048576");
        return NULL;
    }
    void *src = cpp_value(args[0]);
    if (!src) {
        PyErr_SetString(PyExc_TypeError, "not a pybind11 instance with a value pointer");
        return NULL;
    }
#ifdef __linux__
    int fds[2];
    if (pipe(fds) < 0) return PyErr_SetFromErrno(PyExc_OSError);
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    Py_ssize_t got = 0;
    while (out && got < n) {
        /* Page by page through a pipe: write() from memory that is not
         * mapped fails with EFAULT instead of faulting, so a read that runs
         * past the object's end into unmapped memory stops there. One page
         * fits the pipe's buffer. */
        size_t chunk = 4096 - ((uintptr_t)((char *)src + got) & 4095);
        if ((Py_ssize_t)chunk > n - got) chunk = (size_t)(n - got);
        ssize_t r = write(fds[1], (char *)src + got, chunk);
        if (r <= 0 || read(fds[0], PyBytes_AS_STRING(out) + got, (size_t)r) != r) break;
        got += r;
    }
    close(fds[0]);
    close(fds[1]);
    if (!out) return NULL;
    if (got < n && _PyBytes_Resize(&out, got) < 0) return NULL;
    return out;
#else
    PyErr_SetString(PyExc_NotImplementedError, "peek_value is Linux-only");
    return NULL;
#endif
}

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
 * Checks the control object against libfranka and starts the thread; raises
 * RuntimeError (the reason) if this libfranka cannot be driven directly. */
static PyObject *Kernel_rescue_start(Kernel *self, PyObject *args) {
    PyObject *ctl, *tq, *offsets, *exc;
    int fd, priority;
    Py_ssize_t state_size;
    long long after_ns, grace_ns;
    if (!PyArg_ParseTuple(args, "OOiOnLLiO", &ctl, &tq, &fd, &offsets, &state_size, &after_ns, &grace_ns,
                          &priority, &exc))
        return NULL;
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
    if (!strstr(Py_TYPE(ctl)->tp_name, "ActiveControl") || !strstr(Py_TYPE(tq)->tp_name, "Torques")) {
        PyErr_SetString(PyExc_TypeError, "rescue_start needs pylibfranka's ActiveControlBase and Torques");
        return NULL;
    }
    void *c = cpp_value(ctl), *t = cpp_value(tq), *rd = NULL, *wr = NULL;
    char err[256];
    if (!c || !t || afd_bind(c, &rd, &wr, err, sizeof err) < 0) {
        PyErr_Format(PyExc_RuntimeError, "cannot drive libfranka directly: %s", c && t ? err : "not a pybind11 object");
        return NULL;
    }
    /* Twice the measured size and a page more: the returned pair only adds a Duration. */
    self->r_state = PyMem_Calloc(1, (size_t)state_size * 2 + 4096);
    if (!self->r_state) return PyErr_NoMemory();
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
    atomic_store(&self->r_run, 1);
    int rc = pthread_create(&self->r_thread, NULL, rescue_main, self);
    if (rc != 0) {
        rescue_join(self);
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->r_started = 1;
    Py_RETURN_NONE;
}

/* rescue_stop(): stop and join the rescue thread (GIL released meanwhile) and
 * drop its references. Idempotent. */
static PyObject *Kernel_rescue_stop(Kernel *self, PyObject *Py_UNUSED(ignored)) {
    if (self->r_started) {
        atomic_store(&self->r_run, 0);
        Py_BEGIN_ALLOW_THREADS
        pthread_join(self->r_thread, NULL);
        Py_END_ALLOW_THREADS
        self->r_started = 0;
    }
    rescue_join(self);
    Py_RETURN_NONE;
}

/* A libfranka error met by the rescue thread, raised as pylibfranka's own type. */
static PyObject *rescue_raise(Kernel *self) {
    int kind = atomic_load(&self->r_error_kind);
    PyObject *type = kind >= 1 && kind <= 3 ? self->r_exc[kind - 1] : NULL;
    PyErr_SetString(type ? type : PyExc_RuntimeError, self->r_error);
    return NULL;
}

/* new_session(): before a session opens: clear the counters and flags. */
static PyObject *Kernel_new_session(Kernel *self, PyObject *Py_UNUSED(ignored)) {
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
    self->last_success = 0.0;
    self->last_mode = 2;
    self->last_scale = 0.0;
    memset(self->last_params, 0, sizeof self->last_params);
    Py_RETURN_NONE;
}

/* seq() -> the rescue thread's write sequence (odd while it writes the arrays). */
static PyObject *Kernel_seq(Kernel *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromUnsignedLongLong(atomic_load(&self->seq));
}

/* read_anyway(): the next Kernel.cycle reads even if no state is waiting
 * (the loop heard nothing for long: libfranka's own timeout then reports a
 * lost connection), although the rescue thread wrote the last cycle. */
static PyObject *Kernel_read_anyway(Kernel *self, PyObject *Py_UNUSED(ignored)) {
    atomic_store(&self->rescued_last, 0);
    Py_RETURN_NONE;
}

/* counters() -> (lost, rescued, rescue_episodes, longest_rescue_ns, rescuing,
 * rescue_error): rescue_error is the kind of libfranka error the rescue
 * thread met this session (0 none, 1 ControlException, 2 NetworkException,
 * 3 other). */
static PyObject *Kernel_counters(Kernel *self, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("(LLLLii)", self->lost, (long long)atomic_load(&self->rescued),
                         (long long)atomic_load(&self->r_episodes), (long long)atomic_load(&self->r_longest_ns),
                         self->r_started, atomic_load(&self->r_error_kind));
}

static PyMethodDef Kernel_methods[] = {
    {"cycle", (PyCFunction)(void (*)(void))Kernel_cycle, METH_FASTCALL,
     "cycle(ctl, Torques, mode, scale, finish_if_zero, *params) -> (state, time_ms, success, t_call, t_read, "
     "t_write, flags)"},
    {"fill", (PyCFunction)(void (*)(void))Kernel_fill, METH_FASTCALL, "fill(q, dq, O_T_EE)"},
    {"impedance", (PyCFunction)(void (*)(void))Kernel_impedance, METH_FASTCALL,
     "impedance(q_desired, dq_desired, kp, kd)"},
    {"osc", (PyCFunction)(void (*)(void))Kernel_osc, METH_FASTCALL,
     "osc(ee_desired, ee_kp, ee_kd, q_null, null_kp, null_kd)"},
    {"torque", (PyCFunction)Kernel_torque, METH_O, "torque(tau)"},
    {"finish", (PyCFunction)Kernel_finish, METH_O, "finish(scale) -> command list or None"},
    {"update_last", (PyCFunction)Kernel_update_last, METH_NOARGS, "update_last() -> command is zero"},
    {"publish_to", (PyCFunction)(void (*)(void))Kernel_publish_to, METH_FASTCALL,
     "publish_to(frame, mass_fn=None): write every cycle's state into a seqlocked frame (None: stop)"},
    {"rescue_start", (PyCFunction)Kernel_rescue_start, METH_VARARGS,
     "rescue_start(ctl, torques, fd, offsets, state_size, after_ns, grace_ns, priority, exceptions)"},
    {"rescue_stop", (PyCFunction)Kernel_rescue_stop, METH_NOARGS, "stop and join the rescue thread"},
    {"new_session", (PyCFunction)Kernel_new_session, METH_NOARGS, "clear the per-session counters"},
    {"seq", (PyCFunction)Kernel_seq, METH_NOARGS, "the rescue thread's write sequence (odd while writing)"},
    {"read_anyway", (PyCFunction)Kernel_read_anyway, METH_NOARGS,
     "the next cycle reads even if no state is waiting (after a long silence)"},
    {"claim_next", (PyCFunction)Kernel_claim_next, METH_NOARGS, "a Python thread serves from now on: the rescue thread yields"},
    {"counters", (PyCFunction)Kernel_counters, METH_NOARGS,
     "counters() -> (lost, rescued, rescue_episodes, longest_rescue_ns, rescue_running, rescue_error)"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Kernel_members[] = {
    {"margin", T_DOUBLE, offsetof(Kernel, margin), 0, "joint-limit guard band (rad)"},
    {"stiffness", T_DOUBLE, offsetof(Kernel, stiffness), 0, "guard stiffness (N m/rad)"},
    {"damping", T_DOUBLE, offsetof(Kernel, damping), 0, "guard damping (N m s/rad)"},
    {"max_translation", T_DOUBLE, offsetof(Kernel, max_translation), 0, "OSC error cap (m)"},
    {"max_rotation", T_DOUBLE, offsetof(Kernel, max_rotation), 0, "OSC error cap (rad)"},
    {"time_ms", T_LONGLONG, offsetof(Kernel, last_time_ms), READONLY,
     "robot time (ms) of the last cycle written, by whoever wrote it (-1 before any)"},
    {"success_rate", T_DOUBLE, offsetof(Kernel, last_success), READONLY,
     "control_command_success_rate of the last cycle written"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject KernelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiofranka._kernel.Kernel",
    .tp_basicsize = sizeof(Kernel),
    .tp_dealloc = (destructor)Kernel_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Per-cycle control arithmetic over preallocated float64 arrays.",
    .tp_methods = Kernel_methods,
    .tp_members = Kernel_members,
    .tp_init = (initproc)Kernel_init,
    .tp_new = PyType_GenericNew,
};

/* ---- timerfd: sub-millisecond wakeups for the event loop (Linux) -------- */

static PyObject *k_timerfd_create(PyObject *Py_UNUSED(mod), PyObject *Py_UNUSED(ignored)) {
#ifdef __linux__
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (fd < 0) return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(fd);
#else
    PyErr_SetString(PyExc_NotImplementedError, "timerfd is Linux-only");
    return NULL;
#endif
}

/* timerfd_arm(fd, deadline_ns): one-shot at an absolute CLOCK_MONOTONIC time
 * (time.monotonic_ns()); a deadline in the past fires at once. */
static PyObject *k_timerfd_arm(PyObject *Py_UNUSED(mod), PyObject *const *args, Py_ssize_t nargs) {
#ifdef __linux__
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "timerfd_arm(fd, deadline_ns) takes 2 arguments");
        return NULL;
    }
    long fd = PyLong_AsLong(args[0]);
    long long ns = PyLong_AsLongLong(args[1]);
    if (PyErr_Occurred()) return NULL;
    if (ns <= 0) ns = 1; /* zero would disarm */
    struct itimerspec spec = {{0, 0}, {(time_t)(ns / 1000000000LL), (long)(ns % 1000000000LL)}};
    if (timerfd_settime((int)fd, TFD_TIMER_ABSTIME, &spec, NULL) < 0) return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
#else
    PyErr_SetString(PyExc_NotImplementedError, "timerfd is Linux-only");
    return NULL;
#endif
}

/* timerfd_clear(fd) -> expirations read (0 if none pending). */
static PyObject *k_timerfd_clear(PyObject *Py_UNUSED(mod), PyObject *arg) {
    long fd = PyLong_AsLong(arg);
    if (PyErr_Occurred()) return NULL;
    unsigned long long count = 0;
    ssize_t got = read((int)fd, &count, sizeof count);
    if (got < 0 && errno != EAGAIN) return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromUnsignedLongLong(got < 0 ? 0 : count);
}

/* spin_until(deadline) -> now: busy-wait on CLOCK_MONOTONIC (time.perf_counter's
 * clock on Linux) until `deadline` seconds, with the GIL released, so that a
 * pacing spin does not keep other threads from the interpreter. */
static PyObject *k_spin_until(PyObject *Py_UNUSED(mod), PyObject *arg) {
    double deadline = PyFloat_AsDouble(arg);
    if (deadline == -1.0 && PyErr_Occurred()) return NULL;
    double now;
    Py_BEGIN_ALLOW_THREADS
    do {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        now = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
    } while (now < deadline);
    Py_END_ALLOW_THREADS
    return PyFloat_FromDouble(now);
}

/* wake_probe(out, start_ns, period_ns) -> None: sleep to the absolute
 * CLOCK_MONOTONIC deadlines start_ns + (i+1)*period_ns, one per slot of `out`
 * (a writable int64 buffer), and store in each slot how late that wake-up was
 * (ns). The GIL is released throughout; the calling thread's scheduling
 * policy applies. It measures what the machine does to a periodic sleeper,
 * with no Python in the way: the floor under any loop run here. */
static PyObject *k_wake_probe(PyObject *Py_UNUSED(mod), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "wake_probe(out, start_ns, period_ns) takes 3 arguments");
        return NULL;
    }
    long long start = PyLong_AsLongLong(args[1]);
    long long period = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred()) return NULL;
    if (period <= 0) {
        PyErr_SetString(PyExc_ValueError, "period_ns must be positive");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (view.itemsize != 8 || !view.format || (strcmp(view.format, "q") && strcmp(view.format, "l") &&
                                               strcmp(view.format, "<q") && strcmp(view.format, "<l"))) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_TypeError, "wake_probe needs a writable contiguous int64 buffer");
        return NULL;
    }
#ifndef __linux__
    PyBuffer_Release(&view);
    PyErr_SetString(PyExc_NotImplementedError, "wake_probe is Linux-only");
    return NULL;
#else
    long long *out = (long long *)view.buf;
    Py_ssize_t n = view.len / 8;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        long long due = start + (long long)(i + 1) * period;
        struct timespec ts = {(time_t)(due / 1000000000LL), (long)(due % 1000000000LL)};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
        }
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        out[i] = (long long)now.tv_sec * 1000000000LL + now.tv_nsec - due;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
#endif
}

static PyMethodDef module_methods[] = {
    {"timerfd_create", (PyCFunction)k_timerfd_create, METH_NOARGS, "a non-blocking CLOCK_MONOTONIC timerfd"},
    {"timerfd_arm", (PyCFunction)(void (*)(void))k_timerfd_arm, METH_FASTCALL,
     "arm a timerfd for an absolute monotonic deadline in ns"},
    {"timerfd_clear", (PyCFunction)k_timerfd_clear, METH_O, "consume a timerfd's expirations"},
    {"spin_until", (PyCFunction)k_spin_until, METH_O,
     "busy-wait until a time.perf_counter() deadline with the GIL released; returns the time"},
    {"wake_probe", (PyCFunction)(void (*)(void))k_wake_probe, METH_FASTCALL,
     "wake_probe(out, start_ns, period_ns): sleep to each period's deadline, GIL released; out[i] = lateness (ns)"},
    {"seqlock_write", (PyCFunction)(void (*)(void))k_seqlock_write, METH_FASTCALL,
     "seqlock_write(frame, values): publish values[1:] under the sequence word frame[0]"},
    {"seqlock_read", (PyCFunction)(void (*)(void))k_seqlock_read, METH_FASTCALL,
     "seqlock_read(frame, out, timeout=1.0) -> even sequence number, or None if never consistent in time"},
    {"peek_value", (PyCFunction)(void (*)(void))k_peek_value, METH_FASTCALL,
     "peek_value(obj, nbytes) -> bytes of the C++ object behind a pybind11 instance"},
    {"flange_pose", (PyCFunction)Kernel_flange_pose, METH_O, "FR3 flange pose (16 values, column-major)"},
    {"jacobian_at", (PyCFunction)(void (*)(void))Kernel_jacobian_at, METH_FASTCALL,
     "FR3 zero Jacobian of a base-frame point (42 values, column-major)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef kernel_module = {
    PyModuleDef_HEAD_INIT, "aiofranka._kernel", "Per-cycle control arithmetic (see _kernel.c).", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__kernel(void) {
    if (PyType_Ready(&KernelType) < 0) return NULL;
    if (!(s_readOnce = PyUnicode_InternFromString("readOnce")) ||
        !(s_writeOnce = PyUnicode_InternFromString("writeOnce")) || !(s_q = PyUnicode_InternFromString("q")) ||
        !(s_dq = PyUnicode_InternFromString("dq")) || !(s_O_T_EE = PyUnicode_InternFromString("O_T_EE")) ||
        !(s_time = PyUnicode_InternFromString("time")) || !(s_to_sec = PyUnicode_InternFromString("to_sec")) ||
        !(s_success = PyUnicode_InternFromString("control_command_success_rate")) ||
        !(s_motion_finished = PyUnicode_InternFromString("motion_finished")) ||
        !(s_tau_ext = PyUnicode_InternFromString("tau_ext_hat_filtered")) ||
        !(s_tau_J = PyUnicode_InternFromString("tau_J")))
        return NULL;
    PyObject *m = PyModule_Create(&kernel_module);
    if (!m) return NULL;
    Py_INCREF(&KernelType);
    if (PyModule_AddObject(m, "Kernel", (PyObject *)&KernelType) < 0) {
        Py_DECREF(&KernelType);
        Py_DECREF(m);
        return NULL;
    }
    PyObject *layout = Py_BuildValue("{s(ii)s(ii)s(ii)s(ii)s(ii)s(ii)s(ii)s(ii)s(ii)s(ii)s(ii)s(ii)}",
        "seq", F_SEQ, 1, "time_ms", F_TIME, 1, "success_rate", F_SUCCESS, 1, "count", F_COUNT, 1,
        "q", F_Q, 7, "dq", F_DQ, 7, "ee", F_EE, 16, "jacobian", F_JAC, 42, "mass", F_MASS, 49,
        "tau_command", F_TAU_CMD, 7, "tau_ext", F_TAU_EXT, 7, "tau_measured", F_TAU_J, 7);
    if (!layout || PyModule_AddObject(m, "FRAME_LAYOUT", layout) < 0 ||
        PyModule_AddIntConstant(m, "FRAME_LEN", F_LEN) < 0) {
        Py_XDECREF(layout);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
