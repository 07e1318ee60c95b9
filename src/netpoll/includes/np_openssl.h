/* netpoll: calling the libssl that Python's ssl module already loaded.
 *
 * No OpenSSL headers are needed to build netpoll: the few functions the TLS
 * fast path calls are declared here as function pointers on opaque types and
 * resolved at run time with dlopen(<path of the _ssl extension>, RTLD_NOLOAD)
 * + dlsym, which searches _ssl and the libraries it was linked against: the
 * very libssl/libcrypto whose objects _ssl makes (RTLD_NOLOAD: nothing new is
 * ever loaded). The SSL objects themselves are made, configured and
 * freed by Python's _ssl module (ctx.wrap_bio): netpoll only borrows the SSL*
 * of the _ssl._SSLSocket and the BIO* of the two _ssl.MemoryBIO objects,
 * which it keeps alive by holding those Python objects.
 *
 * CPython's private layouts relied on (Modules/_ssl.c; the same from 3.0 to
 * 3.14; NpPySSLSocket is only the prefix):
 *     typedef struct { PyObject_HEAD; PyObject *Socket; SSL *ssl; ... } PySSLSocket;
 *     typedef struct { PyObject_HEAD; BIO *bio; int eof_written; } PySSLMemoryBIO;
 * np_ssl_check() verifies them on every connection before the fast path is
 * used: SSL_get_rbio/SSL_get_wbio of the SSL* must be the two BIO*s, else the
 * connection stays on the SSLObject path.
 */
#ifndef NP_OPENSSL_H
#define NP_OPENSSL_H

#include <Python.h>
#include <dlfcn.h>
#include <stddef.h>

typedef struct np_ssl_st NP_SSL;
typedef struct np_bio_st NP_BIO;

typedef struct {
    PyObject_HEAD
    PyObject *Socket;
    NP_SSL *ssl;
} NpPySSLSocket;

typedef struct {
    PyObject_HEAD
    NP_BIO *bio;
    int eof_written;
} NpPySSLMemoryBIO;

/* values from <openssl/ssl.h> and <openssl/bio.h>: part of the stable ABI */
#define NP_SSL_ERROR_NONE 0
#define NP_SSL_ERROR_SSL 1
#define NP_SSL_ERROR_WANT_READ 2
#define NP_SSL_ERROR_WANT_WRITE 3
#define NP_SSL_ERROR_SYSCALL 5
#define NP_SSL_ERROR_ZERO_RETURN 6
#define NP_BIO_CTRL_PENDING 10

static int (*np_SSL_read)(NP_SSL *, void *, int);
static int (*np_SSL_write)(NP_SSL *, const void *, int);
static int (*np_SSL_get_error)(const NP_SSL *, int);
static NP_BIO *(*np_SSL_get_rbio)(const NP_SSL *);
static NP_BIO *(*np_SSL_get_wbio)(const NP_SSL *);
static int (*np_BIO_read)(NP_BIO *, void *, int);
static int (*np_BIO_write)(NP_BIO *, const void *, int);
static long (*np_BIO_ctrl)(NP_BIO *, int, long, void *);
static void (*np_ERR_clear_error)(void);
static int np_ssl_ready = 0;

static void *np_sym(void *h1, void *h2, const char *name) {
    void *p = h1 ? dlsym(h1, name) : NULL;
    if (p == NULL && h2 != NULL)
        p = dlsym(h2, name);
    return p;
}

/* Resolve the functions from the already loaded libraries (never loads one).
 * Returns 1 when every symbol was found, 0 otherwise (the fast path is off). */
static int np_ssl_init(const char *libssl, const char *libcrypto) {
    void *hs = libssl && *libssl ? dlopen(libssl, RTLD_NOW | RTLD_NOLOAD) : NULL;
    void *hc = libcrypto && *libcrypto ? dlopen(libcrypto, RTLD_NOW | RTLD_NOLOAD) : NULL;
    if (hs == NULL)
        return 0;
    np_SSL_read = (int (*)(NP_SSL *, void *, int))np_sym(hs, hc, "SSL_read");
    np_SSL_write = (int (*)(NP_SSL *, const void *, int))np_sym(hs, hc, "SSL_write");
    np_SSL_get_error = (int (*)(const NP_SSL *, int))np_sym(hs, hc, "SSL_get_error");
    np_SSL_get_rbio = (NP_BIO * (*)(const NP_SSL *)) np_sym(hs, hc, "SSL_get_rbio");
    np_SSL_get_wbio = (NP_BIO * (*)(const NP_SSL *)) np_sym(hs, hc, "SSL_get_wbio");
    np_BIO_read = (int (*)(NP_BIO *, void *, int))np_sym(hc, hs, "BIO_read");
    np_BIO_write = (int (*)(NP_BIO *, const void *, int))np_sym(hc, hs, "BIO_write");
    np_BIO_ctrl = (long (*)(NP_BIO *, int, long, void *))np_sym(hc, hs, "BIO_ctrl");
    np_ERR_clear_error = (void (*)(void))np_sym(hc, hs, "ERR_clear_error");
    /* the handles stay open: the libraries are Python's, loaded for good */
    np_ssl_ready = np_SSL_read && np_SSL_write && np_SSL_get_error && np_SSL_get_rbio
        && np_SSL_get_wbio && np_BIO_read && np_BIO_write && np_BIO_ctrl
        && np_ERR_clear_error;
    return np_ssl_ready;
}

/* The SSL* of an _ssl._SSLSocket and the BIO*s of two _ssl.MemoryBIOs, checked
 * against each other. Returns 1 and fills the pointers when they agree. */
static int np_ssl_check(PyObject *sslsock, PyObject *inbio, PyObject *outbio,
                        NP_SSL **ssl, NP_BIO **rbio, NP_BIO **wbio) {
    NP_SSL *s;
    NP_BIO *r, *w;
    if (!np_ssl_ready)
        return 0;
    s = ((NpPySSLSocket *)sslsock)->ssl;
    r = ((NpPySSLMemoryBIO *)inbio)->bio;
    w = ((NpPySSLMemoryBIO *)outbio)->bio;
    if (s == NULL || r == NULL || w == NULL || r == w)
        return 0;
    if (np_SSL_get_rbio(s) != r || np_SSL_get_wbio(s) != w)
        return 0;
    *ssl = s;
    *rbio = r;
    *wbio = w;
    return 1;
}

static inline long np_BIO_pending(NP_BIO *b) {
    return np_BIO_ctrl(b, NP_BIO_CTRL_PENDING, 0, NULL);
}

#endif /* NP_OPENSSL_H */
