/*
 * loadgen - a closed-loop TCP / unix-socket load generator for netpoll's benchmarks.
 *
 * Why C and why one thread: the thing under test is a Python server pinned to
 * one core, so the generator must cost far less per request than the server
 * does, and must not be Python.  One epoll loop over nonblocking sockets does
 * one send and one recv per request at depth 1, and batches at depth > 1.
 *
 * Model.  Every active connection keeps exactly `depth` requests in flight:
 * a request is queued (timestamped) when the previous one on that slot is
 * answered, and written at once.  Latency is queue -> last byte of response.
 *
 *   echo  : a request is `size` bytes; the response is the same `size` bytes.
 *   frame : a request is a 4-byte big-endian length + `size` bytes; responses
 *           are parsed as frames of the same shape, one response per frame.
 *
 * Phases: prime (-k connections, one at a time: connect, one request, close)
 * -> connect (all active and idle connections, in batches) -> warm-up
 * (-w s, not recorded) -> measured window (-t s, or until -n responses).
 *
 * Why prime.  A benchmark should meet the server in the state a long-running
 * server is in, and a long-running server has seen connections close.  A fresh
 * CPython process has not, and that matters a lot: asyncio's transports (and
 * Streams) read with sock.recv(256 KiB), a buffer above glibc's initial mmap
 * threshold (128 KiB), so every read costs mmap + mremap (shrinking it to the
 * bytes received) + munmap, and a page fault -- until the first time such a
 * buffer is freed at full size (recv returning b"" on a closing connection),
 * when glibc raises its threshold and the buffers come from the heap from then
 * on.  Measured: 20,000 echo requests to a fresh asyncio Protocol server cost
 * 21,055 mmap, 20,050 mremap and 20,099 munmap calls; after one connection had
 * closed, 1,006 / 1 / 50; 2 page faults per request against 0, and about twice
 * the server CPU per request.  Without priming this generator measured
 * asyncio's cold start (issue 11: 16.4k req/s against 49.0k from another
 * generator; docs/benchmarks.md, "Round 2 baseline").  aiofastnet allocates a
 * fresh buffer per read too and was affected alike; uvloop, BufferedProtocol
 * and netpoll read into buffers of their own and never showed it.
 * The markers "measuring" and "done" are written to stderr, unbuffered, at the
 * window's start and end so a harness can sample the server's CPU over exactly
 * the same window.  The result is one JSON line on stdout.
 *
 * Latencies go into a log-linear histogram (64 sub-buckets per power of two,
 * <1.6% relative error) so every request is recorded at O(1) cost.
 *
 * Build: cc -O2 -o loadgen loadgen.c   (C99 + POSIX/Linux epoll; no other deps)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define RBUF_SIZE (256 * 1024)
#define MAX_EVENTS 1024
#define MAX_FRAME (1u << 30)
#define CONNECT_BATCH 256

/* ------------------------------------------------------------------ histogram */

#define SUB_BITS 6
#define SUB_COUNT (1u << SUB_BITS)                   /* 64 */
#define HIST_BUCKETS (2 * SUB_COUNT + 58 * SUB_COUNT) /* covers all uint64 */

static uint64_t hist[HIST_BUCKETS];
static uint64_t hist_total, hist_min = UINT64_MAX, hist_max;
static long double hist_sum;

static unsigned hist_index(uint64_t v)
{
    if (v < 2 * SUB_COUNT)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - SUB_BITS;
    return 2 * SUB_COUNT + (shift - 1) * SUB_COUNT + (unsigned)((v >> shift) - SUB_COUNT);
}

/* Midpoint of a bucket, in the recorded unit (ns). */
static double hist_value(unsigned idx)
{
    if (idx < 2 * SUB_COUNT)
        return (double)idx;
    unsigned shift = (idx - 2 * SUB_COUNT) / SUB_COUNT + 1;
    uint64_t m = (idx - 2 * SUB_COUNT) % SUB_COUNT + SUB_COUNT;
    uint64_t lo = m << shift;
    return (double)lo + (double)((1ull << shift) - 1) / 2.0;
}

static void hist_record(uint64_t ns)
{
    hist[hist_index(ns)]++;
    hist_total++;
    hist_sum += (long double)ns;
    if (ns < hist_min)
        hist_min = ns;
    if (ns > hist_max)
        hist_max = ns;
}

static double hist_quantile(double q)
{
    if (hist_total == 0)
        return 0.0;
    uint64_t rank = (uint64_t)(q * (double)hist_total + 0.5);
    if (rank < 1)
        rank = 1;
    if (rank > hist_total)
        rank = hist_total;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += hist[i];
        if (seen >= rank) {
            double v = hist_value(i);
            if (v > (double)hist_max)
                v = (double)hist_max;
            if (v < (double)hist_min)
                v = (double)hist_min;
            return v;
        }
    }
    return (double)hist_max;
}

/* ------------------------------------------------------------------ state */

enum { MODE_ECHO, MODE_FRAME };
enum { PH_WARMUP, PH_MEASURE, PH_DONE };
enum { CS_CONNECTING, CS_OPEN, CS_DEAD };

typedef struct conn {
    int fd;
    int state;
    int active;       /* carries load (0 = idle connection) */
    int want_out;     /* EPOLLOUT is registered */
    uint64_t tx_pending; /* bytes queued, not yet written */
    size_t tx_off;    /* position inside the request pattern, [0, reqlen) */
    uint64_t rx_have; /* echo: bytes of the current response received */
    uint32_t hdr_got; /* frame: header bytes received */
    uint8_t hdr[4];
    uint64_t body_left; /* frame: payload bytes still expected */
    uint64_t body_len;  /* frame: length of the current response payload */
    uint32_t inflight;
    uint32_t head, tail; /* ring of send timestamps, `depth` slots */
    uint64_t *ts;
} conn_t;

static struct {
    const char *host;
    const char *port;
    const char *unix_path;
    int conns;
    size_t size;
    uint32_t depth;
    double duration;
    double warmup;
    int idle;
    int mode;
    uint64_t nreq;     /* 0 = run for `duration` */
    double connect_timeout;
    int quiet;
    int verify;
    double spin_us;
    int prime;
} opt = {"127.0.0.1", NULL, NULL, 50, 1024, 1, 5.0, 1.0, 0, MODE_ECHO, 0, 10.0, 0, 0, 0.0, 1};

static int ep = -1;
static conn_t *conns;
static int nconns;
static char *sendbuf;
static size_t sendbuf_len;
static size_t reqlen;
static char rbuf[RBUF_SIZE];
static int phase = PH_WARMUP;
static uint64_t measured, warm_done, errors, connect_errors, frame_errors, data_errors;
static int live_active;
static volatile sig_atomic_t interrupted;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: loadgen -p PORT [-H HOST] | -u PATH   [options]\n"
            "  -H HOST   server host (default 127.0.0.1; IPv6 literals work)\n"
            "  -p PORT   server TCP port\n"
            "  -u PATH   unix socket path instead of host/port\n"
            "  -c N      active connections (default 50)\n"
            "  -s BYTES  message size: echo payload, or frame payload in frame mode (default 1024)\n"
            "  -d N      requests in flight per connection; 1 = ping-pong (default 1)\n"
            "  -t SEC    measured duration (default 5); a cap when -n is given (default 300 then)\n"
            "  -w SEC    warm-up before measuring, not recorded (default 1)\n"
            "  -i N      extra idle connections: connect, then stay silent (default 0)\n"
            "  -m MODE   echo | frame (4-byte big-endian length + payload) (default echo)\n"
            "  -n N      stop after N measured responses instead of after -t\n"
            "  -T SEC    timeout for establishing all connections (default 10)\n"
            "  -q        no progress markers on stderr\n"
            "  -V        verify every response byte (mismatches count as errors)\n"
            "  -k N      prime the server first: N connections, one after another, each sends\n"
            "            one request, reads the response and closes (default 1; 0 = none);\n"
            "            a long-running server has seen connections close, a fresh one not\n"
            "  -b USEC   busy-poll for up to USEC microseconds after the last event before\n"
            "            sleeping in epoll_wait (default 0 = never spin); spinning spares the\n"
            "            server the cost of waking the generator; client_busy_pct excludes it\n"
            "Prints one JSON line: requests, seconds, rps, p50_us, p99_us, p999_us, errors,\n"
            "connections, and extras (mean/min/max latency, client_cpu_pct, ...).\n");
}

/* ------------------------------------------------------------------ epoll helpers */

static void set_interest(conn_t *c, uint32_t events)
{
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.ptr = c;
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void conn_kill(conn_t *c, int count_error)
{
    if (c->state == CS_DEAD)
        return;
    if (count_error)
        errors++;
    if (c->state == CS_OPEN && c->active)
        live_active--;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->state = CS_DEAD;
    c->inflight = 0;
    c->tx_pending = 0;
}

/* Write as much of the queued requests as the socket takes. */
static void conn_flush(conn_t *c)
{
    while (c->tx_pending > 0) {
        size_t len = sendbuf_len - c->tx_off;
        if (len > c->tx_pending)
            len = (size_t)c->tx_pending;
        ssize_t n = send(c->fd, sendbuf + c->tx_off, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!c->want_out) {
                    c->want_out = 1;
                    set_interest(c, EPOLLIN | EPOLLOUT);
                }
                return;
            }
            conn_kill(c, 1);
            return;
        }
        c->tx_pending -= (uint64_t)n;
        c->tx_off = (c->tx_off + (size_t)n) % reqlen;
    }
    if (c->want_out) {
        c->want_out = 0;
        set_interest(c, EPOLLIN);
    }
}

static void enqueue(conn_t *c, uint64_t ts)
{
    c->ts[c->tail] = ts;
    c->tail = (c->tail + 1) % opt.depth;
    c->inflight++;
    c->tx_pending += reqlen;
}

/* One full response arrived on `c`. Returns -1 on a protocol error. */
static int complete(conn_t *c, uint64_t now)
{
    if (c->inflight == 0)
        return -1; /* a response nobody asked for */
    uint64_t t0 = c->ts[c->head];
    c->head = (c->head + 1) % opt.depth;
    c->inflight--;
    if (phase == PH_MEASURE) {
        hist_record(now - t0);
        measured++;
    } else if (phase == PH_WARMUP) {
        warm_done++;
    }
    if (phase != PH_DONE)
        enqueue(c, now);
    return 0;
}

static int consume(conn_t *c, const uint8_t *p, size_t n, uint64_t now)
{
    if (opt.mode == MODE_ECHO) {
        while (n > 0) {
            uint64_t need = reqlen - c->rx_have;
            size_t take = n < need ? n : (size_t)need;
            if (opt.verify && memcmp(p, sendbuf + c->rx_have, take) != 0)
                data_errors++;
            p += take;
            if (n < need) {
                c->rx_have += n;
                return 0;
            }
            n -= (size_t)need;
            c->rx_have = 0;
            if (complete(c, now) < 0)
                return -1;
        }
        return 0;
    }
    while (n > 0) {
        if (c->hdr_got < 4) {
            while (c->hdr_got < 4 && n > 0) {
                c->hdr[c->hdr_got++] = *p++;
                n--;
            }
            if (c->hdr_got < 4)
                return 0;
            uint32_t len = ((uint32_t)c->hdr[0] << 24) | ((uint32_t)c->hdr[1] << 16) |
                           ((uint32_t)c->hdr[2] << 8) | (uint32_t)c->hdr[3];
            if (len > MAX_FRAME)
                return -1;
            if (len != opt.size)
                frame_errors++;
            c->body_left = len;
            c->body_len = len;
        }
        size_t take = n < c->body_left ? n : (size_t)c->body_left;
        if (opt.verify && c->body_len == opt.size &&
            memcmp(p, sendbuf + 4 + (c->body_len - c->body_left), take) != 0)
            data_errors++;
        p += take;
        n -= take;
        c->body_left -= take;
        if (c->body_left == 0) {
            c->hdr_got = 0;
            if (complete(c, now) < 0)
                return -1;
        }
    }
    return 0;
}

static void conn_readable(conn_t *c)
{
    for (;;) {
        ssize_t n = recv(c->fd, rbuf, sizeof rbuf, 0);
        if (n > 0) {
            if (!c->active || consume(c, (const uint8_t *)rbuf, (size_t)n, now_ns()) < 0) {
                conn_kill(c, 1); /* idle connections must stay silent */
                return;
            }
            if ((size_t)n < sizeof rbuf)
                break;
            continue;
        }
        if (n == 0) {
            conn_kill(c, 1); /* the server closed a connection under load */
            return;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            conn_kill(c, 1);
        break;
    }
    if (c->tx_pending > 0 && !c->want_out)
        conn_flush(c);
}

/* ------------------------------------------------------------------ connect phase */

static struct sockaddr_storage addr;
static socklen_t addrlen;

static int resolve(void)
{
    if (opt.unix_path) {
        struct sockaddr_un *un = (struct sockaddr_un *)&addr;
        if (strlen(opt.unix_path) >= sizeof un->sun_path) {
            fprintf(stderr, "loadgen: unix path too long\n");
            return -1;
        }
        memset(un, 0, sizeof *un);
        un->sun_family = AF_UNIX;
        strcpy(un->sun_path, opt.unix_path);
        addrlen = sizeof *un;
        return 0;
    }
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(opt.host, opt.port, &hints, &res);
    if (rc != 0 || !res) {
        fprintf(stderr, "loadgen: cannot resolve %s:%s: %s\n", opt.host, opt.port,
                gai_strerror(rc));
        return -1;
    }
    memcpy(&addr, res->ai_addr, res->ai_addrlen);
    addrlen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static int start_connect(conn_t *c)
{
    int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (addr.ss_family != AF_UNIX) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    if (connect(fd, (struct sockaddr *)&addr, addrlen) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    c->fd = fd;
    c->state = CS_CONNECTING;
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLOUT;
    ev.data.ptr = c;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        close(fd);
        c->fd = -1;
        return -1;
    }
    return 0;
}

/* Establish every connection, at most CONNECT_BATCH at a time. */
static int connect_all(void)
{
    struct epoll_event evs[MAX_EVENTS];
    uint64_t deadline = now_ns() + (uint64_t)(opt.connect_timeout * 1e9);
    int next = 0, pending = 0;
    while ((next < nconns || pending > 0) && !interrupted) {
        while (next < nconns && pending < CONNECT_BATCH) {
            conn_t *c = &conns[next++];
            if (start_connect(c) < 0) {
                c->state = CS_DEAD;
                errors++;
                connect_errors++;
            } else {
                pending++;
            }
        }
        uint64_t now = now_ns();
        if (now >= deadline)
            break;
        int ms = (int)((deadline - now) / 1000000ull) + 1;
        if (ms > 100)
            ms = 100;
        int n = epoll_wait(ep, evs, MAX_EVENTS, ms);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c->state != CS_CONNECTING)
                continue;
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            pending--;
            if (err != 0 || (evs[i].events & (EPOLLERR | EPOLLHUP))) {
                connect_errors++;
                conn_kill(c, 1);
                continue;
            }
            c->state = CS_OPEN;
            if (c->active)
                live_active++;
            set_interest(c, EPOLLIN);
        }
    }
    for (int i = 0; i < nconns; i++) { /* timed out or interrupted */
        if (conns[i].state == CS_CONNECTING) {
            connect_errors++;
            conn_kill(&conns[i], 1);
        }
    }
    return live_active > 0 ? 0 : -1;
}

/* ------------------------------------------------------------------ prime phase */

/* One blocking connection: send one request, read one whole response, close.
 * Returns 0, or -1 (the caller counts it as a connect error). */
static int prime_one(void)
{
    int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv;
    tv.tv_sec = (time_t)opt.connect_timeout;
    tv.tv_usec = (suseconds_t)((opt.connect_timeout - (double)tv.tv_sec) * 1e6);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int rc = -1;
    if (connect(fd, (struct sockaddr *)&addr, addrlen) < 0)
        goto out;
    for (size_t off = 0; off < reqlen;) {
        ssize_t n = send(fd, sendbuf + off, reqlen - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto out;
        off += (size_t)n;
    }
    /* echo and frame alike: the response to one request is reqlen bytes */
    for (size_t got = 0; got < reqlen;) {
        ssize_t n = recv(fd, rbuf, sizeof rbuf, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto out;
        got += (size_t)n;
    }
    rc = 0;
out:
    close(fd);
    return rc;
}

/* ------------------------------------------------------------------ main */

static int parse_num(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || v < 0)
        return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    int ch;
    double v;
    int t_given = 0;
    while ((ch = getopt(argc, argv, "H:p:u:c:s:d:t:w:i:m:n:T:qVb:k:h")) != -1) {
        int bad = 0;
        switch (ch) {
        case 'H': opt.host = optarg; break;
        case 'p': opt.port = optarg; break;
        case 'u': opt.unix_path = optarg; break;
        case 'c': bad = parse_num(optarg, &v) || v < 1; opt.conns = (int)v; break;
        case 's': bad = parse_num(optarg, &v) || v < 1 || v > MAX_FRAME; opt.size = (size_t)v; break;
        case 'd': bad = parse_num(optarg, &v) || v < 1 || v > 65536; opt.depth = (uint32_t)v; break;
        case 't': bad = parse_num(optarg, &v) || v <= 0; opt.duration = v; t_given = 1; break;
        case 'w': bad = parse_num(optarg, &v); opt.warmup = v; break;
        case 'i': bad = parse_num(optarg, &v); opt.idle = (int)v; break;
        case 'n': bad = parse_num(optarg, &v) || v < 1; opt.nreq = (uint64_t)v; break;
        case 'T': bad = parse_num(optarg, &v) || v <= 0; opt.connect_timeout = v; break;
        case 'q': opt.quiet = 1; break;
        case 'V': opt.verify = 1; break;
        case 'b': bad = parse_num(optarg, &v) || v > 1e6; opt.spin_us = v; break;
        case 'k': bad = parse_num(optarg, &v) || v > 1e6; opt.prime = (int)v; break;
        case 'm':
            if (strcmp(optarg, "echo") == 0)
                opt.mode = MODE_ECHO;
            else if (strcmp(optarg, "frame") == 0)
                opt.mode = MODE_FRAME;
            else
                bad = 1;
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (bad) {
            fprintf(stderr, "loadgen: bad value for -%c: %s\n", ch, optarg);
            return 2;
        }
    }
    if (!opt.unix_path && !opt.port) {
        usage(stderr);
        return 2;
    }
    if (opt.nreq && !t_given)
        opt.duration = 300.0;

    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    nconns = opt.conns + opt.idle;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)nconns + 64) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    reqlen = opt.size + (opt.mode == MODE_FRAME ? 4 : 0);
    size_t copies = reqlen >= 65536 ? 1 : 65536 / reqlen;
    sendbuf_len = copies * reqlen;
    sendbuf = malloc(sendbuf_len);
    conns = calloc((size_t)nconns, sizeof *conns);
    uint64_t *ts_pool = calloc((size_t)opt.conns * opt.depth, sizeof *ts_pool);
    if (!sendbuf || !conns || !ts_pool) {
        fprintf(stderr, "loadgen: out of memory\n");
        return 1;
    }
    for (size_t k = 0; k < copies; k++) {
        char *r = sendbuf + k * reqlen;
        size_t off = 0;
        if (opt.mode == MODE_FRAME) {
            uint32_t len = (uint32_t)opt.size;
            r[0] = (char)(len >> 24);
            r[1] = (char)(len >> 16);
            r[2] = (char)(len >> 8);
            r[3] = (char)len;
            off = 4;
        }
        for (size_t j = 0; j < opt.size; j++)
            r[off + j] = (char)('a' + j % 26);
    }
    for (int i = 0; i < nconns; i++) {
        conns[i].fd = -1;
        conns[i].active = i < opt.conns;
        if (conns[i].active)
            conns[i].ts = ts_pool + (size_t)i * opt.depth;
    }

    if (resolve() < 0)
        return 1;
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
        perror("loadgen: epoll_create1");
        return 1;
    }
    for (int k = 0; k < opt.prime && !interrupted; k++) {
        if (prime_one() < 0) {
            errors++;
            connect_errors++;
        }
    }
    uint64_t t_conn0 = now_ns();
    if (connect_all() < 0) {
        fprintf(stderr, "loadgen: no connection could be established\n");
    }
    uint64_t t_conn1 = now_ns();

    /* Start the load: every active connection gets `depth` requests. */
    uint64_t start = now_ns();
    for (int i = 0; i < opt.conns; i++) {
        conn_t *c = &conns[i];
        if (c->state != CS_OPEN)
            continue;
        for (uint32_t k = 0; k < opt.depth; k++)
            enqueue(c, start);
        conn_flush(c);
    }

    uint64_t warm_end = start + (uint64_t)(opt.warmup * 1e9);
    uint64_t t_start = start, t_end = start, meas_end = 0;
    double cpu0 = 0.0, cpu1 = 0.0;
    uint64_t idle_ns = 0, last_event = start;
    uint64_t spin_ns = (uint64_t)(opt.spin_us * 1e3);
    if (opt.warmup <= 0) {
        phase = PH_MEASURE;
        meas_end = start + (uint64_t)(opt.duration * 1e9);
        cpu0 = cpu_seconds();
        if (!opt.quiet)
            fputs("measuring\n", stderr);
    }

    struct epoll_event evs[MAX_EVENTS];
    while (phase != PH_DONE) {
        uint64_t now = now_ns();
        if (phase == PH_WARMUP && now >= warm_end) {
            phase = PH_MEASURE;
            t_start = now;
            meas_end = now + (uint64_t)(opt.duration * 1e9);
            cpu0 = cpu_seconds();
            if (!opt.quiet)
                fputs("measuring\n", stderr);
        }
        if (phase == PH_MEASURE &&
            (now >= meas_end || (opt.nreq && measured >= opt.nreq))) {
            phase = PH_DONE;
            t_end = now;
            break;
        }
        if (interrupted || live_active == 0) {
            if (phase == PH_WARMUP) {
                t_start = now;
                cpu0 = cpu_seconds();
            }
            t_end = now;
            phase = PH_DONE;
            break;
        }
        uint64_t until = phase == PH_WARMUP ? warm_end : meas_end;
        int ms = until > now ? (int)((until - now) / 1000000ull) + 1 : 0;
        if (ms > 100)
            ms = 100;
        int spinning = spin_ns > 0 && now - last_event < spin_ns;
        if (spinning)
            ms = 0;
        int n = epoll_wait(ep, evs, MAX_EVENTS, ms);
        if (n > 0)
            last_event = now;
        else if (spinning && phase == PH_MEASURE)
            idle_ns += now_ns() - now; /* an empty poll: time the generator had to spare */
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c->state != CS_OPEN)
                continue;
            uint32_t e = evs[i].events;
            if (e & (EPOLLIN | EPOLLERR | EPOLLHUP))
                conn_readable(c);
            if (c->state == CS_OPEN && (e & EPOLLOUT))
                conn_flush(c);
        }
    }
    cpu1 = cpu_seconds();
    if (!opt.quiet)
        fputs("done\n", stderr);

    double secs = (double)(t_end - t_start) / 1e9;
    if (secs <= 0)
        secs = 1e-9;
    int established = 0;
    for (int i = 0; i < nconns; i++)
        established += conns[i].state == CS_OPEN && conns[i].active;
    double busy_pct = 100.0 * ((cpu1 - cpu0) - (double)idle_ns / 1e9) / secs;
    double mean = hist_total ? (double)(hist_sum / (long double)hist_total) : 0.0;
    printf("{\"requests\": %llu, \"seconds\": %.4f, \"rps\": %.1f, "
           "\"p50_us\": %.1f, \"p99_us\": %.1f, \"p999_us\": %.1f, "
           "\"errors\": %llu, \"connections\": %d, "
           "\"idle\": %d, \"size\": %zu, \"depth\": %u, \"mode\": \"%s\", "
           "\"mean_us\": %.1f, \"min_us\": %.1f, \"max_us\": %.1f, "
           "\"connect_errors\": %llu, \"frame_errors\": %llu, \"data_errors\": %llu, "
           "\"open_at_end\": %d, \"primed\": %d, "
           "\"warmup_requests\": %llu, \"connect_seconds\": %.3f, \"client_cpu_pct\": %.1f, "
           "\"client_busy_pct\": %.1f}\n",
           (unsigned long long)measured, secs, (double)measured / secs, hist_quantile(0.50) / 1e3,
           hist_quantile(0.99) / 1e3, hist_quantile(0.999) / 1e3,
           (unsigned long long)(errors + frame_errors + data_errors), opt.conns, opt.idle, opt.size, opt.depth,
           opt.mode == MODE_ECHO ? "echo" : "frame", mean / 1e3,
           hist_total ? (double)hist_min / 1e3 : 0.0, (double)hist_max / 1e3,
           (unsigned long long)connect_errors, (unsigned long long)frame_errors,
           (unsigned long long)data_errors, established, opt.prime,
           (unsigned long long)warm_done, (double)(t_conn1 - t_conn0) / 1e9,
           100.0 * (cpu1 - cpu0) / secs,
           busy_pct > 0 ? busy_pct : 0.0);
    fflush(stdout);
    return established > 0 || opt.conns == 0 ? 0 : 1;
}
