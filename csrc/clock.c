/* Time and waiting: CLOCK_MONOTONIC, the state socket's readiness, timerfd
 * wake-ups for the event loop, spin_until and the wake-up probe (see
 * docs/timing.md). */
#include "kernel.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#endif

long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

void sleep_until_ns(long long t) {
    struct timespec ts = {(time_t)(t / 1000000000LL), (long)(t % 1000000000LL)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

/* Whether a state waits on libfranka's UDP socket (within timeout_ms). */
int state_waiting(int fd, int timeout_ms) {
    struct pollfd pfd = {fd, POLLIN, 0};
    return poll(&pfd, 1, timeout_ms) > 0 && (pfd.revents & POLLIN);
}

/* Wait until fd is readable or stop_fd (-1: none) is signalled, at most
 * timeout_ms (-1: no limit). 1 if fd is readable. */
int fd_wait(int fd, int stop_fd, int timeout_ms) {
    struct pollfd pfd[2] = {{fd, POLLIN, 0}, {stop_fd, POLLIN, 0}};
    return poll(pfd, stop_fd >= 0 ? 2 : 1, timeout_ms) > 0 && (pfd[0].revents & POLLIN);
}

/* ---- the C threads' watchdog timers and wake-ups (Linux) -----------------
 * A watchdog timer is re-armed by every cycle for a deadline after it: it
 * fires only when no cycle came in time, so a thread blocked on it sleeps
 * through a healthy loop instead of waking every cycle to check. Re-arming
 * also clears an expiration nobody read. */

/* Consume a (non-blocking) timerfd's expirations: 1 if it had fired. */
int timer_fired(int timer_fd) {
    unsigned long long count = 0;
    return read(timer_fd, &count, sizeof count) == (ssize_t)sizeof count && count > 0;
}

/* Arm a timerfd for an absolute CLOCK_MONOTONIC time (ns); 0 disarms. */
void timer_arm(int timer_fd, long long deadline_ns) {
#ifdef __linux__
    struct itimerspec spec = {{0, 0}, {(time_t)(deadline_ns / 1000000000LL), (long)(deadline_ns % 1000000000LL)}};
    timerfd_settime(timer_fd, TFD_TIMER_ABSTIME, &spec, NULL);
#endif
}

/* A non-blocking eventfd (-1 where there is none). */
int event_fd(void) {
#ifdef __linux__
    return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
#else
    errno = ENOSYS;
    return -1;
#endif
}

void event_signal(int fd) {
    unsigned long long one = 1;
    ssize_t written = write(fd, &one, sizeof one);
    (void)written; /* a full counter is still readable */
}

/* ---- timerfd: sub-millisecond wakeups for the event loop (Linux) -------- */

PyObject *k_timerfd_create(PyObject *Py_UNUSED(mod), PyObject *Py_UNUSED(ignored)) {
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
PyObject *k_timerfd_arm(PyObject *Py_UNUSED(mod), PyObject *const *args, Py_ssize_t nargs) {
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
PyObject *k_timerfd_clear(PyObject *Py_UNUSED(mod), PyObject *arg) {
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
PyObject *k_spin_until(PyObject *Py_UNUSED(mod), PyObject *arg) {
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
PyObject *k_wake_probe(PyObject *Py_UNUSED(mod), PyObject *const *args, Py_ssize_t nargs) {
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
