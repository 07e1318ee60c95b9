"""The io_uring ring's setup flags (NETPOLL_URING_SETUP): what the ring is made
with, the fallback when the kernel refuses a flag, and loops in other threads."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import netpoll
from conftest import start, stop
from netpoll import Connection, _core

pytestmark = pytest.mark.timeout(60)

WHY = _core._uring_probe()[1]
needs_uring = pytest.mark.skipif(bool(WHY), reason=f"io_uring unavailable here: {WHY}")



@pytest.fixture
def setup_env(monkeypatch: Any) -> Iterator[Any]:
    def use(spec: str | None) -> None:
        if spec is None:
            monkeypatch.delenv("NETPOLL_URING_SETUP", raising=False)
        else:
            monkeypatch.setenv("NETPOLL_URING_SETUP", spec)
    yield use
    _core._uring_refuse(())


def plain_echo(ctx: Any, conn: Connection) -> None:
    buf = conn.input
    conn.write_buffer(buf.slice(len(buf)))
    conn.flush_nowait()


async def echo_round(n_conns: int = 8, rounds: int = 20) -> list[list[str]]:
    """Serve plain_echo, ping-pong over n_conns loopback connections; the ring flags."""
    el, ln, task = await start(plain_echo)
    try:
        pairs = [await asyncio.open_connection(*ln.addr) for _ in range(n_conns)]
        for i in range(rounds):
            msg = b"x" * (1 + i * 37)
            for _, w in pairs:
                w.write(msg)
            for r, _ in pairs:
                assert await asyncio.wait_for(r.readexactly(len(msg)), 5) == msg
        flags = _core._uring_ring_flags(asyncio.get_running_loop())
        for _, w in pairs:
            w.close()
        return flags
    finally:
        await stop(el, task)


@needs_uring
def test_default_flags_are_visible(run: Any, uring: None, setup_env: Any) -> None:
    setup_env(None)
    flags = run(echo_round())
    assert flags, "no io_uring poller"
    for f in flags:
        # DEFER_TASKRUN + SUBMIT_ALL (uring.pyx, _SETUP_DEFAULT says why), unless the
        # kernel refused them (then the fallback drops them one at a time)
        assert "clamp" in f
        if "defer_taskrun" in f:
            assert {"defer_taskrun", "single_issuer", "submit_all"} <= set(f)


@needs_uring
@pytest.mark.parametrize("spec", ["none", "coop_taskrun", "coop_taskrun,taskrun_flag",
                                  "single_issuer", "submit_all", "no_sqarray",
                                  "coop_taskrun,taskrun_flag,single_issuer,submit_all",
                                  "defer_taskrun", "defer_taskrun,submit_all,no_sqarray"])
def test_each_flag_set_serves_echo(run: Any, uring: None, setup_env: Any, spec: str) -> None:
    setup_env(spec)
    flags = run(echo_round())
    want = [] if spec == "none" else spec.split(",")
    if "defer_taskrun" in want:
        want += ["single_issuer", "taskrun_flag"]      # implied
    for f in flags:
        assert f == ["clamp"] + [n for n in _core._uring_setup_names(0xFFFFFFFF)[1:] if n in want]


@needs_uring
def test_a_refused_flag_falls_back(run: Any, uring: None, setup_env: Any) -> None:
    setup_env("coop_taskrun,taskrun_flag,single_issuer")
    _core._uring_refuse(["single_issuer"])
    flags = run(echo_round())
    for f in flags:
        assert "single_issuer" not in f and "coop_taskrun" in f
    _core._uring_refuse(["coop_taskrun"])      # TASKRUN_FLAG alone is invalid: both go
    flags = run(echo_round())
    for f in flags:
        assert f == ["clamp"]


@needs_uring
def test_a_refused_defer_taskrun_falls_back_to_the_ring_fd(run: Any, uring: None,
                                                          setup_env: Any) -> None:
    # a kernel without DEFER_TASKRUN (< 6.1): the ring fd is watched again, no eventfd
    setup_env("defer_taskrun,submit_all")
    _core._uring_refuse(["defer_taskrun"])
    flags = run(echo_round())
    for f in flags:
        assert f == ["clamp", "single_issuer", "submit_all"]   # taskrun_flag needs COOP/DEFER


def test_an_unknown_flag_name_is_an_error(setup_env: Any) -> None:
    setup_env("coop_taskrun,bogus")
    with pytest.raises(ValueError, match="bogus"):
        _core._uring_env_setup()
    setup_env("none")
    assert _core._uring_env_setup() == ["clamp"]
    setup_env(None)
    assert _core._uring_env_setup() == ["clamp", "taskrun_flag", "single_issuer", "submit_all",
                                        "defer_taskrun"]


@needs_uring
@pytest.mark.parametrize("spec", [None, "coop_taskrun,taskrun_flag,single_issuer,submit_all",
                                  "defer_taskrun", "defer_taskrun,submit_all,no_sqarray"])
def test_loops_in_other_threads(uring: None, setup_env: Any, spec: str | None) -> None:
    # every loop has its own pollers, made in the loop's thread; two at once in
    # two threads, then (single_issuer binds a ring to its thread) the rings of
    # those closed loops are released from this thread
    setup_env(spec)
    out: dict[int, Any] = {}

    def worker(i: int) -> None:
        try:
            out[i] = asyncio.run(echo_round(4, 10))
        except BaseException as exc:      # reported below
            out[i] = exc

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
        assert not t.is_alive()
    for i in range(2):
        assert isinstance(out[i], list) and out[i], out[i]
    _core._forget_closed_loops()          # closes the other threads' rings here
    # and a loop here still works
    assert asyncio.run(echo_round(2, 5))


@needs_uring
@pytest.mark.parametrize("spec", [None, "coop_taskrun,taskrun_flag,single_issuer"])
def test_pollers_made_in_another_thread_than_their_loop(uring: None, setup_env: Any,
                                                        spec: str | None) -> None:
    # configure(poller_num=...) makes the new pollers of a running loop in the
    # calling thread; a single-issuer ring is bound to the thread of its first
    # submit (it starts disabled), so the loop's thread can still use it
    setup_env(spec)
    started = threading.Event()
    resized = threading.Event()
    out: list[Any] = []

    async def main() -> None:
        el, ln, task = await start(plain_echo)
        try:
            # one connection first: the loop's poller set exists (one poller, this thread)
            r0, w0 = await asyncio.open_connection(*ln.addr)
            w0.write(b"z")
            assert await asyncio.wait_for(r0.readexactly(1), 5) == b"z"
            assert len(_core._uring_ring_flags(asyncio.get_running_loop())) == 1
            started.set()
            while not resized.is_set():
                await asyncio.sleep(0.01)
            pairs = [await asyncio.open_connection(*ln.addr) for _ in range(6)]
            for i in range(10):
                for _, w in pairs:
                    w.write(b"y" * (i + 1))
                for r, _ in pairs:
                    assert await asyncio.wait_for(r.readexactly(i + 1), 5) == b"y" * (i + 1)
            out.append(_core._uring_ring_flags(asyncio.get_running_loop()))
            for _, w in pairs:
                w.close()
            w0.close()
        finally:
            await stop(el, task)

    def worker() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            out.append(exc)

    old = netpoll.get_config()["poller_num"]
    t = threading.Thread(target=worker)
    t.start()
    try:
        assert started.wait(10)
        netpoll.configure(poller_num=3)       # two new pollers, made in this thread
        resized.set()
        t.join(30)
        assert not t.is_alive()
    finally:
        resized.set()
        netpoll.configure(poller_num=old)
    assert len(out) == 1 and isinstance(out[0], list), out
    assert len(out[0]) == 3


@needs_uring
@pytest.mark.parametrize("spec", [None, "coop_taskrun,taskrun_flag", "defer_taskrun",
                                  "defer_taskrun,submit_all"])
@pytest.mark.parametrize("model", ["multishot", "one-shot", "poll"])
def test_close_outside_the_pass_sends_fin_at_once(run: Any, uring: None, setup_env: Any,
                                                  monkeypatch: Any, spec: str | None,
                                                  model: str) -> None:
    # conn.close() from a Task or a timer (outside the poller's pass) must put the
    # FIN on the wire before it returns, as close(2) does on epoll: with
    # DEFER_TASKRUN the cancelled recv/poll kept the socket's file open until the
    # loop's next pass, so a peer waiting while the loop was busy saw nothing
    setup_env(spec)
    kw: dict[str, Any] = {}
    if model == "one-shot":
        kw["read_buffer_limit"] = 1 << 16
    if model == "poll":
        monkeypatch.setenv("NETPOLL_URING_RECV", "0")
    conns: list[Connection] = []

    def on_connect(ctx: Any, conn: Connection) -> Any:
        conns.append(conn)
        return ctx

    async def main() -> None:
        el, ln, task = await start(plain_echo, on_connect=on_connect, **kw)
        try:
            for i in range(5):
                s = socket.create_connection(ln.addr)
                try:
                    s.sendall(b"ping")
                    loop = asyncio.get_running_loop()
                    deadline = loop.time() + 5
                    got = b""
                    s.setblocking(False)
                    while got != b"ping":
                        assert loop.time() < deadline, "no echo"
                        await asyncio.sleep(0.005)
                        try:
                            got += s.recv(16)
                        except BlockingIOError:
                            pass
                    conn = conns[-1]
                    if i % 2:
                        await asyncio.sleep(0.01)     # a quiet loop: no pass pending
                    conn.close()
                    # the loop does not run until the peer has its FIN
                    s.settimeout(3)
                    assert s.recv(16) == b"", "no FIN"
                finally:
                    s.close()
        finally:
            await stop(el, task)

    run(main(), timeout=30)
