/*
 * refgen - a deliberately simple reference load generator, to check loadgen.
 *
 * loadgen is an epoll loop over nonblocking sockets with its own choices (a
 * request ring per connection, partial-write bookkeeping, socket options,
 * priming the server); any of them could favour one server over another.
 * refgen shares none of its code and makes the plainest choices instead:
 * blocking sockets and poll(2), one thread, one request per connection at a
 * time:
 *
 *     poll(all connections); for each readable one: recv what is there;
 *     if its whole response is in: count it and send(whole next request)
 *
 * (A thread per connection is simpler still, but on a 2-core VM its context
 * switch per request makes the generator the bottleneck for fast servers.)
 *
 * Two rounds, each with its own connections: a warm-up round (-w s) whose
 * connections are closed when it ends, then the measured round (-t s).  So
 * the server is measured after it has served and closed connections, the
 * state a long-running server is in.  Counts only; no latency histogram.
 *
 *   echo  : a request is `size` bytes and so is its response.
 *   frame : a request is a 4-byte big-endian length + `size` bytes, and so is
 *           its response (only the byte count is checked).
 *
 * Result: one JSON line on stdout: requests, seconds, rps, errors, connections.
 * Build: cc -O2 -o refgen refgen.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char *host = "127.0.0.1", *port;
static int conns = 50, frame;
static size_t size = 1024, reqlen;
static double warmup = 0.5, duration = 2.0;
static struct addrinfo *ai;
static char *req, *resp;
static long long errors;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int send_all(int fd)
{
    for (size_t off = 0; off < reqlen;) {
        ssize_t n = send(fd, req + off, reqlen - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        off += (size_t)n;
    }
    return 0;
}

/* One round: connect `conns` sockets, ping-pong on all of them for `secs`,
 * close them.  Returns the responses counted; *elapsed is the exact time. */
static long long run_round(double secs, double *elapsed)
{
    struct pollfd *pfd = calloc((size_t)conns, sizeof *pfd);
    size_t *got = calloc((size_t)conns, sizeof *got);
    if (!pfd || !got) {
        fprintf(stderr, "refgen: out of memory\n");
        exit(1);
    }
    for (int i = 0; i < conns; i++) {
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
            perror("refgen: connect");
            exit(1);
        }
        if (ai->ai_family != AF_UNIX) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        }
        pfd[i].fd = fd;
        pfd[i].events = POLLIN;
    }
    long long count = 0;
    double t0 = now(), end = t0 + secs, t = t0;
    for (int i = 0; i < conns; i++)
        if (send_all(pfd[i].fd) < 0)
            errors++, pfd[i].fd = -pfd[i].fd - 1; /* negative fd: poll skips it */
    while (t < end) {
        int n = poll(pfd, (nfds_t)conns, 100);
        if (n < 0 && errno != EINTR) {
            perror("refgen: poll");
            exit(1);
        }
        for (int i = 0; i < conns && n > 0; i++) {
            if (!pfd[i].revents)
                continue;
            n--;
            ssize_t r = recv(pfd[i].fd, resp, reqlen - got[i], 0);
            if (r <= 0) {
                errors++;
                close(pfd[i].fd);
                pfd[i].fd = -pfd[i].fd - 1;
                continue;
            }
            got[i] += (size_t)r;
            if (got[i] == reqlen) {
                got[i] = 0;
                count++;
                if (send_all(pfd[i].fd) < 0) {
                    errors++;
                    close(pfd[i].fd);
                    pfd[i].fd = -pfd[i].fd - 1;
                }
            }
        }
        t = now();
    }
    *elapsed = t - t0;
    for (int i = 0; i < conns; i++)
        if (pfd[i].fd >= 0)
            close(pfd[i].fd);
    free(pfd);
    free(got);
    return count;
}

int main(int argc, char **argv)
{
    int ch;
    while ((ch = getopt(argc, argv, "H:p:c:s:m:t:w:")) != -1) {
        switch (ch) {
        case 'H': host = optarg; break;
        case 'p': port = optarg; break;
        case 'c': conns = atoi(optarg); break;
        case 's': size = (size_t)atol(optarg); break;
        case 'm': frame = strcmp(optarg, "frame") == 0; break;
        case 't': duration = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        default:
            fprintf(stderr, "usage: refgen -p PORT [-H HOST] [-c CONNS] [-s BYTES] "
                            "[-m echo|frame] [-t SEC] [-w SEC]\n");
            return 2;
        }
    }
    if (!port || conns < 1 || size < 1 || duration <= 0 || warmup < 0) {
        fprintf(stderr, "refgen: need -p PORT and positive -c, -s, -t\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    reqlen = size + (frame ? 4 : 0);
    req = malloc(reqlen);
    resp = malloc(reqlen);
    if (!req || !resp) {
        fprintf(stderr, "refgen: out of memory\n");
        return 1;
    }
    memset(req, 'r', reqlen);
    if (frame) {
        req[0] = (char)(size >> 24);
        req[1] = (char)(size >> 16);
        req[2] = (char)(size >> 8);
        req[3] = (char)size;
    }
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "refgen: %s: %s\n", host, gai_strerror(rc));
        return 1;
    }
    double secs = 0;
    long long warm = warmup > 0 ? run_round(warmup, &secs) : 0;
    long long warm_errors = errors;
    long long n = run_round(duration, &secs);
    printf("{\"requests\": %lld, \"seconds\": %.4f, \"rps\": %.1f, \"errors\": %lld, "
           "\"warmup_requests\": %lld, \"warmup_errors\": %lld, \"connections\": %d}\n",
           n, secs, (double)n / secs, errors - warm_errors, warm, warm_errors, conns);
    return errors ? 1 : 0;
}
