/*
 * refgen - a deliberately simple reference load generator, to check loadgen.
 *
 * loadgen is one epoll thread juggling nonblocking sockets; a subtle choice in
 * it (a socket option, how it writes or reads, what state it leaves the server
 * in) could favour one server over another.  refgen shares none of its code
 * and none of its design: one blocking thread per connection, each doing
 *
 *     send(whole request); recv until the whole response is in; repeat
 *
 * and nothing else.  Two rounds, each with its own connections: a warm-up
 * round (-w s) whose connections are closed when it ends, then the measured
 * round (-t s).  So the server is measured after it has served and closed
 * connections, the state a long-running server is in.  Counts only; no
 * latency histogram.  Depth is always 1 (ping-pong).
 *
 *   echo  : a request is `size` bytes and so is its response.
 *   frame : a request is a 4-byte big-endian length + `size` bytes, and so is
 *           its response (only the byte count is checked).
 *
 * Result: one JSON line on stdout: requests, seconds, rps, errors, connections.
 * Build: cc -O2 -pthread -o refgen refgen.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
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

static atomic_int stop_flag;
static atomic_llong done, errors;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *worker(void *arg)
{
    int fd = *(int *)arg;
    char *req = malloc(reqlen), *resp = malloc(reqlen);
    if (!req || !resp) {
        atomic_fetch_add(&errors, 1);
        return NULL;
    }
    memset(req, 'r', reqlen);
    if (frame) {
        req[0] = (char)(size >> 24);
        req[1] = (char)(size >> 16);
        req[2] = (char)(size >> 8);
        req[3] = (char)size;
    }
    while (!atomic_load(&stop_flag)) {
        size_t off = 0;
        while (off < reqlen) {
            ssize_t n = send(fd, req + off, reqlen - off, MSG_NOSIGNAL);
            if (n <= 0)
                goto fail;
            off += (size_t)n;
        }
        off = 0;
        while (off < reqlen) {
            ssize_t n = recv(fd, resp + off, reqlen - off, 0);
            if (n <= 0)
                goto fail;
            off += (size_t)n;
        }
        atomic_fetch_add(&done, 1);
    }
    free(req);
    free(resp);
    return NULL;
fail:
    atomic_fetch_add(&errors, 1);
    free(req);
    free(resp);
    return NULL;
}

/* One round: connect `conns` sockets, run for `secs`, stop, close.
 * Returns the responses counted and the exact seconds they took. */
static long long round_trip(double secs, double *elapsed)
{
    int *fds = calloc((size_t)conns, sizeof *fds);
    pthread_t *th = calloc((size_t)conns, sizeof *th);
    if (!fds || !th) {
        fprintf(stderr, "refgen: out of memory\n");
        exit(1);
    }
    for (int i = 0; i < conns; i++) {
        fds[i] = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fds[i] < 0 || connect(fds[i], ai->ai_addr, ai->ai_addrlen) < 0) {
            perror("refgen: connect");
            exit(1);
        }
        if (ai->ai_family != AF_UNIX) {
            int one = 1;
            setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        }
    }
    atomic_store(&stop_flag, 0);
    atomic_store(&done, 0);
    double t0 = now();
    for (int i = 0; i < conns; i++)
        pthread_create(&th[i], NULL, worker, &fds[i]);
    struct timespec nap = {(time_t)secs, (long)((secs - (double)(time_t)secs) * 1e9)};
    while (nanosleep(&nap, &nap) < 0 && errno == EINTR)
        ;
    long long count = atomic_load(&done);
    *elapsed = now() - t0;
    atomic_store(&stop_flag, 1);
    /* A thread blocked in recv finishes its last exchange, then sees the flag. */
    for (int i = 0; i < conns; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < conns; i++)
        close(fds[i]);
    free(fds);
    free(th);
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
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "refgen: %s: %s\n", host, gai_strerror(rc));
        return 1;
    }
    double secs = 0;
    if (warmup > 0)
        round_trip(warmup, &secs);
    long long n = round_trip(duration, &secs);
    printf("{\"requests\": %lld, \"seconds\": %.4f, \"rps\": %.1f, \"errors\": %lld, "
           "\"connections\": %d}\n",
           n, secs, (double)n / secs, (long long)atomic_load(&errors), conns);
    return atomic_load(&errors) ? 1 : 0;
}
