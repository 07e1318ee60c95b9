"""Helpers for tests that run an example server as a subprocess (tests only).

``example_server(script, uvloop)`` starts ``examples/<script>`` on 127.0.0.1 port 0,
waits for its ``listening on ADDRESS`` and ``ready`` lines and yields the port; on
exit SIGTERM must stop it with exit code 0 and no traceback. ``recv_exactly`` reads
exactly n bytes from a blocking socket or fails on EOF.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@contextlib.contextmanager
def example_server(script: str, uvloop: bool = False) -> Iterator[int]:
    """Run examples/`script`; yields its port; on exit SIGTERM must stop it with code 0."""
    if uvloop and importlib.util.find_spec("uvloop") is None:
        pytest.skip("uvloop is not installed")
    name = Path(script).stem
    argv = [sys.executable, str(EXAMPLES / script), "--host", "127.0.0.1", "--port", "0"]
    if uvloop:
        argv.append("--uvloop")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            port = None
            while True:
                line = proc.stdout.readline()
                if not line:
                    raise AssertionError(f"{name} exited early: {proc.stderr.read()}")
                if line.startswith("listening on "):
                    port = int(line.rsplit(":", 1)[1])
                if line.strip() == "ready":
                    break
            assert port, f"{name} did not say where it listens"
            yield port
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0, proc.stderr.read()
            assert "Traceback" not in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise AssertionError(f"EOF after {len(out)} of {n} bytes: {bytes(out)!r}")
        out += chunk
    return bytes(out)
