"""Static checks run as part of the test suite: ruff, mypy --strict, stubtest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(300)


def _tool(name: str) -> list[str]:
    exe = Path(sys.executable).with_name(name)
    if exe.exists():
        return [str(exe)]
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed")
    return [found]


def _run(cmd: list[str]) -> None:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"


def test_ruff() -> None:
    _run([*_tool("ruff"), "check", "src", "tests", "benchmarks", "examples", "scripts", "fuzz"])


def test_mypy_strict() -> None:
    _run([sys.executable, "-m", "mypy", "--strict", "src/netpoll"])


def test_stubtest() -> None:
    _run([sys.executable, "-m", "mypy.stubtest", "netpoll._buffer", "netpoll._core",
          "--ignore-missing-stub"])
