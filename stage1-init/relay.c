/* rktd-init's relay: each app's stdout and stderr, line by line, to journald's native protocol (or to
 * the init's own stdout and stderr), and the sd_notify sockets: the apps' own, and READY=1 to the
 * pod's manager. */
#include "rktd-init.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define JOURNAL_SOCKET "/run/systemd/journal/socket"
#define MAX_LINE (48 * 1024)
#define READ_CHUNK 65536

struct stream {
    int fd, which; /* 1 stdout, 2 stderr */
    struct app *app;
    char *buf;
    size_t len;
};

static struct stream *streams;
size_t nstreams;
static int journal_fd = -1;

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

/* A stream of the app's output: `fd` the read end of its stdout (`which` 1) or stderr (2). */
void add_stream(struct app *a, int fd, int which) {
    streams = xrealloc(streams, (nstreams + 1) * sizeof *streams);
    char *buf = xrealloc(NULL, MAX_LINE + READ_CHUNK);
    streams[nstreams++] = (struct stream){fd, which, a, buf, 0};
}

/* The streams' poll entries, written to `pfd`: nstreams of them. */
size_t stream_pollfds(struct pollfd *pfd) {
    for (size_t i = 0; i < nstreams; i++)
        pfd[i] = (struct pollfd){streams[i].fd, POLLIN, 0};
    return nstreams;
}

/* One read of the stream of `fd`, if it is still open. */
void relay_fd(int fd) {
    for (size_t k = 0; k < nstreams; k++)
        if (streams[k].fd == fd) {
            relay(k);
            return;
        }
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

void maybe_ready(void) {
    for (size_t i = 0; i < cfg.napps; i++)
        if (!cfg.apps[i].ready)
            return;
    sd_notify("READY=1");
}

/* The app's NOTIFY_SOCKET: an abstract name of the pod's network namespace, random so that no host
 * user can take it first; on_notify ignores senders outside the pod's PID namespace. */
int open_notify(struct app *a) {
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

void on_notify(struct app *a) {
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

void open_journal(void) {
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
