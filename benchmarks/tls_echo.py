#!/usr/bin/env python3
"""TLS 1.3 echo: netpoll vs asyncio+ssl vs uvloop+ssl, driven by a C load generator.

    python benchmarks/tls_echo.py                        # 1 KiB x 50 conns, 3 rounds of 5 s
    python benchmarks/tls_echo.py --size 256 --conns 50 --seconds 3 --rounds 2
    python benchmarks/tls_echo.py --handshake            # new connection per request

Peers (each a server process pinned to CPU 0; the load generator on CPU 1):
  netpoll-uvloop / netpoll-asyncio   netpoll handler echo, OpenSSL fast path
  netpoll-uvloop-sslobject           the same on the SSLObject path (NETPOLL_TLS_FAST=0)
  uvloop-ssl / asyncio-ssl           asyncio Protocol echo with loop.create_server(ssl=)
  aiofastnet-uvloop / -asyncio       the same Protocol on aiofastnet.create_server(loop, ..., ssl=)
                                     (skipped when aiofastnet is not installed)
Rounds are interleaved (peer order repeated per round); the median round is shown,
with server CPU (user+sys) per request from /proc/<pid>/stat.

Needs: the `openssl` CLI (test certificate) and the OpenSSL headers to build
benchmarks/tls_loadgen.c (apt-get install libssl-dev); without them it says so
and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = ["netpoll-uvloop", "netpoll-asyncio", "netpoll-uvloop-sslobject", "uvloop-ssl",
         "asyncio-ssl", "aiofastnet-uvloop", "aiofastnet-asyncio"]


def serve(peer: str, port: int, certdir: str) -> None:
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(certdir, "cert.pem"), os.path.join(certdir, "key.pem"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if "uvloop" in peer:
        import uvloop
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    if peer.startswith("netpoll"):
        import netpoll

        def on_request(_: object, conn: netpoll.Connection) -> None:   # plain handler
            buf = conn.input
            conn.writer.write_binary(buf.next(len(buf)))
            conn.flush_nowait()

        async def main() -> None:
            ln = netpoll.create_listener("tcp", f"127.0.0.1:{port}", ssl=ctx)
            print("ready", flush=True)
            await netpoll.EventLoop(on_request).serve(ln)
        loop.run_until_complete(main())
    else:
        class Echo(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.t = transport

            def data_received(self, data: bytes) -> None:
                self.t.write(data)  # type: ignore[attr-defined]

        async def main2() -> None:
            if peer.startswith("aiofastnet"):
                import aiofastnet
                srv = await aiofastnet.create_server(loop, Echo, "127.0.0.1", port, ssl=ctx,
                                                     backlog=1024)
            else:
                srv = await loop.create_server(Echo, "127.0.0.1", port, ssl=ctx, backlog=1024)
            print("ready", flush=True)
            await srv.serve_forever()
        loop.run_until_complete(main2())


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(user, user+system) clock ticks of a process."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return int(parts[11]), int(parts[11]) + int(parts[12])


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


def run_one(peer: str, loadgen: str, certdir: str,
            args: argparse.Namespace) -> tuple[float, float, float, float]:
    port = free_port()
    env = dict(os.environ)
    if peer.endswith("sslobject"):
        env["NETPOLL_TLS_FAST"] = "0"
    srv = subprocess.Popen([sys.executable, __file__, "--serve", peer, str(port), certdir],
                           stdout=subprocess.PIPE, env=env)
    try:
        assert srv.stdout is not None
        if srv.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"{peer}: server did not start")
        if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > 1:
            os.sched_setaffinity(srv.pid, {0})
        cmd = [loadgen, "127.0.0.1", str(port), str(args.conns), str(args.size),
               str(args.seconds)]
        if args.handshake:
            cmd.append("handshake")
        pre = ["taskset", "-c", "1"] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []
        t0 = cpu_ticks(srv.pid)
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        w0 = time.monotonic()
        out = subprocess.run(pre + cmd, capture_output=True, text=True, timeout=args.seconds + 60)
        t1 = cpu_ticks(srv.pid)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        lg_cpu = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / (
            time.monotonic() - w0) * 100
        if out.returncode != 0:
            raise RuntimeError(f"{peer}: loadgen failed: {out.stderr.strip()}")
        fields = dict(kv.split("=") for kv in out.stdout.split())
        rps = float(fields["rps"])
        per = 1e6 / os.sysconf("SC_CLK_TCK") / max(1, int(fields["requests"]))
        return rps, (t1[1] - t0[1]) * per, lg_cpu, (t1[0] - t0[0]) * per
    finally:
        srv.terminate()
        srv.wait(10)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--serve", nargs=3, metavar=("PEER", "PORT", "CERTDIR"), help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--conns", type=int, default=50)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--handshake", action="store_true", help="a new connection per request")
    p.add_argument("--peers", default=",".join(PEERS))
    args = p.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), args.serve[2])
        return 0
    if shutil.which("openssl") is None or shutil.which("cc") is None:
        print("tls_echo: needs the openssl CLI and a C compiler", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as d:
        loadgen = os.path.join(d, "tls_loadgen")
        build = subprocess.run(["cc", "-O2", "-o", loadgen, str(HERE / "tls_loadgen.c"),
                                "-lssl", "-lcrypto"], capture_output=True, text=True)
        if build.returncode != 0:
            print("tls_echo: cannot build benchmarks/tls_loadgen.c (OpenSSL headers missing? "
                  "apt-get install libssl-dev):\n" + build.stderr[-500:], file=sys.stderr)
            return 2
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{d}/key.pem", "-out",
                        f"{d}/cert.pem", "-days", "1", "-subj", "/CN=localhost"],
                       check=True, capture_output=True)
        peers = args.peers.split(",")
        try:
            import aiofastnet  # noqa: F401
        except ImportError:
            skipped = [pe for pe in peers if pe.startswith("aiofastnet")]
            if skipped:
                print(f"tls_echo: aiofastnet is not installed; skipping {', '.join(skipped)}",
                      file=sys.stderr)
            peers = [pe for pe in peers if pe not in skipped]
        results: dict[str, list[tuple[float, float, float, float]]] = {pe: [] for pe in peers}
        for _ in range(args.rounds):
            for pe in peers:
                results[pe].append(run_one(pe, loadgen, d, args))
                time.sleep(0.3)
    base = statistics.median(r[0] for r in results.get("uvloop-ssl", [(0.0, 0.0, 0.0, 0.0)])) or None
    what = "handshakes" if args.handshake else f"{args.size} B echo"
    print(f"TLS 1.3 {what}, {args.conns} connections, {args.rounds} x {args.seconds:g} s "
          "(median round)")
    print(f"{'peer':28} {'req/s':>10} {'x uvloop':>9} {'server CPU us/req':>18} "
          f"{'(user)':>7} {'loadgen CPU %':>14}")
    for pe in peers:
        rps = statistics.median(r[0] for r in results[pe])
        cpu = statistics.median(r[1] for r in results[pe])
        lg = statistics.median(r[2] for r in results[pe])
        user = statistics.median(r[3] for r in results[pe])
        ratio = f"{rps / base:.2f}" if base else "-"
        print(f"{pe:28} {rps:10.0f} {ratio:>9} {cpu:18.1f} {user:7.1f} {lg:14.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
