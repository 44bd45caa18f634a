/* Why a state was lost: a small ring of the cycles that saw a gap in robot time
 * (see docs/versus.md#attribution; aiofranka/loop/attribution.py reads it).
 *
 * Off until attrib_start(). Then every cycle written (under the cycle lock)
 * passes through attrib_cycle(): most only update "the previous cycle"; one
 * whose robot time jumps by more than 1 ms pushes a record of both cycles'
 * times, the deadline the loop had published, who served each, and, for a
 * Python server, what its thread did since its own previous cycle (CPU time
 * and run-queue wait, from /proc/thread-self/schedstat, read twice per Python
 * cycle with pread on a descriptor kept per thread). The watch thread, when it
 * finds a due cycle unclaimed, notes what the last Python server's thread was
 * in (/proc/self/task/<tid>/syscall: running, or the system call it sleeps
 * in), which tells a GIL wait (futex) from a loop asleep in epoll. A gap
 * record also has when the state read and the one read before it were sent:
 * the socket's receive stamp (SIOCGSTAMPNS, one call per cycle while
 * recording), which on loopback is taken in the sender's sendto. States sent a
 * period apart and read together mean a late reader; states sent together, a
 * simulator that bunched them. No allocation and no Python per cycle; the ring
 * is allocated by attrib_start. */
#include "kernel.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define ATTRIB_RING 512

/* The fields of a record, as int64 (the Python side's column order). */
enum { A_TIME_MS, A_PREV_MS, A_PREV_WRITE, A_DUE, A_CALL, A_READ, A_WRITE, A_TID, A_KIND, A_PREV_TID, A_PREV_KIND,
       A_CPU, A_DELAY, A_WINDOW, A_PROBE, A_PROBE_AT, A_PERIOD, A_SENT, A_PREV_SENT, A_FIELDS };

struct attrib {
    long long ring[ATTRIB_RING][A_FIELDS];
    atomic_llong count;   /* records pushed; record i lives in ring[i % ATTRIB_RING] */
    long long prev_ms, prev_write, prev_tid, prev_kind, cycles, gen;
    int stamping;         /* the state socket's receive stamps are on */
    long long prev_sent;  /* when the state of the previous cycle was sent (-1 unknown) */
    atomic_int py_tid;    /* the thread of the last Python cycle (the watch thread probes it) */
    atomic_llong probe, probe_at;
};

/* Per thread: its id, its schedstat descriptor, and its figures at its last cycle's end. */
static __thread int t_tid, t_fd = -1;
static __thread long long t_end_cpu = -1, t_end_delay, t_end_wall, t_start_cpu, t_start_delay, t_gen;
static atomic_llong generation; /* a thread's figures count only within the recording they were read in */
static pthread_key_t fd_key;
static pthread_once_t fd_once = PTHREAD_ONCE_INIT;

static void close_fd(void *value) { close((int)(intptr_t)value - 1); }
static void make_key(void) { pthread_key_create(&fd_key, close_fd); }

static int my_tid(void) {
    if (!t_tid) t_tid = (int)syscall(SYS_gettid);
    return t_tid;
}

/* This thread's CPU time and run-queue wait (ns); 0 on success. */
static int schedstat(long long *cpu, long long *delay) {
    if (t_fd < 0) {
        pthread_once(&fd_once, make_key);
        t_fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
        if (t_fd < 0) return -1;
        pthread_setspecific(fd_key, (void *)(intptr_t)(t_fd + 1)); /* closed when the thread ends */
    }
    char buf[96];
    ssize_t n = pread(t_fd, buf, sizeof buf - 1, 0);
    if (n <= 0) return -1;
    buf[n] = 0;
    char *end;
    *cpu = strtoll(buf, &end, 10);
    *delay = strtoll(end, NULL, 10);
    return 0;
}

/* When the newest state read from fd was sent (CLOCK_MONOTONIC ns); -1 unknown. */
static long long sent_ns(int fd) {
    struct timespec stamp, real, mono;
    if (fd < 0 || ioctl(fd, SIOCGSTAMPNS, &stamp) < 0) return -1;
    clock_gettime(CLOCK_REALTIME, &real);
    clock_gettime(CLOCK_MONOTONIC, &mono);
    long long offset = (real.tv_sec - mono.tv_sec) * 1000000000LL + (real.tv_nsec - mono.tv_nsec);
    return stamp.tv_sec * 1000000000LL + stamp.tv_nsec - offset;
}

void attrib_free(Kernel *self) {
    PyMem_RawFree(self->attrib);
    self->attrib = NULL;
}

/* A cycle of the loop (Kernel.cycle) or of kernel serving is about to read (under the cycle lock). */
void attrib_begin(Kernel *self) {
    if (self->attrib && schedstat(&t_start_cpu, &t_start_delay) < 0) t_start_cpu = -1;
}

/* A cycle was written (under the cycle lock); kind 0 Python, 1 the rescue thread. */
void attrib_cycle(Kernel *self, int kind, long long time_ms, long long due, long long t_call, long long t_read,
                  long long t_write) {
    struct attrib *a = self->attrib;
    if (!a) return;
    long long tid = my_tid();
    if (!a->stamping && self->r_fd >= 0) {
        a->stamping = 1;
        sent_ns(self->r_fd); /* the first SIOCGSTAMPNS turns the stamps on (and fails) */
    }
    long long sent = a->stamping ? sent_ns(self->r_fd) : -1;
    if (a->prev_ms >= 0 && time_ms - a->prev_ms > 1) {
        long long i = atomic_load(&a->count);
        long long *r = a->ring[i % ATTRIB_RING];
        r[A_TIME_MS] = time_ms;
        r[A_PREV_MS] = a->prev_ms;
        r[A_PREV_WRITE] = a->prev_write;
        r[A_DUE] = due;
        r[A_CALL] = t_call;
        r[A_READ] = t_read;
        r[A_WRITE] = t_write;
        r[A_TID] = tid;
        r[A_KIND] = kind;
        r[A_PREV_TID] = a->prev_tid;
        r[A_PREV_KIND] = a->prev_kind;
        int known = kind != 1 && t_gen == a->gen && t_end_cpu >= 0 && t_start_cpu >= 0;
        r[A_CPU] = known ? t_start_cpu - t_end_cpu : -1;
        r[A_DELAY] = known ? t_start_delay - t_end_delay : -1;
        r[A_WINDOW] = known ? t_call - t_end_wall : -1;
        r[A_PROBE_AT] = atomic_load(&a->probe_at);
        r[A_PROBE] = atomic_load(&a->probe);
        r[A_PERIOD] = atomic_load(&self->s_period);
        r[A_SENT] = sent;
        r[A_PREV_SENT] = a->prev_sent;
        atomic_store(&a->count, i + 1); /* the record is whole before it is counted */
    }
    a->cycles++;
    a->prev_sent = sent;
    a->prev_ms = time_ms;
    a->prev_write = t_write;
    a->prev_tid = tid;
    a->prev_kind = kind;
    if (kind != 1) { /* a thread that serves every cycle: the loop, or the kernel's */
        if (kind == 0) atomic_store(&a->py_tid, (int)tid);
        if (schedstat(&t_end_cpu, &t_end_delay) < 0) t_end_cpu = -1;
        t_end_wall = now_ns();
        t_gen = a->gen;
    }
}

/* The watch thread found the due cycle unclaimed: what is the loop's thread doing? */
void attrib_probe(Kernel *self) {
    struct attrib *a = self->attrib;
    if (!a) return;
    int tid = atomic_load(&a->py_tid);
    if (!tid) return;
    char path[64], buf[64];
    snprintf(path, sizeof path, "/proc/self/task/%d/syscall", tid);
    long long probe = -2; /* unknown */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n > 0) {
            buf[n] = 0;
            probe = strncmp(buf, "running", 7) == 0 ? -1 : strtoll(buf, NULL, 10);
        }
    }
    atomic_store(&a->probe, probe);
    atomic_store(&a->probe_at, now_ns());
}

/* attrib_start(): record the gaps from now on (clears what was recorded). */
PyObject *Kernel_attrib_start(Kernel *self, PyObject *Py_UNUSED(ignored)) {
    struct attrib *a = self->attrib;
    if (!a) {
        a = PyMem_RawCalloc(1, sizeof *a);
        if (!a) return PyErr_NoMemory();
    }
    /* Whoever writes a cycle holds the cycle lock: take it to reset. */
    Py_BEGIN_ALLOW_THREADS
    while (!lock_try(self)) sched_yield();
    Py_END_ALLOW_THREADS
    atomic_store(&a->count, 0);
    /* The cycle before the first one recorded is the last one written (its
     * thread unknown: prev_tid 0). */
    a->prev_ms = self->last_time_ms;
    a->prev_write = atomic_load(&self->last_write_ns);
    a->prev_kind = atomic_load(&self->rescued_last);
    a->prev_tid = a->cycles = 0;
    a->gen = atomic_fetch_add(&generation, 1) + 1;
    atomic_store(&a->probe, -2);
    atomic_store(&a->probe_at, 0);
    a->stamping = 0;
    a->prev_sent = -1;
    self->attrib = a;
    lock_release(self);
    Py_RETURN_NONE;
}

/* attrib_read(since) -> (count, bytes, cycles): the records numbered
 * since..count-1 still in the ring, as int64 rows of ATTRIB_FIELDS; count is
 * the number pushed so far (records before count - ring size are gone);
 * cycles, the cycles written since attrib_start. */
PyObject *Kernel_attrib_read(Kernel *self, PyObject *arg) {
    long long since = PyLong_AsLongLong(arg);
    if (since == -1 && PyErr_Occurred()) return NULL;
    struct attrib *a = self->attrib;
    if (!a) return Py_BuildValue("(Ly#L)", 0LL, "", (Py_ssize_t)0, 0LL);
    long long rows[ATTRIB_RING][A_FIELDS];
    long long count = atomic_load(&a->count), first = since < 0 ? 0 : since;
    if (first < count - ATTRIB_RING) first = count - ATTRIB_RING;
    long long n = 0;
    for (long long i = first; i < count; i++, n++) memcpy(rows[n], a->ring[i % ATTRIB_RING], sizeof rows[n]);
    /* The rescue thread may have pushed meanwhile: drop rows it could have overwritten. */
    long long after = atomic_load(&a->count), skip = after - ATTRIB_RING - first;
    if (skip < 0) skip = 0;
    if (skip > n) skip = n;
    return Py_BuildValue("(Ly#L)", count, (const char *)rows[skip], (Py_ssize_t)((n - skip) * sizeof rows[0]),
                         a->cycles);
}

PyObject *k_attrib_fields(PyObject *mod, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("(sssssssssssssssssss)", "time_ms", "prev_ms", "prev_write_ns", "due_ns", "call_ns",
                         "read_ns", "write_ns", "tid", "kind", "prev_tid", "prev_kind", "cpu_ns", "delay_ns",
                         "window_ns", "probe", "probe_ns", "period_ns", "sent_ns", "prev_sent_ns");
}
