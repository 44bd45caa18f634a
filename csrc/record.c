/* The 1 kHz recorder: one row per cycle written, whoever wrote it (see
 * docs/recorder.md).
 *
 * Python hands over a float64 matrix (capacity x width) and the column of
 * each chosen field; note_written() (cycle.c), which the loop, the guardian
 * and the rescue thread all pass through with the cycle lock held, calls
 * record_row() when recording is on. A row is plain stores into that matrix:
 * no allocation, no Python object, so the GIL-free rescue thread writes rows
 * too, and the cycle lock keeps two writers off one row.
 *
 * A reader never takes the cycle lock: rec_written is stored (release) once
 * a row is whole, so rows below it are complete. Stopping clears rec_on and
 * then waits for rec_busy (raised around every row) to drop to zero, so no
 * writer is left inside the matrix once record_stop() returns. */
#include "kernel.h"

#include <math.h>
#include <sched.h>
#include <string.h>

const char *const RF_NAME[RF_COUNT] = {"time_ms",    "t",           "q",       "dq",          "q_desired",
                                       "ee",         "ee_desired",  "tau_command", "tau_measured",
                                       "compute_us", "server",      "success_rate", "mode"};
const int RF_WIDTH[RF_COUNT] = {1, 1, 7, 7, 7, 16, 16, 7, 7, 1, 1, 1, 1};

static void fill_nan(double *dst, int n) {
    for (int i = 0; i < n; i++) dst[i] = NAN;
}

/* One row for the cycle just written (the caller holds the cycle lock). */
void record_row(Kernel *self, long long time_ms, long long t_write_ns, const cycle_info *c) {
    atomic_fetch_add(&self->rec_busy, 1);
    if (!atomic_load(&self->rec_on)) goto out;
    long long n = atomic_load_explicit(&self->rec_written, memory_order_relaxed);
    if (n >= self->rec_cap) {
        atomic_fetch_add(&self->rec_dropped, 1); /* stop mode: this one; overwrite mode: the oldest */
        if (!self->rec_wrap) goto out;
    }
    double *row = self->rec_rows + (n % self->rec_cap) * self->rec_width;
    const int *col = self->rec_col;
    const double *p = c->params;
    int mode = c->mode;
    if (col[RF_TIME_MS] >= 0) row[col[RF_TIME_MS]] = (double)time_ms;
    if (col[RF_T] >= 0) row[col[RF_T]] = (double)t_write_ns * 1e-9;
    if (col[RF_Q] >= 0) memcpy(row + col[RF_Q], self->b[B_Q], 7 * sizeof(double));
    if (col[RF_DQ] >= 0) memcpy(row + col[RF_DQ], self->b[B_DQ], 7 * sizeof(double));
    if (col[RF_Q_DESIRED] >= 0) {
        /* impedance: q_desired; osc: the null-space target, which is q_desired too */
        if (mode == MODE_IMPEDANCE || mode == MODE_OSC)
            memcpy(row + col[RF_Q_DESIRED], mode == MODE_IMPEDANCE ? p : p + 28, 7 * sizeof(double));
        else
            fill_nan(row + col[RF_Q_DESIRED], 7);
    }
    if (col[RF_EE] >= 0) { /* column-major in the kernel, row-major in the record (as controller.state.ee) */
        const double *T = self->b[B_EE];
        double *dst = row + col[RF_EE];
        for (int r = 0; r < 4; r++)
            for (int k = 0; k < 4; k++) dst[r * 4 + k] = T[k * 4 + r];
    }
    if (col[RF_EE_DESIRED] >= 0) {
        if (mode == MODE_OSC)
            memcpy(row + col[RF_EE_DESIRED], p, 16 * sizeof(double)); /* handed in row-major */
        else
            fill_nan(row + col[RF_EE_DESIRED], 16);
    }
    if (col[RF_TAU_CMD] >= 0) memcpy(row + col[RF_TAU_CMD], self->b[B_TAU_CMD], 7 * sizeof(double));
    if (col[RF_TAU_MEAS] >= 0) {
        if (c->tau_measured)
            memcpy(row + col[RF_TAU_MEAS], c->tau_measured, 7 * sizeof(double));
        else
            fill_nan(row + col[RF_TAU_MEAS], 7);
    }
    if (col[RF_COMPUTE] >= 0) row[col[RF_COMPUTE]] = (double)(c->t_write - c->t_read) * 1e-3;
    if (col[RF_SERVER] >= 0) row[col[RF_SERVER]] = (double)c->server;
    if (col[RF_SUCCESS] >= 0) row[col[RF_SUCCESS]] = c->success;
    if (col[RF_MODE] >= 0) row[col[RF_MODE]] = (double)mode;
    atomic_store_explicit(&self->rec_written, n + 1, memory_order_release);
out:
    atomic_fetch_sub(&self->rec_busy, 1);
}

/* Recording off, and no writer left in the matrix; then the matrix is let go.
 * Called with the GIL held: the only writer that can be inside is the rescue
 * thread, which never waits for the GIL, so the wait is a row's length. */
void record_release(Kernel *self) {
    atomic_store(&self->rec_on, 0);
    while (atomic_load(&self->rec_busy)) sched_yield();
    if (self->rec_held) {
        PyBuffer_Release(&self->rec_view);
        self->rec_held = 0;
    }
    self->rec_rows = NULL;
}

/* record_start(matrix, columns, overwrite)
 *   matrix: a writable C-contiguous float64 array (capacity, width)
 *   columns: for each field of RECORD_FIELDS, its first column or -1
 *   overwrite: when full, overwrite the oldest row (else keep the first rows)
 * Starts a recording from the next cycle written; counters start at zero. */
PyObject *Kernel_record_start(Kernel *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "record_start(matrix, columns, overwrite) takes 3 arguments");
        return NULL;
    }
    if (atomic_load(&self->rec_on)) {
        PyErr_SetString(PyExc_RuntimeError, "a recording is already running on this kernel");
        return NULL;
    }
    int wrap = PyObject_IsTrue(args[2]);
    if (wrap < 0) return NULL;
    PyObject *cols = args[1];
    if (!PyTuple_Check(cols) || PyTuple_GET_SIZE(cols) != RF_COUNT) {
        PyErr_Format(PyExc_TypeError, "columns must be a tuple of %d ints", RF_COUNT);
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_ND) < 0)
        return NULL;
    if (view.ndim != 2 || view.itemsize != 8 || !view.format || strcmp(view.format, "d") != 0 ||
        view.shape[0] < 1 || view.shape[1] < 1) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_TypeError, "matrix must be a writable C-contiguous float64 array of shape (rows, width)");
        return NULL;
    }
    int col[RF_COUNT];
    for (int i = 0; i < RF_COUNT; i++) {
        long c = PyLong_AsLong(PyTuple_GET_ITEM(cols, i));
        if (c == -1 && PyErr_Occurred()) {
            PyBuffer_Release(&view);
            return NULL;
        }
        if (c < -1 || (c >= 0 && c + RF_WIDTH[i] > view.shape[1])) {
            PyBuffer_Release(&view);
            PyErr_Format(PyExc_ValueError, "column %ld of %s does not fit a row of %zd", c, RF_NAME[i],
                         view.shape[1]);
            return NULL;
        }
        col[i] = (int)c;
    }
    record_release(self); /* a stopped recording's matrix, if still held */
    self->rec_view = view;
    self->rec_held = 1;
    self->rec_rows = (double *)view.buf;
    self->rec_cap = view.shape[0];
    self->rec_width = (int)view.shape[1];
    self->rec_wrap = wrap;
    memcpy(self->rec_col, col, sizeof col);
    atomic_store(&self->rec_written, 0);
    atomic_store(&self->rec_dropped, 0);
    atomic_store(&self->rec_on, 1); /* after the set-up: a writer that sees it on sees the set-up */
    Py_RETURN_NONE;
}

/* record_stop() -> (written, dropped): no row is written after it returns. Idempotent. */
PyObject *Kernel_record_stop(Kernel *self, PyObject *Py_UNUSED(ignored)) {
    record_release(self);
    return Py_BuildValue("(LL)", (long long)atomic_load(&self->rec_written),
                         (long long)atomic_load(&self->rec_dropped));
}

/* record_counts() -> (written, dropped, busy): rows written since
 * record_start (the rows below `written` are whole), cycles not kept, and
 * whether a writer may be inside a row now. busy is read first: a reader that
 * copied rows, then sees busy 0 and `written` unchanged, copied no row that a
 * writer touched meanwhile (a writer that came later wrote after the copy). */
PyObject *Kernel_record_counts(Kernel *self, PyObject *Py_UNUSED(ignored)) {
    int busy = atomic_load(&self->rec_busy) != 0;
    long long written = atomic_load(&self->rec_written);
    return Py_BuildValue("(LLi)", written, (long long)atomic_load(&self->rec_dropped), busy);
}

/* RECORD_FIELDS: ((name, width), ...) in the order record_start's columns take. */
PyObject *record_fields(void) {
    PyObject *out = PyTuple_New(RF_COUNT);
    if (!out) return NULL;
    for (int i = 0; i < RF_COUNT; i++) {
        PyObject *item = Py_BuildValue("(si)", RF_NAME[i], RF_WIDTH[i]);
        if (!item) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, i, item);
    }
    return out;
}
