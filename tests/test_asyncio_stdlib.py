"""CPython's own asyncio tests, run with netpoll's loop installed.

``test.test_asyncio.test_streams``, ``test_server``, ``test_buffered_proto``,
``test_sslproto`` and the socket-transport tests of ``test_events`` run in a subprocess in
which every selector event loop asyncio makes — ``asyncio.new_event_loop()``,
the default policy's loops and ``asyncio.SelectorEventLoop(...)`` — is the
netpoll loop (``netpoll.loop_factory()`` over stock asyncio, and again over
uvloop), so each Protocol, Streams and Server test runs on netpoll transports.

The tests excluded, and why, are in ``EXCLUDED`` below and in docs/asyncio.md.
Run one suite by hand: ``python tests/test_asyncio_stdlib.py test_streams -v``
(``NETPOLL_STDLIB_BASE=uvloop`` for the uvloop base).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()

# test id (Class.method) -> why it cannot pass on netpoll transports
_SSL_RACE = (
    "racy by design: the test server (a thread) answers the request and closes at once, and "
    "the test, after run_until_complete(create_connection(...)), reads "
    "get_extra_info('sockname') through the SSL transport. netpoll's poller polls again "
    "within one loop callback after a busy batch, so the answer, close_notify and FIN can be "
    "read, and connection_lost scheduled, in the iterations run_until_complete() still runs; "
    "then SSLProtocol has dropped its transport and returns None (asyncio needs one loop "
    "iteration per step and is always later)"
)
EXCLUDED: dict[str, str] = {
    "EPollEventLoopTests.test_create_ssl_connection": _SSL_RACE,
    "EPollEventLoopTests.test_create_ssl_unix_connection": _SSL_RACE,
}

# test_events: the socket-transport tests of the epoll loop class
EVENTS_PATTERNS = [
    "create_connection",
    "create_server",
    "create_unix",
    "create_ssl",
    "connect_accepted_socket",
    "server_close",
    "internal_fds",
    "prompt_cancellation",
    "fds_after_closing",
]

SUITES = {
    "test_streams": [],
    "test_server": [],
    "test_buffered_proto": [],
    "test_events": ["EPollEventLoopTests"],
    "test_sslproto": [],  # start_tls and ssl= over netpoll transports (asyncio's SSLProtocol)
    "test_sendfile": [],  # loop.sendfile (os.sendfile over the transport's socket), sock_sendfile
}

# Suites run on the netpoll loop over stock asyncio only, with its scheduling in C
# (reactor/sched.pyx: call_soon, timers, Tasks, _run_once) checked to be on: the loop's
# own suites, and test_ssl (its sock_* and timing tests are the selector loop's)
SCHED_SUITES = ["test_locks", "test_queues", "test_timeouts",
                "test_taskgroups", "test_waitfor", "test_tasks", "test_base_events",
                "test_unix_events", "test_sock_lowlevel", "test_subprocess", "test_context",
                "test_ssl"]


_LOOPS_MADE = [0]


def _install(base: str = "asyncio") -> None:
    """Make every selector loop asyncio creates a netpoll loop."""
    import asyncio
    import asyncio.unix_events as ue

    from netpoll.transports import _netpoll_class

    if base == "uvloop":
        import uvloop

        uv_cls = _netpoll_class(uvloop.Loop)
        # test.test_asyncio.utils.close_loop reads this asyncio-only attribute
        uv_cls._default_executor = None  # type: ignore[attr-defined]

        def cls(selector: object = None) -> asyncio.AbstractEventLoop:  # type: ignore[misc]
            return uv_cls()  # type: ignore[no-any-return]
    else:
        cls = _netpoll_class(ue._UnixSelectorEventLoop)
        if os.environ.get("NETPOLL_STDLIB_COUNT_LOOPS") == "1":
            from netpoll._core import loop_run_once

            assert cls._run_once is loop_run_once, "scheduling in C is not on the loop"
            made = _LOOPS_MADE
            init = cls.__init__

            def counting_init(self: object, *args: object, **kw: object) -> None:
                made[0] += 1
                init(self, *args, **kw)

            cls.__init__ = counting_init
    asyncio.SelectorEventLoop = cls  # type: ignore[misc]
    ue.SelectorEventLoop = cls
    ue._UnixDefaultEventLoopPolicy._loop_factory = cls


def _skip_excluded(module: object) -> None:
    import unittest

    for test_id, why in EXCLUDED.items():
        cls_name, meth = test_id.split(".")
        cls = getattr(module, cls_name, None)
        if cls is not None and hasattr(cls, meth):
            setattr(cls, meth, unittest.skip(f"netpoll: {why}")(getattr(cls, meth)))


def main(argv: list[str]) -> int:
    import importlib
    import unittest

    _install(os.environ.get("NETPOLL_STDLIB_BASE", "asyncio"))
    name = argv[0]
    module = importlib.import_module(f"test.test_asyncio.{name}")
    _skip_excluded(module)
    prog_args = [sys.argv[0]] + argv[1:]
    for cls_name in SUITES.get(name, []):
        prog_args.append(cls_name)
    if name == "test_events":
        for pat in EVENTS_PATTERNS:
            prog_args += ["-k", pat]
    from netpoll.transports import NetpollTransport

    made = [0]
    init = NetpollTransport.__init__

    def counting_init(self: NetpollTransport, *args: object, **kw: object) -> None:
        made[0] += 1
        init(self, *args, **kw)  # type: ignore[arg-type]

    NetpollTransport.__init__ = counting_init  # type: ignore[method-assign]
    res = unittest.main(module=module, argv=prog_args, exit=False)
    print(f"netpoll transports made: {made[0]}", file=sys.stderr)
    print(f"netpoll loops made: {_LOOPS_MADE[0]}", file=sys.stderr)
    return 0 if res.result.wasSuccessful() else 1


def _have_test_package() -> bool:
    try:
        import test.test_asyncio.utils  # noqa: F401
    except ImportError:
        return False
    return True


def _run_suite(suite: str, counter: str, sched_on: bool = False, **env_extra: str) -> None:
    """Run one CPython suite on the netpoll loop in a subprocess; it must pass, run
    tests, and report (on stderr, as ``main`` prints it) a non-zero ``counter``."""
    if not _have_test_package():
        pytest.skip("this Python build has no test.test_asyncio package")
    env = dict(os.environ, PYTHONDEVMODE="0", **env_extra)
    if sched_on:
        env.pop("NETPOLL_LOOP_SCHED", None)
    proc = subprocess.run(
        [sys.executable, str(HERE), suite],
        capture_output=True, text=True, timeout=110, env=env,
    )
    tail = "\n".join(proc.stderr.splitlines()[-60:])
    assert proc.returncode == 0, f"{suite} failed on the netpoll loop:\n{tail}"
    assert "Ran 0 tests" not in proc.stderr, proc.stderr[-2000:]
    made = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"{counter}:")]
    assert made and int(made[-1].split(":")[1]) > 0, f"the suite reported no {counter}"


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("base", ["asyncio", "uvloop"])
@pytest.mark.parametrize("suite", list(SUITES))
def test_stdlib_suite(suite: str, base: str) -> None:
    if base == "uvloop":
        pytest.importorskip("uvloop")
    _run_suite(suite, "netpoll transports made", NETPOLL_STDLIB_BASE=base)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("suite", SCHED_SUITES)
def test_stdlib_scheduling_suite(suite: str) -> None:
    """CPython's own scheduling suites on the netpoll loop over stock asyncio."""
    _run_suite(suite, "netpoll loops made", sched_on=True, NETPOLL_STDLIB_BASE="asyncio",
               NETPOLL_STDLIB_COUNT_LOOPS="1")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
