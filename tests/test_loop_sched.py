"""The netpoll loop's scheduling in C (reactor/sched.pyx) behaves as asyncio's.

Over stock asyncio, a netpoll loop's ``call_soon``, ``call_later``/``call_at``,
``create_task``, ``_timer_handle_cancelled`` and ``_run_once`` are the core's.
Each test here runs the same program on a stock asyncio loop and on the
netpoll loop and compares what happened (differential), or checks a rule of
asyncio's that a user can see: genuine Handle/TimerHandle objects, FIFO
order, timer order, cancellation, contextvars, the exception handler's
context, debug mode, closed loops, threads, subclasses that override a method.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import netpoll
from netpoll.transports import _netpoll_class

pytestmark = pytest.mark.timeout(60)


def stock() -> asyncio.AbstractEventLoop:
    return asyncio.new_event_loop()


def fast() -> asyncio.AbstractEventLoop:
    return netpoll.loop_factory()()


LOOPS = [pytest.param(stock, id="asyncio"), pytest.param(fast, id="netpoll")]


def test_the_netpoll_loop_uses_the_core_scheduler() -> None:
    loop = fast()
    try:
        cls = type(loop)
        for name in ("call_soon", "_call_soon", "call_at", "call_later", "create_task",
                     "_run_once", "_timer_handle_cancelled", "time", "get_debug",
                     "create_future"):
            assert "cyfunction" in repr(cls.__dict__.get(name)), name
    finally:
        loop.close()


def test_scheduler_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio.unix_events as ue

    from netpoll import transports

    monkeypatch.setenv("NETPOLL_LOOP_SCHED", "0")

    class Own(ue._UnixSelectorEventLoop):  # a class no netpoll loop class was made for yet
        pass

    try:
        cls = _netpoll_class(Own)
        assert "call_soon" not in cls.__dict__
        assert "_run_once" not in cls.__dict__
    finally:
        transports._classes.pop(Own, None)


def test_a_base_class_override_is_kept() -> None:
    import asyncio.unix_events as ue

    from netpoll import transports

    calls: list[str] = []

    class Own(ue._UnixSelectorEventLoop):
        def call_soon(self, callback: Any, *args: Any, context: Any = None) -> Any:
            calls.append("own")
            return super().call_soon(callback, *args, context=context)

    try:
        cls = _netpoll_class(Own)
        assert "call_soon" not in cls.__dict__      # Own's call_soon stays
        assert "call_later" in cls.__dict__         # the rest is the core's
        loop = cls()
        try:
            loop.call_soon(loop.stop)
            loop.run_forever()
        finally:
            loop.close()
        assert calls and calls[0] == "own"
    finally:
        transports._classes.pop(Own, None)


class _FakeClockSelector(selectors.SelectSelector):
    """select(timeout) does not wait: it moves the loop's fake clock instead."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0

    def select(self, timeout: float | None = None) -> Any:
        if timeout:
            self.now += timeout
        return super().select(0)


def _clocked_loop(netpoll_loop: bool) -> asyncio.AbstractEventLoop:
    import asyncio.unix_events as ue

    class Clocked(ue._UnixSelectorEventLoop):
        def time(self) -> float:
            return self._selector.now  # type: ignore[no-any-return,attr-defined]

    cls = _netpoll_class(Clocked) if netpoll_loop else Clocked
    return cls(_FakeClockSelector())


def _program(loop: asyncio.AbstractEventLoop, seed: int) -> list[Any]:
    """A random mix of call_soon / call_later / call_at / cancel, run to the end."""
    rnd = random.Random(seed)
    out: list[Any] = []
    handles: list[asyncio.Handle] = []
    base = loop.time()

    def cb(tag: Any) -> None:
        out.append(tag)
        r = rnd.random()
        if r < 0.2 and len(out) < 400:
            handles.append(loop.call_soon(cb, ("soon-from", tag)))
        elif r < 0.3 and len(out) < 400:
            handles.append(loop.call_later(rnd.randrange(0, 5), cb, ("later-from", tag)))
        elif r < 0.4 and handles:
            handles[rnd.randrange(len(handles))].cancel()

    for i in range(300):
        r = rnd.random()
        if r < 0.3:
            handles.append(loop.call_soon(cb, ("soon", i)))
        elif r < 0.65:
            handles.append(loop.call_at(base + rnd.randrange(0, 60), cb, ("at", i)))
        elif r < 0.85:
            handles.append(loop.call_later(rnd.randrange(0, 60) + rnd.random(), cb, ("later", i)))
        elif handles:
            handles[rnd.randrange(len(handles))].cancel()
    loop.call_at(base + 100, loop.stop)
    loop.run_forever()
    return out


@pytest.mark.parametrize("seed", range(6))
def test_same_callbacks_in_the_same_order_as_asyncio(seed: int) -> None:
    # A fake clock that only the poll moves makes both runs deterministic; equal
    # times (integer offsets) check that ties leave the heap in heapq's order.
    results = []
    for netpoll_loop in (False, True):
        loop = _clocked_loop(netpoll_loop)
        try:
            assert ("_run_once" in type(loop).__dict__) == netpoll_loop
            results.append(_program(loop, seed))
        finally:
            loop.close()
    assert results[0] == results[1]
    assert len(results[0]) > 100


@pytest.mark.parametrize("make", LOOPS)
def test_handles_are_asyncio_handles(make: Callable[[], asyncio.AbstractEventLoop]) -> None:
    loop = make()
    try:
        h = loop.call_soon(print, 1)
        t = loop.call_later(10, print, 2)
        t2 = loop.call_at(loop.time() + 5, print, 3)
        assert type(h) is asyncio.Handle
        # a TimerHandle (on the netpoll loop a subclass whose cancel() is in C)
        assert isinstance(t, asyncio.TimerHandle) and isinstance(t2, asyncio.TimerHandle)
        assert type(t).__name__ == "TimerHandle" and not hasattr(t, "__dict__")
        assert repr(t).startswith("<TimerHandle when=")
        assert t2 < t and not t < t2
        assert abs(t.when() - (loop.time() + 10)) < 1
        assert not h.cancelled() and "print" in repr(h)
        assert isinstance(h._context, contextvars.Context)
        t.cancel()
        assert t.cancelled() and t._callback is None and t._args is None
        assert loop._timer_cancelled_count == 1
        t.cancel()                                   # twice: counted once
        assert loop._timer_cancelled_count == 1
        h.cancel()
        assert h.cancelled()
    finally:
        loop.close()


@pytest.mark.parametrize("make", LOOPS)
def test_contextvars_and_explicit_context(make: Callable[[], asyncio.AbstractEventLoop]) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    loop = make()
    seen: list[str] = []
    try:
        var.set("copied")
        loop.call_soon(lambda: seen.append(var.get()))
        ctx = contextvars.copy_context()
        ctx.run(var.set, "explicit")
        loop.call_soon(lambda: seen.append(var.get()), context=ctx)
        loop.call_later(0, lambda: seen.append(var.get()), context=ctx)
        var.set("after")

        def change() -> None:
            var.set("changed-inside")     # stays in the handle's own copy
            seen.append(var.get())

        loop.call_soon(change)
        loop.call_soon(lambda: seen.append(var.get()))
        loop.call_later(0.01, loop.stop)
        loop.run_forever()
    finally:
        loop.close()
    assert seen == ["copied", "explicit", "changed-inside", "after", "explicit"]


def test_entered_context_is_reported_like_asyncio() -> None:
    # A context that is already entered cannot be entered again: asyncio's
    # Handle._run reports the RuntimeError to the exception handler.
    def reported(make: Callable[[], asyncio.AbstractEventLoop]) -> list[str]:
        loop = make()
        got: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda lp, c: got.append(c))
        try:
            ctx = contextvars.copy_context()

            def inner() -> None:
                loop.call_soon(print, "never", context=ctx)

            ctx.run(inner)

            def run_in_ctx() -> None:
                loop.call_soon(loop.stop)

            loop.call_soon(lambda: ctx.run(lambda: loop._run_once()))  # type: ignore[attr-defined]
            loop.call_soon(run_in_ctx)
            loop.run_forever()
        finally:
            loop.close()
        return [type(c["exception"]).__name__ for c in got]

    reports = [reported(stock), reported(fast)]
    assert reports[0] == reports[1]


@pytest.mark.parametrize("make", LOOPS)
def test_a_failing_callback_goes_to_the_exception_handler(
        make: Callable[[], asyncio.AbstractEventLoop]) -> None:
    loop = make()
    got: list[dict[str, Any]] = []
    ran: list[int] = []
    try:
        loop.set_exception_handler(lambda lp, c: got.append(c))

        def boom(x: int) -> None:
            raise ValueError(x)

        h = loop.call_soon(boom, 7)
        loop.call_soon(ran.append, 1)               # the next callback still runs
        t = loop.call_later(0, boom, 8)
        loop.call_later(0.01, loop.stop)
        loop.run_forever()
    finally:
        loop.close()
    assert ran == [1]
    assert [c["handle"] for c in got] == [h, t]
    assert [type(c["exception"]) for c in got] == [ValueError, ValueError]
    assert got[0]["message"].startswith("Exception in callback ")
    assert "boom" in got[0]["message"]


def test_the_exception_context_is_asyncios() -> None:
    def boom(x: int) -> None:
        raise ValueError(x)

    def reported(make: Callable[[], asyncio.AbstractEventLoop]) -> list[Any]:
        loop = make()
        got: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda lp, c: got.append(c))
        try:
            loop.call_soon(boom, 7)
            loop.call_later(0, boom, 8)
            loop.call_later(0.01, loop.stop)
            loop.run_forever()
        finally:
            loop.close()
        return [(c["message"], sorted(c), repr(c["handle"]).split(" when=")[0]) for c in got]

    seen = [reported(stock), reported(fast)]
    assert seen[0] == seen[1]


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_base_exceptions_leave_run_forever(exc: type[BaseException]) -> None:
    loop = fast()
    ran: list[int] = []
    try:
        def stop() -> None:
            raise exc()

        loop.call_soon(stop)
        loop.call_soon(ran.append, 1)
        with pytest.raises(exc):
            loop.run_forever()
        # what was ready is still ready: it runs on the next iteration
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert ran == [1]
    finally:
        loop.close()


def test_closed_loop_and_bad_arguments() -> None:
    for make in (stock, fast):
        loop = make()
        with pytest.raises(TypeError):
            loop.call_at(None, print)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            loop.call_later(None, print)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            loop.call_later("1", print)  # type: ignore[arg-type]
        loop.close()
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            loop.call_soon(print)
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            loop.call_later(1, print)
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            loop.call_at(1.0, print)
        coro = asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            loop.create_task(coro)
        coro.close()


def test_integer_and_equal_times() -> None:
    results = []
    for make in (stock, fast):
        loop = make()
        out: list[int] = []
        try:
            now = loop.time()
            loop.call_at(int(now), out.append, 1)            # int, in the past
            for i in range(5):
                loop.call_at(now, out.append, 10 + i)          # equal times
            loop.call_at(now - 1, out.append, 2)
            loop.call_later(0.01, loop.stop)
            loop.run_forever()
        finally:
            loop.close()
        results.append(out)
    assert results[0] == results[1]
    assert sorted(results[0]) == [1, 2, 10, 11, 12, 13, 14]


def test_many_cancelled_timers_are_dropped_from_the_heap() -> None:
    loop = fast()
    try:
        timers = [loop.call_later(100 + i, print) for i in range(300)]
        for t in timers[:200]:
            t.cancel()
        assert loop._timer_cancelled_count == 200
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert loop._timer_cancelled_count == 0
        assert len(loop._scheduled) == 100
        assert all(not t._scheduled for t in timers[:200])
        assert all(t._scheduled for t in timers[200:])
        # a cancelled timer at the head is popped
        timers[200].cancel()
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert len(loop._scheduled) == 99 and not timers[200]._scheduled
    finally:
        loop.close()


def test_sleeping_waits_for_the_next_timer() -> None:
    loop = fast()
    try:
        t0 = time.monotonic()
        loop.run_until_complete(asyncio.sleep(0.05))
        assert 0.045 <= time.monotonic() - t0 < 1.0
    finally:
        loop.close()


def test_debug_mode_is_asyncios_own(caplog: pytest.LogCaptureFixture) -> None:
    loop = fast()
    try:
        loop.set_debug(True)
        loop.slow_callback_duration = 0.01
        h = loop.call_soon(time.sleep, 0.02)
        assert h._source_traceback                  # debug handles remember where
        loop.call_later(0.05, loop.stop)
        with caplog.at_level("WARNING", logger="asyncio"):
            loop.run_forever()
        assert any("took" in r.getMessage() for r in caplog.records)
    finally:
        loop.close()


def test_call_soon_threadsafe_wakes_the_loop() -> None:
    loop = fast()
    got: list[str] = []
    try:
        def other() -> None:
            time.sleep(0.05)
            loop.call_soon_threadsafe(got.append, "from thread")
            loop.call_soon_threadsafe(loop.stop)

        th = threading.Thread(target=other)
        th.start()
        t0 = time.monotonic()
        loop.run_forever()
        th.join()
        assert got == ["from thread"]
        assert time.monotonic() - t0 < 5
    finally:
        loop.close()


def test_a_loop_with_its_own_clock() -> None:
    import asyncio.unix_events as ue

    from netpoll import transports

    class Clocked(ue._UnixSelectorEventLoop):
        now = 1000.0

        def time(self) -> float:
            return self.now

    try:
        loop = _netpoll_class(Clocked)()
        assert "call_later" in type(loop).__dict__
        out: list[int] = []
        try:
            t = loop.call_later(5, out.append, 1)
            assert t.when() == 1005.0
            loop.call_at(1003.0, out.append, 0)
            loop.call_soon(loop.stop)
            loop.run_forever()
            assert out == []
            loop.now = 1006.0
            loop.call_soon(loop.stop)
            loop.run_forever()
            assert out == [0, 1]
        finally:
            loop.close()
    finally:
        transports._classes.pop(Clocked, None)


@pytest.mark.parametrize("make", LOOPS)
def test_tasks_names_contexts_and_factories(make: Callable[[], asyncio.AbstractEventLoop]) -> None:
    var: contextvars.ContextVar[int] = contextvars.ContextVar("v", default=0)
    loop = make()
    try:
        async def job() -> int:
            await asyncio.sleep(0)
            return var.get()

        t = loop.create_task(job(), name="named")
        assert t.get_name() == "named" and isinstance(t, asyncio.Task)
        ctx = contextvars.copy_context()
        ctx.run(var.set, 42)
        t2 = loop.create_task(job(), context=ctx)
        assert loop.run_until_complete(asyncio.gather(t, t2)) == [0, 42]

        made: list[Any] = []

        def factory(lp: Any, coro: Any, **kw: Any) -> asyncio.Task[Any]:
            task = asyncio.Task(coro, loop=lp, **kw)
            made.append(task)
            return task

        loop.set_task_factory(factory)
        t3 = loop.create_task(job(), name="via-factory")
        assert made == [t3] and t3.get_name() == "via-factory"
        loop.run_until_complete(t3)
    finally:
        loop.close()


@pytest.mark.parametrize("make", LOOPS)
def test_readers_writers_and_removed_readers(make: Callable[[], asyncio.AbstractEventLoop]) -> None:
    loop = make()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    got: list[bytes] = []
    try:
        def on_read() -> None:
            data = a.recv(100)
            got.append(data)
            if data == b"stop":
                loop.remove_reader(a.fileno())
                loop.stop()

        loop.add_reader(a.fileno(), on_read)
        wrote: list[int] = []

        def on_write() -> None:
            wrote.append(b.send(b"x"))
            loop.remove_writer(b.fileno())
            loop.call_later(0.01, b.send, b"stop")

        loop.add_writer(b.fileno(), on_write)
        loop.run_forever()
        assert wrote == [1] and b"".join(got) == b"xstop"
    finally:
        a.close()
        b.close()
        loop.close()


def test_no_handle_or_timer_is_leaked() -> None:
    loop = fast()
    try:
        # (as many as below: the C run_once keeps up to a few hundred spent
        # handles for reuse, so the warm-up fills that store first)
        for _ in range(3):
            for _i in range(500):
                loop.call_soon(lambda: None)
                loop.call_later(0, lambda: None)
                loop.call_later(10, lambda: None).cancel()
            loop.call_later(0.005, loop.stop)
            loop.run_forever()
        gc.collect()
        before = sum(isinstance(o, asyncio.Handle) for o in gc.get_objects())
        for _i in range(500):
            loop.call_soon(lambda: None)
            loop.call_later(0, lambda: None)
            loop.call_later(10, lambda: None).cancel()
        loop.call_later(0.005, loop.stop)
        loop.run_forever()
        loop.call_soon(loop.stop)
        loop.run_forever()
        gc.collect()
        after = sum(isinstance(o, asyncio.Handle) for o in gc.get_objects())
        assert after - before < 50
    finally:
        loop.close()


def test_a_server_and_client_on_the_loop() -> None:
    async def main() -> bytes:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write((await r.readline()).upper())
            await w.drain()
            w.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"hello\n")
        line = await asyncio.wait_for(r.readline(), 5)
        w.close()
        srv.close()
        await srv.wait_closed()
        return line

    assert netpoll.run(main()) == b"HELLO\n"


def test_io_is_polled_after_the_callbacks_that_were_ready() -> None:
    """libuv's order (uvloop's too): the callbacks ready at the start of an
    iteration run, then the poll, then its I/O callbacks; on stock asyncio the
    poll comes first. A reply written by a ready callback is therefore seen by
    the same iteration's poll: R (the reader) runs before B (scheduled by A
    after writing). The callbacks themselves keep asyncio's order."""
    import socket

    order: dict[str, list[str]] = {}
    for name, make in (("stock", stock), ("netpoll", fast)):
        loop = make()
        a, b = socket.socketpair()
        seen: list[str] = []
        order[name] = seen
        try:
            a.setblocking(False)
            b.setblocking(False)

            def on_readable(seen: list[str] = seen, b: socket.socket = b) -> None:
                b.recv(100)
                seen.append("R")

            loop.add_reader(b.fileno(), on_readable)

            def first(seen: list[str] = seen, a: socket.socket = a,
                      loop: asyncio.AbstractEventLoop = loop) -> None:
                seen.append("A")
                a.send(b"x")
                loop.call_soon(seen.append, "B")

            loop.call_soon(first)
            loop.call_later(0.05, loop.stop)
            loop.run_forever()
            loop.remove_reader(b.fileno())
        finally:
            a.close()
            b.close()
            loop.close()
    assert order["stock"] == ["A", "B", "R"]
    assert order["netpoll"] == ["A", "R", "B"]


def test_spent_handles_reused_only_when_unreachable() -> None:
    # run_once reuses a spent Handle only if nothing else holds it: a handle the
    # caller kept (or a weak reference to it) sees asyncio's state after the
    # run, and a reused handle's callback and arguments go when it is spent.
    import weakref

    class Arg:
        pass

    loop = fast()
    try:
        def f(*args: Any) -> None:
            pass

        kept = loop.call_soon(f, 1)
        watched = weakref.ref(loop.call_soon(f, 2))
        arg = Arg()
        arg_ref = weakref.ref(arg)
        loop.call_soon(f, arg)
        del arg
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert kept._callback is f and kept._args == (1,) and not kept.cancelled()
        assert watched() is None                  # freed as usual, not kept for reuse
        assert arg_ref() is None                  # the spent handle let go of its arguments
        fresh = [loop.call_soon(f, i) for i in range(3)]
        for i, h in enumerate(fresh):
            assert type(h) is asyncio.Handle and h._args == (i,) and h._loop is loop
            assert not h.cancelled() and h._repr is None
        timer = loop.call_later(10, f, 3)
        assert timer._scheduled and not timer.cancelled() and timer._args == (3,)
        timer.cancel()
        loop.call_soon(loop.stop)
        loop.run_forever()
    finally:
        loop.close()


def test_loop_factory_makes_the_netpoll_class_directly_or_swaps() -> None:
    # Under the default policy the loop is made as an instance of the netpoll
    # class (CPython specialises method calls on it); under any other policy
    # the policy's loop is made and its class swapped, as before.
    from netpoll.transports import is_netpoll_loop

    loop = netpoll.loop_factory()()
    try:
        policy: Any = asyncio.get_event_loop_policy()
        assert type(loop) is _netpoll_class(policy._loop_factory)
        assert loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"
    finally:
        loop.close()

    made: list[asyncio.AbstractEventLoop] = []
    base: Any = type(asyncio.get_event_loop_policy())

    class Policy(base):  # type: ignore[misc]
        def new_event_loop(self) -> asyncio.AbstractEventLoop:
            made.append(super().new_event_loop())
            return made[-1]

    old = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(Policy())
    try:
        loop = netpoll.loop_factory()()
        try:
            assert made == [loop] and is_netpoll_loop(loop)
            assert loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"
        finally:
            loop.close()
    finally:
        asyncio.set_event_loop_policy(old)
