/* rktd-init: PID 1 of an nspawn pod (stage1), written in C so that a pod's start costs no second
 * interpreter and an idle pod holds a few hundred KiB, not megabytes.
 *
 * Usage: rktd-init [CONFIG]        run the pod described by CONFIG (default /rktd/init.cfg)
 *        rktd-init --check CONFIG  only parse CONFIG: exit 0 if valid, else 254 with one line
 *
 * What it does, in order: per-app cgroup v2 leaves (when the host is v2-only and an app has
 * limits), the pod's sysctls, /proc, /dev and /sys bound into each app's rootfs
 * (/opt/stage2/<app>/rootfs, mounted by stage1; /sys read-only unless the config says
 * api_vfs_writable), the pre-start handlers, then each app forked into a mount namespace of its
 * own with its rootfs as root (pivot_root), its cgroups, socket-activation fds (LISTEN_FDS,
 * LISTEN_PID = the app's pid, LISTEN_FDNAMES), AppArmor/SELinux exec label, OOM score,
 * capability sets (bounding, inheritable, permitted, effective; ambient cleared), groups, gid,
 * uid, no-new-privileges and, last before exec, its seccomp filter. Each app's stdout/stderr is
 * relayed line by line to journald's native socket (MESSAGE, PRIORITY 6/3, SYSLOG_IDENTIFIER,
 * RKTD_POD, RKTD_APP, RKTD_UUID), or without journald to the init's own stdout/stderr as
 * `app[NAME]: line`. READY=1 goes to $NOTIFY_SOCKET once the apps are started, or once every app
 * that supports sd_notify said READY=1 on its own socket. The pod ends when all apps ended, or as
 * soon as one failed (SIGTERM to the others, the stop timeout, SIGKILL); post-stop handlers run
 * as each app ends, its exit status is written to /rktd/status/<app>, and the init's exit status
 * is the failing app's.
 *
 * The config (written by rktd_units/stage1/nspawn.py `init_config`): a sequence of records, each
 * a key and a value, both NUL-terminated byte strings: `key\0value\0`. The first record is
 * `rktd-init-config\0` `1\0` (format version), the last `end\0\0`, with nothing after it.
 * Pod keys: uuid, name, stop_timeout (seconds), interactive, all_caps, api_vfs_writable (0/1),
 * sysctl (`name=value`, repeated, applied in order). `app\0NAME\0` opens an app's section; the
 * app keys that follow belong to it: exec, pre_start, post_stop (value N, followed by N `arg`
 * records: one argv; pre_start and post_stop repeat, one handler each), env (`KEY=value`), uid,
 * gid, group (a supplementary gid, repeated), workdir, notify (0/1), caps_retain_set (1: a retain
 * set is given, possibly empty), caps_retain, caps_remove (capability names, repeated),
 * no_new_privs (0/1), oom_score_adj, apparmor_profile, selinux_context, seccomp (remove|retain),
 * seccomp_errno, syscall (repeated), listen_fd (index into the inherited fds), listen_fd_name,
 * cgroup (`controller=path` under /cgroup/<controller>), cgroup_v2 (`file=value`).
 * Anything else (an unknown key, a missing end record, a bad number) is refused with one line.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/capability.h>
#include <poll.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <grp.h>

#define CONFIG_PATH "/rktd/init.cfg"
#define CONFIG_MAX (16 << 20)
#define REFUSED 254
#define V2_ROOT "/sys/fs/cgroup"
#define JOURNAL_SOCKET "/run/systemd/journal/socket"
#define MAX_LINE (48 * 1024)
#define READ_CHUNK 65536
#define DRAIN_MAX 2.0 /* seconds of output still relayed once every app has ended */

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

/* -- small containers ----------------------------------------------------------------------------- */

struct strv {
    char **v; /* NULL-terminated */
    size_t n, cap;
};

struct argvs {
    struct strv *v;
    size_t n;
};

static _Noreturn void out_of_memory(void) {
    static const char msg[] = "rktd-init: out of memory\n";
    (void)!write(2, msg, sizeof msg - 1);
    _exit(REFUSED);
}

static void *xrealloc(void *p, size_t n) {
    p = realloc(p, n ? n : 1);
    if (!p)
        out_of_memory();
    return p;
}

static void strv_push(struct strv *s, char *item) {
    if (s->n + 2 > s->cap) {
        s->cap = s->cap ? s->cap * 2 : 8;
        s->v = xrealloc(s->v, s->cap * sizeof *s->v);
    }
    s->v[s->n++] = item;
    s->v[s->n] = NULL;
}

static char *xasprintf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *out = NULL;
    int r = vasprintf(&out, fmt, ap);
    va_end(ap);
    if (r < 0)
        out_of_memory();
    return out;
}

/* -- the configuration ---------------------------------------------------------------------------- */

struct app {
    char *name;
    char *rootfs;
    struct strv exec, env, caps_retain, caps_remove, syscalls, fd_names;
    struct strv cg_controllers, cg_paths, v2_keys, v2_values;
    struct argvs pre_start, post_stop;
    gid_t *groups;
    size_t ngroups;
    int *listen_fds;
    size_t nlisten;
    uid_t uid;
    gid_t gid;
    char *workdir, *apparmor, *selinux;
    bool notify, has_retain, no_new_privs, has_oom, has_uid, has_gid;
    int oom, seccomp_mode, seccomp_errno; /* mode 0: none, 1: remove, 2: retain; errno -1: kill */
    /* run time */
    pid_t pid;
    int status; /* -1 while running or not started */
    bool ready;
    int notify_fd;
    char notify_name[108];
};

struct config {
    char *uuid, *name;
    double stop_timeout;
    bool interactive, all_caps, api_vfs_writable;
    struct strv sysctls;
    struct app *apps;
    size_t napps;
};

struct reader {
    const char *path;
    char *base, *p, *end;
    char *key, *val;
};

static _Noreturn void refuse(const struct reader *r, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    for (char *c = msg; *c; c++) /* the config's bytes, quoted: one printable line */
        if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f)
            *c = '?';
    long at = r->key ? (long)(r->key - r->base) : 0;
    dprintf(2, "rktd-init: %s: invalid config at byte %ld: %s\n", r->path, at, msg);
    exit(REFUSED);
}

/* The next `key\0value\0` record; false at the end of the data. */
static bool next_record(struct reader *r) {
    if (r->p >= r->end)
        return false;
    r->key = r->p;
    char *k_end = memchr(r->p, 0, (size_t)(r->end - r->p));
    if (!k_end)
        refuse(r, "truncated record (no NUL after the key)");
    char *v = k_end + 1;
    char *v_end = v < r->end ? memchr(v, 0, (size_t)(r->end - v)) : NULL;
    if (!v_end)
        refuse(r, "truncated record (no NUL after the value of %.40s)", r->key);
    if (!*r->key)
        refuse(r, "empty key");
    r->val = v;
    r->p = v_end + 1;
    return true;
}

static long long parse_num(const struct reader *r, long long lo, long long hi) {
    const char *s = r->val;
    char *end;
    errno = 0;
    if (!*s || (*s != '-' && (*s < '0' || *s > '9')))
        refuse(r, "%s: not a number: %.40s", r->key, s);
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        refuse(r, "%s: not a number in [%lld, %lld]: %.40s", r->key, lo, hi, s);
    return v;
}

static bool parse_bool(const struct reader *r) {
    if (!strcmp(r->val, "0") || !strcmp(r->val, "1"))
        return r->val[0] == '1';
    refuse(r, "%s: not 0 or 1: %.40s", r->key, r->val);
}

static void parse_argv(struct reader *r, struct strv *out) {
    long long n = parse_num(r, 1, 65536);
    const char *what = r->key;
    for (long long i = 0; i < n; i++) {
        if (!next_record(r))
            refuse(r, "%s: truncated (%lld of %lld arguments)", what, i, n);
        if (strcmp(r->key, "arg"))
            refuse(r, "%s: expected argument %lld of %lld, got key %.40s", what, i + 1, n, r->key);
        strv_push(out, r->val);
    }
}

static void push_argv(struct reader *r, struct argvs *a) {
    a->v = xrealloc(a->v, (a->n + 1) * sizeof *a->v);
    memset(&a->v[a->n], 0, sizeof *a->v);
    parse_argv(r, &a->v[a->n++]);
}

static void need_pair(const struct reader *r) {
    const char *eq = strchr(r->val, '=');
    if (!eq || eq == r->val)
        refuse(r, "%s: expected NAME=VALUE: %.40s", r->key, r->val);
}

static bool valid_name(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > 200 || !strcmp(s, ".") || !strcmp(s, ".."))
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '_' || *s == '.'))
            return false;
    return true;
}

static void app_key(struct reader *r, struct app *a) {
    const char *k = r->key;
    if (!strcmp(k, "exec")) {
        if (a->exec.n)
            refuse(r, "app %s: exec given twice", a->name);
        parse_argv(r, &a->exec);
    } else if (!strcmp(k, "pre_start")) {
        push_argv(r, &a->pre_start);
    } else if (!strcmp(k, "post_stop")) {
        push_argv(r, &a->post_stop);
    } else if (!strcmp(k, "env")) {
        need_pair(r);
        strv_push(&a->env, r->val);
    } else if (!strcmp(k, "uid")) {
        a->uid = (uid_t)parse_num(r, 0, 4294967294LL);
        a->has_uid = true;
    } else if (!strcmp(k, "gid")) {
        a->gid = (gid_t)parse_num(r, 0, 4294967294LL);
        a->has_gid = true;
    } else if (!strcmp(k, "group")) {
        a->groups = xrealloc(a->groups, (a->ngroups + 1) * sizeof *a->groups);
        a->groups[a->ngroups++] = (gid_t)parse_num(r, 0, 4294967294LL);
    } else if (!strcmp(k, "workdir")) {
        a->workdir = r->val;
    } else if (!strcmp(k, "notify")) {
        a->notify = parse_bool(r);
    } else if (!strcmp(k, "caps_retain_set")) {
        a->has_retain = parse_bool(r);
    } else if (!strcmp(k, "caps_retain")) {
        strv_push(&a->caps_retain, r->val);
    } else if (!strcmp(k, "caps_remove")) {
        strv_push(&a->caps_remove, r->val);
    } else if (!strcmp(k, "no_new_privs")) {
        a->no_new_privs = parse_bool(r);
    } else if (!strcmp(k, "oom_score_adj")) {
        a->oom = (int)parse_num(r, -1000, 1000);
        a->has_oom = true;
    } else if (!strcmp(k, "apparmor_profile")) {
        a->apparmor = r->val;
    } else if (!strcmp(k, "selinux_context")) {
        a->selinux = r->val;
    } else if (!strcmp(k, "seccomp")) {
        if (strcmp(r->val, "remove") && strcmp(r->val, "retain"))
            refuse(r, "seccomp: not remove or retain: %.40s", r->val);
        a->seccomp_mode = !strcmp(r->val, "remove") ? 1 : 2;
    } else if (!strcmp(k, "seccomp_errno")) {
        a->seccomp_errno = (int)parse_num(r, 0, 4095);
    } else if (!strcmp(k, "syscall")) {
        strv_push(&a->syscalls, r->val);
    } else if (!strcmp(k, "listen_fd")) {
        a->listen_fds = xrealloc(a->listen_fds, (a->nlisten + 1) * sizeof *a->listen_fds);
        a->listen_fds[a->nlisten++] = (int)parse_num(r, 0, 65535);
    } else if (!strcmp(k, "listen_fd_name")) {
        strv_push(&a->fd_names, r->val);
    } else if (!strcmp(k, "cgroup")) {
        need_pair(r);
        char *eq = strchr(r->val, '=');
        *eq = 0;
        if (!valid_name(r->val))
            refuse(r, "cgroup: bad controller name");
        strv_push(&a->cg_controllers, r->val);
        strv_push(&a->cg_paths, eq + 1);
    } else if (!strcmp(k, "cgroup_v2")) {
        need_pair(r);
        char *eq = strchr(r->val, '=');
        *eq = 0;
        if (!valid_name(r->val))
            refuse(r, "cgroup_v2: bad file name");
        strv_push(&a->v2_keys, r->val);
        strv_push(&a->v2_values, eq + 1);
    } else {
        refuse(r, "unknown key %.40s", k);
    }
}

static void finish_app(const struct reader *r, const struct app *a) {
    if (!a)
        return;
    if (!a->exec.n)
        refuse(r, "app %s: no exec", a->name);
    if (!a->has_uid || !a->has_gid)
        refuse(r, "app %s: no uid or gid", a->name);
    if (a->seccomp_mode == 0 && (a->syscalls.n || a->seccomp_errno >= 0))
        refuse(r, "app %s: syscall or seccomp_errno without seccomp", a->name);
    if (a->nlisten != a->fd_names.n && a->fd_names.n)
        refuse(r, "app %s: %zu listen_fd but %zu listen_fd_name", a->name, a->nlisten, a->fd_names.n);
}

static void parse_config(struct reader *r, struct config *c) {
    memset(c, 0, sizeof *c);
    c->stop_timeout = 30;
    if (!next_record(r) || strcmp(r->key, "rktd-init-config") || strcmp(r->val, "1"))
        refuse(r, "not a rktd-init config (version 1)");
    struct app *cur = NULL;
    bool ended = false;
    while (next_record(r)) {
        const char *k = r->key;
        if (!strcmp(k, "end")) {
            if (*r->val)
                refuse(r, "end: value must be empty");
            ended = true;
            break;
        } else if (!strcmp(k, "uuid")) {
            c->uuid = r->val;
        } else if (!strcmp(k, "name")) {
            c->name = r->val;
        } else if (!strcmp(k, "stop_timeout")) {
            char *end;
            errno = 0;
            c->stop_timeout = strtod(r->val, &end);
            /* decimal only: strtod would also take blanks, a sign, hex and "inf" */
            if (errno || r->val[0] < '0' || r->val[0] > '9' || r->val[strspn(r->val, "0123456789.e+-")] ||
                *end || !(c->stop_timeout >= 0 && c->stop_timeout <= 1e9))
                refuse(r, "stop_timeout: not a number of seconds: %.40s", r->val);
        } else if (!strcmp(k, "interactive")) {
            c->interactive = parse_bool(r);
        } else if (!strcmp(k, "all_caps")) {
            c->all_caps = parse_bool(r);
        } else if (!strcmp(k, "api_vfs_writable")) {
            c->api_vfs_writable = parse_bool(r);
        } else if (!strcmp(k, "sysctl")) {
            need_pair(r);
            strv_push(&c->sysctls, r->val);
        } else if (!strcmp(k, "app")) {
            finish_app(r, cur);
            if (!valid_name(r->val))
                refuse(r, "app: bad name %.40s", r->val);
            for (size_t i = 0; i < c->napps; i++)
                if (!strcmp(c->apps[i].name, r->val))
                    refuse(r, "app %s given twice", r->val);
            c->apps = xrealloc(c->apps, (c->napps + 1) * sizeof *c->apps);
            cur = &c->apps[c->napps++];
            memset(cur, 0, sizeof *cur);
            cur->name = r->val;
            cur->rootfs = xasprintf("/opt/stage2/%s/rootfs", r->val);
            cur->seccomp_errno = -1;
            cur->status = -1;
            cur->notify_fd = -1;
        } else if (cur) {
            app_key(r, cur);
        } else {
            refuse(r, "unknown key %.40s (outside an app's section)", k);
        }
    }
    if (!ended)
        refuse(r, "truncated (no end record)");
    if (r->p != r->end)
        refuse(r, "data after the end record");
    finish_app(r, cur);
    if (!c->uuid)
        refuse(r, "no uuid");
    for (size_t i = 0; i < c->napps; i++)
        c->apps[i].ready = !c->apps[i].notify;
}

static void load_config(const char *path, struct config *c) {
    struct reader r = {.path = path};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        dprintf(2, "rktd-init: %s: %s\n", path, strerror(errno));
        exit(REFUSED);
    }
    if (!S_ISREG(st.st_mode) || st.st_size > CONFIG_MAX) {
        dprintf(2, "rktd-init: %s: not a regular file of at most %d bytes\n", path, CONFIG_MAX);
        exit(REFUSED);
    }
    size_t size = (size_t)st.st_size, got = 0;
    r.base = xrealloc(NULL, size);
    while (got < size) {
        ssize_t n = read(fd, r.base + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            dprintf(2, "rktd-init: %s: %s\n", path, n < 0 ? strerror(errno) : "changed while read");
            exit(REFUSED);
        }
        got += (size_t)n;
    }
    close(fd);
    r.p = r.base;
    r.end = r.base + size;
    parse_config(&r, c);
}

/* -- small system helpers ------------------------------------------------------------------------- */

static void logmsg(const char *fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    dprintf(2, "rktd-init: %s\n", msg);
}

static void write_all(int fd, const char *data, size_t len) {
    while (len) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        data += n;
        len -= (size_t)n;
    }
}

/* Write `value` to `path` (created if missing, as Python's open(path, "w")); -1 with errno. */
static int write_file(const char *path, const char *value) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0)
        return -1;
    size_t len = strlen(value);
    ssize_t n = write(fd, value, len);
    int e = n < 0 ? errno : (size_t)n != len ? EIO : 0;
    if (close(fd) < 0 && !e)
        e = errno;
    errno = e;
    return e ? -1 : 0;
}

static int mkdir_p(const char *path) {
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || !*p) {
            char c = *p;
            *p = 0;
            if (mkdir(buf, 0777) < 0 && errno != EEXIST)
                return -1;
            *p = c;
            if (!c)
                break;
        }
    }
    return 0;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A poll(2) timeout for `left` seconds (> 0): at most a day, so that no stop timeout overflows it. */
static int poll_ms(double left) {
    return left > 86400 ? 86400 * 1000 : (int)(left * 1000) + 1;
}

static int exit_status(int wstatus) {
    if (WIFSIGNALED(wstatus))
        return 128 + WTERMSIG(wstatus);
    return WEXITSTATUS(wstatus);
}

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

/* -- capabilities ----------------------------------------------------------------------------------- */

static int cap_index(const char *name) {
    for (int i = 0; i < NCAPS; i++)
        if (!strcmp(CAPABILITIES[i], name))
            return i;
    return -1;
}

static bool in_strv(const struct strv *s, const char *name) {
    for (size_t i = 0; i < s->n; i++)
        if (!strcmp(s->v[i], name))
            return true;
    return false;
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

/* -- the app's own process: from fork to exec ------------------------------------------------------ */

static const struct app *child_app;
static const char *child_argv0;

static _Noreturn void child_fail(const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    dprintf(2, "rktd-init: %s: %s: %s\n", child_app->name, child_argv0, msg);
    _exit(127);
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
        if (write_file(path, v) < 0)
            child_fail("%s: %s", path, strerror(errno));
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
    /* The inheritable set is emptied: with it, a non-root app could gain the capabilities a file
     * grants as inheritable (CVE-2022-24769; runc and moby empty it too). Root keeps the bounding set. */
    uint64_t eff, perm, inh;
    if (capget3(&eff, &perm, &inh) < 0)
        child_fail("capget: %s", strerror(errno));
    if (capset3(eff, perm, 0) < 0)
        child_fail("capset: %s", strerror(errno));
}

static void drop_caps(uint64_t keep) {
    uint64_t eff, perm, inh;
    if (capget3(&eff, &perm, &inh) < 0)
        child_fail("capget: %s", strerror(errno));
    if (capset3(eff & keep, perm & keep, 0) < 0)
        child_fail("capset: %s", strerror(errno));
}

/* execvpe with PATH from the app's environment (else /bin:/usr/bin, as Python's os.execvpe): the
 * first error other than "not found" wins, else the last. */
static void exec_app(char **argv, struct strv *env) {
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

static void become(const struct config *c, const struct app *a, char **argv, int *fds, size_t nfds,
                   bool main_process) {
    char buf[PATH_MAX];
    for (size_t i = 0; i < a->cg_controllers.n; i++) {
        const char *ctl = a->cg_controllers.v[i];
        if (!strcmp(ctl, "unified"))
            snprintf(buf, sizeof buf, "%s/%s/cgroup.procs", V2_ROOT, a->cg_paths.v[i]);
        else
            snprintf(buf, sizeof buf, "/cgroup/%s/%s/cgroup.procs", ctl, a->cg_paths.v[i]);
        char pid[16];
        snprintf(pid, sizeof pid, "%d", (int)getpid());
        if (write_file(buf, pid) < 0)
            child_fail("%s: %s", buf, strerror(errno));
    }
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
    if (nfds) {
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
        env_set(&env, "LISTEN_FDS", n);
        env_set(&env, "LISTEN_PID", pid);
        if (a->fd_names.n) {
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
            env_set(&env, "LISTEN_FDNAMES", names);
        }
    }
    set_exec_labels(a);
    scmp_filter_ctx filt = seccomp_filter(a);
    enter_root(a->rootfs);
    const char *workdir = a->workdir && *a->workdir ? a->workdir : "/";
    if (chdir(workdir) < 0)
        child_fail("chdir %s: %s", workdir, strerror(errno));
    uint64_t keep = app_caps(a, c->all_caps);
    restrict_caps(keep);
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
    exec_app(argv, &env);
}

/* -- the init ------------------------------------------------------------------------------------- */

struct stream {
    int fd, which; /* 1 stdout, 2 stderr */
    struct app *app;
    char *buf;
    size_t len;
};

static struct config cfg;
static struct stream *streams;
static size_t nstreams;
static int journal_fd = -1, sig_fd = -1;
static int *inherited;
static size_t ninherited;
static bool stopping;
static bool kill_pending;
static double kill_at;
static int failed = -1;

static void journal_field(char **out, size_t *len, const char *key, const char *value, size_t vlen) {
    size_t klen = strlen(key);
    *out = xrealloc(*out, *len + klen + vlen + 10);
    memcpy(*out + *len, key, klen);
    *len += klen;
    if (memchr(value, '\n', vlen)) {
        (*out)[(*len)++] = '\n';
        uint64_t n = vlen;
        for (int i = 0; i < 8; i++)
            (*out)[(*len)++] = (char)(n >> (8 * i) & 0xff);
    } else {
        (*out)[(*len)++] = '=';
    }
    memcpy(*out + *len, value, vlen);
    *len += vlen;
    (*out)[(*len)++] = '\n';
}

static void emit(const struct app *a, int which, const char *line, size_t n) {
    if (journal_fd >= 0) {
        char *d = NULL;
        size_t len = 0;
        const char *pod = cfg.name ? cfg.name : "";
        journal_field(&d, &len, "MESSAGE", line, n);
        journal_field(&d, &len, "PRIORITY", which == 1 ? "6" : "3", 1);
        journal_field(&d, &len, "SYSLOG_IDENTIFIER", a->name, strlen(a->name));
        journal_field(&d, &len, "RKTD_POD", pod, strlen(pod));
        journal_field(&d, &len, "RKTD_APP", a->name, strlen(a->name));
        journal_field(&d, &len, "RKTD_UUID", cfg.uuid, strlen(cfg.uuid));
        ssize_t sent;
        do
            sent = send(journal_fd, d, len, MSG_NOSIGNAL);
        while (sent < 0 && errno == EINTR);
        free(d);
        if (sent >= 0)
            return;
    }
    size_t nlen = strlen(a->name);
    char *out = xrealloc(NULL, n + nlen + 8);
    memcpy(out, "app[", 4);
    memcpy(out + 4, a->name, nlen);
    memcpy(out + 4 + nlen, "]: ", 3);
    memcpy(out + 7 + nlen, line, n);
    out[7 + nlen + n] = '\n';
    write_all(which, out, n + nlen + 8);
    free(out);
}

/* One read of a stream: 1 if it had data, 0 at its end (the stream is removed: the last one takes
 * its index), -1 if nothing was there. */
static int relay(size_t idx) {
    struct stream *s = &streams[idx];
    ssize_t n = read(s->fd, s->buf + s->len, READ_CHUNK);
    if (n < 0)
        return -1; /* EAGAIN, EINTR */
    if (n == 0) {
        if (s->len)
            emit(s->app, s->which, s->buf, s->len);
        close(s->fd);
        free(s->buf);
        streams[idx] = streams[--nstreams];
        return 0;
    }
    s->len += (size_t)n;
    size_t start = 0;
    for (;;) {
        char *nl = memchr(s->buf + start, '\n', s->len - start);
        if (!nl) {
            if (s->len - start >= MAX_LINE) {
                emit(s->app, s->which, s->buf + start, s->len - start);
                start = s->len;
            }
            break;
        }
        emit(s->app, s->which, s->buf + start, (size_t)(nl - (s->buf + start)));
        start = (size_t)(nl - s->buf) + 1;
    }
    memmove(s->buf, s->buf + start, s->len - start);
    s->len -= start;
    return 1;
}

/* Relay what the app wrote before it said READY=1 (bounded: an app that never stops writing). */
static void drain_app(const struct app *a) {
    int reads = 0;
    for (size_t k = 0; k < nstreams && reads < 64;) {
        int r = streams[k].app == a ? relay(k) : -1;
        reads += r >= 0;
        if (r < 0)
            k++;
    }
}

static void sd_notify(const char *message) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path)
        return;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    if (len >= sizeof sa.sun_path)
        return;
    memcpy(sa.sun_path, path, len);
    if (path[0] == '@')
        sa.sun_path[0] = 0;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (path[0] != '@'));
    (void)!sendto(fd, message, strlen(message), MSG_NOSIGNAL, (struct sockaddr *)&sa, salen);
    close(fd);
}

static void maybe_ready(void) {
    for (size_t i = 0; i < cfg.napps; i++)
        if (!cfg.apps[i].ready)
            return;
    sd_notify("READY=1");
}

static void signal_apps(int sig) {
    for (size_t i = 0; i < cfg.napps; i++) {
        struct app *a = &cfg.apps[i];
        if (a->pid && a->status < 0) {
            kill(-a->pid, sig);
            kill(a->pid, sig);
        }
    }
}

static void stop(void) {
    if (stopping)
        return;
    stopping = true;
    kill_pending = true;
    kill_at = now() + cfg.stop_timeout;
    signal_apps(SIGTERM);
}

static void fail(const struct app *a, int code) {
    if (failed < 0) {
        failed = code;
        logmsg("app %s failed with exit status %d; stopping the pod", a->name, code);
    }
    stop();
}

/* A stop signal (or SIGCHLD) that arrived: SIGTERM, SIGINT and SIGHUP stop the pod. */
static void read_signals(void) {
    struct signalfd_siginfo si;
    while (read(sig_fd, &si, sizeof si) == (ssize_t)sizeof si)
        if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT || si.ssi_signo == SIGHUP)
            stop();
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

static pid_t spawn(struct app *a, char **argv, bool main_process) {
    int outs[2][2] = {{-1, -1}, {-1, -1}};
    if (main_process && !cfg.interactive) {
        for (int i = 0; i < 2; i++)
            if (pipe2(outs[i], O_CLOEXEC) < 0) {
                logmsg("%s: pipe: %s", a->name, strerror(errno));
                if (i)
                    close(outs[0][0]), close(outs[0][1]);
                return -1;
            }
        for (int i = 0; i < 2; i++) {
            fcntl(outs[i][0], F_SETFL, O_NONBLOCK);
            streams = xrealloc(streams, (nstreams + 1) * sizeof *streams);
            char *buf = xrealloc(NULL, MAX_LINE + READ_CHUNK);
            streams[nstreams++] = (struct stream){outs[i][0], i + 1, a, buf, 0};
        }
    }
    int *fds = xrealloc(NULL, (a->nlisten + 1) * sizeof *fds);
    size_t nfds = 0;
    if (main_process)
        for (size_t i = 0; i < a->nlisten; i++)
            if ((size_t)a->listen_fds[i] < ninherited)
                fds[nfds++] = inherited[a->listen_fds[i]];
    pid_t pid = fork();
    if (pid == 0) {
        child_app = a;
        child_argv0 = argv[0];
        child_signals();
        setpgid(0, 0);
        if (outs[0][1] >= 0 && (dup2(outs[0][1], 1) < 0 || dup2(outs[1][1], 2) < 0))
            child_fail("dup2: %s", strerror(errno));
        become(&cfg, a, argv, fds, nfds, main_process);
    }
    if (pid < 0)
        logmsg("%s: fork: %s", a->name, strerror(errno));
    free(fds);
    for (int i = 0; i < 2; i++)
        if (outs[i][1] >= 0)
            close(outs[i][1]);
    return pid;
}

/* Wait for a handler while still hearing stop signals: once the pod stops, a pre-start handler gets
 * SIGTERM, and a handler still running when the stop timeout has passed is killed (one started after
 * the stop began, such as a post-stop handler, has a stop timeout of its own), so that no hanging
 * handler keeps the pod. The apps still get their SIGKILL in time. Stop signals read here may also
 * consume an app's SIGCHLD: every caller reaps afterwards. -1 if the handler cannot be waited for. */
static int wait_handler(pid_t pid, bool pre_start, int *signalled) {
    bool termed = false, killed = false;
    double started = now();
    for (;;) {
        int st;
        pid_t got = waitpid(pid, &st, WNOHANG);
        if (got == pid) {
            *signalled = killed ? SIGKILL : termed ? SIGTERM : 0;
            return exit_status(st);
        }
        if (got < 0 && errno != EINTR)
            return -1;
        if (stopping && pre_start && !termed) {
            kill(-pid, SIGTERM);
            kill(pid, SIGTERM);
            termed = true;
        }
        int timeout = -1;
        double t = now();
        if (kill_pending) {
            if (kill_at <= t) {
                signal_apps(SIGKILL);
                kill_pending = false;
            } else {
                timeout = poll_ms(kill_at - t);
            }
        }
        if (stopping && !killed) {
            double deadline = kill_at - cfg.stop_timeout < started ? started + cfg.stop_timeout : kill_at;
            if (deadline <= t) {
                kill(-pid, SIGKILL);
                kill(pid, SIGKILL);
                killed = true;
            } else if (timeout < 0 || poll_ms(deadline - t) < timeout) {
                timeout = poll_ms(deadline - t);
            }
        }
        struct pollfd p = {sig_fd, POLLIN, 0};
        poll(&p, 1, timeout); /* its SIGCHLD ends the wait */
        read_signals();
    }
}

static int run_handlers(struct app *a, const struct argvs *handlers, const char *event) {
    for (size_t i = 0; i < handlers->n; i++) {
        char **argv = handlers->v[i].v;
        pid_t pid = spawn(a, argv, false);
        int code, signalled = 0;
        if (pid < 0) {
            code = 127;
        } else {
            code = wait_handler(pid, !strcmp(event, "pre_start"), &signalled);
            if (code < 0)
                return 0;
        }
        if (code && signalled == SIGKILL)
            logmsg("%s: %s handler %s killed: the stop timeout passed", a->name, event, argv[0]);
        else if (code && !(signalled == SIGTERM && code == 128 + SIGTERM))
            logmsg("%s: %s handler %s failed with status %d", a->name, event, argv[0], code);
        if (code)
            return code;
    }
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

static void prepare_rootfs(const struct app *a) {
    static const char *const subs[] = {"proc", "dev", "sys"};
    for (int i = 0; i < 3; i++) {
        bool ro = i == 2 && !cfg.api_vfs_writable;
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

static int apply_sysctls(void) {
    for (size_t i = 0; i < cfg.sysctls.n; i++) {
        char *item = cfg.sysctls.v[i], path[PATH_MAX];
        char *eq = strchr(item, '=');
        *eq = 0;
        snprintf(path, sizeof path, "/proc/sys/%s", item);
        for (char *p = path + 10; *p; p++)
            if (*p == '.')
                *p = '/';
        int r = write_file(path, eq + 1);
        if (r < 0)
            logmsg("sysctl %s=%s: %s (only network-namespaced sysctls are writable)", item, eq + 1,
                   strerror(errno));
        *eq = '=';
        if (r < 0)
            return 1;
    }
    return 0;
}

static int cmp_str(const void *x, const void *y) {
    return strcmp(*(char *const *)x, *(char *const *)y);
}

/* Per-app cgroups in the pod's delegated cgroup v2 subtree: the init moves itself to a leaf, enables
 * the controllers below the pod's root, and each limited app gets <root>/<app> with its limits. */
static void setup_cgroup_v2(void) {
    struct strv need = {0};
    char path[PATH_MAX], msg[PATH_MAX + 512] = "", have[4096];
    for (size_t i = 0; i < cfg.napps; i++)
        for (size_t k = 0; k < cfg.apps[i].v2_keys.n; k++) {
            const char *key = cfg.apps[i].v2_keys.v[k];
            char *ctl = xasprintf("%.*s", (int)strcspn(key, "."), key);
            if (!in_strv(&need, ctl))
                strv_push(&need, ctl);
        }
    if (!need.n)
        return;
    qsort(need.v, need.n, sizeof *need.v, cmp_str);
    int fd = open(V2_ROOT "/cgroup.controllers", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : read(fd, have, sizeof have - 1);
    if (fd >= 0)
        close(fd);
    if (n < 0) {
        snprintf(msg, sizeof msg, "%s/cgroup.controllers: %s", V2_ROOT, strerror(errno));
        goto bad;
    }
    have[n] = 0;
    char missing[512] = "", enable[512] = "";
    for (size_t i = 0; i < need.n; i++) {
        bool found = false;
        char *save, *tok = strtok_r(strcpy(path, have), " \n", &save);
        for (; tok; tok = strtok_r(NULL, " \n", &save))
            found |= !strcmp(tok, need.v[i]);
        if (!found)
            snprintf(missing + strlen(missing), sizeof missing - strlen(missing), "%s%s",
                     *missing ? ", " : "", need.v[i]);
        snprintf(enable + strlen(enable), sizeof enable - strlen(enable), "%s+%s", i ? " " : "",
                 need.v[i]);
    }
    if (*missing) {
        snprintf(msg, sizeof msg, "controllers %s not delegated", missing);
        goto bad;
    }
    const char *step = V2_ROOT "/_rktd-init";
    if (mkdir(step, 0755) < 0 && errno != EEXIST)
        goto bad_errno;
    step = V2_ROOT "/_rktd-init/cgroup.procs";
    if (write_file(step, "0") < 0)
        goto bad_errno;
    step = V2_ROOT "/cgroup.subtree_control";
    if (write_file(step, enable) < 0)
        goto bad_errno;
    for (size_t i = 0; i < cfg.napps; i++) {
        struct app *a = &cfg.apps[i];
        if (!a->v2_keys.n)
            continue;
        snprintf(path, sizeof path, "%s/%s", V2_ROOT, a->name);
        step = path;
        if (mkdir(path, 0755) < 0 && errno != EEXIST)
            goto bad_errno;
        for (size_t k = 0; k < a->v2_keys.n; k++) {
            snprintf(path, sizeof path, "%s/%s/%s", V2_ROOT, a->name, a->v2_keys.v[k]);
            if (write_file(path, a->v2_values.v[k]) < 0)
                goto bad_errno;
        }
        strv_push(&a->cg_controllers, "unified");
        strv_push(&a->cg_paths, a->name);
    }
    return;
bad_errno:
    snprintf(msg, sizeof msg, "%s: %s", step, strerror(errno));
bad:
    logmsg("memory/CPU limits not enforced: cgroup v2: %s (the unit's limits still apply)", msg);
}

/* The app's NOTIFY_SOCKET: an abstract name of the pod's network namespace, random so that no host
 * user can take it first; on_notify ignores senders outside the pod's PID namespace. */
static int open_notify(struct app *a) {
    unsigned char rnd[8];
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
        return -1;
    snprintf(a->notify_name, sizeof a->notify_name - 1, "rktd-notify-%02x%02x%02x%02x%02x%02x%02x%02x-%s",
             rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7], a->name);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(a->notify_name);
    memcpy(sa.sun_path + 1, a->notify_name, len);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, salen) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) < 0) {
        logmsg("%s: notify socket: %s", a->name, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    a->notify_fd = fd;
    return 0;
}

static void on_notify(struct app *a) {
    char data[4096];
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(struct ucred))];
    } control;
    struct iovec iov = {data, sizeof data};
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof control.buf,
    };
    ssize_t n = recvmsg(a->notify_fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0)
        return;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int *fds = (int *)CMSG_DATA(c);
            for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++)
                close(fds[i]);
        }
    bool from_pod = false; /* SO_PASSCRED: the kernel attaches the sender's credentials */
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS &&
            c->cmsg_len >= CMSG_LEN(sizeof(struct ucred))) {
            struct ucred cred;
            memcpy(&cred, CMSG_DATA(c), sizeof cred);
            from_pod = cred.pid > 0; /* 0: a process outside the pod's PID namespace, not the app */
            break;
        }
    if (!from_pod)
        return;
    for (ssize_t start = 0; start <= n;) {
        char *nl = memchr(data + start, '\n', (size_t)(n - start));
        ssize_t end = nl ? nl - data : n;
        if (end - start == 7 && !memcmp(data + start, "READY=1", 7) && !a->ready) {
            drain_app(a);
            a->ready = true;
            maybe_ready();
        }
        start = end + 1;
    }
}

static void app_exited(struct app *a, int code) {
    char path[PATH_MAX], value[16];
    a->status = code;
    snprintf(path, sizeof path, "/rktd/status/%s", a->name);
    snprintf(value, sizeof value, "%d\n", code);
    if (mkdir_p("/rktd/status") < 0 || write_file(path, value) < 0)
        logmsg("cannot record the status of %s: %s", a->name, strerror(errno));
    run_handlers(a, &a->post_stop, "post_stop");
    for (size_t i = 0; i < a->cg_controllers.n; i++) {
        const char *ctl = a->cg_controllers.v[i];
        if (!strcmp(ctl, "unified"))
            snprintf(path, sizeof path, "%s/%s", V2_ROOT, a->cg_paths.v[i]);
        else
            snprintf(path, sizeof path, "/cgroup/%s/%s", ctl, a->cg_paths.v[i]);
        rmdir(path); /* fails while processes the app left behind remain: gc removes it */
    }
    if (code != 0 && !stopping)
        fail(a, code);
}

static void reap(void) {
    for (;;) {
        int st;
        pid_t pid = waitpid(-1, &st, WNOHANG);
        if (pid <= 0)
            return;
        for (size_t i = 0; i < cfg.napps; i++)
            if (cfg.apps[i].pid == pid && cfg.apps[i].status < 0)
                app_exited(&cfg.apps[i], exit_status(st));
    }
}

static void start(void) {
    setup_cgroup_v2();
    if (apply_sysctls()) {
        failed = 1;
        return;
    }
    for (size_t i = 0; i < cfg.napps; i++)
        prepare_rootfs(&cfg.apps[i]);
    for (size_t i = 0; i < cfg.napps; i++) {
        int code = run_handlers(&cfg.apps[i], &cfg.apps[i].pre_start, "pre_start");
        if (code && !stopping)
            fail(&cfg.apps[i], code);
        if (code || stopping)
            return; /* a pre-start handler failed, or the pod was stopped while starting */
    }
    for (size_t i = 0; i < cfg.napps; i++) {
        struct app *a = &cfg.apps[i];
        read_signals();
        if (stopping)
            break; /* stopped while starting: the rest never start */
        if (a->notify && open_notify(a) < 0) {
            fail(a, 1); /* the pod could never be ready */
            break;
        }
        pid_t pid = spawn(a, a->exec.v, true);
        if (pid < 0) {
            a->status = 127;
            fail(a, 127);
            break;
        }
        a->pid = pid;
    }
    maybe_ready();
}

static bool any_running(void) {
    for (size_t i = 0; i < cfg.napps; i++)
        if (cfg.apps[i].pid && cfg.apps[i].status < 0)
            return true;
    return false;
}

static int result(void) {
    if (failed >= 0)
        return failed;
    for (size_t i = 0; i < cfg.napps; i++) {
        int s = cfg.apps[i].status; /* -1: never started (or still running): 0, as before */
        bool ok = s == 0 || (stopping && (s == 128 + SIGTERM || s == 128 + SIGKILL));
        if (!ok)
            return s < 0 ? 0 : s;
    }
    return 0;
}

static int loop(void) {
    double drain_until = -1;
    while (any_running() || nstreams) {
        int timeout = -1;
        if (kill_pending) {
            double left = kill_at - now();
            if (left <= 0) {
                signal_apps(SIGKILL);
                kill_pending = false;
            } else {
                timeout = poll_ms(left);
            }
        }
        bool draining = !any_running(), cut = false;
        if (draining) {
            /* The apps are gone: relay what their descendants still hold open until they are silent
             * for half a second, and for DRAIN_MAX seconds at most: one that keeps writing must not
             * keep the pod (it dies with this init, the pod's PID 1). */
            if (drain_until < 0)
                drain_until = now() + DRAIN_MAX;
            double left = drain_until - now();
            cut = left < 0.5;
            timeout = left <= 0 ? 0 : cut ? poll_ms(left) : 500;
        }
        size_t max = 1 + nstreams + cfg.napps, n = 0; /* on the heap: the config sets napps */
        static struct pollfd *pfd;
        static struct app **owner;
        pfd = xrealloc(pfd, max * sizeof *pfd);
        owner = xrealloc(owner, max * sizeof *owner);
        pfd[n++] = (struct pollfd){sig_fd, POLLIN, 0};
        for (size_t i = 0; i < nstreams; i++)
            pfd[n++] = (struct pollfd){streams[i].fd, POLLIN, 0};
        size_t first_notify = n;
        for (size_t i = 0; i < cfg.napps; i++)
            if (cfg.apps[i].notify_fd >= 0) {
                owner[n] = &cfg.apps[i];
                pfd[n++] = (struct pollfd){cfg.apps[i].notify_fd, POLLIN, 0};
            }
        int ready = poll(pfd, n, timeout);
        if ((ready == 0 || (cut && now() >= drain_until)) && draining && !any_running()) {
            if (ready != 0 || cut)
                logmsg("output still open %g s after the apps ended (processes they left): ending the pod",
                       DRAIN_MAX);
            break;
        }
        if (ready > 0) {
            if (pfd[0].revents)
                read_signals();
            /* Output before notifications: what an app printed before it said READY=1 reaches the
             * journal before the manager hears READY=1. */
            for (size_t i = 1; i < first_notify; i++) {
                if (!pfd[i].revents)
                    continue;
                for (size_t k = 0; k < nstreams; k++)
                    if (streams[k].fd == pfd[i].fd) {
                        relay(k);
                        break;
                    }
            }
            for (size_t i = first_notify; i < n; i++)
                if (pfd[i].revents)
                    on_notify(owner[i]);
        }
        reap();
    }
    return result();
}

static void inherit_listen_fds(void) {
    const char *v = getenv("LISTEN_FDS");
    char *end;
    long n = v ? strtol(v, &end, 10) : 0;
    if (!v || *end || n < 0 || n > 4096)
        n = 0;
    inherited = xrealloc(NULL, (size_t)(n + 1) * sizeof *inherited);
    for (long i = 0; i < n; i++) {
        inherited[i] = 3 + (int)i;
        fcntl(3 + (int)i, F_SETFD, FD_CLOEXEC); /* each app gets its own through become() */
    }
    ninherited = (size_t)n;
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDNAMES");
}

static void open_journal(void) {
    if (access(JOURNAL_SOCKET, F_OK) < 0)
        return;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX, .sun_path = JOURNAL_SOCKET};
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
        journal_fd = fd;
        return;
    }
    if (fd >= 0)
        close(fd);
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--check")) {
        load_config(argv[2], &cfg);
        return 0;
    }
    if (argc > 2) {
        dprintf(2, "rktd-init: usage: rktd-init [CONFIG] | rktd-init --check CONFIG\n");
        return REFUSED;
    }
    /* Block the stop signals before anything forks: they are read from a signalfd in the loop, and a
     * child unblocks them before exec, so one sent between fork and exec reaches the app. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    load_config(argc > 1 ? argv[1] : CONFIG_PATH, &cfg);
    /* systemd-nspawn does not take its container down when it is SIGKILLed: the pod dies with it. */
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    sig_fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sig_fd < 0) {
        logmsg("signalfd: %s", strerror(errno));
        return REFUSED;
    }
    inherit_listen_fds();
    open_journal();
    start();
    reap(); /* a SIGCHLD read (and dropped) while starting must not leave a dead app unnoticed */
    return loop();
}
