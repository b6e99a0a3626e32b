/* rktd-init's config: the reader of the file stage1 writes for it, and its format.
 *
 * Usage: rktd-init [CONFIG]        run the pod described by CONFIG (default /rktd/init.cfg)
 *        rktd-init --check CONFIG  only parse CONFIG: exit 0 if valid, else 254 with one line
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
#include "rktd-init.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CONFIG_MAX (16 << 20)

struct reader {
    const char *path;
    char *base, *p, *end;
    char *key, *val;
};

static _Noreturn PRINTF(2, 3) void refuse(const struct reader *r, const char *fmt, ...) {
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

/* The app keys that say what runs, and how it is started: true if `r` is one. */
static bool app_process_key(struct reader *r, struct app *a) {
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
    } else if (!strcmp(k, "workdir")) {
        a->workdir = r->val;
    } else if (!strcmp(k, "notify")) {
        a->notify = parse_bool(r);
    } else if (!strcmp(k, "listen_fd")) {
        a->listen_fds = xrealloc(a->listen_fds, (a->nlisten + 1) * sizeof *a->listen_fds);
        a->listen_fds[a->nlisten++] = (int)parse_num(r, 0, 65535);
    } else if (!strcmp(k, "listen_fd_name")) {
        strv_push(&a->fd_names, r->val);
    } else {
        return false;
    }
    return true;
}

/* The app keys of its identity and isolators (ids, capabilities, labels, OOM score, seccomp): true if
 * `r` is one. */
static bool app_isolator_key(struct reader *r, struct app *a) {
    const char *k = r->key;
    if (!strcmp(k, "uid")) {
        a->uid = (uid_t)parse_num(r, 0, 4294967294LL);
        a->has_uid = true;
    } else if (!strcmp(k, "gid")) {
        a->gid = (gid_t)parse_num(r, 0, 4294967294LL);
        a->has_gid = true;
    } else if (!strcmp(k, "group")) {
        a->groups = xrealloc(a->groups, (a->ngroups + 1) * sizeof *a->groups);
        a->groups[a->ngroups++] = (gid_t)parse_num(r, 0, 4294967294LL);
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
    } else {
        return false;
    }
    return true;
}

/* The app's seccomp keys: true if `r` is one. */
static bool app_seccomp_key(struct reader *r, struct app *a) {
    const char *k = r->key;
    if (!strcmp(k, "seccomp")) {
        if (strcmp(r->val, "remove") && strcmp(r->val, "retain"))
            refuse(r, "seccomp: not remove or retain: %.40s", r->val);
        a->seccomp_mode = !strcmp(r->val, "remove") ? 1 : 2;
    } else if (!strcmp(k, "seccomp_errno")) {
        a->seccomp_errno = (int)parse_num(r, 0, 4095);
    } else if (!strcmp(k, "syscall")) {
        strv_push(&a->syscalls, r->val);
    } else {
        return false;
    }
    return true;
}

/* A `name=value` record whose name is refused with `bad` unless valid_name: split at the `=`. */
static void push_named(struct reader *r, const char *bad, struct strv *names, struct strv *values) {
    need_pair(r);
    char *eq = strchr(r->val, '=');
    *eq = 0;
    if (!valid_name(r->val))
        refuse(r, "%s", bad);
    strv_push(names, r->val);
    strv_push(values, eq + 1);
}

static void app_key(struct reader *r, struct app *a) {
    if (app_process_key(r, a) || app_isolator_key(r, a) || app_seccomp_key(r, a))
        return;
    if (!strcmp(r->key, "cgroup"))
        push_named(r, "cgroup: bad controller name", &a->cg_controllers, &a->cg_paths);
    else if (!strcmp(r->key, "cgroup_v2"))
        push_named(r, "cgroup_v2: bad file name", &a->v2_keys, &a->v2_values);
    else
        refuse(r, "unknown key %.40s", r->key);
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

/* stop_timeout: decimal seconds only (strtod would also take blanks, a sign, hex and "inf"). */
static double parse_seconds(const struct reader *r) {
    char *end;
    errno = 0;
    double v = strtod(r->val, &end);
    if (errno || r->val[0] < '0' || r->val[0] > '9' || r->val[strspn(r->val, "0123456789.e+-")] || *end ||
        !(v >= 0 && v <= 1e9))
        refuse(r, "stop_timeout: not a number of seconds: %.40s", r->val);
    return v;
}

/* The pod's keys (valid in an app's section too): true if `r` is one. */
static bool pod_key(struct reader *r, struct config *c) {
    const char *k = r->key;
    if (!strcmp(k, "uuid")) {
        c->uuid = r->val;
    } else if (!strcmp(k, "name")) {
        c->name = r->val;
    } else if (!strcmp(k, "stop_timeout")) {
        c->stop_timeout = parse_seconds(r);
    } else if (!strcmp(k, "interactive")) {
        c->interactive = parse_bool(r);
    } else if (!strcmp(k, "all_caps")) {
        c->all_caps = parse_bool(r);
    } else if (!strcmp(k, "api_vfs_writable")) {
        c->api_vfs_writable = parse_bool(r);
    } else if (!strcmp(k, "sysctl")) {
        need_pair(r);
        strv_push(&c->sysctls, r->val);
    } else {
        return false;
    }
    return true;
}

/* `app\0NAME\0`: the previous app's section checked, a new one opened. */
static struct app *open_app(const struct reader *r, struct config *c, const struct app *prev) {
    finish_app(r, prev);
    if (!valid_name(r->val))
        refuse(r, "app: bad name %.40s", r->val);
    for (size_t i = 0; i < c->napps; i++)
        if (!strcmp(c->apps[i].name, r->val))
            refuse(r, "app %s given twice", r->val);
    c->apps = xrealloc(c->apps, (c->napps + 1) * sizeof *c->apps);
    struct app *a = &c->apps[c->napps++];
    memset(a, 0, sizeof *a);
    a->name = r->val;
    a->rootfs = xasprintf("/opt/stage2/%s/rootfs", r->val);
    a->seccomp_errno = -1;
    a->status = -1;
    a->notify_fd = -1;
    return a;
}

static void parse_config(struct reader *r, struct config *c) {
    memset(c, 0, sizeof *c);
    c->stop_timeout = 30;
    if (!next_record(r) || strcmp(r->key, "rktd-init-config") || strcmp(r->val, "1"))
        refuse(r, "not a rktd-init config (version 1)");
    struct app *cur = NULL;
    bool ended = false;
    while (next_record(r)) {
        if (!strcmp(r->key, "end")) {
            if (*r->val)
                refuse(r, "end: value must be empty");
            ended = true;
            break;
        } else if (!strcmp(r->key, "app")) {
            cur = open_app(r, c, cur);
        } else if (pod_key(r, c)) {
            continue;
        } else if (cur) {
            app_key(r, cur);
        } else {
            refuse(r, "unknown key %.40s (outside an app's section)", r->key);
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

void load_config(const char *path, struct config *c) {
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
