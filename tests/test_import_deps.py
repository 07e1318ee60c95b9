"""netpoll imports with nothing but the standard library (it declares no runtime
dependencies): typing_extensions, which the stubs and type-only imports use, must
not be needed at run time."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"typing_extensions", "uvloop", "hiredis", "httptools"}:
            raise ImportError(f"blocked: {name}")
        return None
sys.meta_path.insert(0, Block())
import netpoll, netpoll.adapters, netpoll.protocols, netpoll.transports, netpoll.mux
import netpoll.servers, netpoll.workers, netpoll.cli
print("ok")
"""


def test_import_without_optional_packages() -> None:
    proc = subprocess.run([sys.executable, "-c", BLOCK], capture_output=True, text=True,
                          timeout=50)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"
