"""Several cores: a supervisor process running ``serve(listener)`` in N worker processes.

Why a supervisor, and why it owns the sockets
---------------------------------------------
One netpoll process runs Python on one core (the GIL). ``run_workers`` starts N
fresh interpreters (``subprocess``, never a fork of a process whose loop runs),
each with its own asyncio loop, its own pollers and its own listening socket,
and calls the user's ``async def serve(listener)`` in each.

The listening sockets are created **by the supervisor**, one per worker slot,
with SO_REUSEPORT (the kernel spreads new connections over them by a hash of
the 4-tuple), and handed to the workers as inherited file descriptors. The
supervisor keeps its own copy of every slot's socket and never accepts on it.
That one rule gives the reliability properties:

* A worker that dies (crash, ``kill -9``, heartbeat timeout) does not close its
  slot's socket: connections the kernel queues for that slot meanwhile wait in
  the accept queue and are served by the replacement instead of being reset.
* SIGHUP (and ``max_requests`` recycling) start the new worker on the *same*
  socket as the old one; once the new one reports ready, the old one drains.
  Nothing queued on that socket is lost, so the reload refuses nothing.
* Where SO_REUSEPORT is missing (or ``reuse_port=False``), every slot shares
  one socket: the same code path, only the spread is left to the workers'
  accept race.

Removing sockets is the one lossy moment: when the last copy of a socket is
closed (SIGTTOU, the final shutdown) the kernel resets what sits in its accept
queue, unless ``net.ipv4.tcp_migrate_req = 1`` (Linux >= 5.14) moves it to
another socket of the group.

The drain protocol
------------------
A worker drains on SIGTERM/SIGINT (the end: its socket is closing) and on
SIGUSR2 (a hand-over: its socket lives on in a successor). It (1) runs the
hooks registered with ``current_worker().on_shutdown``; (2) waits
``drain_delay`` seconds — on a hand-over it first stops accepting, so the
successor takes the accept queue while clients that have just connected here
get their requests in; at the end it goes on accepting, so connections the
kernel queued before the signal are served rather than reset; (3) calls
``shutdown(shutdown_timeout)`` on every :class:`netpoll.EventLoop` of the
process (found through the garbage collector, so a plain EventLoop server needs
no signal code): a request fully received is answered; (4) waits for ``serve``
to return, cancelling it if it does not. Exit status 0 means drained, 1 means
something was closed by force or raised.

Supervisor <-> worker
---------------------
Each worker writes JSON lines on a pipe: ``ready`` (its serve has started
listening), ``hb`` (a heartbeat written by a loop callback, never a thread,
carrying the counts), ``retire`` (max_requests reached), ``fatal`` (the
traceback of a failure before ready). The supervisor talks with signals only.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

# `import netpoll` imports this module: only modules asyncio has imported
# already are imported here (and json); the rest where they are used.

__all__ = [
    "Worker",
    "WorkerStartError",
    "counted",
    "counted_prepare",
    "current_worker",
    "run_workers",
]

log = logging.getLogger("netpoll.workers")

Serve = Callable[[Any], Coroutine[Any, Any, Any]]
F = TypeVar("F", bound=Callable[..., Any])

# Exit statuses of a worker.
EXIT_DRAINED = 0
EXIT_FAILED = 1        # serve raised after ready, or the drain closed connections by force
EXIT_START = 3         # import or start failure, before ready (as gunicorn's boot error)


class WorkerStartError(RuntimeError):
    """Workers failed to start ``max_start_failures`` times in a row; run_workers gives up.

    ``str()`` holds the worker's own error (the last line of its traceback) and
    ``details`` the whole traceback when the worker could send it.
    """

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


# ---------------------------------------------------------------------------------
# Inside a worker
# ---------------------------------------------------------------------------------

class Worker:
    """The worker process this code runs in; see :func:`current_worker`.

    ``index`` is the slot number (0..N-1; a replacement keeps its slot),
    ``shutdown_timeout`` the drain budget in seconds, ``stopping`` True once a
    drain began. ``requests`` and ``connections`` are the counts reported to the
    supervisor (see :func:`counted`); ``max_requests`` (0: no limit) the count
    after which this worker asks to be replaced.
    """

    def __init__(self, index: int, shutdown_timeout: float, max_requests: int) -> None:
        self.index = index
        self.pid = os.getpid()
        self.shutdown_timeout = shutdown_timeout
        self.max_requests = max_requests
        self.requests = 0
        self.connections = 0
        self.stopping = False
        self._hooks: list[Callable[[], Any]] = []

    def on_shutdown(self, hook: Callable[[], Any]) -> None:
        """Run `hook()` (plain or async) first when the worker starts to drain.

        Use it for servers that are not a netpoll EventLoop (an asyncio server:
        ``server.close(); await server.wait_closed()``); EventLoops are drained
        without it. An async hook gets at most ``shutdown_timeout`` seconds.
        """
        self._hooks.append(hook)

    def count_request(self, n: int = 1) -> None:
        """Add `n` to this worker's request count (what max_requests limits)."""
        self.requests += n

    def count_connection(self, n: int = 1) -> None:
        """Add `n` to this worker's accepted-connection count."""
        self.connections += n

    def __repr__(self) -> str:
        return (f"<netpoll Worker {self.index} pid={self.pid} requests={self.requests} "
                f"connections={self.connections}>")


# Outside a worker the counters land here and are never read.
_detached = Worker(-1, 0.0, 0)
_current: Worker | None = None


def current_worker() -> Worker | None:
    """The :class:`Worker` when called inside a run_workers worker process, else None."""
    return _current


def counted(on_request: F) -> F:
    """Wrap an ``on_request`` handler so each call counts as one request.

    The wrapper is a plain function returning what the handler returns (a
    coroutine for an async handler), which the EventLoop drives as usual; the
    cost is one extra Python call per request. Outside a worker it counts
    into nothing. ``max_requests`` and the request column of the stats count
    these calls (and ``Worker.count_request``) — nothing else: netpoll's core
    has no per-request hook.
    """
    def call(ctx: Any, conn: Any) -> Any:
        (_current or _detached).requests += 1
        return on_request(ctx, conn)

    call.__name__ = getattr(on_request, "__name__", "on_request")
    call.__doc__ = getattr(on_request, "__doc__", None)
    call.__wrapped__ = on_request  # type: ignore[attr-defined]
    return call  # type: ignore[return-value]


def counted_prepare(on_prepare: Callable[[Any], Any] | None = None) -> Callable[[Any], Any]:
    """An ``on_prepare`` that counts each accepted connection, then calls `on_prepare`."""
    def prepare(conn: Any) -> Any:
        (_current or _detached).connections += 1
        return on_prepare(conn) if on_prepare is not None else None

    return prepare


def _format_exc(exc: BaseException) -> tuple[str, str]:
    return ("".join(traceback.format_exception_only(exc)).strip(),
            "".join(traceback.format_exception(exc)))


def _event_loops() -> list[Any]:
    """Every netpoll EventLoop alive in this process (a serving one is referenced by its task)."""
    from netpoll import EventLoop

    return [o for o in gc.get_objects() if isinstance(o, EventLoop)]


class _WorkerRun:
    """One worker process's state: the serve task, the status pipe, the drain."""

    def __init__(self, cfg: dict[str, Any], worker: Worker) -> None:
        self.cfg = cfg
        self.worker = worker
        self.status_fd: int = cfg["status_fd"]
        self.beat = float(cfg["heartbeat"])
        self.drain_delay = float(cfg["drain_delay"])
        self.listener: Any = None
        self.task: asyncio.Task[Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready = False
        self.retired = False
        self.drain_task: asyncio.Task[int] | None = None
        self.supervisor_gone = False
        self.loops: list[Any] = []        # the EventLoops found (for the open-connection count)
        self.discoveries = 0

    def send(self, msg: dict[str, Any]) -> None:
        data = (json.dumps(msg) + "\n").encode()
        try:
            os.write(self.status_fd, data)    # < PIPE_BUF: atomic; the supervisor reads all the time
        except BlockingIOError:
            pass                              # a heartbeat more or less does not matter
        except (BrokenPipeError, OSError):
            # The supervisor is gone (killed -9): drain rather than live on as an orphan.
            if not self.supervisor_gone:
                self.supervisor_gone = True
                self.begin_drain()

    def mark_ready(self) -> None:
        if self.ready or (self.task is not None and self.task.done()):
            return
        self.ready = True
        self.send({"t": "ready", "pid": os.getpid()})

    def tick(self) -> None:
        """The heartbeat: a loop callback, so a blocked loop stops it (what --timeout detects)."""
        assert self.loop is not None
        w = self.worker
        open_conns = 0
        if not self.loops and self.discoveries < 10:
            self.discover()               # serve may create its EventLoop late
        for ev in self.loops:
            open_conns += ev.connections
        self.send({"t": "hb", "req": w.requests, "conn": w.connections, "open": open_conns})
        if (w.max_requests and w.requests >= w.max_requests and not self.retired
                and not w.stopping):
            self.retired = True
            self.send({"t": "retire", "req": w.requests})
        self.loop.call_later(self.beat, self.tick)

    def discover(self) -> None:
        self.discoveries += 1
        self.loops = _event_loops()

    def begin_drain(self, handover: bool = False) -> None:
        if self.drain_task is None and self.loop is not None:
            self.worker.stopping = True
            self.drain_task = self.loop.create_task(self.drain(handover))

    async def drain(self, handover: bool) -> int:
        w = self.worker
        deadline = time.monotonic() + w.shutdown_timeout
        status = EXIT_DRAINED
        for hook in w._hooks:
            try:
                res = hook()
                if isinstance(res, Awaitable):
                    await asyncio.wait_for(res, max(0.0, deadline - time.monotonic()))
            except Exception:
                log.exception("netpoll worker %d: on_shutdown hook failed", os.getpid())
                status = EXIT_FAILED
        # On a hand-over, stop accepting first and keep serving what was accepted:
        # a client that has just connected gets drain_delay to send its request
        # before idle connections are closed, and what the kernel queues
        # meanwhile goes to the successor, which shares the socket. At the end
        # (no successor) go on accepting for drain_delay instead: closing the
        # listener resets whatever is still in its accept queue.
        assert self.loop is not None
        if handover and self.listener is not None and self.listener.fileno() >= 0:
            for ev in _event_loops():
                ev._pause_accepting()     # either accept path (io_uring: the ring's ACCEPT)
            self.loop.remove_reader(self.listener.fileno())
        if self.drain_delay > 0:
            await asyncio.sleep(min(self.drain_delay, max(0.0, deadline - time.monotonic())))
        loops = _event_loops()
        if loops:
            left = max(0.0, deadline - time.monotonic())
            results = await asyncio.gather(*(ev.shutdown(left) for ev in loops),
                                           return_exceptions=True)
            for res in results:
                if isinstance(res, BaseException):
                    log.warning("netpoll worker %d: %s", os.getpid(), res)
                    status = EXIT_FAILED
        task = self.task
        if task is not None and not task.done():
            # serve() should return now that its EventLoops are shut down; give it
            # a moment (it may have clean-up to do), then cancel it.
            await asyncio.wait([task], timeout=max(1.0, deadline - time.monotonic()))
            if not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=1.0)
        return status

    async def main(self, serve: Serve) -> int:
        from netpoll.net import Listener

        loop = self.loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.begin_drain, False)
        loop.add_signal_handler(signal.SIGUSR2, self.begin_drain, True)
        run = self

        class WorkerListener(Listener):
            """A Listener that notices when a server starts polling it (= ready)."""

            def fileno(self) -> int:
                if not run.ready:
                    loop.call_soon(run.mark_ready)
                return super().fileno()

        sock = socket.socket(fileno=self.cfg["listen_fd"])
        self.listener = WorkerListener(sock, self.cfg["network"])
        self.task = loop.create_task(serve(self.listener))
        if _early_term:
            self.begin_drain(_early_term == signal.SIGUSR2)
        # A serve that never calls fileno() (it wraps the socket some other way)
        # is taken as ready once it has run a while without failing.
        loop.call_later(0.5, self.mark_ready)
        loop.call_later(0.05, self.discover)
        self.tick()
        await asyncio.wait([self.task])
        status = EXIT_DRAINED
        exc = None if self.task.cancelled() else self.task.exception()
        if self.drain_task is not None:
            status = await self.drain_task
            if exc is not None:
                status = EXIT_FAILED
        elif exc is not None:
            if not self.ready:
                _send_fatal(self.status_fd, exc)
                return EXIT_START
            log.error("netpoll worker %d: serve raised", os.getpid(), exc_info=exc)
            status = EXIT_FAILED
        else:
            log.warning("netpoll worker %d: serve returned without a shutdown", os.getpid())
        listener = self.listener
        listener.close()
        return status


_early_term = 0       # a drain signal that came before the loop was running


def _note_early_term(signum: int, frame: Any) -> None:
    global _early_term
    _early_term = _early_term or signum


def _send_fatal(fd: int, exc: BaseException) -> None:
    last, text = _format_exc(exc)
    try:
        os.write(fd, (json.dumps({"t": "fatal", "error": last, "tb": text[-3000:]}) + "\n")
                 .encode())
    except OSError:
        pass


def _load_serve(spec: str, main_file: str | None) -> Serve:
    import importlib
    import importlib.util

    module_name, _, attr = spec.partition(":")
    if main_file is not None:
        # The function came from the supervisor's __main__ script: load that file
        # under another name, so its `if __name__ == "__main__":` block does not run.
        mspec = importlib.util.spec_from_file_location("__mp_main__", main_file)
        if mspec is None or mspec.loader is None:
            raise ImportError(f"cannot load {main_file}")
        module = importlib.util.module_from_spec(mspec)
        sys.modules["__mp_main__"] = module
        mspec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec}: not callable")
    return obj  # type: ignore[no-any-return]


def _worker_main() -> None:
    """Entry point of a worker process (argv[1]: the JSON configuration)."""
    global _current
    # Until the loop's handlers are installed a SIGTERM is remembered, not fatal;
    # terminal signals meant for the supervisor do not kill a worker.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
        signal.signal(sig, _note_early_term)
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(sig, signal.SIG_IGN)
    cfg = json.loads(sys.argv[1])
    sys.path[:] = cfg["sys_path"]
    status_fd = cfg["status_fd"]
    os.set_blocking(status_fd, False)
    logging.basicConfig(level=cfg.get("log_level", logging.INFO),
                        format="[%(asctime)s] [%(process)d] %(levelname)s %(name)s: %(message)s")
    if cfg.get("cpu") is not None:
        try:
            os.sched_setaffinity(0, {cfg["cpu"]})
        except OSError as exc:
            log.warning("netpoll worker %d: cpu affinity %s: %s", os.getpid(), cfg["cpu"], exc)
    worker = Worker(cfg["index"], cfg["shutdown_timeout"], cfg["max_requests"])
    _current = worker
    try:
        serve = _load_serve(cfg["serve"], cfg.get("main_file"))
        if cfg["loop"] == "uvloop":
            import uvloop

            runner: Callable[[Any], int] = uvloop.run
        else:
            runner = asyncio.run
    except BaseException as exc:
        _send_fatal(status_fd, exc)
        os._exit(EXIT_START)
    run = _WorkerRun(cfg, worker)
    try:
        status = runner(run.main(serve))
    except BaseException as exc:
        if not run.ready:
            _send_fatal(status_fd, exc)
            status = EXIT_START
        else:
            log.exception("netpoll worker %d: failed", os.getpid())
            status = EXIT_FAILED
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


# ---------------------------------------------------------------------------------
# The supervisor
# ---------------------------------------------------------------------------------

class _Proc:
    """A worker process as the supervisor sees it."""

    def __init__(self, popen: subprocess.Popen[bytes], slot: _Slot, status_r: int,
                 started: float) -> None:
        self.popen = popen
        self.slot = slot
        self.status_r = status_r          # -1 once the pipe is closed
        self.started = started
        self.ready_at = 0.0
        self.last_beat = started
        self.draining_since = 0.0
        self.killed = ""
        self.fatal = ""
        self.fatal_tb = ""
        self.buf = b""
        self.stats: dict[str, int] = {}

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def ready(self) -> bool:
        return self.ready_at > 0


class _Slot:
    """Worker number `index` and its listening socket, which outlives its workers."""

    def __init__(self, index: int, sock: socket.socket | None) -> None:
        self.index = index
        self.sock = sock
        self.proc: _Proc | None = None    # the current worker (serving or starting)
        self.old: _Proc | None = None     # being replaced: serving until `proc` is ready
        self.restart_at = 0.0             # > 0: start a worker at this time
        self.start_failures = 0
        self.crashes = 0
        self.removed = False


def _parse_bind(bind: str) -> tuple[str, str]:
    from netpoll.net import NETWORKS

    scheme, sep, rest = bind.partition(":")
    if sep and scheme in NETWORKS:
        return scheme, rest
    return "tcp", bind


def _serve_spec(serve: Serve | str) -> tuple[str, str | None]:
    if isinstance(serve, str):
        if ":" not in serve:
            raise ValueError(f"run_workers: serve {serve!r} must be 'module:function'")
        return serve, None
    module = getattr(serve, "__module__", None)
    qualname = getattr(serve, "__qualname__", None)
    if not module or not qualname or "<locals>" in qualname or "<lambda>" in qualname:
        raise TypeError(f"run_workers: serve {serve!r} must be a module-level function "
                        "(workers import it by name)")
    if module == "__main__":
        main_file = getattr(sys.modules["__main__"], "__file__", None)
        if not main_file:
            raise TypeError("run_workers: serve is defined in an interactive __main__; "
                            "put it in a module")
        return f"__mp_main__:{qualname}", os.path.abspath(main_file)
    return f"{module}:{qualname}", None


class _Supervisor:
    def __init__(self, serve: Serve | str, workers: int, bind: str, *, loop: str,
                 shutdown_timeout: float, timeout: float | None, max_requests: int,
                 max_requests_jitter: int, cpu_affinity: bool, reuse_port: bool | None,
                 max_start_failures: int, backoff_max: float, stats_interval: float | None,
                 drain_delay: float, ready_timeout: float, backlog: int) -> None:
        if workers < 1:
            raise ValueError(f"run_workers: workers={workers}: need at least 1")
        if loop not in ("asyncio", "uvloop"):
            raise ValueError(f"run_workers: loop={loop!r}: 'asyncio' or 'uvloop'")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"run_workers: timeout={timeout}: must be > 0")
        self.spec, self.main_file = _serve_spec(serve)
        self.n = workers
        self.network, self.address = _parse_bind(bind)
        self.loop = loop
        self.shutdown_timeout = shutdown_timeout
        self.timeout = timeout
        self.max_requests = max_requests
        self.jitter = max_requests_jitter
        self.cpus = sorted(os.sched_getaffinity(0)) if cpu_affinity else []
        self.want_reuse_port = reuse_port
        self.max_start_failures = max(1, max_start_failures)
        self.backoff_max = backoff_max
        self.stats_interval = stats_interval
        self.drain_delay = drain_delay
        self.ready_timeout = ready_timeout
        self.backlog = backlog
        self.heartbeat = min(1.0, timeout / 4) if timeout else 1.0
        self.slots: list[_Slot] = []
        self.procs: dict[int, _Proc] = {}
        self.listeners: list[Any] = []     # netpoll Listeners owned here (unix path unlink)
        self.shared: socket.socket | None = None
        self.reuse_port = False
        self.addr: Any = None
        self.sel = selectors.DefaultSelector()
        self.signals: list[int] = []
        self.stopping = False
        self.stop_error: WorkerStartError | None = None
        self.exit_status = 0
        self.reload_queue: list[_Slot] = []
        self.next_stats = 0.0

    # sockets -------------------------------------------------------------------

    def _new_socket(self) -> socket.socket:
        from netpoll.net import create_listener

        if self.shared is not None:
            return self.shared
        address: Any = self.address
        if self.addr is not None and self.network != "unix":
            address = (self.addr[0], self.addr[1])      # port 0 → the port the first one got
        if self.network != "unix" and self.want_reuse_port is not False:
            try:
                ln = create_listener(self.network, address, backlog=self.backlog,
                                     reuse_port=True)
            except (AttributeError, OSError) as exc:
                if isinstance(exc, OSError) and exc.errno not in (errno.ENOPROTOOPT,
                                                                   errno.EINVAL):
                    raise
                if self.want_reuse_port:
                    raise
                log.warning("netpoll workers: SO_REUSEPORT unavailable (%s); "
                            "the workers share one socket", exc)
            else:
                self.reuse_port = True
                self.listeners.append(ln)
                self.addr = ln.addr
                return ln._sock
        ln = create_listener(self.network, address, backlog=self.backlog)
        self.listeners.append(ln)
        self.addr = ln.addr
        self.shared = ln._sock
        return ln._sock

    def _close_slot_socket(self, slot: _Slot) -> None:
        if slot.sock is not None and slot.sock is not self.shared:
            for ln in self.listeners:
                if ln._sock is slot.sock:
                    ln.close()
                    self.listeners.remove(ln)
                    break
        slot.sock = None

    # workers -------------------------------------------------------------------

    def _spawn(self, slot: _Slot) -> _Proc:
        import random

        assert slot.sock is not None
        r, w = os.pipe()
        os.set_blocking(r, False)
        cpu = self.cpus[slot.index % len(self.cpus)] if self.cpus else None
        limit = 0
        if self.max_requests:
            limit = self.max_requests + (random.randint(0, self.jitter) if self.jitter else 0)
        cfg = {
            "index": slot.index, "listen_fd": slot.sock.fileno(), "status_fd": w,
            "network": "unix" if self.network == "unix" else
                       ("tcp6" if slot.sock.family == socket.AF_INET6 else "tcp4"),
            "serve": self.spec, "main_file": self.main_file, "loop": self.loop,
            "shutdown_timeout": self.shutdown_timeout, "max_requests": limit,
            "heartbeat": self.heartbeat, "drain_delay": self.drain_delay, "cpu": cpu,
            "sys_path": sys.path, "log_level": log.getEffectiveLevel(),
        }
        try:
            popen = subprocess.Popen(
                [sys.executable, "-c", "from netpoll.workers import _worker_main; _worker_main()",
                 json.dumps(cfg)],
                pass_fds=(slot.sock.fileno(), w), close_fds=True)
        finally:
            os.close(w)
        now = time.monotonic()
        proc = _Proc(popen, slot, r, now)
        self.procs[proc.pid] = proc
        self.sel.register(r, selectors.EVENT_READ, proc)
        log.info("netpoll workers: started worker %d (slot %d%s)", proc.pid, slot.index,
                 f", cpu {cpu}" if cpu is not None else "")
        return proc

    def _signal(self, proc: _Proc, sig: int) -> None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass

    def _drain(self, proc: _Proc, handover: bool = False) -> None:
        """SIGUSR2 when a successor shares the socket, SIGTERM when the socket is closing."""
        if not proc.draining_since:
            proc.draining_since = time.monotonic()
            self._signal(proc, signal.SIGUSR2 if handover else signal.SIGTERM)

    def _kill(self, proc: _Proc, why: str) -> None:
        if not proc.killed:
            proc.killed = why
            log.error("netpoll workers: worker %d %s; killing it", proc.pid, why)
            self._signal(proc, signal.SIGKILL)

    def _on_message(self, proc: _Proc, msg: dict[str, Any]) -> None:
        kind = msg.get("t")
        now = time.monotonic()
        if kind == "hb":
            proc.last_beat = now
            proc.stats = {"requests": int(msg["req"]), "connections": int(msg["conn"]),
                          "open": int(msg["open"])}
        elif kind == "ready":
            proc.ready_at = proc.last_beat = now
            slot = proc.slot
            slot.start_failures = 0
            log.info("netpoll workers: worker %d ready (slot %d, %.0f ms)", proc.pid,
                     slot.index, (now - proc.started) * 1e3)
            if slot.proc is proc and slot.old is not None:
                old, slot.old = slot.old, None
                log.info("netpoll workers: worker %d replaces %d; %d drains", proc.pid,
                         old.pid, old.pid)
                self._drain(old, handover=True)
            if slot.proc is proc and slot.removed:
                self._drain(proc)
            self._next_reload()
        elif kind == "retire":
            log.info("netpoll workers: worker %d reached max_requests (%s); replacing it",
                     proc.pid, msg.get("req"))
            if proc.slot.proc is proc and proc.slot not in self.reload_queue:
                self.reload_queue.append(proc.slot)
                self._next_reload()
        elif kind == "fatal":
            proc.fatal = str(msg.get("error", ""))
            proc.fatal_tb = str(msg.get("tb", ""))

    def _read(self, proc: _Proc) -> None:
        while True:
            try:
                chunk = os.read(proc.status_r, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self.sel.unregister(proc.status_r)
                os.close(proc.status_r)
                proc.status_r = -1
                return
            proc.buf += chunk
            *lines, proc.buf = proc.buf.split(b"\n")
            for line in lines:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                self._on_message(proc, msg)

    def _reap(self) -> None:
        for proc in list(self.procs.values()):
            rc = proc.popen.poll()
            if rc is None:
                continue
            if proc.status_r >= 0:
                self._read(proc)       # the last messages (a fatal error) before the exit
                if proc.status_r >= 0:
                    self.sel.unregister(proc.status_r)
                    os.close(proc.status_r)
                    proc.status_r = -1
            del self.procs[proc.pid]
            self._exited(proc, rc)

    def _exited(self, proc: _Proc, rc: int) -> None:
        slot = proc.slot
        how = f"exit status {rc}" if rc >= 0 else f"killed by {signal.Signals(-rc).name}"
        now = time.monotonic()
        if proc.draining_since:
            if rc != 0:
                self.exit_status = 1
            log.info("netpoll workers: worker %d (slot %d) stopped after draining (%s, %.2f s)",
                     proc.pid, slot.index, how, now - proc.draining_since)
            if slot.removed and slot.proc is proc:
                slot.proc = None
            return
        if slot.old is proc:          # died while its replacement was starting
            slot.old = None
            log.warning("netpoll workers: worker %d (slot %d) died while being replaced (%s)",
                        proc.pid, slot.index, how)
            return
        if slot.proc is not proc:
            return
        slot.proc = None
        if slot.removed:
            return
        if self.stopping:
            log.info("netpoll workers: worker %d (slot %d) exited (%s)", proc.pid, slot.index, how)
            return
        detail = f": {proc.fatal}" if proc.fatal else ""
        if not proc.ready:
            if slot.old is not None:
                # A replacement (SIGHUP, max_requests) did not start: keep the old one.
                slot.proc, slot.old = slot.old, None
                log.error("netpoll workers: replacement worker %d for slot %d failed to start "
                          "(%s)%s; keeping worker %d, reload aborted", proc.pid, slot.index,
                          how, detail, slot.proc.pid)
                self.reload_queue.clear()
                return
            slot.start_failures += 1
            log.error("netpoll workers: worker %d (slot %d) failed to start (%s)%s [%d/%d]",
                      proc.pid, slot.index, how, detail, slot.start_failures,
                      self.max_start_failures)
            if slot.start_failures >= self.max_start_failures:
                self.stop_error = WorkerStartError(
                    f"worker failed to start {slot.start_failures} times in a row "
                    f"(last: {how}){detail}", proc.fatal_tb)
                self._begin_stop()
                return
            delay = min(self.backoff_max, 0.1 * 2 ** (slot.start_failures - 1))
        else:
            healthy = now - proc.ready_at > 10.0
            slot.crashes = 1 if healthy else slot.crashes + 1
            delay = 0.0 if slot.crashes == 1 else min(self.backoff_max,
                                                      0.1 * 2 ** (slot.crashes - 2))
            log.error("netpoll workers: worker %d (slot %d) died (%s)%s; restarting in %.1f s",
                      proc.pid, slot.index, how, detail, delay)
        slot.restart_at = now + delay

    # reload, add, remove -------------------------------------------------------

    def _next_reload(self) -> None:
        if self.stopping:
            return
        if any(s.old is not None for s in self.slots):
            return                    # one at a time
        while self.reload_queue:
            slot = self.reload_queue.pop(0)
            if slot.removed or slot.proc is None or not slot.proc.ready:
                continue
            slot.old = slot.proc
            slot.proc = self._spawn(slot)
            return

    def _add_slot(self) -> None:
        slot = _Slot(index=len(self.slots), sock=self._new_socket())
        self.slots.append(slot)
        slot.proc = self._spawn(slot)

    def _remove_slot(self) -> None:
        live = [s for s in self.slots if not s.removed]
        if len(live) <= 1:
            log.warning("netpoll workers: SIGTTOU ignored: one worker left")
            return
        slot = live[-1]
        slot.removed = True
        self._close_slot_socket(slot)     # the worker's own close then really closes it
        for proc in (slot.proc, slot.old):
            if proc is not None and proc.ready:
                self._drain(proc)
        slot.restart_at = 0.0
        log.info("netpoll workers: removing slot %d", slot.index)

    def _begin_stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.reload_queue.clear()
        # Close our copies first: the workers' own closes then really close the
        # sockets, so new connections are refused instead of waiting in a queue.
        for slot in self.slots:
            self._close_slot_socket(slot)
            slot.restart_at = 0.0
        for ln in self.listeners:
            ln.close()
        self.listeners.clear()
        self.shared = None
        for proc in self.procs.values():
            self._drain(proc)

    # stats ----------------------------------------------------------------------

    def print_stats(self) -> None:
        lines = ["netpoll workers: stats", f"{'slot':>4} {'pid':>8} {'state':<9} "
                 f"{'requests':>9} {'accepted':>9} {'open':>5}"]
        total = [0, 0, 0]
        for proc in sorted(self.procs.values(), key=lambda p: (p.slot.index, p.started)):
            st = proc.stats
            state = ("draining" if proc.draining_since else "ready" if proc.ready else
                     "starting")
            vals = [st.get("requests", 0), st.get("connections", 0), st.get("open", 0)]
            total = [a + b for a, b in zip(total, vals, strict=True)]
            lines.append(f"{proc.slot.index:>4} {proc.pid:>8} {state:<9} "
                         f"{vals[0]:>9} {vals[1]:>9} {vals[2]:>5}")
        lines.append(f"{'all':>4} {'':>8} {'':<9} {total[0]:>9} {total[1]:>9} {total[2]:>5}")
        print("\n".join(lines), file=sys.stderr, flush=True)

    # the loop ------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals.append(signum)

    def _handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            if sig in (signal.SIGTERM, signal.SIGINT):
                if not self.stopping:
                    log.info("netpoll workers: %s: draining %d workers",
                             signal.Signals(sig).name, len(self.procs))
                self._begin_stop()
            elif self.stopping:
                continue
            elif sig == signal.SIGHUP:
                log.info("netpoll workers: SIGHUP: replacing the workers one by one")
                for slot in self.slots:
                    if not slot.removed and slot not in self.reload_queue:
                        self.reload_queue.append(slot)
                self._next_reload()
            elif sig == signal.SIGTTIN:
                self._add_slot()
                log.info("netpoll workers: SIGTTIN: %d workers",
                         sum(not s.removed for s in self.slots))
            elif sig == signal.SIGTTOU:
                self._remove_slot()
            elif sig == signal.SIGUSR1:
                self.print_stats()

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if not self.stopping:
            for slot in self.slots:
                if (slot.proc is None and not slot.removed and slot.restart_at
                        and now >= slot.restart_at):
                    slot.restart_at = 0.0
                    slot.proc = self._spawn(slot)
            if self.stats_interval and now >= self.next_stats:
                self.next_stats = now + self.stats_interval
                self.print_stats()
        for proc in list(self.procs.values()):
            if proc.killed:
                continue
            if proc.draining_since:
                if now - proc.draining_since > self.shutdown_timeout + 5.0:
                    self._kill(proc, f"still draining after {now - proc.draining_since:.1f} s")
            elif not proc.ready:
                if now - proc.started > self.ready_timeout:
                    self._kill(proc, f"not ready after {self.ready_timeout:g} s")
            elif self.timeout and now - proc.last_beat > self.timeout:
                self._kill(proc, f"sent no heartbeat for {now - proc.last_beat:.1f} s "
                                 f"(timeout {self.timeout:g} s)")

    def run(self) -> int:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("run_workers: must be called from the main thread (signals)")
        sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU,
                signal.SIGUSR1, signal.SIGCHLD)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        old_handlers = {sig: signal.signal(sig, self._on_signal) for sig in sigs}
        old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        self.sel.register(wake_r, selectors.EVENT_READ, None)
        try:
            for i in range(self.n):
                self.slots.append(_Slot(index=i, sock=self._new_socket()))
            where = self.addr if isinstance(self.addr, str) else f"{self.addr[0]}:{self.addr[1]}"
            log.info("netpoll workers: supervisor %d serving %s on %s with %d workers (%s, %s)",
                     os.getpid(), self.spec, where, self.n, self.loop,
                     "SO_REUSEPORT" if self.reuse_port else "one shared socket")
            for slot in self.slots:
                slot.proc = self._spawn(slot)
            self.next_stats = time.monotonic() + (self.stats_interval or 0)
            while True:
                self._handle_signals()
                self._reap()
                self._housekeeping()
                if self.stopping and not self.procs:
                    break
                for key, _ in self.sel.select(0.25):
                    if key.data is None:
                        try:
                            while os.read(wake_r, 512):
                                pass
                        except BlockingIOError:
                            pass
                    else:
                        proc = key.data
                        if proc.status_r >= 0:
                            self._read(proc)
        except BaseException:
            self._begin_stop()
            for proc in self.procs.values():
                self._signal(proc, signal.SIGKILL)
                proc.popen.wait()
            raise
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            for ln in self.listeners:
                ln.close()
            self.sel.close()
            os.close(wake_r)
            os.close(wake_w)
        if self.stop_error is not None:
            raise self.stop_error
        log.info("netpoll workers: supervisor %d: all workers stopped (%s)", os.getpid(),
                 "drained" if self.exit_status == 0 else "some did not drain cleanly")
        return self.exit_status


def run_workers(serve: Serve | str, workers: int | None = None,
                bind: str = "tcp:0.0.0.0:9000", *, loop: str = "asyncio",
                shutdown_timeout: float = 30.0, timeout: float | None = None,
                max_requests: int = 0, max_requests_jitter: int = 0,
                cpu_affinity: bool = False, reuse_port: bool | None = None,
                max_start_failures: int = 3, backoff_max: float = 5.0,
                stats_interval: float | None = None, drain_delay: float = 0.2,
                ready_timeout: float = 30.0, backlog: int = 1024) -> int:
    """Run ``serve(listener)`` in `workers` processes under a supervisor; returns 0 when drained.

    `serve` is an ``async def serve(listener)`` defined at module level (the
    workers import it by name) or a ``"module:function"`` string. `bind` is
    ``"tcp:host:port"`` (also ``tcp4``, ``tcp6``, ``unix:/path``; no prefix
    means tcp). Blocks until SIGTERM/SIGINT has drained every worker; returns
    0 when all drained, 1 when one did not. Raises :class:`WorkerStartError`
    when a worker failed to start `max_start_failures` times in a row.

    Options: `loop` ``"asyncio"`` or ``"uvloop"``; `shutdown_timeout` the drain
    budget of a worker; `timeout` kills and replaces a worker whose loop sent
    no heartbeat for that many seconds; `max_requests` (+ up to
    `max_requests_jitter`) replaces a worker after that many counted requests
    (see :func:`counted`); `cpu_affinity` pins worker i to the i-th allowed
    CPU (mod their number); `reuse_port` None = SO_REUSEPORT where available,
    False = one shared socket; `backoff_max` caps the restart delay;
    `stats_interval` logs the per-worker counts periodically (SIGUSR1 does it
    once); `drain_delay` how long a draining worker keeps serving accepted
    connections before closing the idle ones. See docs/workers.md.
    """
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s] [%(process)d] %(message)s"))
        log.addHandler(handler)
        if log.level == logging.NOTSET:
            log.setLevel(logging.INFO)
    sup = _Supervisor(serve, workers or os.cpu_count() or 1, bind, loop=loop,
                      shutdown_timeout=shutdown_timeout, timeout=timeout,
                      max_requests=max_requests, max_requests_jitter=max_requests_jitter,
                      cpu_affinity=cpu_affinity, reuse_port=reuse_port,
                      max_start_failures=max_start_failures, backoff_max=backoff_max,
                      stats_interval=stats_interval, drain_delay=drain_delay,
                      ready_timeout=ready_timeout, backlog=backlog)
    return sup.run()


# ---------------------------------------------------------------------------------
# python -m netpoll workers
# ---------------------------------------------------------------------------------

def add_arguments(p: Any) -> None:
    """The options of ``python -m netpoll workers`` (an argparse parser)."""
    p.add_argument("serve", help="module:function, an `async def serve(listener)`")
    p.add_argument("--bind", default="tcp:0.0.0.0:9000",
                   help="tcp:HOST:PORT, tcp6:[HOST]:PORT or unix:PATH (default tcp:0.0.0.0:9000)")
    p.add_argument("--workers", "-w", type=int, default=None,
                   help="worker processes (default: the number of CPUs)")
    p.add_argument("--uvloop", action="store_true", help="run the workers on uvloop")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds a worker may take to drain (default 30)")
    p.add_argument("--timeout", type=float, default=None,
                   help="kill and replace a worker whose loop is blocked this many seconds")
    p.add_argument("--max-requests", type=int, default=0,
                   help="replace a worker after this many counted requests (0: never)")
    p.add_argument("--max-requests-jitter", type=int, default=0,
                   help="add 0..N at random to --max-requests, per worker")
    p.add_argument("--cpu-affinity", action="store_true", help="pin worker i to CPU i mod ncpu")
    p.add_argument("--no-reuse-port", action="store_true",
                   help="one socket shared by all workers instead of SO_REUSEPORT")
    p.add_argument("--ready-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="a worker not ready this long after its start is killed (default 30)")
    p.add_argument("--stats", type=float, default=None, metavar="SECONDS",
                   help="log per-worker request/connection counts every SECONDS "
                        "(SIGUSR1 logs them once)")


def main_from_args(args: Any) -> int:
    """Run ``python -m netpoll workers`` with parsed `args`; returns the exit code."""
    logging.basicConfig(level=logging.INFO,
                        format="[%(asctime)s] [%(process)d] %(message)s")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())       # `module:serve` as with `python -m`
    try:
        return run_workers(args.serve, args.workers, args.bind,
                           loop="uvloop" if args.uvloop else "asyncio",
                           shutdown_timeout=args.shutdown_timeout, timeout=args.timeout,
                           max_requests=args.max_requests,
                           max_requests_jitter=args.max_requests_jitter,
                           cpu_affinity=args.cpu_affinity,
                           reuse_port=False if args.no_reuse_port else None,
                           stats_interval=args.stats, ready_timeout=args.ready_timeout)
    except WorkerStartError as exc:
        if exc.details:
            print(exc.details.rstrip(), file=sys.stderr)
        print(f"netpoll workers: {exc}", file=sys.stderr)
        return EXIT_START
    except (OSError, ValueError, TypeError) as exc:
        print(f"netpoll workers: {exc}", file=sys.stderr)
        return 2
