# The TLS fast path's view of OpenSSL: opaque types and function pointers
# resolved at run time from the libssl Python's ssl module loaded
# (np_openssl.h says how, and why no OpenSSL headers are needed to build).

cdef extern from "np_openssl.h":
    ctypedef struct NP_SSL:
        pass
    ctypedef struct NP_BIO:
        pass

    enum:
        NP_SSL_ERROR_WANT_READ
        NP_SSL_ERROR_ZERO_RETURN

    int np_SSL_read(NP_SSL* ssl, void* buf, int num) nogil
    int np_SSL_write(NP_SSL* ssl, const void* buf, int num) nogil
    int np_SSL_get_error(const NP_SSL* ssl, int ret) nogil
    int np_BIO_read(NP_BIO* b, void* buf, int n) nogil
    int np_BIO_write(NP_BIO* b, const void* buf, int n) nogil
    long np_BIO_pending(NP_BIO* b) nogil
    void np_ERR_clear_error() nogil
    int np_ssl_ready

    int np_ssl_init(const char* libssl, const char* libcrypto)
    int np_ssl_check(object sslsock, object inbio, object outbio,
                     NP_SSL** ssl, NP_BIO** rbio, NP_BIO** wbio)
