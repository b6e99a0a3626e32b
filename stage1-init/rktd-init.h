/* rktd-init's shared header: the config's types, and the state and functions that cross its files
 * (the map of the files is at the top of rktd-init.c). Every file includes it first. */
#ifndef RKTD_INIT_H
#define RKTD_INIT_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define REFUSED 254
#define V2_ROOT "/sys/fs/cgroup"

#define PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))

/* -- small containers and system helpers (util.c) ------------------------------------------------- */

struct strv {
    char **v; /* NULL-terminated */
    size_t n, cap;
};

struct argvs {
    struct strv *v;
    size_t n;
};

void *xrealloc(void *p, size_t n);
void strv_push(struct strv *s, char *item);
bool in_strv(const struct strv *s, const char *name);
char *xasprintf(const char *fmt, ...) PRINTF(1, 2);

void logmsg(const char *fmt, ...) PRINTF(1, 2);
int write_file(const char *path, const char *value);
int mkdir_p(const char *path);

/* -- the configuration (config.c) ----------------------------------------------------------------- */

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

/* Read and check the config at `path` into `c`; one line and exit status REFUSED if it is invalid. */
void load_config(const char *path, struct config *c);

/* -- becoming the app (confine.c) ----------------------------------------------------------------- */

/* /proc, /dev and /sys bound into the app's rootfs (/sys read-only unless `api_vfs_writable`). */
void prepare_rootfs(const struct app *a, bool api_vfs_writable);
/* The directory of the app's i-th cgroup, plus `suffix`. */
void app_cgroup(char *buf, size_t len, const struct app *a, size_t i, const char *suffix);
/* In the child of a fork: `argv` run as the app `a` (its main process, or one of its handlers) with
 * `out` as its stdout and stderr (-1: the init's own), the socket-activation `fds` passed. */
_Noreturn void become(const struct config *c, const struct app *a, char **argv, const int out[2], int *fds,
                      size_t nfds, bool main_process);

/* -- the apps' output and notifications (relay.c) ------------------------------------------------- */

extern size_t nstreams; /* the apps' output pipes still open */
void open_journal(void);
void add_stream(struct app *a, int fd, int which);
size_t stream_pollfds(struct pollfd *pfd);
void relay_fd(int fd);
int open_notify(struct app *a);
void on_notify(struct app *a);
void maybe_ready(void);

/* -- the supervisor (rktd-init.c) ----------------------------------------------------------------- */

extern struct config cfg;

#endif
