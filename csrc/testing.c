/* Entry points only the tests use, all named _test_*: each law on its own
 * (checked against the numpy reference in aiofranka/control.py), the FR3
 * kinematics, and the seqlock's writer. The loop never calls them. */
#include "kernel.h"

#include <string.h>

/* Buffers of the given lengths from args, or -1 (all released). */
static int get_vecs(PyObject *const *args, Py_buffer *v, int count, const Py_ssize_t *lens,
                    const char *const *names) {
    for (int i = 0; i < count; i++)
        if (get_vec(args[i], &v[i], lens[i], names[i]) < 0) {
            for (int k = 0; k < i; k++) PyBuffer_Release(&v[k]);
            return -1;
        }
    return 0;
}

/* Kernel._test_impedance(q_desired, dq_desired, kp, kd) -> tau_desired */
PyObject *Kernel_test_impedance(Kernel *self, PyObject *const *args, Py_ssize_t nargs) {
    static const char *const names[4] = {"q_desired", "dq_desired", "kp", "kd"};
    static const Py_ssize_t lens[4] = {7, 7, 7, 7};
    Py_buffer v[4];
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "_test_impedance(q_desired, dq_desired, kp, kd) takes 4 arguments");
        return NULL;
    }
    if (get_vecs(args, v, 4, lens, names) < 0) return NULL;
    law_impedance(self->b[B_Q], self->b[B_DQ], v[0].buf, v[1].buf, v[2].buf, v[3].buf, self->b[B_TAU_DES]);
    for (int i = 0; i < 4; i++) PyBuffer_Release(&v[i]);
    Py_RETURN_NONE;
}

/* Kernel._test_osc(ee_desired(row-major 4x4), ee_kp, ee_kd, q_null, null_kp,
 * null_kd) -> tau_desired, and the Jacobian into the jacobian array. */
PyObject *Kernel_test_osc(Kernel *self, PyObject *const *args, Py_ssize_t nargs) {
    static const char *const names[6] = {"ee_desired", "ee_kp", "ee_kd", "q_null", "null_kp", "null_kd"};
    static const Py_ssize_t lens[6] = {16, 6, 6, 7, 7, 7};
    Py_buffer v[6];
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "_test_osc(ee_desired, ee_kp, ee_kd, q_null, null_kp, null_kd) takes 6 arguments");
        return NULL;
    }
    if (get_vecs(args, v, 6, lens, names) < 0) return NULL;
    law_osc(self->b[B_Q], self->b[B_DQ], self->b[B_EE], v[0].buf, v[1].buf, v[2].buf, v[3].buf, v[4].buf,
            v[5].buf, &self->osc, self->b[B_JAC], self->b[B_TAU_DES]);
    for (int i = 0; i < 6; i++) PyBuffer_Release(&v[i]);
    Py_RETURN_NONE;
}

/* Kernel._test_torque(tau) -> tau_desired */
PyObject *Kernel_test_torque(Kernel *self, PyObject *arg) {
    Py_buffer v;
    if (get_vec(arg, &v, 7, "torque") < 0) return NULL;
    memcpy(self->b[B_TAU_DES], v.buf, 7 * sizeof(double));
    PyBuffer_Release(&v);
    Py_RETURN_NONE;
}

/* _test_flange_pose(q) -> list of 16 (col-major). */
PyObject *k_test_flange_pose(PyObject *Py_UNUSED(mod), PyObject *arg) {
    double q[7], p[7][3], z[7][3], flange[16];
    if (read_seq(arg, q, 7, "q") < 0) return NULL;
    fr3_frames(q, p, z, flange);
    return double_list(flange, 16);
}

/* _test_jacobian_at(q, point) -> list of 42 (col-major). */
PyObject *k_test_jacobian_at(PyObject *Py_UNUSED(mod), PyObject *const *args, Py_ssize_t nargs) {
    double q[7], point[3], jac[42];
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_test_jacobian_at(q, point) takes 2 arguments");
        return NULL;
    }
    if (read_seq(args[0], q, 7, "q") < 0 || read_seq(args[1], point, 3, "point") < 0) return NULL;
    fr3_jacobian(q, point, jac);
    return double_list(jac, 42);
}

/* _test_seqlock_write(frame, values): publish values[1:] into frame (values[0] ignored). */
PyObject *k_test_seqlock_write(PyObject *Py_UNUSED(mod), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_test_seqlock_write(frame, values) takes 2 arguments");
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

/* Kernel._test_record_rows(n) -> ns: write n recorder rows as a cycle does
 * (the recording must be running), timing only the rows. */
PyObject *Kernel_test_record_rows(Kernel *self, PyObject *arg) {
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    static const double tau_measured[7] = {1, 2, 3, 4, 5, 6, 7};
    cycle_info info = {SERVER_LOOP, 1.0, 0, 1000, tau_measured, self->last_params, self->last_mode};
    long long start = now_ns();
    for (long i = 0; i < n; i++) record_row(self, i, start, &info);
    return PyLong_FromLongLong(now_ns() - start);
}
