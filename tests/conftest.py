"""Shared fixtures.

* ``run``: runs a coroutine to completion on a fresh event loop, once on stock
  asyncio and once on uvloop (when installed), under a hard deadline.
* In the debug build (NETPOLL_DEBUG=1) every test must leave no live chunk,
  node or connection behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from netpoll import _buffer

T = TypeVar("T")

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test extras
    uvloop = None

LOOPS = ["asyncio", "uvloop"]


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        if uvloop is None:
            pytest.skip("uvloop is not installed")
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _live_counts() -> dict[str, int]:
    counts = dict(_buffer._debug_counts())
    try:
        from netpoll import _core

        counts.update(_core._debug_counts())
    except (ImportError, AttributeError):
        pass
    return counts


@pytest.fixture(params=LOOPS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def run(loop_kind: str) -> Callable[..., Any]:
    """run(coro, timeout=10): the coroutine's result, on the parametrized loop."""

    def _run(coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        loop = new_loop(loop_kind)
        try:
            return loop.run_until_complete(asyncio.wait_for(coro, timeout))
        finally:
            _shutdown(loop)

    return _run


def _shutdown(loop: asyncio.AbstractEventLoop) -> None:
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            # bounded: a task that ignores cancellation must not hang the suite
            loop.run_until_complete(asyncio.wait(pending, timeout=2.0))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
        asyncio.set_event_loop(None)


def fd_count() -> int:
    """Open sockets of this process (the pollers' epoll fds live as long as their loop)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return n


def all_fd_count() -> int:
    """Every open fd of this process (sockets, epoll fds, files)."""
    return len(os.listdir("/proc/self/fd"))


def rss_kib(pid: int | str = "self") -> int:
    """Resident set size of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def start(on_request: Any, **kw: Any) -> tuple[Any, Any, Any]:
    """An EventLoop serving on_request on a fresh loopback listener: (server, listener, task)."""
    import netpoll

    ln = netpoll.create_listener("tcp", "127.0.0.1:0")
    el = netpoll.EventLoop(on_request, **kw)
    task = asyncio.ensure_future(el.serve(ln))
    await asyncio.sleep(0)
    return el, ln, task


async def stop(el: Any, task: Any) -> None:
    """Shut a server from start() down and wait for its serve() to return."""
    await el.shutdown(2)
    await asyncio.wait_for(task, 2)


async def wait_for(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a condition until it holds (bounded)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


async def maybe_await(x: Awaitable[T] | T) -> T | Any:
    if asyncio.iscoroutine(x) or isinstance(x, asyncio.Future):
        return await x
    return x


def _drop_logged_tracebacks(item: pytest.Item) -> None:
    """pytest keeps captured log records (with their tracebacks, whose frames hold
    connections) until the item ends; format them now and let the frames go."""
    try:
        from _pytest.logging import caplog_records_key
    except ImportError:  # pragma: no cover - private pytest API
        return
    for records in item.stash.get(caplog_records_key, {}).values():
        for rec in records:
            if rec.exc_info:
                rec.exc_text = rec.exc_text or logging.Formatter().formatException(rec.exc_info)
                rec.exc_info = None


@pytest.fixture(autouse=True)
def _no_leaks(request: pytest.FixtureRequest) -> Any:
    yield
    if not _buffer.NETPOLL_DEBUG_BUILD:
        return
    from netpoll import _core

    _drop_logged_tracebacks(request.node)
    _core._forget_closed_loops()
    for _ in range(3):
        gc.collect()
    counts = _live_counts()
    assert all(v == 0 for v in counts.values()), f"live objects after test: {counts}"


@pytest.fixture
def uring() -> Iterator[None]:
    """New pollers are io_uring pollers during the test (skip with needs_uring where
    the kernel refuses a ring); the backend before it is restored after."""
    import netpoll

    before = netpoll.get_config()["backend"]
    netpoll.configure(backend="io_uring")
    try:
        yield
    finally:
        netpoll.configure(backend=before)
