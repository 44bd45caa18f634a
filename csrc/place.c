/* Placement of the serving thread (see docs/kernel-serving.md#placement).
 *
 * Linux wakes a real-time thread on the CPU it last ran on whenever the task
 * running there is not real-time itself, and not where the state that woke it
 * arrived. "auto" keeps the thread on the CPU the states come in on
 * (place_peer, follow_tick): the datagram's wake-up then needs no interrupt to
 * another CPU, which a halted or descheduled vCPU can take milliseconds to
 * answer. Where the socket cannot tell that CPU, "auto" does what
 * "least-busy" does: the thread looks at /proc/stat twice a second, after a
 * cycle is written, and if its CPU was busy with other work (its own time
 * taken out) while an allowed CPU was clearly less busy, it moves there
 * (affinity to that CPU, then back to the whole allowed set, so the scheduler
 * stays free to move it again). A CPU number pins it; "off" leaves it alone.
 * No allocation on the serving path: the buffers are made by place_open.
 * Whatever the mode, the thread notes its CPU twice a second (stats.serve_cpu). */
#include "kernel.h"

#include <fcntl.h>
#include <sched.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PLACE_CPUS 256
#define PLACE_BUF 32768
#define PLACE_EVERY_NS 500000000LL
#define PLACE_BUSY 0.70 /* its CPU is at least this busy with other work */
#define PLACE_GAP 0.30  /* and another allowed CPU at least this much less */
#define PLACE_STRANGERS 100 /* datagrams from elsewhere before following is given up */

struct place {
    int fd, ncpu;
    cpu_set_t allowed;
    long long next_ns, own_ns;
    long long busy[PLACE_CPUS], total[PLACE_CPUS];
    int have; /* a first sample was taken */
    int peer;  /* auto: 1 the socket was connected to the robot, -1 it will not be */
    int strangers; /* datagrams peeked that the robot did not send */
    char buf[PLACE_BUF];
};

void place_close(Kernel *self) {
    struct place *p = self->place;
    if (!p) return;
    if (p->fd >= 0) close(p->fd);
    PyMem_RawFree(p);
    self->place = NULL;
}

/* Before the thread starts (the caller holds the GIL). 0, or -1 with an exception set. */
int place_open(Kernel *self) {
    place_close(self);
    struct place *p = PyMem_RawCalloc(1, sizeof *p);
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    p->fd = -1;
    atomic_store(&self->p_follows, 0);
    if (sched_getaffinity(0, sizeof p->allowed, &p->allowed) < 0) CPU_ZERO(&p->allowed);
    if (self->p_mode >= 0 && (self->p_mode >= CPU_SETSIZE || !CPU_ISSET(self->p_mode, &p->allowed))) {
        PyErr_Format(PyExc_ValueError, "serve_cpu=%d is not a CPU this process may run on", self->p_mode);
        PyMem_RawFree(p);
        return -1;
    }
    p->ncpu = CPU_COUNT(&p->allowed) < PLACE_CPUS ? PLACE_CPUS : 0; /* more CPUs than we track: leave it alone */
    self->place = p;
    return 0;
}

static long long thread_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* 0, or -1 where the thread may not run on cpu (it then stays where it was). */
static int move_to(struct place *p, int cpu) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    if (sched_setaffinity(0, sizeof one, &one) < 0) return -1; /* else migrated now */
    if (p) sched_setaffinity(0, sizeof p->allowed, &p->allowed);
    return 0;
}

/* On the C thread as it starts: a pinned CPU is applied once, for good. */
void place_thread_start(Kernel *self) {
    if (self->place && self->p_mode >= 0) {
        move_to(NULL, self->p_mode);
        atomic_store(&self->p_cpu, sched_getcpu());
    }
}

/* "auto", before a state is read, on the serving thread. Linux notes which
 * CPU received a socket's datagrams (SO_INCOMING_CPU) only for a connected UDP
 * socket, so the first time a state from the robot's address waits,
 * libfranka's socket is connected to its sender, the address libfranka's
 * sendto names anyway. It stays connected: undoing it (AF_UNSPEC) would also
 * release the socket's port, bound as port 0, and the robot's next states
 * would find no socket. Without the robot's address it is not connected
 * (docs/kernel-serving.md#placement). */
void place_peer(Kernel *self) {
    struct place *p = self->place;
    if (!p || self->p_mode != PLACE_AUTO || p->peer) return;
    if (!self->p_robot_ip) {
        p->peer = -1;
        return;
    }
    struct sockaddr_storage from;
    socklen_t len = sizeof from;
    char byte;
    if (recvfrom(self->r_fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT, (struct sockaddr *)&from, &len) < 0) return;
    if (from.ss_family != AF_INET || ((struct sockaddr_in *)&from)->sin_addr.s_addr != self->p_robot_ip) {
        if (++p->strangers >= PLACE_STRANGERS) p->peer = -1;
        return;
    }
    p->peer = connect(self->r_fd, (struct sockaddr *)&from, len) == 0 ? 1 : -1;
}

/* "auto", after each cycle written: moved to the CPU the last state came in
 * on (then allowed everywhere again, like a least-busy move, so the scheduler
 * can still take it off a CPU a higher real-time thread holds); 0 where the
 * socket cannot tell. franka-sim's sending thread hops between CPUs (~100
 * times a second here), so the check is per cycle (one getsockopt); a move is
 * two more system calls, made after the command is out. */
static int follow_tick(Kernel *self, struct place *p) {
    int cpu = -1;
    socklen_t len = sizeof cpu;
    if (p->peer <= 0 || getsockopt(self->r_fd, SOL_SOCKET, SO_INCOMING_CPU, &cpu, &len) < 0 || cpu < 0 ||
        cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &p->allowed)) {
        if (atomic_load(&self->p_follows)) atomic_store(&self->p_follows, 0);
        return 0;
    }
    if (!atomic_load(&self->p_follows)) atomic_store(&self->p_follows, 1);
    if (cpu == sched_getcpu()) return 1;
    if (move_to(p, cpu) < 0) { /* that CPU is gone from our set (a cpuset changed): stop following */
        p->peer = -1;
        atomic_store(&self->p_follows, 0);
        return 0;
    }
    atomic_fetch_add(&self->p_moves, 1);
    atomic_store(&self->p_cpu, sched_getcpu());
    return 1;
}

/* Reads /proc/stat's per-CPU lines into busy/total (clock ticks); the number of CPUs read. */
static int read_stat(struct place *p, long long *busy, long long *total) {
    if (p->fd < 0) p->fd = open("/proc/stat", O_RDONLY | O_CLOEXEC);
    if (p->fd < 0) return 0;
    ssize_t n = pread(p->fd, p->buf, PLACE_BUF - 1, 0);
    if (n <= 0) return 0;
    p->buf[n] = 0;
    int seen = 0;
    char *line = strchr(p->buf, '\n'); /* past the "cpu " total */
    while (line && strncmp(line + 1, "cpu", 3) == 0) {
        char *s = line + 4, *end;
        long cpu = strtol(s, &end, 10);
        if (end == s || cpu < 0 || cpu >= PLACE_CPUS) break;
        long long v[8] = {0};
        s = end;
        for (int i = 0; i < 8; i++) {
            v[i] = strtoll(s, &end, 10);
            s = end;
        }
        /* user nice system idle iowait irq softirq steal */
        busy[cpu] = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
        total[cpu] = busy[cpu] + v[3] + v[4];
        seen++;
        line = strchr(line + 1, '\n');
    }
    return seen;
}

/* After a cycle is written, on the serving thread, outside the cycle lock. */
void place_tick(Kernel *self) {
    struct place *p = self->place;
    if (!p) return;
    int followed = self->p_mode == PLACE_AUTO && follow_tick(self, p);
    long long now = now_ns();
    if (now < p->next_ns) return;
    p->next_ns = now + PLACE_EVERY_NS;
    int cur = sched_getcpu();
    atomic_store(&self->p_cpu, cur); /* for stats.serve_cpu, whatever the mode */
    if (followed || (self->p_mode != PLACE_AUTO && self->p_mode != PLACE_LEAST_BUSY) || !p->ncpu) return;
    static __thread long long busy[PLACE_CPUS], total[PLACE_CPUS];
    if (!read_stat(p, busy, total)) return;
    long long own = thread_cpu_ns();
    if (p->have && cur >= 0 && cur < PLACE_CPUS && CPU_COUNT(&p->allowed) > 1) {
        double tick_ns = 1e9 / (double)sysconf(_SC_CLK_TCK);
        double mine = (own - p->own_ns) / tick_ns; /* our own time, counted as cur's */
        double load_cur = -1, best = 2;
        int target = -1;
        for (int c = 0; c < PLACE_CPUS; c++) {
            if (!CPU_ISSET(c, &p->allowed)) continue;
            long long dt = total[c] - p->total[c];
            if (dt <= 0) continue;
            double load = (busy[c] - p->busy[c] - (c == cur ? mine : 0)) / (double)dt;
            if (c == cur)
                load_cur = load;
            else if (load < best) {
                best = load;
                target = c;
            }
        }
        if (target >= 0 && load_cur >= PLACE_BUSY && best <= load_cur - PLACE_GAP && move_to(p, target) == 0) {
            atomic_fetch_add(&self->p_moves, 1);
            atomic_store(&self->p_cpu, sched_getcpu());
            p->next_ns = now + 2 * PLACE_EVERY_NS; /* let the new placement show in the figures first */
        }
    }
    memcpy(p->busy, busy, sizeof busy);
    memcpy(p->total, total, sizeof total);
    p->own_ns = own;
    p->have = 1;
}

/* place(mode[, robot_ip]): mode -1 auto, -2 off, -3 least-busy, or a CPU to pin
 * to; robot_ip the robot's IPv4 address as 4 bytes (None: unknown, so "auto"
 * cannot follow the states). Takes effect at the next rescue_start. */
PyObject *Kernel_place(Kernel *self, PyObject *args) {
    long mode;
    PyObject *ip = Py_None;
    if (!PyArg_ParseTuple(args, "l|O:place", &mode, &ip)) return NULL;
    if (mode < PLACE_LEAST_BUSY || mode >= CPU_SETSIZE) {
        PyErr_Format(PyExc_ValueError, "place: -1 (auto), -2 (off), -3 (least-busy) or a CPU number, got %ld", mode);
        return NULL;
    }
    unsigned int addr = 0;
    if (ip != Py_None) {
        if (!PyBytes_Check(ip) || PyBytes_GET_SIZE(ip) != 4) {
            PyErr_SetString(PyExc_TypeError, "place: robot_ip must be 4 bytes (socket.inet_aton) or None");
            return NULL;
        }
        memcpy(&addr, PyBytes_AS_STRING(ip), 4);
    }
    self->p_mode = (int)mode;
    self->p_robot_ip = addr;
    Py_RETURN_NONE;
}

/* place_status() -> (cpu, moves, follows): the CPU the C thread was last seen on
 * (-1: not yet), its moves, and whether it follows the states' CPU. */
PyObject *Kernel_place_status(Kernel *self, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("(iLO)", atomic_load(&self->p_cpu), (long long)atomic_load(&self->p_moves),
                         atomic_load(&self->p_follows) ? Py_True : Py_False);
}
