"""run_workers / ``python -m netpoll workers``: real processes on loopback.

Each test starts a supervisor (``python -m netpoll workers workers_app:serve``)
in its own session, drives it with asyncio clients in this process and sends
it signals. The fixture kills the whole process group at the end, so a failing
test leaves no worker behind; the tests that stop the supervisor themselves
also check the process table for leftovers.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netpoll.workers import _parse_bind, _serve_spec, run_workers

TESTS = Path(__file__).resolve().parent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def group_members(pgid: int) -> list[int]:
    """Live pids whose process group is `pgid` (zombies included: they are leaks too)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


class Supervisor:
    """``python -m netpoll workers`` in its own session, its log in a file."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.log_path = tmp_path / f"supervisor-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(TESTS), os.environ.get("PYTHONPATH", "")]), PYTHONDONTWRITEBYTECODE="1")
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "netpoll", "workers", *args], cwd=TESTS, env=full_env,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            found = re.findall(pattern, self.text())
            if len(found) >= count:
                return found
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{pattern!r} x{count} not seen in {timeout} s "
                                     f"(exit {self.proc.poll()}):\n{self.text()}")
            time.sleep(0.02)

    def port(self) -> int:
        return int(self.wait_for(r"serving \S+ on 127\.0\.0\.1:(\d+) with")[0])

    def ready_pids(self, count: int, timeout: float = 10.0) -> list[int]:
        return [int(p) for p in self.wait_for(r"worker (\d+) ready", count, timeout)]

    def send(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        self.send(sig)
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 5
        while group_members(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._log.close()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    started: list[Supervisor] = []

    def _start(*args: str, workers: int = 2, env: dict[str, str] | None = None,
               serve: str = "workers_app:serve", wait_ready: bool = True) -> Supervisor:
        sup = Supervisor(tmp_path, serve, "--bind", "tcp:127.0.0.1:0", "--workers",
                         str(workers), "--shutdown-timeout", "5", *args, env=env)
        started.append(sup)
        if wait_ready:
            sup.ready_pids(workers)
        return sup

    yield _start
    for sup in started:
        sup.cleanup()


def assert_no_orphans(sup: Supervisor, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while (left := group_members(sup.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes left behind: {left}\n{sup.text()}"


# -- clients ---------------------------------------------------------------------

async def one_request(port: int, line: bytes = b"ping\n", timeout: float = 5.0) -> int:
    """Connect, send one line, return the answering worker's pid, close."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(line)
        answer = await asyncio.wait_for(reader.readline(), timeout)
        if not answer.endswith(b"\n"):
            raise ConnectionError(f"no answer (got {answer!r})")
        return int(answer)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


class Load:
    """Clients in loops until stopped: `per_request` open one connection per request,
    `persistent` send request after request on one connection each."""

    def __init__(self, port: int, per_request: int = 0, persistent: int = 0,
                 slow_every: int = 0, max_seconds: float = 30.0) -> None:
        self.port = port
        self.deadline = time.monotonic() + max_seconds    # even if stop() is never reached
        self.per_request = per_request
        self.persistent = persistent
        self.slow_every = slow_every
        self.running = True
        # (connection started, request sent (or None), answered pid or None, error or None)
        self.results: list[tuple[float, float | None, int | None, str | None]] = []
        self.conn_pid: dict[int, int] = {}        # persistent client -> pid of its worker
        self.conn_error: dict[int, str] = {}
        self.answered_at: list[tuple[float, float]] = []   # persistent: (sent, answered)
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for i in range(self.per_request):
            self.tasks.append(asyncio.create_task(self._per_request(i)))
        for i in range(self.persistent):
            self.tasks.append(asyncio.create_task(self._persistent(i)))

    async def stop(self) -> None:
        self.running = False
        await asyncio.wait_for(asyncio.gather(*self.tasks), 15)

    def go_on(self) -> bool:
        return self.running and time.monotonic() < self.deadline

    async def _per_request(self, i: int) -> None:
        while self.go_on():
            t_conn = time.monotonic()
            sent: float | None = None
            writer = None
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), 5)
                writer.write(b"ping\n")
                sent = time.monotonic()
                answer = await asyncio.wait_for(reader.readline(), 5)
                if not answer.endswith(b"\n"):
                    raise ConnectionError("closed without an answer")
                self.results.append((t_conn, sent, int(answer), None))
            except (TimeoutError, OSError) as exc:
                self.results.append((t_conn, sent, None, repr(exc)))
                await asyncio.sleep(0.01)      # refused after a shutdown: do not spin
            finally:
                if writer is not None:
                    writer.close()
                    try:
                        await writer.wait_closed()
                    except OSError:
                        pass

    async def _persistent(self, i: int) -> None:
        t_conn = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port), 5)
        except (TimeoutError, OSError) as exc:
            self.conn_error[i] = repr(exc)
            self.results.append((t_conn, None, None, repr(exc)))
            return
        rng = random.Random(i)
        try:
            while self.go_on():
                # at random, so that the clients' slow requests are not in step
                slow = self.slow_every and rng.randrange(self.slow_every) == 0
                line = b"slow\n" if slow else b"ping\n"
                writer.write(line)       # into the kernel at once (loopback, empty buffer)
                sent = time.monotonic()
                try:
                    answer = await asyncio.wait_for(reader.readline(), 5)
                    if not answer.endswith(b"\n"):
                        raise ConnectionError("closed without an answer")
                except (TimeoutError, OSError) as exc:
                    self.conn_error[i] = repr(exc)
                    self.results.append((t_conn, sent, None, repr(exc)))
                    return
                self.conn_pid.setdefault(i, int(answer))
                self.results.append((t_conn, sent, int(answer), None))
                self.answered_at.append((sent, time.monotonic()))
                await asyncio.sleep(0.005)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    def errors(self) -> list[tuple[float, float | None, int | None, str | None]]:
        return [r for r in self.results if r[3] is not None]


def run(coro: Any, timeout: float = 30.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


# -- tests -------------------------------------------------------------------------

def test_bind_and_serve_spec() -> None:
    assert _parse_bind("tcp:0.0.0.0:9000") == ("tcp", "0.0.0.0:9000")
    assert _parse_bind("unix:/tmp/x.sock") == ("unix", "/tmp/x.sock")
    assert _parse_bind("127.0.0.1:80") == ("tcp", "127.0.0.1:80")
    assert _parse_bind("tcp6:[::1]:80") == ("tcp6", "[::1]:80")
    assert _serve_spec("workers_app:serve") == ("workers_app:serve", None)
    assert _serve_spec(run_workers) == ("netpoll.workers:run_workers", None)
    with pytest.raises(ValueError, match="module:function"):
        _serve_spec("workers_app")
    with pytest.raises(TypeError, match="module-level"):
        _serve_spec(lambda ln: None)  # type: ignore[arg-type,return-value]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("workers", [2, 4])
def test_spread_and_stats(start: Any, workers: int) -> None:
    sup = start(workers=workers)
    pids = set(sup.ready_pids(workers))
    port = sup.port()

    async def main() -> Counter[int]:
        sem = asyncio.Semaphore(40)

        async def one() -> int:
            async with sem:
                return await one_request(port)

        return Counter(await asyncio.gather(*(one() for _ in range(400))))

    spread = run(main())
    assert sum(spread.values()) == 400
    assert set(spread) == pids, spread
    for pid, n in spread.items():
        assert n >= 60, f"worker {pid} got {n} of 400 connections: {spread}"
    # The counts reach the supervisor with the next heartbeat (1 s); SIGUSR1 prints them.
    time.sleep(1.3)
    sup.send(signal.SIGUSR1)
    row = sup.wait_for(r"\n\s+all\s+(\d+)\s+(\d+)\s+\d+\n")[-1]
    assert (int(row[0]), int(row[1])) == (400, 400), sup.text()
    assert sup.stop() == 0, sup.text()
    assert_no_orphans(sup)


@pytest.mark.timeout(30)
def test_kill9_under_load(start: Any) -> None:
    sup = start(workers=2)
    first = set(sup.ready_pids(2))
    port = sup.port()

    async def main() -> tuple[Load, float, int, float | None]:
        load = Load(port, per_request=8, persistent=16)
        load.start()
        try:
            deadline = time.monotonic() + 5
            while len(load.conn_pid) < 16 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            victim = Counter(load.conn_pid.values()).most_common()[-1][0]
            t_kill = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            first_new: float | None = None
            while time.monotonic() < t_kill + 2.0:
                await asyncio.sleep(0.01)
                if first_new is None:
                    new = [r[0] for r in load.results if r[2] is not None and r[2] not in first]
                    if new:
                        first_new = time.monotonic()
        finally:
            await load.stop()
        return load, t_kill, victim, first_new

    load, t_kill, victim, first_new = run(main())
    survivor = (first - {victim}).pop()
    # the survivor's persistent connections saw no error
    for i, pid in load.conn_pid.items():
        if pid == survivor:
            assert i not in load.conn_error, (i, load.conn_error[i])
    # a per-request connection may fail only if it was opened before the kill
    # (the victim had accepted it); later ones wait in the slot's queue.
    late = [r for r in load.errors() if r[0] > t_kill]
    assert not late, late[:5]
    assert first_new is not None, sup.text()
    assert first_new - t_kill < 1.0, f"replacement answered after {first_new - t_kill:.2f} s"
    assert f"worker {victim} (slot" in sup.text() and "killed by SIGKILL" in sup.text()
    assert sup.stop() == 0, sup.text()
    assert_no_orphans(sup)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_sighup_under_load_loses_nothing(start: Any, loop: str) -> None:
    # The issue asks for 10 s of load; 4 s (the default here) covers a whole
    # reload of 2 workers (about 1 s) with margin and keeps the suite short.
    # NETPOLL_WORKERS_HUP_SECONDS=10 runs the length.
    seconds = float(os.environ.get("NETPOLL_WORKERS_HUP_SECONDS", "4"))
    sup = start(*(["--uvloop"] if loop == "uvloop" else []), workers=2)
    old = set(sup.ready_pids(2))
    port = sup.port()

    async def main() -> Load:
        load = Load(port, per_request=50, max_seconds=seconds + 15)
        load.start()
        try:
            await asyncio.sleep(1.0)
            sup.send(signal.SIGHUP)
            t_end = time.monotonic() + seconds - 1.0
            while time.monotonic() < t_end or sup.text().count("stopped after draining") < 2:
                await asyncio.sleep(0.05)
                if time.monotonic() > t_end + 8:
                    break
            await asyncio.sleep(0.3)
        finally:
            await load.stop()
        return load

    load = run(main())
    text = sup.text()
    assert text.count(" replaces ") == 2, text
    assert text.count("stopped after draining (exit status 0") == 2, text
    errors = load.errors()
    assert not errors, f"{len(errors)} of {len(load.results)} failed: {errors[:5]}"
    assert len(load.results) > 500
    answered_by = {r[2] for r in load.results}
    new = answered_by - old
    assert len(new) == 2, (answered_by, old)
    assert sup.stop() == 0, text
    assert_no_orphans(sup)


@pytest.mark.timeout(30)
def test_sigterm_under_load_answers_everything(start: Any) -> None:
    sup = start(workers=2)
    port = sup.port()

    async def in_flight(started: asyncio.Event) -> tuple[float, int]:
        """A 1 s request sent just before the signal: in flight when shutdown() begins."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"slow1\n")
            await writer.drain()
            await started.wait()
            answer = await asyncio.wait_for(reader.readline(), 5)
            assert answer.endswith(b"\n"), "a request in flight at SIGTERM was not answered"
            return time.monotonic(), int(answer)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    async def main() -> tuple[Load, float, list[tuple[float, int]]]:
        load = Load(port, per_request=10, persistent=30, slow_every=5)
        load.start()
        try:
            await asyncio.sleep(1.0)
            started = asyncio.Event()
            slow = [asyncio.create_task(in_flight(started)) for _ in range(6)]
            await asyncio.sleep(0.05)
            started.set()
            t0 = time.monotonic()
            sup.send(signal.SIGTERM)
            answered = await asyncio.gather(*slow)
            await asyncio.sleep(1.0)
        finally:
            await load.stop()
        return load, t0, answered

    load, t0, answered = run(main())
    rc = sup.proc.wait(15)
    lost = [r for r in load.errors() if r[1] is not None and r[1] < t0]
    assert not lost, f"{len(lost)} requests sent before SIGTERM unanswered: {lost[:5]}"
    assert sum(1 for r in load.results if r[1] is not None and r[1] < t0) > 200
    # requests still running when the workers began EventLoop.shutdown (at
    # t0 + drain_delay 0.2 s) were answered
    assert all(done > t0 + 0.5 for done, _ in answered), (t0, answered)
    assert rc == 0, sup.text()
    assert "all workers stopped (drained)" in sup.text()
    assert_no_orphans(sup)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["import", "start"])
def test_start_failure_stops_supervisor(start: Any, how: str) -> None:
    if how == "import":
        sup = start(env={"WORKERS_APP_FAIL": "import"}, wait_ready=False)
        message = "failing at import as asked"
    else:
        sup = start(serve="workers_app:serve_fails", wait_ready=False)
        message = "serve_fails: cannot start"
    rc = sup.proc.wait(20)
    text = sup.text()
    assert rc == 3, text
    assert message in text.splitlines()[-1], text
    assert "worker failed to start 3 times in a row" in text
    assert text.count("started worker") <= 6, text      # 3 per slot: it does not spin
    assert_no_orphans(sup)


@pytest.mark.timeout(30)
def test_blocked_worker_is_killed_and_replaced(start: Any) -> None:
    sup = start("--timeout", "1", workers=1)
    (first,) = sup.ready_pids(1)
    port = sup.port()

    async def main() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"block\n")         # the worker's loop sleeps 60 s
        await writer.drain()
        try:
            assert await asyncio.wait_for(reader.read(), 8) == b""   # killed: connection ends
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
        return await one_request(port)

    t = time.monotonic()
    pid = run(main())
    assert pid != first
    assert time.monotonic() - t < 6
    assert "sent no heartbeat" in sup.text(), sup.text()
    assert sup.stop() == 0, sup.text()


@pytest.mark.timeout(30)
def test_max_requests_recycles_without_errors(start: Any) -> None:
    sup = start("--max-requests", "40", "--max-requests-jitter", "10", workers=1)
    (first,) = sup.ready_pids(1)
    port = sup.port()

    async def main() -> list[int]:
        seen: list[int] = []
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            seen.append(await one_request(port))
            if len(set(seen)) >= 2 and seen[-1] != first and len(seen) > 60:
                break
            await asyncio.sleep(0.01)
        return seen

    seen = run(main())
    assert len(set(seen)) >= 2, sup.text()
    assert "reached max_requests" in sup.text()
    assert sup.stop() == 0, sup.text()


@pytest.mark.timeout(30)
def test_ttin_ttou_and_cpu_affinity(start: Any) -> None:
    sup = start("--cpu-affinity", workers=1)
    sup.ready_pids(1)
    port = sup.port()
    sup.send(signal.SIGTTIN)
    pids = sup.ready_pids(2)
    ncpu = len(os.sched_getaffinity(0))
    for pid, slot in re.findall(r"started worker (\d+) \(slot (\d+)", sup.text()):
        assert os.sched_getaffinity(int(pid)) == {sorted(os.sched_getaffinity(0))[
            int(slot) % ncpu]}
    assert len(group_members(sup.pid)) == 3          # supervisor + 2 workers
    sup.send(signal.SIGTTOU)
    sup.wait_for(r"worker \d+ \(slot 1\) stopped after draining")
    assert run(one_request(port)) == pids[0]
    assert sup.stop() == 0, sup.text()


@pytest.mark.timeout(30)
def test_workers_drain_when_the_supervisor_is_killed(start: Any) -> None:
    sup = start(workers=2)
    sup.ready_pids(2)
    port = sup.port()
    assert run(one_request(port)) > 0
    os.kill(sup.pid, signal.SIGKILL)
    sup.proc.wait(5)
    # the next heartbeat write fails (EPIPE): the workers drain and exit
    assert_no_orphans(sup, timeout=5.0)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["asyncio", "transports"])
def test_asyncio_server_drains_through_a_hook(start: Any, kind: str) -> None:
    """A Streams server, on asyncio's transports and on netpoll.transports."""
    sup = start(workers=1, serve=f"workers_app:serve_{kind}")
    (pid,) = sup.ready_pids(1)
    port = sup.port()
    name = "asyncio" if kind == "asyncio" else "netpoll.transports"

    async def main() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"transport\n")
            module = (await reader.readline()).decode().strip()
            assert module.startswith("netpoll") == (kind == "transports"), module
            writer.write(b"ping\n")
            assert int(await reader.readline()) == pid
            writer.write(b"slow\n")             # in flight when the signal comes
            await writer.drain()
            await asyncio.sleep(0.05)
            sup.send(signal.SIGTERM)
            return int(await asyncio.wait_for(reader.readline(), 5))
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    assert run(main()) == pid
    assert sup.proc.wait(10) == 0, sup.text()
    assert f"{name} server drained" in sup.text()
    assert_no_orphans(sup)


SCRIPT = """
import os, sys
import netpoll

async def on_request(ctx, conn):
    await conn.skip(conn.len())
    conn.write_binary(f"{os.getpid()}\\n".encode())
    await conn.flush()

async def serve(listener):
    await netpoll.EventLoop(on_request).serve(listener)

if __name__ == "__main__":
    print("main ran", flush=True)
    sys.exit(netpoll.run_workers(serve, workers=1, bind="unix:" + sys.argv[1]))
"""


@pytest.mark.timeout(30)
def test_run_workers_from_a_main_script_on_a_unix_socket(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(SCRIPT)
    path = str(tmp_path / "s.sock")
    log_path = tmp_path / "log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(script), path], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while "ready" not in log_path.read_text():
            assert time.monotonic() < deadline and proc.poll() is None, log_path.read_text()
            time.sleep(0.02)

        async def ask() -> int:
            reader, writer = await asyncio.open_unix_connection(path)
            try:
                writer.write(b"x")
                return int(await asyncio.wait_for(reader.readline(), 5))
            finally:
                writer.close()
                await writer.wait_closed()

        pid = run(ask())
        assert pid != proc.pid
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(15) == 0, log_path.read_text()
        # the worker loaded the script under another name: its __main__ block ran once
        assert log_path.read_text().count("main ran") == 1
        assert not os.path.exists(path)           # the supervisor removed its socket file
        assert not group_members(proc.pid)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


@pytest.mark.timeout(30)
def test_bind_error_is_reported(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sup = Supervisor(tmp_path, "workers_app:serve", "--bind", f"tcp:127.0.0.1:{port}")
        try:
            assert sup.proc.wait(15) == 2
            assert "address already in use" in sup.text().lower()
            assert f"127.0.0.1:{port}" in sup.text()           # the error names the address
            assert "started worker" not in sup.text()
        finally:
            sup.cleanup()


@pytest.mark.timeout(30)
def test_shared_socket_fallback(start: Any) -> None:
    sup = start("--no-reuse-port", workers=2)
    sup.ready_pids(2)
    port = sup.port()
    assert "one shared socket" in sup.text()

    async def main() -> list[int]:
        return list(await asyncio.gather(*(one_request(port) for _ in range(100))))

    assert len(run(main())) == 100
    assert sup.stop() == 0, sup.text()
    assert_no_orphans(sup)
