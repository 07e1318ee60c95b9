/* Connection churn load for benchmarks/accept.py: L lanes (non-blocking, one epoll),
 * each looping connect -> send S bytes -> read them back -> close, for D seconds.
 * Prints "conns=N total=M errors=E seconds=T" (N: round trips completed in the
 * measured seconds T, M: in the whole run, warm-up included).
 *
 *   cc -O2 -o accept_churn accept_churn.c
 *   accept_churn -p PORT [-H 127.0.0.1] [-l LANES] [-s BYTES] [-d SECONDS] [-w WARMUP]
 *
 * The client closes first; on loopback net.ipv4.tcp_tw_reuse (2 = loopback) lets
 * connect() reuse ports in TIME_WAIT, so the ephemeral range does not run dry.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct lane { int fd; int state; size_t got; };
enum { CONNECTING = 1, READING = 2 };

static struct sockaddr_in addr;
static char *msg, *buf;
static size_t size = 64;
static int ep;
static long done, total, errors;
static int counting;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void start(struct lane *l)
{
    struct epoll_event ev;
    int one = 1;
    for (;;) {
        l->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (l->fd < 0) { perror("socket"); exit(1); }
        setsockopt(l->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(l->fd, (struct sockaddr *)&addr, sizeof(addr)) == 0 || errno == EINPROGRESS)
            break;
        errors++;
        close(l->fd);
        usleep(1000);
    }
    l->state = CONNECTING;
    l->got = 0;
    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLOUT;
    ev.data.ptr = l;
    epoll_ctl(ep, EPOLL_CTL_ADD, l->fd, &ev);
}

static void finish(struct lane *l, int ok)
{
    close(l->fd);            /* also leaves the epoll set */
    if (ok) { total++; if (counting) done++; }
    else errors++;
    start(l);
}

static void step(struct lane *l, unsigned events)
{
    struct epoll_event ev;
    ssize_t n;
    int err = 0;
    socklen_t len = sizeof(err);
    if (l->state == CONNECTING) {
        getsockopt(l->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err || (events & EPOLLERR)) { finish(l, 0); return; }
        if (send(l->fd, msg, size, MSG_NOSIGNAL) != (ssize_t)size) { finish(l, 0); return; }
        l->state = READING;
        memset(&ev, 0, sizeof(ev));
        ev.events = EPOLLIN;
        ev.data.ptr = l;
        epoll_ctl(ep, EPOLL_CTL_MOD, l->fd, &ev);
        return;
    }
    for (;;) {
        n = recv(l->fd, buf, size - l->got, 0);
        if (n > 0) {
            l->got += (size_t)n;
            if (l->got == size) { finish(l, 1); return; }
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        finish(l, 0);
        return;
    }
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = 0, lanes = 16, ch, i, n;
    double secs = 3, warm = 0.5, t0, t1, end;
    struct lane *ls;
    struct epoll_event evs[256];
    while ((ch = getopt(argc, argv, "H:p:l:s:d:w:")) != -1) {
        switch (ch) {
        case 'H': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'l': lanes = atoi(optarg); break;
        case 's': size = (size_t)atol(optarg); break;
        case 'd': secs = atof(optarg); break;
        case 'w': warm = atof(optarg); break;
        default:
            fprintf(stderr, "usage: accept_churn -p PORT [-H HOST] [-l LANES] [-s BYTES] "
                            "[-d SECONDS] [-w WARMUP]\n");
            return 2;
        }
    }
    if (!port || lanes < 1 || size < 1) { fprintf(stderr, "accept_churn: bad arguments\n"); return 2; }
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    inet_pton(AF_INET, host, &addr.sin_addr);
    msg = malloc(size);
    buf = malloc(size);
    memset(msg, 'x', size);
    ep = epoll_create1(EPOLL_CLOEXEC);
    ls = calloc((size_t)lanes, sizeof(*ls));
    for (i = 0; i < lanes; i++)
        start(&ls[i]);
    t0 = now();
    end = t0 + warm + secs;
    t1 = t0;
    while ((t1 = now()) < end) {
        if (!counting && t1 >= t0 + warm) { counting = 1; t0 = t1; }
        n = epoll_wait(ep, evs, 256, 100);
        for (i = 0; i < n; i++)
            step((struct lane *)evs[i].data.ptr, evs[i].events);
    }
    printf("conns=%ld total=%ld errors=%ld seconds=%.3f\n", done, total, errors, t1 - t0);
    return 0;
}
