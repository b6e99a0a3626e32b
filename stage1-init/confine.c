/* rktd-init's confinement: the mounts it makes in each app's rootfs, and in the child of a fork, what
 * the app becomes before exec (in order: cgroups, environment and socket-activation fds, AppArmor or
 * SELinux exec label and OOM score, its rootfs as root by pivot_root in a mount namespace of its own,
 * working directory, capability bounding and inheritable sets, no-new-privileges, groups, gid, uid,
 * the capabilities it keeps, its seccomp filter, exec). */
#include "rktd-init.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/capability.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

/* -- the app's API file systems (in the init) ----------------------------------------------------- */

/* `path` inside `root` with symlinks resolved as if `root` were `/`: an image's symlink never points a
 * mount target outside the image. */
static int in_root(const char *root, const char *path, char *out, size_t outlen) {
    char rest[PATH_MAX], resolved[PATH_MAX] = "", cand[PATH_MAX * 2], link[PATH_MAX];
    int hops = 0;
    if (snprintf(rest, sizeof rest, "%s", path) >= (int)sizeof rest)
        return errno = ENAMETOOLONG, -1;
    for (;;) {
        char *s = rest;
        while (*s == '/')
            s++;
        if (!*s)
            break;
        size_t len = strcspn(s, "/");
        char part[NAME_MAX + 1];
        if (len > NAME_MAX)
            return errno = ENAMETOOLONG, -1;
        memcpy(part, s, len);
        part[len] = 0;
        memmove(rest, s + len, strlen(s + len) + 1);
        if (!strcmp(part, "."))
            continue;
        if (!strcmp(part, "..")) {
            char *slash = strrchr(resolved, '/');
            if (slash)
                *slash = 0;
            else
                resolved[0] = 0;
            continue;
        }
        snprintf(cand, sizeof cand, "%s%s%s/%s", root, *resolved ? "/" : "", resolved, part);
        struct stat st;
        if (lstat(cand, &st) == 0 && S_ISLNK(st.st_mode)) {
            if (++hops > 40)
                return errno = ELOOP, -1;
            ssize_t n = readlink(cand, link, sizeof link - 1);
            if (n < 0)
                return -1;
            link[n] = 0;
            if (link[0] == '/')
                resolved[0] = 0;
            if ((size_t)n + 1 + strlen(rest) + 1 > sizeof rest)
                return errno = ENAMETOOLONG, -1;
            memmove(rest + n + 1, rest, strlen(rest) + 1);
            memcpy(rest, link, (size_t)n);
            rest[n] = '/';
            continue;
        }
        if (strlen(resolved) + 1 + len + 1 > sizeof resolved)
            return errno = ENAMETOOLONG, -1;
        if (*resolved)
            strcat(resolved, "/");
        strcat(resolved, part);
    }
    if (snprintf(out, outlen, "%s%s%s", root, *resolved ? "/" : "", resolved) >= (int)outlen)
        return errno = ENAMETOOLONG, -1;
    return 0;
}

/* Make the mount at `target` and every mount below it read-only, their other flags kept. A remount
 * (MS_REMOUNT | MS_BIND | MS_RDONLY) changes one mount only, whatever MS_REC says: under a read-only
 * /sys, the cgroup file systems nspawn mounts read-write stayed writable, so an app could make cgroups
 * and move itself out of its own (out of its memory and CPU limits). */
static int read_only_tree(const char *target) {
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442 /* the same number on every architecture */
#endif
    struct {
        uint64_t attr_set, attr_clr, propagation, userns_fd;
    } attr = {.attr_set = 0x1 /* MOUNT_ATTR_RDONLY */};
    if (syscall(SYS_mount_setattr, AT_FDCWD, target, 0x8000 /* AT_RECURSIVE */, &attr, sizeof attr) == 0)
        return 0;
    /* A kernel before 5.12 (ENOSYS), or an nspawn whose seccomp filter predates the call (EPERM):
     * remount each mount at or below `target`, found in mountinfo (field 5, octal escapes), with the
     * flags it has. */
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (!f)
        return -1;
    char *line = NULL, point[PATH_MAX];
    size_t cap = 0, tlen = strlen(target);
    int ret = 0;
    while (ret == 0 && getline(&line, &cap, f) > 0) {
        char *field = line;
        for (int i = 0; i < 4 && field; i++)
            field = strchr(field, ' ') ? strchr(field, ' ') + 1 : NULL;
        if (!field)
            continue;
        size_t n = 0;
        for (char *c = field; *c && *c != ' ' && n + 1 < sizeof point; n++)
            if (c[0] == '\\' && c[1] >= '0' && c[1] <= '3' && c[2] && c[3]) {
                point[n] = (char)((c[1] - '0') << 6 | (c[2] - '0') << 3 | (c[3] - '0'));
                c += 4;
            } else {
                point[n] = *c++;
            }
        point[n] = 0;
        if (strncmp(point, target, tlen) || (point[tlen] && point[tlen] != '/'))
            continue;
        struct statvfs sv;
        unsigned long keep = 0;
        if (statvfs(point, &sv) == 0)
            keep = (sv.f_flag & ST_NOSUID ? MS_NOSUID : 0) | (sv.f_flag & ST_NODEV ? MS_NODEV : 0) |
                   (sv.f_flag & ST_NOEXEC ? MS_NOEXEC : 0);
        if (mount("none", point, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | keep, NULL) < 0)
            ret = -1;
    }
    free(line);
    fclose(f);
    return ret;
}

void prepare_rootfs(const struct app *a, bool api_vfs_writable) {
    static const char *const subs[] = {"proc", "dev", "sys"};
    for (int i = 0; i < 3; i++) {
        bool ro = i == 2 && !api_vfs_writable;
        char target[PATH_MAX], src[8];
        snprintf(src, sizeof src, "/%s", subs[i]);
        const char *what = "resolve";
        if (in_root(a->rootfs, subs[i], target, sizeof target) < 0)
            goto bad;
        struct stat st;
        what = "mkdir";
        if (lstat(target, &st) < 0 && mkdir_p(target) < 0)
            goto bad;
        what = "mount";
        if (mount(src, target, NULL, MS_BIND | MS_REC, NULL) < 0)
            goto bad;
        what = "make read-only";
        if (ro && read_only_tree(target) < 0) {
            int e = errno;
            umount2(target, MNT_DETACH); /* no /sys at all rather than a writable one */
            errno = e;
            goto bad;
        }
        continue;
    bad:
        logmsg("%s: cannot mount %s: %s %s: %s", a->name, src, what, target, strerror(errno));
    }
}

/* -- capabilities --------------------------------------------------------------------------------- */

static const char *const CAPABILITIES[] = {
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
    "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
};
#define NCAPS ((int)(sizeof CAPABILITIES / sizeof CAPABILITIES[0]))
/* The container runtimes' default set (rkt's, Docker's): what an app keeps unless told otherwise.
 * Must match DEFAULT_APP_CAPS in rktd_units/stage1/init.py (checked by tests). */
static const char *const DEFAULT_APP_CAPS[] = {
    "CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_MKNOD", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP",
    "CAP_SETUID", "CAP_SYS_CHROOT",
};

static int cap_index(const char *name) {
    for (int i = 0; i < NCAPS; i++)
        if (!strcmp(CAPABILITIES[i], name))
            return i;
    return -1;
}

/* The capabilities an app keeps: its retain set (else the default, else all), less its remove set. */
static uint64_t app_caps(const struct app *a, bool all_caps) {
    uint64_t keep = 0;
    if (a->has_retain) {
        for (size_t i = 0; i < a->caps_retain.n; i++) {
            int c = cap_index(a->caps_retain.v[i]);
            if (c >= 0 && !in_strv(&a->caps_remove, a->caps_retain.v[i]))
                keep |= 1ULL << c;
        }
    } else if (!all_caps) {
        for (size_t i = 0; i < sizeof DEFAULT_APP_CAPS / sizeof DEFAULT_APP_CAPS[0]; i++)
            if (!in_strv(&a->caps_remove, DEFAULT_APP_CAPS[i]))
                keep |= 1ULL << cap_index(DEFAULT_APP_CAPS[i]);
    } else {
        for (int c = 0; c < NCAPS; c++)
            if (!in_strv(&a->caps_remove, CAPABILITIES[c]))
                keep |= 1ULL << c;
    }
    return keep;
}

static int capget3(uint64_t *eff, uint64_t *perm, uint64_t *inh) {
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    if (syscall(SYS_capget, &h, d) < 0)
        return -1;
    *eff = d[0].effective | (uint64_t)d[1].effective << 32;
    *perm = d[0].permitted | (uint64_t)d[1].permitted << 32;
    *inh = d[0].inheritable | (uint64_t)d[1].inheritable << 32;
    return 0;
}

static int capset3(uint64_t eff, uint64_t perm, uint64_t inh) {
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2] = {
        {(uint32_t)eff, (uint32_t)perm, (uint32_t)inh},
        {(uint32_t)(eff >> 32), (uint32_t)(perm >> 32), (uint32_t)(inh >> 32)},
    };
    return (int)syscall(SYS_capset, &h, d);
}

/* -- the app's own process: from fork to exec ----------------------------------------------------- */

static const struct app *child_app;
static const char *child_argv0;

static _Noreturn PRINTF(1, 2) void child_fail(const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char line[3072];
    int n = snprintf(line, sizeof line, "rktd-init: %s: %s: %s", child_app->name, child_argv0, msg);
    size_t len = n < 0 ? 0 : (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
    for (size_t i = 0; i < len; i++) /* one line, whatever the argument held (a newline, an escape) */
        if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f)
            line[i] = '?';
    dprintf(2, "%.*s\n", (int)len, line);
    _exit(127);
}

static void child_signals(void) {
    /* Every disposition the init was given or set (an ignored signal survives exec), then the mask. */
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            signal(sig, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL); /* a pending stop signal ends the child here */
}

static void env_set(struct strv *env, const char *key, const char *value) {
    size_t klen = strlen(key);
    char *item = xasprintf("%s=%s", key, value);
    for (size_t i = 0; i < env->n; i++)
        if (!strncmp(env->v[i], key, klen) && env->v[i][klen] == '=') {
            env->v[i] = item;
            return;
        }
    strv_push(env, item);
}

static const char *env_get(const struct strv *env, const char *key) {
    size_t klen = strlen(key);
    const char *found = NULL;
    for (size_t i = 0; i < env->n; i++)
        if (!strncmp(env->v[i], key, klen) && env->v[i][klen] == '=')
            found = env->v[i] + klen + 1;
    return found;
}

static void set_exec_labels(const struct app *a) {
    if (a->apparmor && *a->apparmor) {
        const char *path = "/proc/self/attr/apparmor/exec";
        if (access(path, F_OK) < 0)
            path = "/proc/self/attr/exec";
        char *v = xasprintf("exec %s", a->apparmor);
        if (write_file(path, v) < 0) {
            int e = errno;
            child_fail("os/linux/apparmor-profile %s: %s%s", a->apparmor, strerror(e),
                       e == ENOENT ? " (no such profile is loaded: see aa-status)" : "");
        }
    }
    if (a->selinux && *a->selinux && write_file("/proc/self/attr/exec", a->selinux) < 0)
        child_fail("/proc/self/attr/exec: %s", strerror(errno));
    if (a->has_oom) {
        char v[16];
        snprintf(v, sizeof v, "%d", a->oom);
        if (write_file("/proc/self/oom_score_adj", v) < 0) {
            int e = errno;
            child_fail("os/linux/oom-score-adj %d: %s%s", a->oom, strerror(e),
                       e == EACCES || e == EPERM ? " (lowering it needs CAP_SYS_RESOURCE)" : "");
        }
    }
}

/* Built (not loaded) while the host's view is still there; loaded just before exec. */
static scmp_filter_ctx seccomp_filter(const struct app *a) {
    if (!a->seccomp_mode)
        return NULL;
    bool retain = a->seccomp_mode == 2;
    uint32_t fail = a->seccomp_errno >= 0 ? SCMP_ACT_ERRNO((uint32_t)a->seccomp_errno)
                                          : SCMP_ACT_KILL_PROCESS;
    scmp_filter_ctx ctx = seccomp_init(retain ? fail : SCMP_ACT_ALLOW);
    if (!ctx)
        child_fail("seccomp_init failed");
    for (size_t i = 0; i <= a->syscalls.n; i++) {
        const char *name = i < a->syscalls.n ? a->syscalls.v[i] : retain ? "execve" : NULL;
        if (!name)
            break;
        int nr = seccomp_syscall_resolve_name(name);
        if (nr < 0)
            child_fail("seccomp: unknown system call '%s'", name);
        int ret = seccomp_rule_add(ctx, retain ? SCMP_ACT_ALLOW : fail, nr, 0);
        if (ret < 0 && ret != -EEXIST)
            child_fail("seccomp rule for %s: %s", name, strerror(-ret));
    }
    return ctx;
}

static void enter_root(const char *rootfs) {
    if (unshare(CLONE_NEWNS) < 0)
        child_fail("unshare(CLONE_NEWNS): %s", strerror(errno));
    if (mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        child_fail("mount none on /: %s", strerror(errno));
    if (chdir(rootfs) < 0)
        child_fail("chdir %s: %s", rootfs, strerror(errno));
    if (syscall(SYS_pivot_root, ".", ".") < 0)
        child_fail("pivot_root %s: %s", rootfs, strerror(errno));
    if (umount2(".", MNT_DETACH) < 0)
        child_fail("umount the old root: %s", strerror(errno));
    if (chdir("/") < 0)
        child_fail("chdir /: %s", strerror(errno));
}

static void restrict_caps(uint64_t keep) {
    /* Every capability the kernel may know (up to 63), not only those named above: one a newer kernel
     * adds must not stay in the bounding set, where an exec as root would grant it. */
    for (int c = 0; c < 64; c++)
        if (!(keep & 1ULL << c) && prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno != EINVAL)
            child_fail("prctl(%d): %s", PR_CAPBSET_DROP, strerror(errno));
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
        child_fail("prctl(PR_CAP_AMBIENT_CLEAR_ALL): %s", strerror(errno));
}

/* After setuid: effective and permitted down to `keep`, and the inheritable set emptied: with it, a
 * non-root app could gain the capabilities a file grants as inheritable (CVE-2022-24769; runc and
 * moby empty it too). Root keeps the bounding set. */
static void drop_caps(uint64_t keep) {
    uint64_t eff, perm, inh;
    if (capget3(&eff, &perm, &inh) < 0)
        child_fail("capget: %s", strerror(errno));
    if (capset3(eff & keep, perm & keep, 0) < 0)
        child_fail("capset: %s", strerror(errno));
}

/* execvpe with PATH from the app's environment (else /bin:/usr/bin, as Python's os.execvpe): the
 * first error other than "not found" wins, else the last. */
static _Noreturn void exec_app(char **argv, struct strv *env) {
    const char *file = argv[0];
    if (strchr(file, '/')) {
        execve(file, argv, env->v);
        child_fail("exec %s: %s", file, strerror(errno));
    }
    const char *path = env_get(env, "PATH");
    if (!path)
        path = "/bin:/usr/bin";
    int saved = 0, last = ENOENT;
    for (const char *p = path;;) {
        size_t len = strcspn(p, ":");
        char full[PATH_MAX];
        if (snprintf(full, sizeof full, "%.*s%s%s", (int)len, p, len ? "/" : "", file) < (int)sizeof full) {
            execve(full, argv, env->v);
            last = errno;
            if (last != ENOENT && last != ENOTDIR && !saved)
                saved = last;
        }
        if (!p[len])
            break;
        p += len + 1;
    }
    child_fail("exec %s: %s", file, strerror(saved ? saved : last));
}

/* The directory (plus `suffix`) of the app's i-th cgroup: its path under the v2 root for "unified",
 * else under the v1 controller's mount at /cgroup/<controller>. */
void app_cgroup(char *buf, size_t len, const struct app *a, size_t i, const char *suffix) {
    const char *ctl = a->cg_controllers.v[i];
    if (!strcmp(ctl, "unified"))
        snprintf(buf, len, "%s/%s%s", V2_ROOT, a->cg_paths.v[i], suffix);
    else
        snprintf(buf, len, "/cgroup/%s/%s%s", ctl, a->cg_paths.v[i], suffix);
}

/* The app's cgroups (or the handler's: the same), joined before anything else. */
static void join_cgroups(const struct app *a) {
    char buf[PATH_MAX], pid[16];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    for (size_t i = 0; i < a->cg_controllers.n; i++) {
        app_cgroup(buf, sizeof buf, a, i, "/cgroup.procs");
        if (write_file(buf, pid) < 0)
            child_fail("%s: %s", buf, strerror(errno));
    }
}

/* The socket-activation fds moved to 3, 4, ... and LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES set. */
static void pass_listen_fds(const struct app *a, struct strv *env, int *fds, size_t nfds) {
    int *high = xrealloc(NULL, nfds * sizeof *high);
    for (size_t i = 0; i < nfds; i++)
        if ((high[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3 + (int)nfds)) < 0)
            child_fail("listen fd %d: %s", fds[i], strerror(errno));
    for (size_t i = 0; i < nfds; i++)
        if (dup2(high[i], 3 + (int)i) < 0)
            child_fail("listen fd %d: %s", fds[i], strerror(errno));
    char n[24], pid[16];
    snprintf(n, sizeof n, "%zu", nfds);
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    env_set(env, "LISTEN_FDS", n);
    env_set(env, "LISTEN_PID", pid);
    if (!a->fd_names.n)
        return;
    size_t len = 1;
    for (size_t i = 0; i < a->fd_names.n; i++)
        len += strlen(a->fd_names.v[i]) + 1;
    char *names = xrealloc(NULL, len);
    names[0] = 0;
    for (size_t i = 0; i < a->fd_names.n; i++) {
        if (i)
            strcat(names, ":");
        strcat(names, a->fd_names.v[i]);
    }
    env_set(env, "LISTEN_FDNAMES", names);
}

/* The app's environment: its own (the last of a repeated key wins), NOTIFY_SOCKET, the listen fds. */
static struct strv app_env(const struct app *a, int *fds, size_t nfds, bool main_process) {
    struct strv env = {0};
    for (size_t i = 0; i < a->env.n; i++) {
        char *eq = strchr(a->env.v[i], '=');
        *eq = 0;
        env_set(&env, a->env.v[i], eq + 1);
        *eq = '=';
    }
    if (main_process && a->notify) {
        char *v = xasprintf("@%s", a->notify_name);
        env_set(&env, "NOTIFY_SOCKET", v);
    }
    if (nfds)
        pass_listen_fds(a, &env, fds, nfds);
    return env;
}

/* Its ids (groups, gid, uid) and the capabilities it keeps, then its seccomp filter. */
static void become_user(const struct app *a, uint64_t keep, scmp_filter_ctx filt) {
    if ((a->no_new_privs || filt) && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        child_fail("prctl(%d): %s", PR_SET_NO_NEW_PRIVS, strerror(errno));
    if (setgroups(a->ngroups, a->groups) < 0)
        child_fail("setgroups: %s", strerror(errno));
    if (setgid(a->gid) < 0)
        child_fail("setgid %u: %s", (unsigned)a->gid, strerror(errno));
    if (setuid(a->uid) < 0)
        child_fail("setuid %u: %s", (unsigned)a->uid, strerror(errno));
    drop_caps(keep);
    if (filt) {
        int ret = seccomp_load(filt);
        if (ret < 0)
            child_fail("seccomp_load: %s", strerror(-ret));
    }
}

_Noreturn void become(const struct config *c, const struct app *a, char **argv, const int out[2], int *fds,
                      size_t nfds, bool main_process) {
    child_app = a;
    child_argv0 = argv[0];
    child_signals();
    setpgid(0, 0);
    if (out[0] >= 0 && (dup2(out[0], 1) < 0 || dup2(out[1], 2) < 0))
        child_fail("dup2: %s", strerror(errno));
    join_cgroups(a);
    struct strv env = app_env(a, fds, nfds, main_process);
    set_exec_labels(a);
    scmp_filter_ctx filt = seccomp_filter(a);
    enter_root(a->rootfs);
    const char *workdir = a->workdir && *a->workdir ? a->workdir : "/";
    if (chdir(workdir) < 0)
        child_fail("chdir %s: %s", workdir, strerror(errno));
    uint64_t keep = app_caps(a, c->all_caps);
    restrict_caps(keep);
    become_user(a, keep, filt);
    exec_app(argv, &env);
}
