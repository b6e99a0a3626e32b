/* A test app that speaks the sd_notify protocol, built static by the tests (tests/helpers/notify_aci.py).
 *
 *   notify_app DELAY_MS|usr1 [STATUS]
 *
 * Prints "notify-app: started", sleeps DELAY_MS milliseconds (or, given "usr1", waits for SIGUSR1),
 * prints "notify-app: sending READY=1 at NS" (NS: CLOCK_MONOTONIC in nanoseconds, the clock every
 * namespace on the kernel shares, so a test can order the send against what it observes), sends
 * "READY=1" (and "STATUS=STATUS" when given) as one datagram to $NOTIFY_SOCKET ("/path", or "@name"
 * for an abstract socket), prints "notify-app: sent READY=1", then waits: SIGTERM, SIGINT or SIGHUP
 * end it with status 0 (before READY too, after printing "notify-app: stopped before READY").
 * A failed send prints "notify-app: send failed: ..." and exits 3; NOTIFY_SOCKET unset or invalid: 2.
 */
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop_signal;

static void on_stop(int sig) { stop_signal = sig; }

static void say(const char *line) {
    /* One write per line: stdout is a pipe to the pod's log relay, no stdio buffering in between. */
    char buf[512];
    int n = snprintf(buf, sizeof buf, "notify-app: %s\n", line);
    if (n > 0 && write(STDOUT_FILENO, buf, (size_t)n) < 0)
        _exit(4);
}

static int notify(const char *message) {
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un addr;
    socklen_t len;
    size_t n;
    int fd, saved;

    if (path == NULL || (path[0] != '/' && path[0] != '@'))
        return -2;
    n = strlen(path);
    if (n < 2 || n >= sizeof addr.sun_path)
        return -2;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, path, n);
    if (path[0] == '@') {
        addr.sun_path[0] = '\0'; /* abstract: no terminating NUL, the length says where it ends */
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    } else {
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    }
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (sendto(fd, message, strlen(message), MSG_NOSIGNAL, (struct sockaddr *)&addr, len) < 0) {
        saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    close(fd);
    return 0;
}

static volatile sig_atomic_t got_usr1;

static void on_usr1(int sig) {
    (void)sig;
    got_usr1 = 1;
}

int main(int argc, char **argv) {
    char message[256], line[320];
    struct sigaction sa;
    struct timespec delay, now;
    long ms = 0;
    int wait_usr1, rc;
    sigset_t blocked, old;

    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s DELAY_MS|usr1 [STATUS]\n", argv[0]);
        return 2;
    }
    wait_usr1 = strcmp(argv[1], "usr1") == 0;
    if (!wait_usr1) {
        ms = strtol(argv[1], NULL, 10);
        if (ms < 0)
            ms = 0;
    }

    /* The signals stay blocked except inside the waits: one that comes early stays pending. */
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGTERM);
    sigaddset(&blocked, SIGINT);
    sigaddset(&blocked, SIGHUP);
    sigaddset(&blocked, SIGUSR1);
    sigprocmask(SIG_BLOCK, &blocked, &old);
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);

    say("started");
    if (wait_usr1) {
        while (!got_usr1 && !stop_signal)
            sigsuspend(&old);
    } else {
        delay.tv_sec = ms / 1000;
        delay.tv_nsec = (ms % 1000) * 1000000L;
        sigprocmask(SIG_SETMASK, &old, NULL);
        while (nanosleep(&delay, &delay) < 0 && errno == EINTR && !stop_signal)
            ;
        sigprocmask(SIG_BLOCK, &blocked, NULL);
    }
    if (stop_signal) {
        say("stopped before READY");
        return 0;
    }

    if (argc == 3)
        snprintf(message, sizeof message, "READY=1\nSTATUS=%s", argv[2]);
    else
        snprintf(message, sizeof message, "READY=1");
    clock_gettime(CLOCK_MONOTONIC, &now);
    snprintf(line, sizeof line, "sending READY=1 at %lld", (long long)now.tv_sec * 1000000000LL + now.tv_nsec);
    say(line);
    rc = notify(message);
    if (rc == -2) {
        say("NOTIFY_SOCKET unset or invalid");
        return 2;
    }
    if (rc < 0) {
        snprintf(line, sizeof line, "send failed: %s", strerror(errno));
        say(line);
        return 3;
    }
    say("sent READY=1");

    while (!stop_signal)
        sigsuspend(&old);
    say("stopping");
    return 0;
}
