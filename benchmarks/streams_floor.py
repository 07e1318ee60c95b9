"""What asyncio's Streams machinery costs per request, with no socket at all.

The echo handler of the Streams benchmark peers (``reader.read`` ->
``writer.write`` -> ``await writer.drain()``) on 50 StreamReaderProtocols
whose transport does nothing (``write`` is ``list.append``). Each round feeds
every protocol one 1 KiB ``data_received`` and lets the loop run once, as a
busy server's poller would. What is counted is asyncio's own Python per
request: ``StreamReaderProtocol.data_received`` -> ``feed_data`` -> the
waiter's future -> the handler task's wakeup (a loop callback) -> ``read()``
returns -> ``StreamWriter.write`` -> ``drain()`` -> ``read()`` waits again.

No transport, however fast, makes a Streams server cheaper than this: it is
the floor for ``np-tr Streams`` in ``benchmarks/instructions.py``.

    python benchmarks/streams_floor.py            # asyncio and uvloop, under callgrind
    python benchmarks/streams_floor.py --run 100 asyncio   # one plain run (what callgrind runs)
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CONNS = 50
PAYLOAD = b"x" * 1024


class _NullTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sink: list[bytes] = []
        self.write = self.sink.append  # type: ignore[method-assign,assignment]

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


async def _rounds(n: int) -> None:
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(CONNS):
        reader = asyncio.StreamReader(limit=2**16, loop=loop)
        proto = asyncio.StreamReaderProtocol(reader, _echo, loop=loop)
        tr = _NullTransport()
        proto.connection_made(tr)
        conns.append((proto, tr))
    await asyncio.sleep(0)
    for _ in range(n):
        for proto, tr in conns:
            tr.sink.clear()
            proto.data_received(PAYLOAD)
        await asyncio.sleep(0)
    for proto, tr in conns:
        assert tr.sink == [PAYLOAD]
        proto.eof_received()
    await asyncio.sleep(0)


def _run(n: int, base: str) -> None:
    if base == "uvloop":
        import uvloop

        uvloop.run(_rounds(n))
    else:
        asyncio.run(_rounds(n))


def _count(n: int, base: str) -> int:
    out = Path(tempfile.mkdtemp()) / "callgrind.out"
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                    sys.executable, __file__, "--run", str(n), base],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    m = re.search(r"^(?:summary|totals):\s+(\d+)", out.read_text(errors="replace"), re.M)
    shutil.rmtree(out.parent, ignore_errors=True)
    assert m is not None
    return int(m.group(1))


def main() -> int:
    if sys.argv[1:2] == ["--run"]:
        _run(int(sys.argv[2]), sys.argv[3])
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed", file=sys.stderr)
        return 2
    n1, n2 = 100, 600
    for base in ("uvloop", "asyncio"):
        per = (_count(n2, base) - _count(n1, base)) / ((n2 - n1) * CONNS)
        print(f"Streams machinery on {base:8s} {per:8.0f} instructions/request", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
