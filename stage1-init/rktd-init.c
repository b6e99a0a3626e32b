/* rktd-init: PID 1 of an nspawn pod (stage1), written in C so that a pod's start costs no second
 * interpreter and an idle pod holds a few hundred KiB, not megabytes.
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
 * The files (stage1-init/), each one part, with rktd-init.h for what crosses them:
 *   rktd-init.c  the supervisor: signals, the pod's cgroups and sysctls, handlers, starting, reaping and
 *                stopping the apps, the main loop, main()
 *   config.c     the config: its format and usage (at its top), the reader, --check
 *   confine.c    the apps' API file systems, and becoming the app: pivot_root, cgroups, environment and
 *                listen fds, exec labels, capabilities, ids, seccomp, exec
 *   relay.c      the apps' output to journald (native protocol) or stdout/stderr, sd_notify sockets
 *   util.c       memory, string vectors, messages, files
 */
#include "rktd-init.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CONFIG_PATH "/rktd/init.cfg"
#define DRAIN_MAX 2.0 /* seconds of output still relayed once every app has ended */

struct config cfg;
static int sig_fd = -1;
static int *inherited;
static size_t ninherited;
static bool stopping;
static bool kill_pending;
static double kill_at;
static int failed = -1;

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

/* `sig` to a child's process group (what it forked) and to the child itself. */
static void kill_tree(pid_t pid, int sig) {
    kill(-pid, sig);
    kill(pid, sig);
}

static void signal_apps(int sig) {
    for (size_t i = 0; i < cfg.napps; i++) {
        struct app *a = &cfg.apps[i];
        if (a->pid && a->status < 0)
            kill_tree(a->pid, sig);
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
            add_stream(a, outs[i][0], i + 1);
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
        const int out[2] = {outs[0][1], outs[1][1]};
        become(&cfg, a, argv, out, fds, nfds, main_process);
    }
    if (pid < 0)
        logmsg("%s: fork: %s", a->name, strerror(errno));
    free(fds);
    for (int i = 0; i < 2; i++)
        if (outs[i][1] >= 0)
            close(outs[i][1]);
    return pid;
}

/* The poll timeout of the pending SIGKILL, sent once it is due; -1: none. */
static int kill_timeout(void) {
    if (!kill_pending)
        return -1;
    double left = kill_at - now();
    if (left > 0)
        return poll_ms(left);
    signal_apps(SIGKILL);
    kill_pending = false;
    return -1;
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
            kill_tree(pid, SIGTERM);
            termed = true;
        }
        int timeout = kill_timeout();
        double t = now();
        if (stopping && !killed) {
            double deadline = kill_at - cfg.stop_timeout < started ? started + cfg.stop_timeout : kill_at;
            if (deadline <= t) {
                kill_tree(pid, SIGKILL);
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

/* The controllers the apps' cgroup_v2 files need (a file's name up to its first dot). */
static void needed_controllers(struct strv *need) {
    for (size_t i = 0; i < cfg.napps; i++)
        for (size_t k = 0; k < cfg.apps[i].v2_keys.n; k++) {
            const char *key = cfg.apps[i].v2_keys.v[k];
            char *ctl = xasprintf("%.*s", (int)strcspn(key, "."), key);
            if (!in_strv(need, ctl))
                strv_push(need, ctl);
        }
}

/* 0 if the pod's root has every controller of `need` (sorted), with `enable` the line that enables them
 * below it; else -1 with the reason in `msg`. */
static int check_delegated(const struct strv *need, char *enable, size_t elen, char *msg, size_t mlen) {
    char have[4096], copy[4096], missing[512] = "";
    int fd = open(V2_ROOT "/cgroup.controllers", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : read(fd, have, sizeof have - 1);
    if (fd >= 0)
        close(fd);
    if (n < 0) {
        snprintf(msg, mlen, "%s/cgroup.controllers: %s", V2_ROOT, strerror(errno));
        return -1;
    }
    have[n] = 0;
    for (size_t i = 0; i < need->n; i++) {
        bool found = false;
        char *save, *tok = strtok_r(strcpy(copy, have), " \n", &save);
        for (; tok; tok = strtok_r(NULL, " \n", &save))
            found |= !strcmp(tok, need->v[i]);
        if (!found)
            snprintf(missing + strlen(missing), sizeof missing - strlen(missing), "%s%s",
                     *missing ? ", " : "", need->v[i]);
        snprintf(enable + strlen(enable), elen - strlen(enable), "%s+%s", i ? " " : "", need->v[i]);
    }
    if (*missing) {
        snprintf(msg, mlen, "controllers %s not delegated", missing);
        return -1;
    }
    return 0;
}

/* The init moved to a leaf of its own, the controllers enabled below the pod's root, and each limited
 * app's leaf made with its limits; else -1, errno set, with `*step` the path that failed. */
static int make_v2_leaves(const char *enable, char *path, size_t plen, const char **step) {
    *step = V2_ROOT "/_rktd-init";
    if (mkdir(*step, 0755) < 0 && errno != EEXIST)
        return -1;
    *step = V2_ROOT "/_rktd-init/cgroup.procs";
    if (write_file(*step, "0") < 0)
        return -1;
    *step = V2_ROOT "/cgroup.subtree_control";
    if (write_file(*step, enable) < 0)
        return -1;
    for (size_t i = 0; i < cfg.napps; i++) {
        struct app *a = &cfg.apps[i];
        if (!a->v2_keys.n)
            continue;
        snprintf(path, plen, "%s/%s", V2_ROOT, a->name);
        *step = path;
        if (mkdir(path, 0755) < 0 && errno != EEXIST)
            return -1;
        for (size_t k = 0; k < a->v2_keys.n; k++) {
            snprintf(path, plen, "%s/%s/%s", V2_ROOT, a->name, a->v2_keys.v[k]);
            if (write_file(path, a->v2_values.v[k]) < 0)
                return -1;
        }
        strv_push(&a->cg_controllers, "unified");
        strv_push(&a->cg_paths, a->name);
    }
    return 0;
}

/* Per-app cgroups in the pod's delegated cgroup v2 subtree: the init moves itself to a leaf, enables
 * the controllers below the pod's root, and each limited app gets <root>/<app> with its limits. */
static void setup_cgroup_v2(void) {
    struct strv need = {0};
    char path[PATH_MAX], msg[PATH_MAX + 512] = "", enable[512] = "";
    needed_controllers(&need);
    if (!need.n)
        return;
    qsort(need.v, need.n, sizeof *need.v, cmp_str);
    if (check_delegated(&need, enable, sizeof enable, msg, sizeof msg) == 0) {
        const char *step;
        if (make_v2_leaves(enable, path, sizeof path, &step) == 0)
            return;
        snprintf(msg, sizeof msg, "%s: %s", step, strerror(errno));
    }
    logmsg("memory/CPU limits not enforced: cgroup v2: %s (the unit's limits still apply)", msg);
}

static void app_exited(struct app *a, int code) {
    char path[PATH_MAX], value[16];
    a->status = code;
    snprintf(path, sizeof path, "/rktd/status/%s", a->name);
    snprintf(value, sizeof value, "%d\n", code);
    if (write_file(path, value) < 0) /* stage1 binds the pod's status directory there */
        logmsg("cannot record the status of %s: %s", a->name, strerror(errno));
    run_handlers(a, &a->post_stop, "post_stop");
    for (size_t i = 0; i < a->cg_controllers.n; i++) {
        app_cgroup(path, sizeof path, a, i, "");
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
        prepare_rootfs(&cfg.apps[i], cfg.api_vfs_writable);
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

/* The apps are gone: relay what their descendants still hold open until they are silent for half a
 * second, and for DRAIN_MAX seconds at most: one that keeps writing must not keep the pod (it dies with
 * this init, the pod's PID 1). The poll timeout; `cut`: less than half a second is left. */
static int drain_timeout(double *drain_until, bool *cut) {
    if (*drain_until < 0)
        *drain_until = now() + DRAIN_MAX;
    double left = *drain_until - now();
    *cut = left < 0.5;
    return left <= 0 ? 0 : *cut ? poll_ms(left) : 500;
}

/* The loop's poll set: the signalfd, the apps' output, their notify sockets (from first_notify). */
static struct pollfd *pfd;
static struct app **pfd_app; /* the app of each notify socket */
static size_t npfd, first_notify;

static void build_poll_set(void) {
    size_t max = 1 + nstreams + cfg.napps; /* on the heap: the config sets napps */
    pfd = xrealloc(pfd, max * sizeof *pfd);
    pfd_app = xrealloc(pfd_app, max * sizeof *pfd_app);
    npfd = 0;
    pfd[npfd++] = (struct pollfd){sig_fd, POLLIN, 0};
    npfd += stream_pollfds(pfd + npfd);
    first_notify = npfd;
    for (size_t i = 0; i < cfg.napps; i++)
        if (cfg.apps[i].notify_fd >= 0) {
            pfd_app[npfd] = &cfg.apps[i];
            pfd[npfd++] = (struct pollfd){cfg.apps[i].notify_fd, POLLIN, 0};
        }
}

/* What the poll found: signals, then output before notifications, so that what an app printed before
 * it said READY=1 reaches the journal before the manager hears READY=1. */
static void dispatch(void) {
    if (pfd[0].revents)
        read_signals();
    for (size_t i = 1; i < first_notify; i++)
        if (pfd[i].revents)
            relay_fd(pfd[i].fd);
    for (size_t i = first_notify; i < npfd; i++)
        if (pfd[i].revents)
            on_notify(pfd_app[i]);
}

static int loop(void) {
    double drain_until = -1;
    while (any_running() || nstreams) {
        int timeout = kill_timeout();
        bool draining = !any_running(), cut = false;
        if (draining)
            timeout = drain_timeout(&drain_until, &cut);
        build_poll_set();
        int ready = poll(pfd, npfd, timeout);
        if ((ready == 0 || (cut && now() >= drain_until)) && draining) {
            if (ready != 0 || cut)
                logmsg("output still open %g s after the apps ended (processes they left): ending the pod",
                       DRAIN_MAX);
            break;
        }
        if (ready > 0)
            dispatch();
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
