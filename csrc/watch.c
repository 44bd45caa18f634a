/* When the next state is due, and the watch thread that tells the guardian
 * when a due cycle went unclaimed (see docs/guardian.md#watching).
 *
 * The schedule is learned in each cycle Python serves (Kernel.cycle), from
 * the time its readOnce returned: it follows the lower envelope of the reads
 * (an earlier read than predicted moves it at once, a later one only by a
 * sixteenth), and the period is that envelope's slope over about a second (a
 * loaded simulator runs slower than 1 kHz; the robot does not). After each
 * cycle the time the next state is due is published with an epoch; the next
 * cycle claims that epoch as it starts.
 *
 * The watch thread never takes the GIL and, while the loop keeps its
 * deadlines, never wakes: each cycle re-arms its timer for the next due time
 * plus the stall threshold, so the timer fires only when that cycle was not
 * claimed in time. It then checks, without the GIL, that the cycle is still
 * unclaimed (with wait="socket", that the state itself has come and waited a
 * threshold more: a late state is not a stall), records the epoch and writes
 * the guardian's eventfd. */
#include "kernel.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/timerfd.h>
#endif

/* Bounds of the learned state period (ns), and the span it is learned over (states). */
#define PERIOD_MIN_NS 900000LL
#define PERIOD_MAX_NS 5000000LL
#define PERIOD_SPAN 1024

void schedule_reset(Kernel *self) {
    self->s_anchor_t = self->s_anchor_ms = self->s_base_t = self->s_base_ms = 0;
    self->s_begun = 0;
    atomic_store(&self->s_period, 1000000);
    atomic_store(&self->s_next_due, 0);
    atomic_store(&self->s_due, 0);
    atomic_store(&self->s_epoch, 0);
    atomic_store(&self->s_claimed, 0);
    atomic_store(&self->w_stalled, 0);
}

/* A Python cycle starts: it serves the published epoch. */
void schedule_claim(Kernel *self) { atomic_store(&self->s_claimed, atomic_load(&self->s_epoch)); }

/* After a cycle Python served (the writer holds the GIL and the cycle lock):
 * learn from its read, publish when the next state is due, re-arm the watch. */
void schedule_observe(Kernel *self, long long t_read, long long time_ms, int finished) {
    long long period = atomic_load(&self->s_period);
    if (!self->s_begun) {
        self->s_begun = 1;
        self->s_anchor_t = self->s_base_t = t_read;
        self->s_base_ms = time_ms;
    } else {
        long long predicted = self->s_anchor_t + (time_ms - self->s_anchor_ms) * period;
        self->s_anchor_t = t_read <= predicted ? t_read : predicted + ((t_read - predicted) >> 4);
        long long span = time_ms - self->s_base_ms;
        if (span >= PERIOD_SPAN) {
            period = (self->s_anchor_t - self->s_base_t) / span;
            period = period < PERIOD_MIN_NS ? PERIOD_MIN_NS : period > PERIOD_MAX_NS ? PERIOD_MAX_NS : period;
            atomic_store(&self->s_period, period);
            self->s_base_t = self->s_anchor_t;
            self->s_base_ms = time_ms;
        }
    }
    self->s_anchor_ms = time_ms;
    long long due = self->s_anchor_t + period;
    atomic_store(&self->s_next_due, due);
    atomic_store(&self->s_due, due);
    atomic_fetch_add(&self->s_epoch, 1);
    /* Armed after the epoch is published: the watch thread, having consumed
     * an expiration of this arm, reads this epoch or a later one. (Armed
     * first, an expiration consumed before the epoch changed was lost, and
     * with it the watch of this cycle.) After motion_finished nothing is due. */
    if (self->w_timer >= 0) timer_arm(self->w_timer, finished ? 0 : due + self->w_threshold_ns);
}

/* due() -> (epoch, due_ns): the last published deadline. */
PyObject *Kernel_due(Kernel *self, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("(LL)", (long long)atomic_load(&self->s_epoch), (long long)atomic_load(&self->s_due));
}

/* restart_schedule(): the rescue thread served meanwhile: the loop counts the
 * next state from now (the published deadline stays as it was). */
PyObject *Kernel_restart_schedule(Kernel *self, PyObject *Py_UNUSED(ignored)) {
    atomic_store(&self->s_next_due, now_ns() + atomic_load(&self->s_period));
    Py_RETURN_NONE;
}

static PyObject *get_next_due(Kernel *self, void *closure) {
    return PyLong_FromLongLong(atomic_load(&self->s_next_due));
}

static PyObject *get_period(Kernel *self, void *closure) {
    return PyLong_FromLongLong(atomic_load(&self->s_period));
}

static PyObject *get_claimed(Kernel *self, void *closure) {
    return PyLong_FromLongLong(atomic_load(&self->s_claimed));
}

static PyObject *get_stalled(Kernel *self, void *closure) {
    return PyLong_FromLongLong(atomic_load(&self->w_stalled));
}

PyGetSetDef Kernel_schedule_getset[] = {
    {"next_due_ns", (getter)get_next_due, NULL, "when the loop expects the next state (CLOCK_MONOTONIC ns)", NULL},
    {"period_ns", (getter)get_period, NULL, "the learned state period (ns)", NULL},
    {"claimed_epoch", (getter)get_claimed, NULL, "the epoch the last Python cycle served", NULL},
    {"stalled_epoch", (getter)get_stalled, NULL, "the last epoch the watch thread reported unclaimed", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* ---- the watch thread ------------------------------------------------------ */

static void read_due(Kernel *self, long long *epoch, long long *due) {
    do {
        *epoch = atomic_load(&self->s_epoch);
        *due = atomic_load(&self->s_due);
    } while (*epoch != atomic_load(&self->s_epoch));
}

static void *watch_main(void *arg) {
    Kernel *self = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals belong to Python's main thread */
#ifdef __linux__
    pthread_setname_np(pthread_self(), "aiofranka-watch");
#endif
    /* Best effort; explicit either way: a thread inherits its creator's policy. */
    struct sched_param sp = {.sched_priority = self->w_priority > 0 ? self->w_priority : 0};
    pthread_setschedparam(pthread_self(), self->w_priority > 0 ? SCHED_FIFO : SCHED_OTHER, &sp);
    const long long threshold = self->w_threshold_ns;
    long long seen_epoch = 0, seen_at = 0; /* socket mode: when the due state was seen waiting */
    while (atomic_load(&self->w_run)) {
        fd_wait(self->w_timer, self->w_stop, -1);
        if (!timer_fired(self->w_timer)) continue; /* stopped, or re-armed meanwhile */
        atomic_fetch_add(&self->w_fires, 1);
        long long epoch, due;
        read_due(self, &epoch, &due);
        if (epoch == 0 || atomic_load(&self->finished) || atomic_load(&self->s_claimed) >= epoch)
            continue; /* nothing due, or being served: the cycle's end re-arms the timer */
        long long now = now_ns();
        if (now < due + threshold) {
            /* Published after the timer was set (our own arm below can race a
             * cycle's): keep it set for the deadline in force. */
            timer_arm(self->w_timer, due + threshold);
            continue;
        }
        if (self->w_state_fd >= 0 && (seen_epoch != epoch || now < seen_at + threshold)) {
            /* Waking on the packet itself: a stall is a state left waiting,
             * unclaimed, a threshold longer; a late state is not a stall. Wait
             * for it, then sleep on the timer: the loop's cycle re-arms it for
             * the next deadline first, unless the loop is blocked. */
            if (seen_epoch != epoch) {
                int waiting = 0;
                while (atomic_load(&self->w_run) && !atomic_load(&self->finished) &&
                       atomic_load(&self->s_claimed) < epoch && !waiting)
                    waiting = fd_wait(self->w_state_fd, self->w_stop, 100);
                if (!waiting) continue;
                seen_epoch = epoch;
                seen_at = now_ns();
            }
            timer_arm(self->w_timer, seen_at + threshold);
            continue;
        }
        attrib_probe(self); /* what the loop's thread is in, for attrib.c (only when off schedule) */
        atomic_store(&self->w_stalled, epoch);
        atomic_fetch_add(&self->w_reports, 1);
        event_signal(self->w_wake);
    }
    return NULL;
}

void watch_join(Kernel *self) {
    if (self->w_started) {
        atomic_store(&self->w_run, 0);
        event_signal(self->w_stop);
        pthread_join(self->w_thread, NULL);
        self->w_started = 0;
    }
    int timer = self->w_timer, stop = self->w_stop;
    self->w_timer = self->w_stop = -1; /* before closing: Kernel.cycle arms w_timer if set */
    if (timer >= 0) close(timer);
    if (stop >= 0) close(stop);
}

/* watch_start(threshold_ns, state_fd, wake_fd, priority): start the watch
 * thread. It writes wake_fd (an eventfd the caller owns and keeps open until
 * watch_stop returns) when the published cycle went unclaimed for
 * threshold_ns; with state_fd >= 0 (wait="socket"), only once a state waited
 * threshold_ns more. priority > 0: SCHED_FIFO at that priority (best effort). */
PyObject *Kernel_watch_start(Kernel *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "watch_start(threshold_ns, state_fd, wake_fd, priority) takes 4 arguments");
        return NULL;
    }
    long long threshold = PyLong_AsLongLong(args[0]);
    long state_fd = PyLong_AsLong(args[1]), wake_fd = PyLong_AsLong(args[2]), priority = PyLong_AsLong(args[3]);
    if (PyErr_Occurred()) return NULL;
    if (threshold <= 0 || wake_fd < 0) {
        PyErr_SetString(PyExc_ValueError, "watch_start: threshold_ns must be positive and wake_fd a descriptor");
        return NULL;
    }
    if (self->w_started) {
        PyErr_SetString(PyExc_RuntimeError, "the watch thread is already running");
        return NULL;
    }
#ifdef __linux__
    self->w_timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    self->w_stop = event_fd();
    if (self->w_timer < 0 || self->w_stop < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        watch_join(self);
        return NULL;
    }
    self->w_threshold_ns = threshold;
    self->w_state_fd = (int)state_fd;
    self->w_wake = (int)wake_fd;
    self->w_priority = (int)priority;
    atomic_store(&self->w_fires, 0);
    atomic_store(&self->w_reports, 0);
    if (atomic_load(&self->s_epoch) > 0 && !atomic_load(&self->finished))
        timer_arm(self->w_timer, atomic_load(&self->s_due) + threshold); /* a session already under way */
    atomic_store(&self->w_run, 1);
    int rc = pthread_create(&self->w_thread, NULL, watch_main, self);
    if (rc != 0) {
        watch_join(self);
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->w_started = 1;
    Py_RETURN_NONE;
#else
    PyErr_SetString(PyExc_NotImplementedError, "the watch thread needs Linux (timerfd, eventfd)");
    return NULL;
#endif
}

/* watch_stop(): stop and join the watch thread (GIL released meanwhile). Idempotent. */
PyObject *Kernel_watch_stop(Kernel *self, PyObject *Py_UNUSED(ignored)) {
    if (self->w_started) {
        atomic_store(&self->w_run, 0);
        event_signal(self->w_stop);
        Py_BEGIN_ALLOW_THREADS
        pthread_join(self->w_thread, NULL);
        Py_END_ALLOW_THREADS
        self->w_started = 0;
    }
    watch_join(self);
    Py_RETURN_NONE;
}

/* watch_counters() -> (timer_fires, reports): how often the watch thread
 * woke, and how often it woke the guardian, since watch_start. */
PyObject *Kernel_watch_counters(Kernel *self, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("(LL)", (long long)atomic_load(&self->w_fires), (long long)atomic_load(&self->w_reports));
}
