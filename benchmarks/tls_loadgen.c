/* tls_loadgen: a TLS echo load generator in C (OpenSSL + epoll, one thread).
 *
 *   tls_loadgen HOST PORT CONNS SIZE SECONDS [handshake]
 *
 * Opens CONNS TLS connections (TLS 1.3, AES-128-GCM offered first, no
 * certificate check: loopback benchmark only), then each connection sends
 * SIZE bytes and waits for SIZE bytes back, again and again, for SECONDS.
 * With "handshake" every request uses a new connection (handshakes/s).
 * Prints one line: "requests=N seconds=S rps=R p50_us=.. p99_us=..".
 *
 * Built by benchmarks/tls_echo.py when the OpenSSL headers are there
 * (apt-get install libssl-dev): cc -O2 -o tls_loadgen tls_loadgen.c -lssl -lcrypto
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    SSL *ssl;
    int state; /* 0 handshaking, 1 writing, 2 reading */
    size_t off;
    double t0;
} conn_t;

static SSL_CTX *ctx;
static struct sockaddr_in addr;
static int epfd;
static size_t size;
static unsigned char *payload, *rbuf;
static long requests;
static double *lat;
static long nlat, caplat;
static int handshake_mode;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void open_conn(conn_t *c) {
    int one = 1;
    struct epoll_event ev;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        perror("connect");
        exit(1);
    }
    c->ssl = SSL_new(ctx);
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_connect_state(c->ssl);
    c->state = 0;
    c->off = 0;
    c->t0 = now();
    ev.events = EPOLLIN | EPOLLOUT;
    ev.data.ptr = c;
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

static void close_conn(conn_t *c) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    SSL_free(c->ssl);
    close(c->fd);
}

static void want(conn_t *c, int err) {
    struct epoll_event ev;
    ev.events = err == SSL_ERROR_WANT_WRITE ? EPOLLOUT : EPOLLIN;
    ev.data.ptr = c;
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void step(conn_t *c) {
    int r, err;
    for (;;) {
        if (c->state == 0) {
            r = SSL_do_handshake(c->ssl);
            if (r != 1) {
                err = SSL_get_error(c->ssl, r);
                if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
                    want(c, err);
                    return;
                }
                fprintf(stderr, "handshake failed\n");
                ERR_print_errors_fp(stderr);
                exit(1);
            }
            c->state = 1;
            c->off = 0;
            if (!handshake_mode)
                c->t0 = now();
        } else if (c->state == 1) {
            r = SSL_write(c->ssl, payload + c->off, (int)(size - c->off));
            if (r <= 0) {
                err = SSL_get_error(c->ssl, r);
                if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
                    want(c, err);
                    return;
                }
                fprintf(stderr, "write failed\n");
                exit(1);
            }
            c->off += r;
            if (c->off == size) {
                c->state = 2;
                c->off = 0;
            }
        } else {
            r = SSL_read(c->ssl, rbuf, (int)(size - c->off));
            if (r <= 0) {
                err = SSL_get_error(c->ssl, r);
                if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
                    want(c, err);
                    return;
                }
                fprintf(stderr, "read failed (err %d)\n", err);
                exit(1);
            }
            c->off += r;
            if (c->off == size) {
                double t = now();
                requests++;
                if (nlat == caplat) {
                    caplat = caplat ? caplat * 2 : 1 << 16;
                    lat = realloc(lat, caplat * sizeof *lat);
                }
                lat[nlat++] = t - c->t0;
                if (handshake_mode) {
                    close_conn(c);
                    open_conn(c);
                    return;
                }
                c->t0 = t;
                c->state = 1;
                c->off = 0;
            }
        }
    }
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    int nconn, i, n;
    double secs, start, end;
    conn_t *conns;
    struct epoll_event evs[256];
    if (argc < 6) {
        fprintf(stderr, "usage: %s HOST PORT CONNS SIZE SECONDS [handshake]\n", argv[0]);
        return 2;
    }
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    inet_pton(AF_INET, argv[1], &addr.sin_addr);
    addr.sin_port = htons(atoi(argv[2]));
    nconn = atoi(argv[3]);
    size = (size_t)atol(argv[4]);
    secs = atof(argv[5]);
    handshake_mode = argc > 6 && strcmp(argv[6], "handshake") == 0;
    payload = malloc(size);
    rbuf = malloc(size);
    memset(payload, 'x', size);
    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256");
    SSL_CTX_set1_groups_list(ctx, "P-256");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    epfd = epoll_create1(0);
    conns = calloc(nconn, sizeof *conns);
    for (i = 0; i < nconn; i++)
        open_conn(&conns[i]);
    start = now();
    end = start + secs;
    while (now() < end) {
        n = epoll_wait(epfd, evs, 256, 100);
        for (i = 0; i < n; i++)
            step((conn_t *)evs[i].data.ptr);
    }
    secs = now() - start;
    qsort(lat, nlat, sizeof *lat, cmp);
    printf("requests=%ld seconds=%.2f rps=%.0f p50_us=%.0f p99_us=%.0f\n", requests, secs,
           requests / secs, nlat ? lat[nlat / 2] * 1e6 : 0.0,
           nlat ? lat[(long)(nlat * 0.99)] * 1e6 : 0.0);
    return 0;
}
