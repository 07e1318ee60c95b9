"""The benchmark harness: build the C tools, run servers against the load generator.

How one measurement goes (`measure`):

1. The server command starts pinned to one core (the *server core*) and is
   ready when it prints ``ready`` or its port accepts a connection.
2. ``loadgen`` (C, one epoll thread) runs pinned to another core.  It primes
   the server (one connection opened, used and closed: see loadgen.c, "Why
   prime"), connects, warms up, then writes ``measuring`` and later ``done``
   on stderr; at those two moments the harness samples the server's CPU time
   (utime/stime of the whole process tree, from ``/proc/<pid>/stat``), its
   page faults and the server core's line of ``/proc/stat``, and samples RSS
   (``VmRSS``) in between.  So CPU and memory
   cover exactly the window in which the requests were counted.
3. The server is stopped (SIGINT, then SIGKILL after a grace period).

Why user CPU per request: on loopback, ping-pong is kernel-bound (syscalls and
the TCP softirq are most of a core), so req/s hides the library's own cost.
The server's *user* CPU µs per request is the number the library controls.

`run_suite` repeats every case R times with the peers interleaved (A, B, C,
A, B, C, ...) so that drift of the machine hits every peer alike, and reports
medians.  A peer whose probe command fails (say netpoll's server is not built
yet) is skipped with a note, never silently.

The module uses only the standard library and imports nothing from netpoll,
so it also works from a source checkout whose extension is not built.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Case",
    "Column",
    "ServerSpec",
    "Tools",
    "BenchError",
    "HANDLER_STYLES",
    "ServerRejected",
    "add_run_arguments",
    "build_tools",
    "c_echo_spec",
    "check_available",
    "contention_note",
    "default_columns",
    "draw_chart",
    "find_compiler",
    "format_markdown",
    "format_table",
    "have_aiofastnet",
    "have_uvloop",
    "machine_info",
    "mark_busy",
    "markdown_report",
    "measure",
    "measure_refgen",
    "netpoll_echo_spec",
    "netpoll_rpc_spec",
    "peer_spec",
    "prime",
    "plot_chart",
    "report",
    "resolve_run_arguments",
    "select_peers",
    "run_suite",
    "write_json",
]

HERE = Path(__file__).resolve().parent
PEERS_PY = HERE / "peers.py"
SOURCES = {
    "loadgen": HERE / "loadgen.c",
    "c_echo": HERE / "c_echo.c",
    "refgen": HERE / "refgen.c",
}
CFLAGS = ("-O2", "-std=gnu99", "-Wall")
EXTRA_CFLAGS: dict[str, tuple[str, ...]] = {}  # per tool, e.g. {"refgen": ("-pthread",)}

Progress = Callable[[str], None]


class BenchError(RuntimeError):
    """A server or the load generator could not be run."""


class ServerRejected(BenchError):
    """The server exited with status 2 before it was ready: it does not accept its
    command line (an option it does not know yet).  Skipped, not a failure."""


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- building the C tools


@dataclass(frozen=True)
class Tools:
    """Paths of the compiled load generator, C echo server and reference generator."""

    loadgen: Path
    c_echo: Path
    refgen: Path


def find_compiler() -> str | None:
    """The C compiler to use: ``$CC``, else ``cc``, ``gcc`` or ``clang`` on PATH."""
    env = os.environ.get("CC")
    candidates = [env] if env else []
    candidates += ["cc", "gcc", "clang"]
    for name in candidates:
        path = shutil.which(name.split()[0]) if name else None
        if path:
            return path
    return None


def default_cache_dir() -> Path:
    """``$NETPOLL_BENCH_CACHE``, else ``$XDG_CACHE_HOME/netpoll-bench`` (``~/.cache``)."""
    if env := os.environ.get("NETPOLL_BENCH_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "netpoll-bench"


def _compiler_id(cc: str) -> str:
    try:
        out = subprocess.run(
            [cc, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    return out.splitlines()[0] if out else cc


def _build_one(cc: str, source: Path, name: str, cache: Path, cc_id: str) -> Path:
    try:
        text = source.read_bytes()
    except OSError as exc:
        raise BenchError(f"benchmark source {source} is missing from this install") from exc
    flags = (*CFLAGS, *EXTRA_CFLAGS.get(name, ()))
    digest = hashlib.sha256()
    digest.update(text)
    digest.update("\0".join((cc, cc_id, *flags)).encode())
    outdir = cache / digest.hexdigest()[:16]
    exe = outdir / name
    if exe.is_file() and os.access(exe, os.X_OK):
        return exe
    outdir.mkdir(parents=True, exist_ok=True)
    tmp = outdir / f".{name}.{os.getpid()}.tmp"
    cmd = [cc, *flags, "-o", str(tmp), str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise BenchError(f"compiling {source.name} failed:\n{' '.join(cmd)}\n{proc.stderr}")
    os.replace(tmp, exe)  # atomic: a concurrent build never sees a half-written file
    return exe


def build_tools(cache_dir: Path | None = None, cc: str | None = None) -> Tools:
    """Compile loadgen, c_echo and refgen into ``cache_dir/<source hash>/``, reusing old builds.

    Raises BenchError when no compiler is found or compilation fails.
    """
    cc = cc or find_compiler()
    if cc is None:
        raise BenchError("no C compiler found (set CC or install cc/gcc/clang)")
    cache = cache_dir or default_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        cache = Path(tempfile.gettempdir()) / f"netpoll-bench-{os.getuid()}"
    cc_id = _compiler_id(cc)
    return Tools(
        loadgen=_build_one(cc, SOURCES["loadgen"], "loadgen", cache, cc_id),
        c_echo=_build_one(cc, SOURCES["c_echo"], "c_echo", cache, cc_id),
        refgen=_build_one(cc, SOURCES["refgen"], "refgen", cache, cc_id),
    )


# ---------------------------------------------------------------- server specs


@dataclass(frozen=True)
class ServerSpec:
    """A server to benchmark: a name and a command with ``{host}``/``{port}`` fields.

    `probe`, if given, is a command that must exit 0 for the server to be
    usable (e.g. ``... --help``); if `probe_expect` is set, the probe's stdout
    must also contain it (e.g. an option the server must know).  `env` is added
    to the environment.  A server that exits with status 2 (argparse's "bad
    command line") before it is ready is skipped, not counted as a failure:
    that is how an older server says it does not know an option yet.
    """

    name: str
    argv: tuple[str, ...]
    probe: tuple[str, ...] | None = None
    env: Mapping[str, str] | None = None
    note: str = ""
    probe_expect: str = ""

    def command(self, host: str, port: int) -> list[str]:
        """The argv with ``{host}`` and ``{port}`` filled in."""
        return [a.format(host=host, port=port) for a in self.argv]


@dataclass(frozen=True)
class Case:
    """One load shape: message size, active connections, depth, idle connections, mode."""

    name: str
    size: int
    connections: int
    depth: int = 1
    idle: int = 0
    mode: str = "echo"  # "echo" or "frame" (4-byte big-endian length + payload)


def have_uvloop() -> bool:
    """True if uvloop can be imported by the current interpreter."""
    return importlib.util.find_spec("uvloop") is not None


def have_aiofastnet() -> bool:
    """True if aiofastnet can be imported by the current interpreter."""
    return importlib.util.find_spec("aiofastnet") is not None


def peer_spec(
    kind: str, uvloop: bool = False, name: str | None = None, aiofastnet: bool = False
) -> ServerSpec:
    """A baseline server from `peers.py` (run by path: imports nothing from netpoll).

    `aiofastnet` runs it on aiofastnet's transports over the chosen loop; the
    name is then ``aiofastnet-<loop>-<kind>`` and the spec is skipped with a
    note where aiofastnet is not installed.
    """
    loop = "uvloop" if uvloop else "asyncio"
    argv = [sys.executable, str(PEERS_PY), "--kind", kind, "--host", "{host}", "--port", "{port}"]
    if uvloop:
        argv.append("--uvloop")
    if not aiofastnet:
        return ServerSpec(name or f"{loop}-{kind}", tuple(argv))
    argv.append("--aiofastnet")
    return ServerSpec(
        name or f"aiofastnet-{loop}-{kind}",
        tuple(argv),
        probe=(sys.executable, "-c", "import aiofastnet"),
        note="aiofastnet is not installed (pip install 'netpoll[aiofastnet]')",
    )


def c_echo_spec(tools: Tools, name: str = "c-echo") -> ServerSpec:
    """The C epoll echo server (also a framed-RPC ceiling: a frame echoes as itself)."""
    return ServerSpec(name, (str(tools.c_echo), "-H", "{host}", "-p", "{port}"))


#: netpoll's handler styles: "async" (``async def on_request``, the default) and
#: "sync" (a plain ``def on_request`` reading ``conn.input``).  A server is told
#: the style with ``--handler STYLE``; the default style passes no flag, so it
#: also runs on servers that predate the option.
HANDLER_STYLES = ("async", "sync")


def _netpoll_name(uvloop: bool, handler: str) -> str:
    loop = "uvloop" if uvloop else "asyncio"
    return f"netpoll-{loop}" if handler == "async" else f"netpoll-{handler}-{loop}"


def _handler_args(handler: str) -> list[str]:
    if handler not in HANDLER_STYLES:
        raise ValueError(f"handler must be one of {HANDLER_STYLES}, not {handler!r}")
    return [] if handler == "async" else ["--handler", handler]


def netpoll_echo_spec(
    uvloop: bool = False, name: str | None = None, handler: str = "async"
) -> ServerSpec:
    """``python -m netpoll echo`` on the asyncio loop or on uvloop.

    `handler` "sync" adds ``--handler sync`` (named ``netpoll-sync-<loop>``);
    the spec is skipped with a note when the server does not offer the option.
    """
    argv = [sys.executable, "-m", "netpoll", "echo", "--host", "{host}", "--port", "{port}"]
    argv += _handler_args(handler)
    if uvloop:
        argv.append("--uvloop")
    return ServerSpec(
        name or _netpoll_name(uvloop, handler),
        tuple(argv),
        probe=(sys.executable, "-m", "netpoll", "echo", "--help"),
        probe_expect="--handler" if handler != "async" else "",
        note="`python -m netpoll echo` is not available (netpoll not built or installed?)"
        if handler == "async"
        else f"`python -m netpoll echo` has no `--handler {handler}` yet",
    )


def netpoll_rpc_spec(
    uvloop: bool = False, script: Path | None = None, name: str | None = None,
    handler: str = "async",
) -> ServerSpec:  # fmt: skip
    """netpoll's framed RPC server: `script` (examples/rpc_server.py) if given, else
    ``python -m netpoll rpc-server``; `handler` as for `netpoll_echo_spec`."""
    if script is not None:
        base = [sys.executable, str(script)]
        where = str(script)
    else:
        base = [sys.executable, "-m", "netpoll", "rpc-server"]
        where = "`python -m netpoll rpc-server`"
    argv = [*base, "--host", "{host}", "--port", "{port}", *_handler_args(handler)]
    if uvloop:
        argv.append("--uvloop")
    return ServerSpec(
        name or _netpoll_name(uvloop, handler),
        tuple(argv),
        probe=(*base, "--help"),
        probe_expect="--handler" if handler != "async" else "",
        note=f"{where} is not available (missing, or netpoll not built?)"
        if handler == "async"
        else f"{where} has no `--handler {handler}` yet",
    )


_probe_cache: dict[tuple[str, ...], bool] = {}


def _probe(spec: ServerSpec) -> bool:
    if spec.probe is None:
        return True
    key = (*spec.probe, "\0", spec.probe_expect)
    if key not in _probe_cache:
        env = {**os.environ, **(spec.env or {})}
        try:
            proc = subprocess.run(
                list(spec.probe), capture_output=True, timeout=60, env=env, check=False
            )
            ok = proc.returncode == 0
            if ok and spec.probe_expect:
                ok = spec.probe_expect.encode() in proc.stdout
            _probe_cache[key] = ok
        except (OSError, subprocess.TimeoutExpired):
            _probe_cache[key] = False
    return _probe_cache[key]


def check_available(
    specs: Sequence[ServerSpec], progress: Progress | None = _stderr
) -> list[ServerSpec]:
    """The specs whose probe passes; a note is printed for each one skipped."""
    usable = []
    for spec in specs:
        if _probe(spec):
            usable.append(spec)
        elif progress:
            progress(f"note: skipping {spec.name}: {spec.note or 'probe failed'}")
    return usable


# ---------------------------------------------------------------- /proc sampling

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(x) for x in f.read().split()]
        except FileNotFoundError:  # kernel without CONFIG_PROC_CHILDREN: scan /proc
            return _children_by_scan(pid)
        except OSError:
            pass
    return kids


def _children_by_scan(pid: int) -> list[int]:
    kids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            kids.append(int(name))
    return kids


def _tree(pid: int) -> list[int]:
    pids: list[int] = []
    todo = [pid]
    while todo and len(pids) < 4096:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def proc_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of `pid` and its descendants, all threads, incl. reaped
    children (cutime/cstime)."""
    user = system = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields[0] is field 3 (state); utime, stime, cutime, cstime are fields 14..17
        user += int(fields[11]) + int(fields[13])
        system += int(fields[12]) + int(fields[14])
    return user / _CLK_TCK, system / _CLK_TCK


def proc_faults(pid: int) -> int:
    """Minor page faults of `pid` and its descendants (minflt, all threads).

    A steady-state server takes next to none per request; two per request is
    the signature of a fresh CPython process mmap-ing its 256 KiB recv buffers
    (see `loadgen.c`, "Why prime")."""
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[7])  # field 10, minflt
    return total


def proc_rss_kb(pid: int) -> int:
    """Resident set size (VmRSS, KiB) of `pid` and its descendants."""
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
    return total


def core_times(cpu: int | None) -> list[int] | None:
    """The ``cpuN`` line of /proc/stat: user nice system idle iowait irq softirq steal."""
    if cpu is None:
        return None
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith(f"cpu{cpu} "):
                    return [int(x) for x in line.split()[1:9]]
    except OSError:
        pass
    return None


def cpu_pressure_us() -> int | None:
    """Cumulative µs that some runnable task waited for a CPU (PSI), if the kernel has it.

    Our server and loadgen each own a core, so a growing value during a run
    means other processes competed for those cores: the numbers are suspect.
    """
    try:
        with open("/proc/pressure/cpu") as f:
            for line in f:
                if line.startswith("some"):
                    return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class _RssSampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            self.peak = max(self.peak, proc_rss_kb(self.pid))
            if self._stop_event.wait(self.interval):
                return

    def finish(self) -> int:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, proc_rss_kb(self.pid))
        return self.peak


# ---------------------------------------------------------------- processes


def cpu_plan() -> tuple[int | None, int | None]:
    """(server core, client core): the first two cores we may run on, or None."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None, None
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


def _spawn_pinned(cpu: int | None, argv: list[str], **kw: Any) -> subprocess.Popen[str]:
    """Popen with the child pinned to `cpu` from its first instruction.

    The child inherits the affinity of the thread that forks it, so the calling
    thread is pinned for the duration of the fork (no preexec_fn, no taskset).
    """
    if cpu is None:
        return subprocess.Popen(argv, text=True, **kw)
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        return subprocess.Popen(argv, text=True, **kw)
    finally:
        os.sched_setaffinity(0, old)


def free_port(host: str) -> int:
    """A TCP port that is free on `host` right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_accepts(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        try:
            s.connect((host, port))
            return True
        except OSError:
            return False


def prime(host: str, port: int, request: bytes, timeout: float = 10.0) -> None:
    """One connection: send `request`, read one reply (or until the server closes), close.

    Gets a fresh server into the state a long-running one is in, as loadgen's
    ``-k`` does (see loadgen.c, "Why prime"): for drivers other than loadgen
    (redis-benchmark, wrk) that do not close a connection before measuring.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        s.sendall(request)
        with contextlib.suppress(OSError):
            s.recv(65536)


class ServerProcess:
    """A running server; use as a context manager so it is always stopped.

    Its stdout and stderr go to temporary files, not pipes: a chatty server
    can never block on a full pipe, and no reader thread is needed.
    """

    def __init__(
        self, spec: ServerSpec, host: str, port: int, cpu: int | None, ready_timeout: float = 30.0
    ) -> None:
        self.spec, self.host, self.port = spec, host, port
        self._out = tempfile.TemporaryFile()
        self._err = tempfile.TemporaryFile()
        env = {**os.environ, **(spec.env or {})}
        try:
            self.proc = _spawn_pinned(
                cpu,
                spec.command(host, port),
                stdin=subprocess.DEVNULL,
                stdout=self._out,
                stderr=self._err,
                env=env,
            )
        except OSError as exc:
            self._out.close()
            self._err.close()
            raise BenchError(f"cannot start {spec.name}: {exc}") from exc
        try:
            self._wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid

    def _said_ready(self) -> bool:
        self._out.seek(0)
        head = self._out.read(65536).decode(errors="replace")
        return any(line.strip().lower().startswith("ready") for line in head.splitlines())

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        polls = 0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                error = ServerRejected if self.proc.returncode == 2 else BenchError
                raise error(
                    f"{self.spec.name} exited with {self.proc.returncode}"
                    f" before it was ready:\n{self.stderr_tail()}"
                )
            if self._said_ready():
                return
            polls += 1
            if polls % 5 == 0 and _port_accepts(self.host, self.port):
                return
            time.sleep(0.02)
        raise BenchError(f"{self.spec.name} not ready after {timeout:.0f} s:\n{self.stderr_tail()}")

    def stderr_tail(self, limit: int = 2000) -> str:
        """The last `limit` characters the server wrote to stderr."""
        with contextlib.suppress(OSError, ValueError):
            self._err.seek(0)
            return self._err.read().decode(errors="replace")[-limit:]
        return ""

    def alive(self) -> bool:
        """True while the server process runs."""
        return self.proc.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        """SIGINT, then SIGKILL after `grace` seconds; idempotent."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()
        self._err.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_loadgen(
    tools: Tools,
    host: str,
    port: int,
    case: Case,
    duration: float,
    warmup: float,
    server_pid: int | None = None,
    server_cpu: int | None = None,
    client_cpu: int | None = None,
    connect_timeout: float = 20.0,
    verify: bool = False,
    extra_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Run loadgen once; if `server_pid` is given, add the server's CPU/RSS over the window.

    `verify` makes loadgen check every response byte (a wrong byte is an error);
    `extra_args` are passed to loadgen as they are.
    """
    argv = [
        str(tools.loadgen), "-H", host, "-p", str(port),
        "-c", str(case.connections), "-s", str(case.size), "-d", str(case.depth),
        "-t", str(duration), "-w", str(warmup), "-i", str(case.idle), "-m", case.mode,
        "-T", str(connect_timeout),
    ]  # fmt: skip
    if verify:
        argv.append("-V")
    argv += extra_args
    proc = _spawn_pinned(client_cpu, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    limit = connect_timeout + warmup + duration + 30
    killer = threading.Timer(limit, proc.kill)
    killer.start()
    other: list[str] = []
    t0 = t1 = 0.0
    cpu0 = cpu1 = (0.0, 0.0)
    faults0 = faults1 = 0
    core0 = core1 = None
    psi0 = psi1 = None
    sampler: _RssSampler | None = None
    try:
        assert proc.stderr is not None and proc.stdout is not None
        for line in proc.stderr:
            word = line.strip()
            if word == "measuring" and server_pid is not None:
                t0, cpu0, core0 = time.monotonic(), proc_cpu(server_pid), core_times(server_cpu)
                psi0, faults0 = cpu_pressure_us(), proc_faults(server_pid)
                sampler = _RssSampler(server_pid)
                sampler.start()
            elif word == "done" and server_pid is not None:
                t1, cpu1, core1 = time.monotonic(), proc_cpu(server_pid), core_times(server_cpu)
                psi1, faults1 = cpu_pressure_us(), proc_faults(server_pid)
            elif word:
                other.append(word)
        stdout = proc.stdout.read()
        proc.wait()
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
        peak_rss = sampler.finish() if sampler else 0
    try:
        result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise BenchError(
            f"loadgen failed (exit {proc.returncode}): {' '.join(other)[-1000:]}"
        ) from exc
    if server_pid is not None and t1 > t0:
        window = t1 - t0
        user, system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        rps = result["rps"] or float("nan")
        result.update(
            server_user_pct=100 * user / window,
            server_sys_pct=100 * system / window,
            server_cpu_pct=100 * (user + system) / window,
            # CPU rate / request rate: robust to the two clocks' window edges.
            user_us_per_req=1e6 * user / window / rps,
            cpu_us_per_req=1e6 * (user + system) / window / rps,
            rss_mb=peak_rss / 1024,
            server_faults_per_req=(faults1 - faults0) / window / rps,
        )
        if psi0 is not None and psi1 is not None:
            result["cpu_pressure_pct"] = 100 * (psi1 - psi0) / 1e6 / window
        if core0 and core1:
            d = [b - a for a, b in zip(core0, core1, strict=True)]
            total = sum(d) or 1
            result.update(
                core_user_pct=100 * (d[0] + d[1]) / total,
                core_sys_pct=100 * (d[2] + d[5] + d[6]) / total,
                core_softirq_pct=100 * d[6] / total,
                core_idle_pct=100 * (d[3] + d[4]) / total,
                core_steal_pct=100 * d[7] / total,
                core_user_us_per_req=1e6 * (d[0] + d[1]) / _CLK_TCK / window / rps,
            )
    if other:
        result["loadgen_stderr"] = " | ".join(other)[-500:]
    return result


def measure(
    spec: ServerSpec,
    case: Case,
    tools: Tools,
    duration: float,
    warmup: float,
    host: str = "127.0.0.1",
    cpus: tuple[int | None, int | None] | None = None,
    verify: bool = False,
    loadgen_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Start `spec`, drive it with `case` for `duration` s after `warmup` s, stop it."""
    server_cpu, client_cpu = cpus if cpus is not None else cpu_plan()
    port = free_port(host)
    with ServerProcess(spec, host, port, server_cpu) as server:
        result = run_loadgen(
            tools, host, port, case, duration, warmup,
            server_pid=server.pid, server_cpu=server_cpu, client_cpu=client_cpu, verify=verify,
            extra_args=loadgen_args,
        )  # fmt: skip
        if not server.alive():
            result["errors"] = max(1, int(result.get("errors", 0)))
            result["server_died"] = server.stderr_tail(500)
    return result


def run_refgen(
    tools: Tools,
    host: str,
    port: int,
    case: Case,
    duration: float,
    warmup: float,
    client_cpu: int | None = None,
) -> dict[str, Any]:
    """Run the reference generator (refgen.c) once: a cross-check of loadgen.

    It shares no code with loadgen and makes the plainest choices (blocking
    sockets, one poll() thread, one request per connection at a time, a
    warm-up round whose connections close), so a server that loadgen
    measures differently from refgen points at loadgen.  Ping-pong only (`case.depth` must be 1), no idle
    connections, no latencies: requests, seconds, rps, errors.
    """
    if case.depth != 1 or case.idle:
        raise ValueError("refgen drives ping-pong connections only (depth 1, no idle)")
    argv = [
        str(tools.refgen), "-H", host, "-p", str(port), "-c", str(case.connections),
        "-s", str(case.size), "-m", case.mode, "-t", str(duration), "-w", str(warmup),
    ]  # fmt: skip
    try:
        proc = _spawn_pinned(client_cpu, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=warmup + duration + 60)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.communicate()
        raise BenchError("refgen did not finish in time") from exc
    try:
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise BenchError(f"refgen failed (exit {proc.returncode}): {err[-1000:]}") from exc
    return result


def measure_refgen(
    spec: ServerSpec,
    case: Case,
    tools: Tools,
    duration: float,
    warmup: float,
    host: str = "127.0.0.1",
    cpus: tuple[int | None, int | None] | None = None,
) -> dict[str, Any]:
    """`measure`, but driven by refgen instead of loadgen: throughput, and the
    server's CPU% over refgen's whole run (connects and warm-up included)."""
    server_cpu, client_cpu = cpus if cpus is not None else cpu_plan()
    port = free_port(host)
    with ServerProcess(spec, host, port, server_cpu) as server:
        t0, cpu0 = time.monotonic(), proc_cpu(server.pid)
        result = run_refgen(tools, host, port, case, duration, warmup, client_cpu)
        t1, cpu1 = time.monotonic(), proc_cpu(server.pid)
        # Over refgen's whole life (both rounds): ~100 means the server had its core busy.
        result["server_cpu_pct"] = 100 * (sum(cpu1) - sum(cpu0)) / max(t1 - t0, 1e-9)
        if not server.alive():
            result["errors"] = max(1, int(result.get("errors", 0)))
    return result


# ---------------------------------------------------------------- suites

_MEDIAN_KEYS = (
    "rps", "p50_us", "p99_us", "p999_us", "mean_us", "user_us_per_req", "cpu_us_per_req",
    "server_cpu_pct", "server_user_pct", "rss_mb", "client_cpu_pct", "core_user_pct",
    "core_sys_pct", "core_softirq_pct", "core_user_us_per_req", "cpu_pressure_pct",
    "server_faults_per_req",
)  # fmt: skip

#: Runs with more CPU pressure than this (% of the window) had competition.
BUSY_PRESSURE_PCT = 5.0


@dataclass
class SuiteResult:
    """Medians per (case, peer), every raw run, and the peers that were skipped."""

    rows: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    skipped: list[str] = field(default_factory=list)


def run_suite(
    specs: Sequence[ServerSpec],
    cases: Sequence[Case],
    tools: Tools,
    repeat: int = 3,
    duration: float = 3.0,
    warmup: float = 1.0,
    host: str = "127.0.0.1",
    refs: Mapping[str, str] | None = None,
    progress: Progress | None = _stderr,
    loadgen_args: Sequence[str] = (),
) -> SuiteResult:
    """Measure every spec on every case `repeat` times, peers interleaved; medians.

    `refs` maps a ratio label to a peer name, e.g. ``{"uvloop": "uvloop-protocol",
    "C": "c-echo"}``: each row gets ``rps_vs_<label>`` and ``ucpu_vs_<label>``.
    Unavailable specs (failed probe) are skipped with a note.
    """
    usable = check_available(specs, progress)
    skipped = [s.name for s in specs if s not in usable]
    cpus = cpu_plan()
    if progress and cpus == (None, None):
        progress("note: fewer than 2 usable cores: server and loadgen are not pinned")
    runs: list[dict[str, Any]] = []
    rejected: list[str] = []
    with pinned_to(cpus[1]):
        _run_all(
            usable, cases, tools, repeat, duration, warmup, host, cpus, runs, progress,
            loadgen_args, rejected,
        )  # fmt: skip
    skipped += rejected
    rows = summarize(runs, [c.name for c in cases], [s.name for s in usable])
    if refs:
        add_ratios(rows, refs)
    return SuiteResult(rows=rows, runs=runs, skipped=skipped)


def _run_all(
    usable: Sequence[ServerSpec],
    cases: Sequence[Case],
    tools: Tools,
    repeat: int,
    duration: float,
    warmup: float,
    host: str,
    cpus: tuple[int | None, int | None],
    runs: list[dict[str, Any]],
    progress: Progress | None,
    loadgen_args: Sequence[str],
    rejected: list[str],
) -> None:
    total = len(cases) * repeat * len(usable)
    n = 0
    started = time.monotonic()
    for case in cases:
        for r in range(repeat):
            for spec in usable:  # interleaved: A, B, C, A, B, C, ...
                n += 1
                if spec.name in rejected:
                    continue
                label = f"[{n}/{total}] {case.name:<22} {spec.name:<22} run {r + 1}/{repeat}"
                try:
                    res = measure(
                        spec, case, tools, duration, warmup, host, cpus,
                        loadgen_args=loadgen_args,
                    )  # fmt: skip
                    msg = (
                        f"{res['rps']:>11,.0f} req/s  p99 {res['p99_us']:>8,.0f} us"
                        f"  user {res.get('user_us_per_req', float('nan')):5.2f} us/req"
                        f"  srv {res.get('server_cpu_pct', float('nan')):3.0f}%"
                        f"  lg {res.get('client_cpu_pct', float('nan')):3.0f}%"
                    )
                    if res.get("errors"):
                        msg += f"  ERRORS {res['errors']}"
                    if (res.get("cpu_pressure_pct") or 0) > BUSY_PRESSURE_PCT:
                        msg += f"  BUSY MACHINE (cpu pressure {res['cpu_pressure_pct']:.0f}%)"
                except ServerRejected as exc:
                    rejected.append(spec.name)
                    if progress:
                        first = (exc.args[0].splitlines() or [""])[0]
                        progress(
                            f"note: skipping {spec.name}: the server rejected its command"
                            f" line ({first})"
                        )
                    continue
                except BenchError as exc:
                    res = {"failed": str(exc), "errors": 1}
                    msg = f"FAILED: {str(exc).splitlines()[0]}"
                res.update(case=case.name, peer=spec.name, repeat=r, **_case_fields(case))
                runs.append(res)
                if progress:
                    progress(f"{label}  {msg}  ({time.monotonic() - started:.0f} s)")


def _case_fields(case: Case) -> dict[str, Any]:
    d = asdict(case)
    d.pop("name")
    return d


def summarize(
    runs: Sequence[dict[str, Any]], case_order: Sequence[str], peer_order: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per (case, peer): medians of the successful runs, errors summed."""
    rows = []
    for case in case_order:
        for peer in peer_order:
            group = [r for r in runs if r["case"] == case and r["peer"] == peer]
            if not group:
                continue
            ok = [r for r in group if "failed" not in r]
            row: dict[str, Any] = {"case": case, "peer": peer, "runs": len(ok)}
            for k in ("size", "connections", "depth", "idle", "mode"):
                row[k] = group[0].get(k)
            row["errors"] = sum(int(r.get("errors", 0)) for r in group)
            for key in _MEDIAN_KEYS:
                vals = [r[key] for r in ok if isinstance(r.get(key), int | float)]
                row[key] = statistics.median(vals) if vals else None
            if len(ok) < len(group):
                row["failed"] = len(group) - len(ok)
            mark_busy(row, ok)
            rows.append(row)
    return rows


def mark_busy(row: dict[str, Any], runs: Sequence[Mapping[str, Any]]) -> None:
    """Set ``busy_runs`` (runs of `row` whose CPU pressure exceeded BUSY_PRESSURE_PCT)
    and ``max_cpu_pressure_pct``: `format_table` and the chart mark such rows."""
    pressures = [float(r.get("cpu_pressure_pct") or 0) for r in runs]
    row["busy_runs"] = sum(p > BUSY_PRESSURE_PCT for p in pressures)
    row["max_cpu_pressure_pct"] = max(pressures, default=None)


def add_ratios(rows: list[dict[str, Any]], refs: Mapping[str, str]) -> None:
    """Add ``rps_vs_<label>`` (throughput ratio) and ``ucpu_vs_<label>`` (user CPU per
    request ratio, < 1 is leaner) against the reference peer of the same case."""
    by_key = {(r["case"], r["peer"]): r for r in rows}
    for row in rows:
        for label, ref_peer in refs.items():
            ref = by_key.get((row["case"], ref_peer))
            row[f"rps_vs_{label}"] = _ratio(row.get("rps"), ref and ref.get("rps"))
            row[f"ucpu_vs_{label}"] = _ratio(
                row.get("user_us_per_req"), ref and ref.get("user_us_per_req")
            )


def _ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, int | float) and isinstance(b, int | float) and b:
        return float(a) / float(b)
    return None


# ---------------------------------------------------------------- output


@dataclass(frozen=True)
class Column:
    """A table column: header, row key, and a format spec for numbers."""

    header: str
    key: str
    fmt: str = ""


def default_columns(refs: Sequence[str] = ()) -> list[Column]:
    """case, peer, req/s, latency, CPU, RSS, errors, plus one ratio column per ref."""
    cols = [
        Column("case", "case"),
        Column("peer", "peer"),
        Column("req/s", "rps", ",.0f"),
        Column("p50 us", "p50_us", ",.0f"),
        Column("p99 us", "p99_us", ",.0f"),
        Column("user us/req", "user_us_per_req", ".2f"),
        Column("cpu us/req", "cpu_us_per_req", ".2f"),
        Column("srv cpu%", "server_cpu_pct", ".0f"),
        Column("lg cpu%", "client_cpu_pct", ".0f"),
        Column("RSS MiB", "rss_mb", ".1f"),
    ]
    for ref in refs:
        cols.append(Column(f"x {ref}", f"rps_vs_{ref}", ".2f"))
    cols.append(Column("errors", "errors", "d"))
    return cols


def _cell(row: Mapping[str, Any], col: Column) -> str:
    v = row.get(col.key)
    if v is None:
        return "-"
    if isinstance(v, int | float) and col.fmt:
        try:
            return format(v, col.fmt)
        except ValueError:
            return str(v)
    return str(v)


BUSY_COLUMN = Column("busy", "busy")


def _busy_cell(row: Mapping[str, Any]) -> str | None:
    n = row.get("busy_runs") or 0
    if not n:
        return None
    return f"! {n}/{row.get('runs', n)} runs"


def _with_busy(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]
) -> tuple[list[Mapping[str, Any]], list[Column]]:
    """Add a "busy" column marking rows whose runs had CPU competition, if any had."""
    if not any(r.get("busy_runs") for r in rows) or any(c.key == "busy" for c in columns):
        return list(rows), list(columns)
    marked: list[Mapping[str, Any]] = [{**r, "busy": _busy_cell(r)} for r in rows]
    return marked, [*columns, BUSY_COLUMN]


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """A plain-text table with aligned columns (text left, numbers right).

    Rows whose runs had other processes competing for the CPUs get a "busy"
    column ("! 2/3 runs"): their numbers are suspect.
    """
    rows, columns = _with_busy(rows, columns)
    cells = [[_cell(r, c) for c in columns] for r in rows]
    widths = [max([len(c.header)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    numeric = [bool(c.fmt) or c is BUSY_COLUMN for c in columns]  # right-aligned

    def line(vals: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(vals, widths, numeric, strict=True)
        ).rstrip()

    out = [line([c.header for c in columns]), line(["-" * w for w in widths])]
    prev_case = None
    for r, vals in zip(rows, cells, strict=True):
        if prev_case is not None and r.get("case") != prev_case:
            out.append("")
        prev_case = r.get("case")
        out.append(line(vals))
    return "\n".join(out)


def format_markdown(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """The same table as GitHub-flavoured markdown (with the same "busy" marks)."""
    rows, columns = _with_busy(rows, columns)
    head = "| " + " | ".join(c.header for c in columns) + " |"
    sep = "|" + "|".join("---:" if c.fmt else "---" for c in columns) + "|"
    body = ["| " + " | ".join(_cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def markdown_report(
    result: SuiteResult, columns: Sequence[Column], meta: Mapping[str, Any], title: str
) -> str:
    """Title, machine, table and notes as one markdown document."""
    pin = meta.get("pinning") or (None, None)
    lines = [
        f"# {title}",
        "",
        f"- machine: {meta.get('cpu')}, {meta.get('cores')} cores, kernel {meta.get('kernel')}",
        f"- Python {meta.get('python')}, uvloop {meta.get('uvloop')}, {meta.get('time')}",
        f"- server pinned to cpu {pin[0]}, C load generator to cpu {pin[1]}",
        "- user us/req: the server's user-space CPU per request; cpu us/req adds kernel time;"
        " `x <peer>`: req/s ratio to that peer",
        "",
        format_markdown(result.rows, columns),
        "",
    ]
    lines += [f"- {name} was skipped (not available)" for name in result.skipped]
    if note := contention_note(result.runs):
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def machine_info() -> dict[str, Any]:
    """Where the numbers come from: CPU model, cores, kernel, Python, uvloop."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    uv = None
    if have_uvloop():
        with contextlib.suppress(Exception):
            uv = str(importlib.import_module("uvloop").__version__)
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "pinning": cpu_plan(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": uv,
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def write_json(path: str | os.PathLike[str], result: SuiteResult, meta: Mapping[str, Any]) -> None:
    """Write medians, raw runs, skipped peers and `meta` as JSON."""
    payload = {
        "meta": dict(meta),
        "results": result.rows,
        "runs": result.runs,
        "skipped": result.skipped,
    }
    Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n")


def plot_chart(
    rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], title: str = ""
) -> bool:
    """Grouped bars of req/s and user CPU µs/request per case; False if no matplotlib.

    The legend sits below the plots, never over a bar.  Bars of rows whose runs
    had CPU competition are hatched, and the figure says so under the title.
    """
    try:  # optional dependency, imported by name so type checkers need no stubs
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return False
    fig = draw_chart(rows, title)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def draw_chart(rows: Sequence[Mapping[str, Any]], title: str = "") -> Any:
    """The matplotlib Figure `plot_chart` saves (matplotlib must be importable)."""
    plt = importlib.import_module("matplotlib.pyplot")
    cases = list(dict.fromkeys(r["case"] for r in rows))
    # "asyncio-rpc-protocol" and "asyncio-protocol" are one kind of peer: one colour.
    labels = list(dict.fromkeys(_chart_label(r["peer"]) for r in rows))
    colours = {lab: f"C{i % 10}" for i, lab in enumerate(labels)}
    per_case = {c: [r for r in rows if r["case"] == c] for c in cases}
    most = max(len(v) for v in per_case.values())
    legend_rows = -(-(len(labels) + 1) // 4)
    fig, axes = plt.subplots(
        2,
        1,
        figsize=(max(8.0, 0.45 * len(cases) * most + 2), 8 + 0.3 * legend_rows),
        layout="constrained",
    )
    width = 0.8 / most
    for ax, key, ylabel in (
        (axes[0], "rps", "req/s (median)"),
        (axes[1], "user_us_per_req", "server user CPU µs / request"),
    ):
        for j, case in enumerate(cases):
            group = per_case[case]
            for i, row in enumerate(group):
                lab = _chart_label(row["peer"])
                x = j - 0.4 + width * (i + 0.5) + (most - len(group)) * width / 2
                ax.bar(
                    x,
                    row.get(key) or 0,
                    width,
                    color=colours[lab],
                    hatch="//" if row.get("busy_runs") else None,
                    edgecolor="black" if row.get("busy_runs") else None,
                )
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(cases, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.08)
    patch = importlib.import_module("matplotlib.patches").Patch
    handles = [patch(facecolor=colours[lab], label=lab) for lab in labels]
    busy = [r for r in rows if r.get("busy_runs")]
    if busy:
        handles.append(patch(facecolor="white", edgecolor="black", hatch="//", label="disturbed"))
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=min(4, len(handles)),
        fontsize=8,
        frameon=False,
    )
    heading = title
    if busy:
        worst = max(float(r.get("max_cpu_pressure_pct") or 0) for r in busy)
        note = (
            f"disturbed: hatched bars ({len(busy)} of {len(rows)}) had runs with other "
            f"processes competing for the CPUs (cpu pressure up to {worst:.0f}%)"
        )
        heading = f"{title}\n{note}" if title else note
    if heading:  # wrapped to the figure's width (~11 characters an inch at this size)
        width = int(fig.get_figwidth() * 11)
        heading = "\n".join(textwrap.fill(line, width) for line in heading.splitlines())
        fig.suptitle(heading, fontsize=10)
    return fig


def _chart_label(peer: str) -> str:
    return peer.replace("-rpc-", "-")


def contention_note(runs: Sequence[Mapping[str, Any]]) -> str | None:
    """A warning if other processes competed for the CPUs during some runs."""
    busy = [r for r in runs if (r.get("cpu_pressure_pct") or 0) > BUSY_PRESSURE_PCT]
    if not busy:
        return None
    worst = max(float(r["cpu_pressure_pct"]) for r in busy)
    return (
        f"warning: {len(busy)} of {len(runs)} runs had other processes competing for the "
        f"CPUs (cpu pressure up to {worst:.0f}% of the window; rows marked in the busy "
        f"column); rerun on a quiet machine"
    )


def report(
    result: SuiteResult,
    columns: Sequence[Column],
    args: argparse.Namespace,
    meta: Mapping[str, Any],
    title: str = "",
    out: Progress = print,
) -> None:
    """Print the table and notes; write ``args.json`` / ``args.chart`` if set."""
    if title:
        out(title)
    out(format_table(result.rows, columns))
    for name in result.skipped:
        out(f"note: {name} was skipped (not available)")
    if note := contention_note(result.runs):
        out(note)
    if any(r.get("errors") for r in result.rows):
        out("warning: some runs had errors (see the errors column / JSON)")
    if getattr(args, "json", None):
        write_json(args.json, result, meta)
        out(f"wrote {args.json}")
    if getattr(args, "chart", None):
        if plot_chart(result.rows, args.chart, title):
            out(f"wrote {args.chart}")
        else:
            out("note: --chart needs matplotlib (pip install matplotlib); no chart written")


# ---------------------------------------------------------------- CLI helpers


def add_run_arguments(
    parser: argparse.ArgumentParser,
    normal: tuple[float, float, int],
    quick: tuple[float, float, int] | None = None,
    quick_help: str = "",
) -> None:
    """Options shared by every benchmark front end; finish with `resolve_run_arguments`.

    `normal` and `quick` are (duration, warm-up, repeat) defaults; `--quick`
    picks the second set (explicit options still win).
    """
    d, w, r = normal
    g = parser.add_argument_group("measurement")
    g.add_argument(
        "--duration",
        type=float,
        metavar="SEC",
        help=f"measured seconds per run (default {d:g})",
    )
    g.add_argument(
        "--warmup",
        type=float,
        metavar="SEC",
        help=f"warm-up seconds per run before measuring (default {w:g})",
    )
    g.add_argument(
        "--repeat",
        type=int,
        metavar="R",
        help=f"runs per case and peer, peers interleaved (A,B,C,A,B,C,...); the table "
        f"shows medians (default {r})",
    )
    if quick is not None:
        g.add_argument(
            "--quick",
            action="store_true",
            help=quick_help
            or f"a short smoke run: duration {quick[0]:g}, warm-up {quick[1]:g}, repeat {quick[2]}",
        )
    g.add_argument(
        "--spin",
        type=float,
        default=0.0,
        metavar="USEC",
        help="let loadgen busy-poll for up to USEC microseconds before sleeping (default 0:"
        " it sleeps in epoll_wait, so the server pays to wake it, as with real clients)",
    )
    g.add_argument(
        "--host",
        default="127.0.0.1",
        help="loopback address for servers and loadgen: 127.0.0.1 (default) or ::1",
    )
    g.add_argument(
        "--peers",
        metavar="NAME,...",
        help="run only these peers (comma-separated names as shown in the table)",
    )
    o = parser.add_argument_group("output")
    o.add_argument("--json", metavar="PATH", help="also write medians and raw runs as JSON")
    o.add_argument(
        "--chart",
        metavar="PATH",
        help="also draw a PNG bar chart (needs matplotlib; skipped with a note if absent)",
    )
    o.add_argument(
        "--cache-dir",
        metavar="DIR",
        type=Path,
        help="where the compiled C tools are cached (default ~/.cache/netpoll-bench, "
        "or $NETPOLL_BENCH_CACHE)",
    )
    parser.set_defaults(_run_defaults=(normal, quick))


def resolve_run_arguments(args: argparse.Namespace) -> None:
    """Fill --duration/--warmup/--repeat from the normal or the --quick defaults."""
    normal, quick = args._run_defaults
    d, w, r = quick if getattr(args, "quick", False) and quick else normal
    if args.duration is None:
        args.duration = d
    if args.warmup is None:
        args.warmup = w
    if args.repeat is None:
        args.repeat = r
    if args.duration <= 0 or args.warmup < 0 or args.repeat < 1 or args.spin < 0:
        raise SystemExit("--duration must be > 0, --warmup and --spin >= 0, --repeat >= 1")
    args.loadgen_args = ["-b", f"{args.spin:g}"] if args.spin else []


def select_peers(specs: Sequence[ServerSpec], names: str | None) -> list[ServerSpec]:
    """Filter `specs` by a comma-separated list of names; unknown names are an error."""
    if not names:
        return list(specs)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {s.name for s in specs}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(
            f"unknown peer(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return [s for s in specs if s.name in wanted]


@contextlib.contextmanager
def pinned_to(cpu: int | None) -> Iterator[None]:
    """Keep the harness itself (and threads it starts) off the server core."""
    if cpu is None:
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def int_list(text: str) -> list[int]:
    """argparse type: comma-separated positive integers ("64,1024")."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers: {text!r}")
    return values


def size_name(n: int) -> str:
    """64 -> "64B", 1024 -> "1KiB"."""
    return f"{n // 1024}KiB" if n >= 1024 and n % 1024 == 0 else f"{n}B"
