/* The C++ object behind a pylibfranka object, read only after its type and
 * layout were checked (the contract: docs/rescue-abi.md). */
#include "kernel.h"

#include <stddef.h>
#include <string.h>
#include <unistd.h>

/* pybind11's `detail::instance` (pybind11/detail/common.h, the same in 2.x
 * and 3.x up to the flags used here; pylibfranka 0.21.3 is built with
 * pybind11 3, internals v11). In the simple layout, simple_value_holder[0]
 * is the C++ object and the holder (a unique_ptr or shared_ptr: two words at
 * most) follows it. The bit-fields are laid out by the same psABI rules in C
 * and C++, so this mirror places them where pybind11 does; offsets checked
 * against the live objects: weakrefs at 40, the flags byte at 48. */
typedef struct {
    PyObject_HEAD
    union {
        void *simple_value_holder[3];
        struct {
            void **values_and_holders;
            uint8_t *status;
        } nonsimple;
    } u;
    PyObject *weakrefs;
    _Bool owned : 1;
    _Bool simple_layout : 1;
    _Bool simple_holder_constructed : 1;
    _Bool simple_instance_registered : 1;
} pybind11_instance;

/* The C++ object behind `obj`, which must be exactly pylibfranka.<class_name>.
 * Returns 0 with *value set; -1 when obj is of another type; -2 when the
 * class or the instance is not laid out as pybind11's simple layout (or
 * pylibfranka cannot be imported). The reason goes into err; no Python error
 * is left set. Nothing behind obj is read before every check passed. */
int pybind11_value(PyObject *obj, const char *class_name, void **value, char *err, size_t n) {
    *value = NULL;
    PyObject *module = PyImport_ImportModule("pylibfranka");
    PyObject *cls = module ? PyObject_GetAttrString(module, class_name) : NULL;
    Py_XDECREF(module);
    if (!cls) {
        PyErr_Clear();
        snprintf(err, n, "pylibfranka.%s cannot be imported", class_name);
        return -2;
    }
    int rc = 0;
    PyTypeObject *type = (PyTypeObject *)cls, *meta = Py_TYPE(cls);
    if (!PyType_Check(cls)) {
        snprintf(err, n, "pylibfranka.%s is not a class", class_name);
        rc = -2;
    } else if (Py_TYPE(obj) != type) {
        snprintf(err, n, "got %.100s, not exactly pylibfranka.%s", Py_TYPE(obj)->tp_name, class_name);
        rc = -1;
    } else if (strcmp(meta->tp_name, "pybind11_type") != 0) {
        snprintf(err, n, "pylibfranka.%s is not a pybind11 class (its metatype is %.100s)", class_name,
                 meta->tp_name);
        rc = -2;
    } else if (type->tp_basicsize < (Py_ssize_t)sizeof(pybind11_instance) ||
               type->tp_weaklistoffset != (Py_ssize_t)offsetof(pybind11_instance, weakrefs)) {
        snprintf(err, n, "pylibfranka.%s instances are not laid out as pybind11's (size %zd, weakrefs at %zd)",
                 class_name, type->tp_basicsize, type->tp_weaklistoffset);
        rc = -2;
    } else {
        const pybind11_instance *inst = (const pybind11_instance *)obj;
        if (!inst->simple_layout) {
            snprintf(err, n, "this pylibfranka.%s does not use pybind11's simple layout", class_name);
            rc = -2;
        } else if (!inst->simple_holder_constructed || !inst->u.simple_value_holder[0]) {
            snprintf(err, n, "this pylibfranka.%s holds no C++ object", class_name);
            rc = -2;
        } else {
            *value = inst->u.simple_value_holder[0];
        }
    }
    Py_DECREF(cls);
    return rc;
}

/* The C++ RobotState behind `state`, for reading a field at a measured
 * offset (r_off) without pylibfranka's getter (which builds a list), or NULL
 * where that cannot be done: no layout was measured and checked on this
 * kernel (rescue_start), or `state` is not of the type checked the first
 * time. The type is checked once (pybind11_value); each instance's flags
 * every time. Leaves no Python error set. */
const unsigned char *state_value(Kernel *self, PyObject *state) {
    if (!self->rs_layout) return NULL;
    if (Py_TYPE(state) != self->rs_type) {
        void *value;
        char err[256];
        if (self->rs_type || pybind11_value(state, "RobotState", &value, err, sizeof err) != 0) return NULL;
        self->rs_type = (PyTypeObject *)Py_NewRef(Py_TYPE(state));
    }
    const pybind11_instance *inst = (const pybind11_instance *)state;
    if (!inst->simple_layout || !inst->simple_holder_constructed) return NULL;
    return inst->u.simple_value_holder[0];
}

/* peek_value(obj, nbytes) -> bytes: up to nbytes of the C++ object behind a
 * pylibfranka RobotState or Torques, for measuring field offsets (fewer where
 * the memory past the object's end is not mapped). */
PyObject *k_peek_value(PyObject *Py_UNUSED(mod), PyObject *const *args, Py_ssize_t nargs) {
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
    void *src;
    char why[256];
    int rc = pybind11_value(args[0], "RobotState", &src, why, sizeof why);
    if (rc == -1) rc = pybind11_value(args[0], "Torques", &src, why, sizeof why);
    if (rc < 0) {
        PyErr_Format(PyExc_TypeError, "peek_value needs a pylibfranka RobotState or Torques: %s", why);
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
