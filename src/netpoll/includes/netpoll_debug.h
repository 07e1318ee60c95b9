/* Compile-time switch for the debug build (set by setup.py from NETPOLL_DEBUG).
 * Cython code tests `if NETPOLL_DEBUG:`; with 0 the C compiler drops the branch. */
#ifndef NETPOLL_DEBUG
#define NETPOLL_DEBUG 0
#endif
