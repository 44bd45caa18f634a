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
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <string.h>

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

typedef struct {
    PyObject_HEAD
    Py_buffer views[B_COUNT];
    int held;
    double *b[B_COUNT];
    double ee_offset[16]; /* column-major; identity when unused */
    int has_offset;
    double margin, stiffness, damping;
    double max_translation, max_rotation, null_damping;
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

static void Kernel_dealloc(Kernel *self) {
    Kernel_release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Kernel_init(Kernel *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"q", "dq", "ee_raw", "ee", "jacobian", "tau_desired", "tau_command", "tau_last",
                             "dtau_max", "tau_max", "q_min", "q_max", "ee_offset", "margin", "stiffness",
                             "damping", "max_translation", "max_rotation", "null_damping", NULL};
    PyObject *objs[B_COUNT];
    PyObject *offset = Py_None;
    Kernel_release(self);
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

/* fill(q, dq, O_T_EE): copy a state's lists into the arrays (pose corrected). */
static PyObject *Kernel_fill(Kernel *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "fill(q, dq, O_T_EE) takes 3 arguments");
        return NULL;
    }
    if (read_seq(args[0], self->b[B_Q], 7, "q") < 0 || read_seq(args[1], self->b[B_DQ], 7, "dq") < 0 ||
        read_seq(args[2], self->b[B_EE_RAW], 16, "O_T_EE") < 0)
        return NULL;
    if (self->has_offset)
        mat4_mul_cm(self->b[B_EE_RAW], self->ee_offset, self->b[B_EE]);
    else if (self->b[B_EE] != self->b[B_EE_RAW])
        memcpy(self->b[B_EE], self->b[B_EE_RAW], 16 * sizeof(double));
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
    const double *qd = v[0].buf, *dqd = v[1].buf, *kp = v[2].buf, *kd = v[3].buf;
    const double *q = self->b[B_Q], *dq = self->b[B_DQ];
    double *tau = self->b[B_TAU_DES];
    for (int i = 0; i < 7; i++) tau[i] = kp[i] * (qd[i] - q[i]) + kd[i] * (dqd[i] - dq[i]);
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

/* jacobian(): fill the Jacobian array at the current pose's origin. */
static PyObject *Kernel_jacobian(Kernel *self, PyObject *Py_UNUSED(ignored)) {
    const double *ee = self->b[B_EE];
    fr3_jacobian(self->b[B_Q], ee + 12, self->b[B_JAC]);
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
    const double *Td = v[0].buf, *kp = v[1].buf, *kd = v[2].buf, *qn = v[3].buf, *nkp = v[4].buf, *nkd = v[5].buf;
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
    for (int i = 0; i < 6; i++) PyBuffer_Release(&v[i]);
    if (chol_solve6(A, y) < 0) {
        for (int c = 0; c < 7; c++) tau[c] = NAN; /* caught by the safety filter */
        Py_RETURN_NONE;
    }
    for (int c = 0; c < 7; c++) {
        double s = 0.0;
        for (int r = 0; r < 6; r++) s += J[c * 6 + r] * y[r];
        tau[c] += tn[c] - s;
    }
    Py_RETURN_NONE;
}

/* finish(scale) -> list of 7 floats, or None if the law's output was not finite.
 * tau_desired *= scale; add the joint-limit guard; rate-limit against tau_last;
 * saturate. The command is stored in tau_command (and returned); tau_last is
 * updated by the caller after the write succeeded (update_last()). */
static PyObject *Kernel_finish(Kernel *self, PyObject *arg) {
    double scale = PyFloat_AsDouble(arg);
    if (scale == -1.0 && PyErr_Occurred()) return NULL;
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
    PyObject *out = PyList_New(7);
    if (!out) return NULL;
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
        PyObject *f = PyFloat_FromDouble(c);
        if (!f) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, f);
    }
    if (!finite) {
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    return out;
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

static PyMethodDef Kernel_methods[] = {
    {"fill", (PyCFunction)(void (*)(void))Kernel_fill, METH_FASTCALL, "fill(q, dq, O_T_EE)"},
    {"impedance", (PyCFunction)(void (*)(void))Kernel_impedance, METH_FASTCALL,
     "impedance(q_desired, dq_desired, kp, kd)"},
    {"osc", (PyCFunction)(void (*)(void))Kernel_osc, METH_FASTCALL,
     "osc(ee_desired, ee_kp, ee_kd, q_null, null_kp, null_kd)"},
    {"torque", (PyCFunction)Kernel_torque, METH_O, "torque(tau)"},
    {"jacobian", (PyCFunction)Kernel_jacobian, METH_NOARGS, "jacobian(): fill the Jacobian array"},
    {"finish", (PyCFunction)Kernel_finish, METH_O, "finish(scale) -> command list or None"},
    {"update_last", (PyCFunction)Kernel_update_last, METH_NOARGS, "update_last() -> command is zero"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Kernel_members[] = {
    {"margin", T_DOUBLE, offsetof(Kernel, margin), 0, "joint-limit guard band (rad)"},
    {"stiffness", T_DOUBLE, offsetof(Kernel, stiffness), 0, "guard stiffness (N m/rad)"},
    {"damping", T_DOUBLE, offsetof(Kernel, damping), 0, "guard damping (N m s/rad)"},
    {"max_translation", T_DOUBLE, offsetof(Kernel, max_translation), 0, "OSC error cap (m)"},
    {"max_rotation", T_DOUBLE, offsetof(Kernel, max_rotation), 0, "OSC error cap (rad)"},
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

static PyMethodDef module_methods[] = {
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
    PyObject *m = PyModule_Create(&kernel_module);
    if (!m) return NULL;
    Py_INCREF(&KernelType);
    if (PyModule_AddObject(m, "Kernel", (PyObject *)&KernelType) < 0) {
        Py_DECREF(&KernelType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
