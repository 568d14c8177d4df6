/* hero_procd.engine._spawn: start a child directly inside its cgroup.
 *
 * clone3(CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP) on x86_64 (the child is born
 * in the cgroup, so nothing it forks can ever be outside it), glibc's clone()
 * elsewhere with the child writing its own pid to cgroup.procs before exec. The
 * child then does what posix_spawn did for us: new session, stdin from
 * /dev/null, stdout/stderr onto the pipes, chdir, handlers back to default,
 * nothing blocked, execve. The GIL is released for the whole call; the calling
 * thread is suspended until the child has exec'd or failed (CLONE_VFORK), and a
 * failure (chdir, exec, joining the cgroup) comes back as an OSError with the
 * stage that failed.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif

#define STACK_SIZE (64 * 1024)

enum { STAGE_NONE = 0, STAGE_CGROUP = 1, STAGE_CHDIR = 2, STAGE_EXEC = 3, STAGE_SETUP = 4, STAGE_CLONE = 5 };

struct ctx {
    const char *path;
    char *const *argv;
    char *const *envp;
    const char *cwd;
    int out_fd;
    int err_fd;
    int procs_fd; /* >= 0: the child writes its pid here (no clone3) */
    volatile int err;
    volatile int stage;
};

static void fail(struct ctx *c, int stage) {
    c->err = errno;
    c->stage = stage;
    _exit(127);
}

static int child_main(void *arg) {
    struct ctx *c = arg;
    struct sigaction dfl;
    sigset_t none;
    int s, fd, out_fd, err_fd;

    if (c->procs_fd >= 0) {
        char buf[24];
        int n = 0, i;
        char rev[24];
        long pid = syscall(SYS_getpid);
        do {
            rev[n++] = (char)('0' + pid % 10);
            pid /= 10;
        } while (pid > 0);
        for (i = 0; i < n; i++) buf[i] = rev[n - 1 - i];
        if (write(c->procs_fd, buf, (size_t)n) != n) fail(c, STAGE_CGROUP);
    }
    /* The child shares the parent's memory until it execs: no handler of the
       parent's may run here. Handled signals go back to the default; so do SIGPIPE
       and SIGXFSZ, which Python ignores and children must not inherit ignored. */
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (s = 1; s < NSIG; s++) {
        struct sigaction old;
        if (s == SIGKILL || s == SIGSTOP) continue;
        if (sigaction(s, NULL, &old) != 0) continue;
        if (old.sa_handler == SIG_DFL) continue;
        if (old.sa_handler == SIG_IGN && s != SIGPIPE && s != SIGXFSZ) continue;
        sigaction(s, &dfl, NULL);
    }
    if (setsid() < 0) fail(c, STAGE_SETUP);
    /* A daemon started with 0, 1 or 2 closed gets its pipes there: move them above 2
       first, or /dev/null would land on top of one, and dup2(fd, fd) would keep the
       close-on-exec flag (the child's stdout closed at exec). The copies are
       close-on-exec; c is the parent's memory, so the moved fds stay local. */
    out_fd = c->out_fd;
    err_fd = c->err_fd;
    if (out_fd < 3) {
        out_fd = fcntl(out_fd, F_DUPFD_CLOEXEC, 3);
        if (out_fd < 0) fail(c, STAGE_SETUP);
    }
    if (err_fd == c->out_fd) {
        err_fd = out_fd;
    } else if (err_fd < 3) {
        err_fd = fcntl(err_fd, F_DUPFD_CLOEXEC, 3);
        if (err_fd < 0) fail(c, STAGE_SETUP);
    }
    fd = open("/dev/null", O_RDONLY);
    if (fd < 0) fail(c, STAGE_SETUP);
    if (fd != 0) {
        if (dup2(fd, 0) < 0) fail(c, STAGE_SETUP);
        close(fd);
    }
    if (dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0) fail(c, STAGE_SETUP);
    if (c->cwd != NULL && chdir(c->cwd) != 0) fail(c, STAGE_CHDIR);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execve(c->path, c->argv, c->envp);
    fail(c, STAGE_EXEC);
    return 127;
}

#if defined(__x86_64__)
struct clone_args_v2 {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls,
        set_tid, set_tid_size, cgroup;
};

/* clone3 with a stack of the child's own: the child starts on that stack at the
   instruction after `syscall`, so it must not return through C frames (they are
   the parent's). It calls fn(arg) right there and exits with its result. */
static long clone3_run(struct clone_args_v2 *args, int (*fn)(void *), void *arg) {
    long ret;
    register void *r12 __asm__("r12") = (void *)fn;
    register void *r13 __asm__("r13") = arg;
    __asm__ volatile(
        "syscall\n\t"
        "test %%rax, %%rax\n\t"
        "jnz 1f\n\t"
        "xor %%ebp, %%ebp\n\t"
        "mov %%r13, %%rdi\n\t"
        "call *%%r12\n\t"
        "mov %%eax, %%edi\n\t"
        "mov $60, %%eax\n\t" /* SYS_exit */
        "syscall\n\t"
        "hlt\n"
        "1:\n\t"
        : "=a"(ret)
        : "a"((long)SYS_clone3), "D"(args), "S"((long)sizeof(*args)), "r"(r12), "r"(r13)
        : "rcx", "r11", "memory");
    return ret;
}
#define HAVE_CLONE3 1
#else
#define HAVE_CLONE3 0
#endif

static char **build_list(PyObject *seq, const char *what) {
    Py_ssize_t n, i;
    char **out;
    if (!PyList_Check(seq)) {
        PyErr_Format(PyExc_TypeError, "%s must be a list of bytes", what);
        return NULL;
    }
    n = PyList_GET_SIZE(seq);
    out = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (out == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(seq, i);
        if (!PyBytes_Check(item)) {
            PyMem_Free(out);
            PyErr_Format(PyExc_TypeError, "%s must be a list of bytes", what);
            return NULL;
        }
        out[i] = PyBytes_AS_STRING(item);
    }
    return out;
}

static PyObject *spawn(PyObject *self, PyObject *args) {
    (void)self;
    const char *path;
    PyObject *argv_list, *env_list, *cwd_obj;
    int out_fd, err_fd, cgroup_fd, procs_fd;
    struct ctx c;
    char **argv, **envp;
    void *stack;
    long pid;
    sigset_t all, old;
    int use_clone3;

    if (!PyArg_ParseTuple(args, "yO!O!Oiiii", &path, &PyList_Type, &argv_list, &PyList_Type,
                          &env_list, &cwd_obj, &out_fd, &err_fd, &cgroup_fd, &procs_fd))
        return NULL;
    if (cwd_obj != Py_None && !PyBytes_Check(cwd_obj)) {
        PyErr_SetString(PyExc_TypeError, "cwd must be bytes or None");
        return NULL;
    }
    argv = build_list(argv_list, "argv");
    if (argv == NULL) return NULL;
    envp = build_list(env_list, "env");
    if (envp == NULL) {
        PyMem_Free(argv);
        return NULL;
    }
    memset(&c, 0, sizeof c);
    c.path = path;
    c.argv = argv;
    c.envp = envp;
    c.cwd = cwd_obj == Py_None ? NULL : PyBytes_AS_STRING(cwd_obj);
    c.out_fd = out_fd;
    c.err_fd = err_fd;
    use_clone3 = HAVE_CLONE3 && cgroup_fd >= 0;
    c.procs_fd = use_clone3 ? -1 : procs_fd;

    Py_BEGIN_ALLOW_THREADS
    stack = mmap(NULL, STACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK,
                 -1, 0);
    if (stack == MAP_FAILED) {
        pid = -errno;
    } else {
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
#if HAVE_CLONE3
        if (use_clone3) {
            struct clone_args_v2 ca;
            memset(&ca, 0, sizeof ca);
            ca.flags = CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP;
            ca.exit_signal = SIGCHLD;
            ca.stack = (uint64_t)(uintptr_t)stack;
            ca.stack_size = STACK_SIZE;
            ca.cgroup = (uint64_t)cgroup_fd;
            pid = clone3_run(&ca, child_main, &c);
        } else
#endif
        {
            pid = clone(child_main, (char *)stack + STACK_SIZE, CLONE_VM | CLONE_VFORK | SIGCHLD,
                        &c);
            if (pid < 0) pid = -errno;
        }
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        munmap(stack, STACK_SIZE);
        if (pid > 0 && c.stage != STAGE_NONE) {
            int status;
            while (waitpid((pid_t)pid, &status, 0) < 0 && errno == EINTR) {
            }
        }
    }
    Py_END_ALLOW_THREADS

    PyMem_Free(argv);
    PyMem_Free(envp);
    if (pid < 0) {
        return Py_BuildValue("(lii)", -1L, (int)-pid, STAGE_CLONE);
    }
    if (c.stage != STAGE_NONE) return Py_BuildValue("(lii)", -1L, c.err, c.stage);
    return Py_BuildValue("(lii)", pid, 0, 0);
}

static PyMethodDef methods[] = {
    {"spawn", spawn, METH_VARARGS,
     "spawn(path, argv, env, cwd, out_fd, err_fd, cgroup_fd, procs_fd) -> (pid, errno, stage)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_spawn", "Spawn a child into its cgroup before it execs.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__spawn(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "HAVE_CLONE3", HAVE_CLONE3) < 0) return NULL;
    return m;
}
