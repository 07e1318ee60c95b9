#!/usr/bin/env python3
"""LinkBuffer against the usual Python ways of parsing a framed byte stream.

The workload is what a protocol parser sees: bytes arrive in 1500-byte pieces
(one Ethernet MTU each), and frames of a 4-byte big-endian length header plus
a payload are cut out of them. Three parsers, each in its idiomatic form:

  linkbuffer  netpoll.LinkBuffer: write_binary + flush per piece, then
              peek(4) / skip(4) / next(n) per frame, release() per piece.
              next() hands out a view, no copy when the frame lies in one node.
  linkbuffer-frame
              the same with peek(4) / next(4 + n): one call less per frame; the
              handler reads the payload at offset 4 of the frame view.
  bytearray   what Python protocol code usually does: buf += piece, slice the
              header and the payload out (a copy), del the frame from the front.
  asyncio     asyncio.StreamReader: feed_data per piece from a producer task,
              readexactly(4) and readexactly(n) in a consumer task.

Every parser touches each payload once (its first byte goes into a checksum),
and the checksums must agree. Each (size, parser) pair runs in a fresh
interpreter, so the peak RSS column is that parser's own.

    python benchmarks/linkbuffer.py                      # 64 B, 1 KiB, 64 KiB; < 60 s
    python benchmarks/linkbuffer.py --frames 200000      # the same count for every size
    python benchmarks/linkbuffer.py --long               # 10 M frames, RSS every 1 M
    python benchmarks/linkbuffer.py --long --sizes 1024 --impls linkbuffer,bytearray

Goals (from the issue): linkbuffer >= 2x bytearray at 64 B frames and >= 5x at
64 KiB; flat memory over 10 million frames.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable

from netpoll.bench.harness import size_name

PIECE = 1500
IMPLS = ("linkbuffer", "linkbuffer-frame", "bytearray", "asyncio")
SIZES = (64, 1024, 65536)
# frames per size for the default run: ~1-4 s per parser on a small VM
DEFAULT_FRAMES = {64: 2_000_000, 1024: 800_000, 65536: 30_000}
GOALS = {64: 2.0, 65536: 5.0}

Report = Callable[[int], None]
LinkBuffer = None  # imported on first use, so the baselines run without netpoll


# -- the input stream ------------------------------------------------------------------------


def make_pieces(size: int, piece: int = PIECE) -> tuple[list[bytes], int]:
    """One cycle of the stream cut into pieces, and the frames in that cycle.

    The cycle holds just enough frames for its length to be a multiple of the piece
    size, so the pieces repeat exactly and a run of any length needs no more memory.
    Frame i carries payload byte 0 = i % 256.
    """
    frame_len = size + 4
    frames = piece // math.gcd(frame_len, piece)
    filler = bytes(range(7, 7 + 200)) * (size // 200 + 1)
    header = size.to_bytes(4, "big")
    stream = b"".join(header + bytes([i & 0xFF]) + filler[: size - 1] for i in range(frames))
    assert len(stream) % piece == 0
    pieces = [stream[i : i + piece] for i in range(0, len(stream), piece)]
    return pieces, frames


def expected_checksum(frames_done: int, frames_per_cycle: int) -> int:
    full, rest = divmod(frames_done, frames_per_cycle)
    cycle = sum(i & 0xFF for i in range(frames_per_cycle))
    return full * cycle + sum(i & 0xFF for i in range(rest))


# -- the parsers -----------------------------------------------------------------------------
# Each runs until at least `frames` frames are parsed and returns (frames, checksum). Every
# `every` frames (checked once per piece) it calls report(frames) for the --long mode.


def run_linkbuffer(pieces: list[bytes], frames: int, every: int, report: Report | None):
    buf = LinkBuffer()
    write, flush, peek, skip, next_, release = (
        buf.write_binary,
        buf.flush,
        buf.peek,
        buf.skip,
        buf.next,
        buf.release,
    )
    from_bytes = int.from_bytes
    got = checksum = 0
    mark = every
    npieces = len(pieces)
    i = 0
    while got < frames:
        write(pieces[i])
        i += 1
        if i == npieces:
            i = 0
        flush()
        avail = len(buf)
        while avail >= 4:
            n = from_bytes(peek(4), "big")
            if avail < 4 + n:
                break
            skip(4)
            payload = next_(n)
            checksum += payload[0]
            got += 1
            avail -= 4 + n
        release()
        if report is not None and got >= mark:
            report(got)
            mark += every
    buf.close()
    return got, checksum


def run_linkbuffer_frame(pieces: list[bytes], frames: int, every: int, report: Report | None):
    buf = LinkBuffer()
    write, flush, peek, next_, release = (
        buf.write_binary,
        buf.flush,
        buf.peek,
        buf.next,
        buf.release,
    )
    from_bytes = int.from_bytes
    got = checksum = 0
    mark = every
    npieces = len(pieces)
    i = 0
    while got < frames:
        write(pieces[i])
        i += 1
        if i == npieces:
            i = 0
        flush()
        avail = len(buf)
        while avail >= 4:
            n = from_bytes(peek(4), "big")
            if avail < 4 + n:
                break
            frame = next_(4 + n)  # the handler decodes from offset 4 of the frame view
            checksum += frame[4]
            got += 1
            avail -= 4 + n
        release()
        if report is not None and got >= mark:
            report(got)
            mark += every
    buf.close()
    return got, checksum


def run_bytearray(pieces: list[bytes], frames: int, every: int, report: Report | None):
    buf = bytearray()
    from_bytes = int.from_bytes
    got = checksum = 0
    mark = every
    npieces = len(pieces)
    i = 0
    while got < frames:
        buf += pieces[i]
        i += 1
        if i == npieces:
            i = 0
        while len(buf) >= 4:
            n = from_bytes(buf[:4], "big")
            if len(buf) < 4 + n:
                break
            payload = buf[4 : 4 + n]
            del buf[: 4 + n]
            checksum += payload[0]
            got += 1
        if report is not None and got >= mark:
            report(got)
            mark += every
    return got, checksum


def run_asyncio(pieces: list[bytes], frames: int, every: int, report: Report | None):
    async def main() -> tuple[int, int]:
        reader = asyncio.StreamReader(limit=1 << 20)
        state = {"got": 0, "checksum": 0}

        async def consumer() -> None:
            readexactly = reader.readexactly
            from_bytes = int.from_bytes
            got = checksum = 0
            while got < frames:
                n = from_bytes(await readexactly(4), "big")
                payload = await readexactly(n)
                checksum += payload[0]
                got += 1
                state["got"] = got
            state["checksum"] = checksum

        task = asyncio.get_running_loop().create_task(consumer())
        feed = reader.feed_data
        mark = every
        npieces = len(pieces)
        i = 0
        while not task.done():
            feed(pieces[i])
            i += 1
            if i == npieces:
                i = 0
            await asyncio.sleep(0)  # one data_received per loop iteration
            if report is not None and state["got"] >= mark:
                report(state["got"])
                mark += every
        await task
        return state["got"], state["checksum"]

    return asyncio.run(main())


def _import_netpoll() -> None:
    global LinkBuffer
    from netpoll import LinkBuffer


RUNNERS = {
    "linkbuffer": run_linkbuffer,
    "linkbuffer-frame": run_linkbuffer_frame,
    "bytearray": run_bytearray,
    "asyncio": run_asyncio,
}


# -- measurement -----------------------------------------------------------------------------


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def worker(impl: str, size: int, frames: int) -> dict[str, object]:
    if impl.startswith("linkbuffer"):
        _import_netpoll()
    pieces, per_cycle = make_pieces(size)
    gc.collect()
    rss_before = rss_kib()
    start = time.perf_counter()
    got, checksum = RUNNERS[impl](pieces, frames, frames + 1, None)
    seconds = time.perf_counter() - start
    return {
        "impl": impl,
        "size": size,
        "frames": got,
        "seconds": seconds,
        "checksum_ok": checksum == expected_checksum(got, per_cycle),
        "rss_before_kib": rss_before,
        "peak_rss_kib": peak_rss_kib(),
    }


def run_in_child(impl: str, size: int, frames: int) -> dict[str, object]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, str(size), str(frames)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"impl": impl, "size": size, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(results: list[dict[str, object]]) -> None:
    head = ("frame", "impl", "frames", "frames/s", "MB/s", "x bytearray", "peak RSS MiB", "ok")
    rows = []
    base = {
        r["size"]: r["frames"] / r["seconds"]
        for r in results
        if r["impl"] == "bytearray" and "error" not in r
    }
    for r in results:
        if "error" in r:
            rows.append((size_name(r["size"]), r["impl"], "-", "-", "-", "-", "-", str(r["error"])))
            continue
        fps = r["frames"] / r["seconds"]
        mbps = r["frames"] * (r["size"] + 4) / r["seconds"] / 1e6
        ratio = f"{fps / base[r['size']]:.2f}" if r["size"] in base else "-"
        rows.append(
            (
                size_name(r["size"]),
                r["impl"],
                f"{r['frames']:,}",
                f"{fps:,.0f}",
                f"{mbps:,.1f}",
                ratio,
                f"{r['peak_rss_kib'] / 1024:.1f}",
                "yes" if r["checksum_ok"] else "CHECKSUM MISMATCH",
            )
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    right = {2, 3, 4, 5, 6}

    def fmt(row: tuple[str, ...]) -> str:
        cells = [
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    print(fmt(head))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(fmt(row))
    for size, goal in GOALS.items():
        lb = [r for r in results if r["impl"] == "linkbuffer" and r["size"] == size]
        if lb and "error" not in lb[0] and size in base and lb[0]["seconds"]:
            ratio = lb[0]["frames"] / lb[0]["seconds"] / base[size]
            verdict = "met" if ratio >= goal else "NOT met"
            print(
                f"goal {size_name(size)}: linkbuffer >= {goal:g}x bytearray: {ratio:.2f}x, {verdict}"
            )


def long_run(impls: list[str], sizes: list[int], frames: int, every: int) -> int:
    """In-process: RSS every `every` frames; memory must stay flat after warm-up."""
    status = 0
    if any(impl.startswith("linkbuffer") for impl in impls):
        _import_netpoll()
    debug_counts = None
    try:
        from netpoll import _buffer

        if getattr(_buffer, "NETPOLL_DEBUG_BUILD", False):
            debug_counts = _buffer._debug_counts
    except ImportError:
        pass
    for size in sizes:
        for impl in impls:
            pieces, per_cycle = make_pieces(size)
            gc.collect()
            samples: list[tuple[int, int]] = []
            start = time.perf_counter()

            def report(got: int, _samples=samples, _start=start, _impl=impl, _size=size) -> None:
                rss = rss_kib()
                _samples.append((got, rss))
                extra = f"  live {debug_counts()}" if debug_counts else ""
                print(
                    f"{size_name(_size):>6} {_impl:<10} {got:>12,} frames"
                    f"  {time.perf_counter() - _start:7.1f} s  RSS {rss / 1024:8.1f} MiB{extra}",
                    flush=True,
                )

            got, checksum = RUNNERS[impl](pieces, frames, every, report)
            ok = checksum == expected_checksum(got, per_cycle)
            # flat: after the first sample (warm-up), RSS grows by less than 2 MiB
            growth = samples[-1][1] - samples[0][1] if samples else 0
            flat = growth < 2048
            print(
                f"{size_name(size):>6} {impl:<10} {got:,} frames, RSS growth after the first "
                f"{every:,}: {growth / 1024:+.1f} MiB -> {'flat' if flat else 'NOT FLAT'}"
                f"{'' if ok else ', CHECKSUM MISMATCH'}",
                flush=True,
            )
            if not (flat and ok):
                status = 1
    return status


def _csv(kind: type, allowed: tuple | None = None) -> Callable[[str], list]:
    def parse(text: str) -> list:
        values = [kind(v) for v in text.split(",") if v.strip()]
        if not values or (allowed is not None and any(v not in allowed for v in values)):
            raise argparse.ArgumentTypeError(f"bad list {text!r}")
        return values

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, help="frames per run (default: by size)")
    parser.add_argument(
        "--sizes",
        type=_csv(int),
        default=list(SIZES),
        help="payload sizes, comma-separated (default 64,1024,65536; --long: 64)",
    )
    parser.add_argument(
        "--impls",
        type=_csv(str, IMPLS),
        default=list(IMPLS),
        help=f"parsers, comma-separated, of {','.join(IMPLS)} (default all; --long: linkbuffer)",
    )
    parser.add_argument(
        "--long", action="store_true", help="in-process memory flatness run, RSS at intervals"
    )
    parser.add_argument(
        "--long-frames", type=int, default=10_000_000, help="--long: frames (default 10 M)"
    )
    parser.add_argument("--every", type=int, default=1_000_000, help="--long: RSS interval")
    parser.add_argument(
        "--worker", nargs=3, metavar=("IMPL", "SIZE", "FRAMES"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)

    if args.worker:
        impl, size, frames = args.worker[0], int(args.worker[1]), int(args.worker[2])
        print(json.dumps(worker(impl, size, frames)))
        return 0
    if args.long:
        sizes = args.sizes if args.sizes != list(SIZES) else [64]
        impls = args.impls if args.impls != list(IMPLS) else ["linkbuffer"]
        return long_run(impls, sizes, args.long_frames, args.every)

    print(
        f"frames of a 4-byte length header + payload, arriving in {PIECE}-byte pieces; "
        f"python {sys.version.split()[0]}",
        flush=True,
    )
    results = []
    for size in args.sizes:
        frames = args.frames or DEFAULT_FRAMES.get(size, max(2_000, 40_000_000 // (size + 4)))
        for impl in args.impls:
            r = run_in_child(impl, size, frames)
            results.append(r)
            took = f"{r['seconds']:.2f} s" if "seconds" in r else f"failed: {r.get('error')}"
            print(f"  {size_name(size)} {impl}: {took}", file=sys.stderr, flush=True)
    print()
    print_table(results)
    bad = any("error" in r or not r.get("checksum_ok") for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
