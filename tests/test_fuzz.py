"""Short fuzz runs of the harnesses in fuzz/ (longer runs: fuzz/README.md).

* LinkBuffer: random operation sequences checked against a bytearray model;
* the example parsers (RPC, RESP, HTTP) fed whole, byte by byte and in random
  pieces: only documented exceptions escape, the answer does not depend on the
  split, RPC echoes exactly the complete frames.

Each harness runs as a plain randomized loop (always) and under atheris (in a
subprocess, when atheris is installed). ``NETPOLL_FULL=1`` runs the long versions.
A parser whose example does not exist yet is skipped.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.timeout(120)

FULL = os.environ.get("NETPOLL_FULL") == "1"
FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
HAVE_ATHERIS = importlib.util.find_spec("atheris") is not None
SIZES = [
    pytest.param("ci", id="ci"),
    pytest.param(
        "full",
        id="full",
        marks=[
            pytest.mark.slow,
            pytest.mark.skipif(not FULL, reason="long fuzz run: set NETPOLL_FULL=1"),
            pytest.mark.timeout(3600),
        ],
    ),
]
PARSERS = ["rpc", "resp", "http"]


@pytest.fixture(params=SIZES)
def size(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def harness(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"netpoll_{name}", FUZZ / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def atheris_run(script: str, runs: int, tmp: Path, *extra: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(FUZZ / script), f"-runs={runs}", "-seed=1", "-len_control=0",
         "-max_len=512", f"-artifact_prefix={tmp}/", *extra],
        capture_output=True,
        text=True,
        timeout=3000,
    )
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, tail
    assert "unavailable" in proc.stdout or f"Done {runs} runs" in proc.stderr, tail


def test_linkbuffer_fuzz_random(size):
    runs = {"ci": 250, "full": 20_000}[size]
    assert harness("fuzz_linkbuffer").run_random(runs, seed=1234) == runs


@pytest.mark.skipif(not HAVE_ATHERIS, reason="atheris is not installed")
def test_linkbuffer_fuzz_atheris(size, tmp_path):
    atheris_run("fuzz_linkbuffer.py", {"ci": 1000, "full": 100_000}[size], tmp_path)


@pytest.mark.parametrize("target", PARSERS)
def test_parser_fuzz_random(target, size):
    mod = harness("fuzz_parsers")
    why = mod.unavailable(target)
    if why:
        pytest.skip(why)
    runs = {"ci": 250, "full": 20_000}[size]
    assert mod.run_random(target, runs, seed=99) == runs


@pytest.mark.skipif(not HAVE_ATHERIS, reason="atheris is not installed")
@pytest.mark.parametrize("target", PARSERS)
def test_parser_fuzz_atheris(target, size, tmp_path):
    why = harness("fuzz_parsers").unavailable(target)
    if why:
        pytest.skip(why)
    atheris_run(
        "fuzz_parsers.py", {"ci": 1000, "full": 50_000}[size], tmp_path, f"--target={target}"
    )


# -- the harness itself, and what it found ---------------------------------------------------


def test_parser_harness_answers_known_inputs():
    mod = harness("fuzz_parsers")
    frames = b"\x00\x00\x00\x03abc\x00\x00\x00\x00\x00\x00\x00\x05he"
    for pieces in mod.splits(frames, 1).values():
        assert mod.drive("rpc", pieces) == (b"\x00\x00\x00\x03abc\x00\x00\x00\x00", False)
    if not mod.unavailable("resp"):
        cmd = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n"
        for pieces in mod.splits(cmd, 2).values():
            assert mod.drive("resp", pieces) == (b"+OK\r\n$1\r\nv\r\n+PONG\r\n", False)


def test_http_example_url_split_across_reads():
    """Found by this fuzzer: on_url kept only the last piece of a URL that httptools
    delivers in pieces (fixed in examples/http_server.py while this suite was written)."""
    mod = harness("fuzz_parsers")
    why = mod.unavailable("http")
    if why:
        pytest.skip(why)
    req = b"GET /?a=1 HTTP/1.1\r\nHost: x\r\n\r\n"
    whole, _ = mod.drive("http", [req])
    split, _ = mod.drive("http", [req[:7], req[7:]])       # "GET /?a" + "=1 HTTP/1.1..."
    assert whole.startswith(b"HTTP/1.1 200 OK")
    assert split == whole


def test_resp_example_refuses_nested_arrays():
    """Found by this fuzzer (atheris, 2nd session): hiredis parses nested arrays inside a
    command, and `SET k v [array]` reached cmd_set, which called .upper() on a list and
    the handler died with AttributeError. A command must be bulk strings only."""
    mod = harness("fuzz_parsers")
    why = mod.unavailable("resp")
    if why:
        pytest.skip(why)
    bad = b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*1\r\n$2\r\nEX\r\n"
    nested_int = b"*2\r\n$3\r\nGET\r\n:5\r\n"
    after = b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    for pieces in mod.splits(bad + nested_int + after, 3).values():
        out, _ = mod.drive("resp", pieces)
        assert out == (
            b"-ERR Protocol error: expected an array of bulk strings\r\n" * 2
            + b"+PONG\r\n$-1\r\n"
        ), out


def test_resp_example_refuses_huge_array_headers():
    """Found by this fuzzer (atheris, 2nd session): hiredis-py allocates a list of the
    declared length when it reads an array header, so `*999999994\\r\\n` cost seconds of
    CPU (and `*3372036851\\r\\n` a MemoryError that killed the handler). The example now
    answers a protocol error and closes, as Redis does, whether the header comes whole,
    byte by byte or nested; a bulk string that merely contains such digits still works."""
    import time

    mod = harness("fuzz_parsers")
    why = mod.unavailable("resp")
    if why:
        pytest.skip(why)
    refused = (b"-ERR Protocol error: invalid multibulk length\r\n", True)
    for bad in (
        b"*3372036851\r\n$4\r\nMGET\r\n",
        b"*999999994\r\n$4\r\nECHO\r\n",
        b"PING\r\n*2\r\n$3\r\nGET\r\n*99999999\r\n$1\r\nk\r\n",
    ):
        for name, pieces in mod.splits(bad, 5).items():
            t0 = time.monotonic()
            out, quit = mod.drive("resp", pieces)
            assert time.monotonic() - t0 < 1.0, name
            assert (out[-len(refused[0]) :], quit) == refused, (name, out)
    value = b"*12345678\r\n"
    ok = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$11\r\n" + value + b"\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    for pieces in mod.splits(ok, 6).values():
        assert mod.drive("resp", pieces) == (b"+OK\r\n$11\r\n" + value + b"\r\n", False)
