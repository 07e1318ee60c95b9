"""The compiled core under AddressSanitizer + UndefinedBehaviorSanitizer, in CI.

The extensions are rebuilt with ``NETPOLL_SANITIZE=1 NETPOLL_DEBUG=1`` in a scratch
copy of ``src/``, and a subprocess runs the memory-relevant part of this suite on
that build: LinkBuffer (API, state machine, memory safety), Connection, EventLoop,
the faults at CI size, and the randomized fuzz harnesses. The interpreter is not
instrumented, so it runs with ``PYTHONMALLOC=malloc`` and the ASan runtime preloaded;
any ASan or UBSan report aborts the subprocess and fails the test. The debug counters
of that build also make conftest check, after every test, that no chunk, node or
connection is left alive.

This takes a few minutes, so it runs when ``NETPOLL_SANITIZE_TESTS=1`` (``.ci/run``
sets it) or, without that variable, when ``CI=true``; otherwise it is skipped. The whole suite on the
sanitizer build: ``scripts/sanitize.sh`` (docs/reliability.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_SWITCH = os.environ.get("NETPOLL_SANITIZE_TESTS")
# NETPOLL_SANITIZE_TESTS decides when set (.ci/run sets it to 1, and to 0 for its second
# Python); without it, CI=true switches the pass on.
ENABLED = _SWITCH == "1" if _SWITCH is not None else os.environ.get("CI") == "true"
SUBSET = [
    "tests/test_linkbuffer.py",
    "tests/test_linkbuffer_state.py",
    "tests/test_memory_safety.py",
    "tests/test_connection.py",
    "tests/test_eventloop.py",
    "tests/test_faults.py",
    "tests/test_reactor_safety.py",
    "tests/test_plain_handlers.py",
    "tests/test_tls.py",
    "tests/test_transports.py",
    "tests/test_transport_core.py",
    "tests/test_streams_core.py",
    "tests/test_waiter.py",
    "tests/test_loop_sched.py",
    "tests/test_uring_accept.py",
    "tests/test_fuzz.py::test_linkbuffer_fuzz_random",
    "tests/test_fuzz.py::test_parser_fuzz_random",
]

pytestmark = [
    pytest.mark.timeout(1800),
    pytest.mark.skipif(
        not ENABLED, reason="about 3 minutes: runs with CI=true or NETPOLL_SANITIZE_TESTS=1"
    ),
    pytest.mark.skipif(
        "libasan" in os.environ.get("LD_PRELOAD", ""), reason="already under the sanitizers"
    ),
]


def runtime(name: str) -> str:
    """The path of gcc's sanitizer runtime, e.g. libasan.so."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    path = subprocess.run(
        [gcc, f"-print-file-name={name}"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if not os.path.isabs(path) or not os.path.exists(path):
        pytest.skip(f"gcc has no {name}")
    return path


@pytest.fixture(scope="module")
def asan_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        LD_PRELOAD=f"{runtime('libasan.so')} {runtime('libubsan.so')}",
        PYTHONMALLOC="malloc",
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
    )
    return env


def prebuilt(directory: str) -> Path | None:
    """The build .ci/run made in the background while the suite ran (NETPOLL_ASAN_PREBUILT):
    waits for it (bounded); None if it failed, so the test builds its own."""
    rc_file = Path(directory + ".rc")
    deadline = time.monotonic() + 1200
    while not rc_file.exists():
        if time.monotonic() > deadline:
            return None
        time.sleep(1)
    if rc_file.read_text().strip() != "0":
        log = Path(directory + ".log")
        print("the background ASan build failed; building here:\n"
              + (log.read_text()[-2000:] if log.exists() else ""), file=sys.stderr)
        return None
    return Path(directory) / "src"


@pytest.fixture(scope="module")
def asan_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch copy of the sources with the extensions built under ASan + UBSan."""
    pre = os.environ.get("NETPOLL_ASAN_PREBUILT")
    if pre:
        found = prebuilt(pre)
        if found is not None:
            return found
    work = tmp_path_factory.mktemp("asan-build")
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy(ROOT / name, work / name)
    shutil.copytree(ROOT / "src", work / "src", ignore=shutil.ignore_patterns("*.so", "*.c"))
    env = dict(os.environ, NETPOLL_SANITIZE="1", NETPOLL_DEBUG="1")
    proc = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace", "--parallel", "2"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return work / "src"


def python(env: dict[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_sanitizer_runtime_reports_a_heap_overflow(asan_env):
    """The preloaded runtime is live: an out-of-bounds read in this process is caught."""
    code = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.malloc.restype = ctypes.c_void_p\n"
        "p = libc.malloc(16)\n"
        "ctypes.string_at(p, 64)\n"
    )
    proc = python(asan_env, "-c", code, timeout=60)
    assert proc.returncode != 0
    assert "AddressSanitizer: heap-buffer-overflow" in proc.stderr


def test_suite_subset_under_asan_and_ubsan(asan_build, asan_env):
    env = dict(asan_env, PYTHONPATH=str(asan_build))
    probe = python(
        env,
        "-c",
        "import netpoll._buffer as b, netpoll._core as c;"
        "print(b.__file__, c.__file__, b.NETPOLL_DEBUG_BUILD)",
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    buffer_so, core_so, debug = probe.stdout.split()
    assert buffer_so.startswith(str(asan_build)) and core_so.startswith(str(asan_build))
    assert debug == "True"

    proc = python(
        env,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        "-o",
        "timeout=120",
        *SUBSET,
        timeout=1700,
    )
    out = proc.stdout + proc.stderr
    assert "AddressSanitizer" not in out and "runtime error:" not in out, out[-6000:]
    assert proc.returncode == 0, out[-6000:]
    print(out.strip().splitlines()[-1])
