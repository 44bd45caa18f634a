/* The Kernel type, its method table and the module aiofranka._kernel (the
 * units and what each holds: kernel.h). */
#include "kernel.h"

#include <structmember.h>
#include <string.h>

PyObject *s_readOnce, *s_writeOnce, *s_q, *s_dq, *s_O_T_EE, *s_time, *s_to_sec, *s_success, *s_motion_finished,
    *s_tau_ext, *s_tau_J;

static const Py_ssize_t B_LEN[B_COUNT] = {7, 7, 16, 16, 42, 7, 7, 7, 7, 7, 7, 7};
static const char *B_NAME[B_COUNT] = {"q", "dq", "ee_raw", "ee", "jacobian", "tau_desired", "tau_command",
                                      "tau_last", "dtau_max", "tau_max", "q_min", "q_max"};

/* ---- reading Python values ---------------------------------------------- */

int read_seq(PyObject *seq, double *out, Py_ssize_t n, const char *what) {
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

/* Read one attribute list of a state into dst (n values). */
int read_attr(PyObject *state, PyObject *name, double *dst, Py_ssize_t n) {
    PyObject *v = PyObject_GetAttr(state, name);
    if (!v) return -1;
    int rc = read_seq(v, dst, n, PyUnicode_AsUTF8(name));
    Py_DECREF(v);
    return rc;
}

/* A read-only float64 buffer of exactly n values (targets and gains). */
int get_vec(PyObject *obj, Py_buffer *view, Py_ssize_t n, const char *what) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    if (view->itemsize != 8 || !view->format || strcmp(view->format, "d") != 0 ||
        view->len != n * (Py_ssize_t)sizeof(double)) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_TypeError, "%s must be a contiguous float64 array of %zd values", what, n);
        return -1;
    }
    return 0;
}

PyObject *double_list(const double *values, Py_ssize_t n) {
    PyObject *out = PyList_New(n);
    if (!out) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = PyFloat_FromDouble(values[i]);
        if (!f) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, f);
    }
    return out;
}

/* ---- the type ----------------------------------------------------------- */

static void Kernel_release(Kernel *self) {
    for (int i = 0; i < self->held; i++) PyBuffer_Release(&self->views[i]);
    self->held = 0;
}

static PyObject *Kernel_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Kernel *self = (Kernel *)PyType_GenericNew(type, args, kwds);
    if (self) {
        /* descriptors the kernel owns: none yet (0 is stdin) */
        self->r_fd = self->r_timer = self->r_stop = self->k_wake = -1;
        self->k_ramp_left = self->k_ramp_total = -1;
        self->w_timer = self->w_stop = self->w_wake = self->w_state_fd = -1;
        self->p_mode = PLACE_AUTO;
        atomic_store(&self->p_cpu, -1);
        schedule_reset(self);
    }
    return (PyObject *)self;
}

static void Kernel_dealloc(Kernel *self) {
    watch_join(self);
    rescue_join(self);
    serve_release(self);
    record_release(self);
    Py_CLEAR(self->rs_type);
    Kernel_release(self);
    Kernel_unpublish(self);
    attrib_free(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Kernel_init(Kernel *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"q", "dq", "ee_raw", "ee", "jacobian", "tau_desired", "tau_command", "tau_last",
                             "dtau_max", "tau_max", "q_min", "q_max", "ee_offset", "margin", "stiffness",
                             "damping", "max_translation", "max_rotation", "null_damping", NULL};
    PyObject *objs[B_COUNT];
    PyObject *offset = Py_None;
    safety_params *s = &self->safety;
    osc_params *o = &self->osc;
    Kernel_release(self);
    self->last_time_ms = -1;
    s->margin = 0.1; s->stiffness = 100.0; s->damping = 5.0;
    o->max_translation = 0.05; o->max_rotation = 0.3; o->null_damping = 1e-3;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOOOOOOOO|Odddddd", kwlist, &objs[0], &objs[1], &objs[2],
                                     &objs[3], &objs[4], &objs[5], &objs[6], &objs[7], &objs[8], &objs[9],
                                     &objs[10], &objs[11], &offset, &s->margin, &s->stiffness, &s->damping,
                                     &o->max_translation, &o->max_rotation, &o->null_damping))
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
    s->q_min = self->b[B_QMIN];
    s->q_max = self->b[B_QMAX];
    s->tau_max = self->b[B_TAU_MAX];
    s->dtau_max = self->b[B_DTAU];
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

#define FASTCALL(f) (PyCFunction)(void (*)(void))(f), METH_FASTCALL

static PyMethodDef Kernel_methods[] = {
    {"cycle", FASTCALL(Kernel_cycle),
     "cycle(ctl, Torques, mode, scale, flags, *params) -> (state, time_ms, success, t_call, t_read, "
     "t_write, flags); flags in: bit 0 finish if zero, bit 1 served by the guardian"},
    {"record_start", FASTCALL(Kernel_record_start),
     "record_start(matrix, columns, overwrite): one row per cycle written into matrix (see RECORD_FIELDS)"},
    {"record_stop", (PyCFunction)Kernel_record_stop, METH_NOARGS,
     "record_stop() -> (written, dropped): no row is written after it returns"},
    {"record_counts", (PyCFunction)Kernel_record_counts, METH_NOARGS,
     "record_counts() -> (written, dropped, busy)"},
    {"fill", FASTCALL(Kernel_fill), "fill(q, dq, O_T_EE)"},
    {"finish", (PyCFunction)Kernel_finish, METH_O, "finish(scale) -> command list or None"},
    {"update_last", (PyCFunction)Kernel_update_last, METH_NOARGS, "update_last() -> command is zero"},
    {"publish_to", FASTCALL(Kernel_publish_to),
     "publish_to(frame, mass_fn=None): write every cycle's state into a seqlocked frame (None: stop)"},
    {"rescue_start", (PyCFunction)Kernel_rescue_start, METH_VARARGS,
     "rescue_start(ctl, torques, fd, offsets, state_size, after_ns, grace_ns, priority, exceptions)"},
    {"rescue_stop", (PyCFunction)Kernel_rescue_stop, METH_NOARGS, "stop and join the rescue thread"},
    {"serve_start", (PyCFunction)Kernel_serve_start, METH_O,
     "serve_start(wake_fd): the rescue thread serves every state; it writes wake_fd when Python should look"},
    {"set_law", FASTCALL(Kernel_set_law), "set_law(mode, scale, *params): the law's inputs from the next cycle on"},
    {"play_rows", FASTCALL(Kernel_play_rows),
     "play_rows(start_ms, positions, velocities[, poses]): target rows indexed by robot time"},
    {"clear_rows", (PyCFunction)Kernel_clear_rows, METH_NOARGS, "drop the target rows"},
    {"rows_status", (PyCFunction)Kernel_rows_status, METH_NOARGS,
     "rows_status() -> (switches, held_cycles, late_switches, current_start_ms, next_start_ms)"},
    {"wake_at", (PyCFunction)Kernel_wake_at, METH_O, "wake_at(time_ms): write the wake fd once robot time reaches it"},
    {"ramp", (PyCFunction)Kernel_ramp, METH_O, "ramp(cycles): scale down to zero, then write motion_finished"},
    {"place", (PyCFunction)Kernel_place, METH_VARARGS,
     "place(mode[, robot_ip]): the C thread's placement from the next rescue_start: -1 auto, -2 off, "
     "-3 least-busy, or a CPU to pin to; robot_ip (4 bytes, or None) is who may send the states"},
    {"place_status", (PyCFunction)Kernel_place_status, METH_NOARGS,
     "place_status() -> (cpu, moves, follows): the CPU the C thread was last seen on (-1: not yet), "
     "its moves, whether it follows the states' CPU"},
    {"serve_status", (PyCFunction)Kernel_serve_status, METH_NOARGS,
     "serve_status() -> (serving, law_failed, finished, rescue_error, time_ms, served)"},
    {"refresh_state", (PyCFunction)Kernel_refresh_state, METH_O,
     "refresh_state(RobotState) -> bool: write the last served state's fields into it"},
    {"new_session", (PyCFunction)Kernel_new_session, METH_NOARGS, "clear the per-session counters"},
    {"seq", (PyCFunction)Kernel_seq, METH_NOARGS, "the rescue thread's write sequence (odd while writing)"},
    {"read_anyway", (PyCFunction)Kernel_read_anyway, METH_NOARGS,
     "the next cycle reads even if no state is waiting (after a long silence)"},
    {"claim_next", (PyCFunction)Kernel_claim_next, METH_NOARGS,
     "a Python thread serves from now on: the rescue thread yields"},
    {"due", (PyCFunction)Kernel_due, METH_NOARGS, "due() -> (epoch, due_ns): the last published deadline"},
    {"restart_schedule", (PyCFunction)Kernel_restart_schedule, METH_NOARGS,
     "the rescue thread served meanwhile: the next state is expected a period from now"},
    {"watch_start", FASTCALL(Kernel_watch_start),
     "watch_start(threshold_ns, state_fd, wake_fd, priority): write wake_fd when a due cycle goes unclaimed"},
    {"watch_stop", (PyCFunction)Kernel_watch_stop, METH_NOARGS, "stop and join the watch thread"},
    {"watch_counters", (PyCFunction)Kernel_watch_counters, METH_NOARGS,
     "watch_counters() -> (timer_fires, reports) since watch_start"},
    {"attrib_start", (PyCFunction)Kernel_attrib_start, METH_NOARGS,
     "attrib_start(): record each cycle that saw a gap in robot time (see attrib_read)"},
    {"attrib_read", (PyCFunction)Kernel_attrib_read, METH_O,
     "attrib_read(since) -> (count, bytes, cycles): gap records since..count-1 as int64 rows (attrib_fields())"},
    {"counters", (PyCFunction)Kernel_counters, METH_NOARGS,
     "counters() -> (lost, rescued, rescue_episodes, longest_rescue_ns, rescue_running, rescue_error)"},
    /* test-only (testing.c) */
    {"_test_impedance", FASTCALL(Kernel_test_impedance), "test only: impedance(q_desired, dq_desired, kp, kd)"},
    {"_test_osc", FASTCALL(Kernel_test_osc), "test only: osc(ee_desired, ee_kp, ee_kd, q_null, null_kp, null_kd)"},
    {"_test_torque", (PyCFunction)Kernel_test_torque, METH_O, "test only: torque(tau)"},
    {"_test_record_rows", (PyCFunction)Kernel_test_record_rows, METH_O,
     "test only: _test_record_rows(n) -> ns to write n recorder rows"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Kernel_members[] = {
    {"margin", T_DOUBLE, offsetof(Kernel, safety.margin), 0, "joint-limit guard band (rad)"},
    {"stiffness", T_DOUBLE, offsetof(Kernel, safety.stiffness), 0, "guard stiffness (N m/rad)"},
    {"damping", T_DOUBLE, offsetof(Kernel, safety.damping), 0, "guard damping (N m s/rad)"},
    {"max_translation", T_DOUBLE, offsetof(Kernel, osc.max_translation), 0, "OSC error cap (m)"},
    {"max_rotation", T_DOUBLE, offsetof(Kernel, osc.max_rotation), 0, "OSC error cap (rad)"},
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
    .tp_getset = Kernel_schedule_getset,
    .tp_init = (initproc)Kernel_init,
    .tp_new = Kernel_new,
};

/* ---- the module ----------------------------------------------------------- */

static PyMethodDef module_methods[] = {
    {"attrib_fields", (PyCFunction)k_attrib_fields, METH_NOARGS, "the columns of Kernel.attrib_read's rows"},
    {"timerfd_create", (PyCFunction)k_timerfd_create, METH_NOARGS, "a non-blocking CLOCK_MONOTONIC timerfd"},
    {"timerfd_arm", FASTCALL(k_timerfd_arm), "arm a timerfd for an absolute monotonic deadline in ns"},
    {"timerfd_clear", (PyCFunction)k_timerfd_clear, METH_O, "consume a timerfd's expirations"},
    {"spin_until", (PyCFunction)k_spin_until, METH_O,
     "busy-wait until a time.perf_counter() deadline with the GIL released; returns the time"},
    {"wake_probe", FASTCALL(k_wake_probe),
     "wake_probe(out, start_ns, period_ns): sleep to each period's deadline, GIL released; out[i] = lateness (ns)"},
    {"seqlock_read", FASTCALL(k_seqlock_read),
     "seqlock_read(frame, out, timeout=1.0) -> even sequence number, or None if never consistent in time"},
    {"peek_value", FASTCALL(k_peek_value),
     "peek_value(obj, nbytes) -> bytes of the C++ object behind a pylibfranka RobotState or Torques"},
    /* test-only (testing.c) */
    {"_test_seqlock_write", FASTCALL(k_test_seqlock_write),
     "test only: seqlock_write(frame, values): publish values[1:] under the sequence word frame[0]"},
    {"_test_flange_pose", (PyCFunction)k_test_flange_pose, METH_O,
     "test only: FR3 flange pose (16 values, column-major)"},
    {"_test_jacobian_at", FASTCALL(k_test_jacobian_at),
     "test only: FR3 zero Jacobian of a base-frame point (42 values, column-major)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef kernel_module = {
    PyModuleDef_HEAD_INIT, "aiofranka._kernel",
    "The control loop's cycle and rescue thread in C (sources: csrc/; see docs/controller.md).", -1,
    module_methods,
};

static int intern(PyObject **slot, const char *name) { return (*slot = PyUnicode_InternFromString(name)) ? 0 : -1; }

PyMODINIT_FUNC PyInit__kernel(void) {
    if (PyType_Ready(&KernelType) < 0) return NULL;
    if (intern(&s_readOnce, "readOnce") < 0 || intern(&s_writeOnce, "writeOnce") < 0 || intern(&s_q, "q") < 0 ||
        intern(&s_dq, "dq") < 0 || intern(&s_O_T_EE, "O_T_EE") < 0 || intern(&s_time, "time") < 0 ||
        intern(&s_to_sec, "to_sec") < 0 || intern(&s_success, "control_command_success_rate") < 0 ||
        intern(&s_motion_finished, "motion_finished") < 0 || intern(&s_tau_ext, "tau_ext_hat_filtered") < 0 ||
        intern(&s_tau_J, "tau_J") < 0)
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
    PyObject *fields = record_fields();
    if (!fields || PyModule_AddObject(m, "RECORD_FIELDS", fields) < 0) {
        Py_XDECREF(fields);
        Py_DECREF(m);
        return NULL;
    }
    /* None where the rescue thread is built; else why not (see rescue.c). */
    PyObject *why = rescue_unavailable ? PyUnicode_FromString(rescue_unavailable) : Py_NewRef(Py_None);
    if (!why || PyModule_AddObject(m, "RESCUE_UNAVAILABLE", why) < 0) {
        Py_XDECREF(why);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
