/*
 * c_echo - the throughput ceiling for netpoll's benchmarks: a single-threaded,
 * level-triggered epoll echo server over nonblocking sockets with TCP_NODELAY.
 *
 * It does the least work an echo server can do: one read into a shared
 * buffer, one write of the same bytes.  Only when the socket will not take
 * everything is the rest copied into a per-connection buffer; the connection
 * then stops reading (EPOLLOUT only) until that buffer drains, so memory stays
 * bounded.  Echoing a framed message returns the same frame, so the server
 * also stands in as the ceiling for the framed RPC benchmarks.
 *
 * Prints "ready" on stdout once listening; exits on SIGINT/SIGTERM.
 * Build: cc -O2 -o c_echo c_echo.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#define RBUF_SIZE (256 * 1024)
#define MAX_EVENTS 1024

typedef struct conn {
    int fd;
    char *pend;  /* bytes the socket has not taken yet */
    size_t plen; /* valid bytes in pend */
    size_t poff; /* already written from pend */
} conn_t;

static int ep;
static int lfd;
static char rbuf[RBUF_SIZE];
static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static void set_interest(conn_t *c, unsigned events)
{
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.ptr = c;
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void conn_close(conn_t *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->pend);
    free(c);
}

/* Returns -1 if the connection was closed. */
static int conn_write_pending(conn_t *c)
{
    while (c->poff < c->plen) {
        ssize_t n = send(c->fd, c->pend + c->poff, c->plen - c->poff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            conn_close(c);
            return -1;
        }
        c->poff += (size_t)n;
    }
    free(c->pend);
    c->pend = NULL;
    c->plen = c->poff = 0;
    set_interest(c, EPOLLIN | EPOLLRDHUP);
    return 0;
}

static void conn_readable(conn_t *c)
{
    ssize_t n = recv(c->fd, rbuf, sizeof rbuf, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        conn_close(c);
        return;
    }
    if (n < 0)
        return;
    size_t off = 0;
    while (off < (size_t)n) {
        ssize_t w = send(c->fd, rbuf + off, (size_t)n - off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            conn_close(c);
            return;
        }
        off += (size_t)w;
    }
    if (off < (size_t)n) { /* backpressure: keep the rest, stop reading */
        c->plen = (size_t)n - off;
        c->poff = 0;
        c->pend = malloc(c->plen);
        if (!c->pend) {
            conn_close(c);
            return;
        }
        memcpy(c->pend, rbuf + off, c->plen);
        set_interest(c, EPOLLOUT);
    }
}

static void accept_all(void)
{
    for (int k = 0; k < 256; k++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN, or a transient error (EMFILE, ECONNABORTED, ...) */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* fails on unix: fine */
        conn_t *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        struct epoll_event ev;
        memset(&ev, 0, sizeof ev);
        ev.events = EPOLLIN | EPOLLRDHUP;
        ev.data.ptr = c;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            close(fd);
            free(c);
        }
    }
}

static int listen_on(const char *host, const char *port, const char *path, int backlog)
{
    int fd;
    if (path) {
        struct sockaddr_un un;
        memset(&un, 0, sizeof un);
        un.sun_family = AF_UNIX;
        if (strlen(path) >= sizeof un.sun_path) {
            fprintf(stderr, "c_echo: unix path too long\n");
            return -1;
        }
        strcpy(un.sun_path, path);
        unlink(path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&un, sizeof un) < 0) {
            perror("c_echo: bind");
            return -1;
        }
    } else {
        struct addrinfo hints, *res = NULL;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_PASSIVE;
        int rc = getaddrinfo(host, port, &hints, &res);
        if (rc != 0 || !res) {
            fprintf(stderr, "c_echo: cannot resolve %s:%s: %s\n", host, port, gai_strerror(rc));
            return -1;
        }
        fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int one = 1;
        if (fd >= 0)
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) < 0) {
            perror("c_echo: bind");
            freeaddrinfo(res);
            return -1;
        }
        freeaddrinfo(res);
    }
    if (listen(fd, backlog) < 0) {
        perror("c_echo: listen");
        return -1;
    }
    return fd;
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *port = NULL, *path = NULL;
    int backlog = 4096, ch;
    while ((ch = getopt(argc, argv, "H:p:u:b:h")) != -1) {
        switch (ch) {
        case 'H': host = optarg; break;
        case 'p': port = optarg; break;
        case 'u': path = optarg; break;
        case 'b': backlog = atoi(optarg); break;
        case 'h':
        default:
            fprintf(ch == 'h' ? stdout : stderr,
                    "usage: c_echo -p PORT [-H HOST] | -u PATH  [-b BACKLOG]\n"
                    "Single-threaded epoll echo server; prints \"ready\" when listening.\n");
            return ch == 'h' ? 0 : 2;
        }
    }
    if (!port && !path) {
        fprintf(stderr, "c_echo: -p PORT or -u PATH is required\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: epoll_wait returns EINTR */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    lfd = listen_on(host, port, path, backlog);
    if (lfd < 0)
        return 1;
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.ptr = NULL; /* NULL marks the listener */
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    fputs("ready\n", stdout);
    fflush(stdout);

    struct epoll_event evs[MAX_EVENTS];
    while (!stop) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, 1000);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c == NULL) {
                accept_all();
                continue;
            }
            unsigned e = evs[i].events;
            if (c->pend) {
                if (e & (EPOLLERR | EPOLLHUP))
                    conn_close(c);
                else if (e & EPOLLOUT)
                    conn_write_pending(c);
                continue;
            }
            if (e & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP))
                conn_readable(c);
        }
    }
    if (path)
        unlink(path);
    return 0;
}
