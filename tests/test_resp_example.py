"""examples/resp_server.py against real Redis clients.

The server runs as a subprocess on 127.0.0.1 (port 0; it prints the bound
address and ``ready``), on stock asyncio and on uvloop.  It is driven by the
``redis`` Python client (every command, pipelines), by a raw socket (inline
commands, requests split byte by byte and coalesced), by ``redis-cli`` and by
``redis-benchmark``.  Missing pieces skip with the reason: hiredis / redis
(``pip install hiredis redis``), redis-cli / redis-benchmark (Debian package
``redis-tools``).  SIGTERM must shut the server down with exit code 0.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from example_server import example_server, recv_exactly

pytest.importorskip("hiredis", reason="the RESP example parses with hiredis: pip install hiredis")
redis = pytest.importorskip("redis", reason="the tests drive it with redis-py: pip install redis")

pytestmark = pytest.mark.timeout(120)

SERVER = Path(__file__).resolve().parent.parent / "examples" / "resp_server.py"

loops = pytest.mark.parametrize("uvloop", [False, True], ids=["asyncio", "uvloop"])


def resp_server(uvloop: bool = False) -> contextlib.AbstractContextManager[int]:
    """Run the example; yields its port; on exit SIGTERM must stop it with code 0."""
    return example_server(SERVER.name, uvloop)


def client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=10)


def resp_command(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not found (Debian: apt-get install redis-tools)")
    return path


# -- the redis Python client ---------------------------------------------------------------


@loops
def test_every_command_with_redis_py(uvloop: bool) -> None:
    with resp_server(uvloop) as port, client(port) as r:
        assert r.ping() is True
        assert r.echo(b"hello") == b"hello"
        assert r.set("k", "v") is True
        assert r.get("k") == b"v"
        assert r.get("missing") is None
        binary = bytes(range(256)) * 3 + b"\r\n$*\r\n"
        assert r.set(b"bin\r\nkey", binary) is True
        assert r.get(b"bin\r\nkey") == binary
        big = os.urandom(300_000)  # many reads on the server side
        assert r.set("big", big) is True
        assert r.get("big") == big
        assert r.exists("k", "missing", "k", "big") == 3
        assert r.incr("n") == 1
        assert r.incr("n") == 2
        assert r.incr("n") == 3  # redis-py sends INCRBY n 1
        assert r.execute_command("INCR", "n") == 4
        assert r.get("n") == b"4"
        with pytest.raises(redis.ResponseError, match="not an integer"):
            r.incr("k")
        assert r.mget("k", "missing", "n") == [b"v", None, b"4"]
        assert r.delete("k", "missing", "n") == 2
        assert r.exists("k") == 0
        assert r.set("k", "1", nx=True) is True
        assert r.set("k", "2", nx=True) is None
        assert r.get("k") == b"1"
        with pytest.raises(redis.ResponseError, match="unknown command"):
            r.execute_command("NOSUCHCOMMAND", "x")
        with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
            r.execute_command("GET")
        assert r.execute_command("ping") is True  # names are case-insensitive
        assert r.ping() is True  # errors leave the connection usable


@loops
def test_pipelining_with_redis_py(uvloop: bool) -> None:
    with resp_server(uvloop) as port, client(port) as r:
        pipe = r.pipeline(transaction=False)
        for i in range(2000):
            pipe.set(f"key:{i}", f"value:{i}")
            pipe.incr("counter")
            pipe.get(f"key:{i}")
        results = pipe.execute()
        assert results[0::3] == [True] * 2000
        assert results[1::3] == list(range(1, 2001))
        assert results[2::3] == [f"value:{i}".encode() for i in range(2000)]
        pipe = r.pipeline(transaction=False)
        pipe.mget([f"key:{i}" for i in range(500)])
        pipe.exists(*[f"key:{i}" for i in range(500)])
        pipe.delete(*[f"key:{i}" for i in range(0, 2000, 2)])
        pipe.echo(b"x" * 100_000)
        assert pipe.execute() == [
            [f"value:{i}".encode() for i in range(500)],
            500,
            1000,
            b"x" * 100_000,
        ]


def test_many_clients_share_the_store() -> None:
    with resp_server() as port:
        clients = [client(port) for _ in range(20)]
        try:
            for i, c in enumerate(clients):
                c.set(f"c{i}", i)
                c.incr("shared")
            assert clients[0].get("shared") == b"20"
            assert clients[-1].mget([f"c{i}" for i in range(20)]) == [
                str(i).encode() for i in range(20)
            ]
        finally:
            for c in clients:
                c.close()


# -- raw sockets: inline commands, split and coalesced input -------------------------------


def test_inline_split_and_coalesced_commands() -> None:
    with resp_server() as port, socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.settimeout(10)
        sock.sendall(b"PING\r\nSET a  hello\r\nGET a\nECHO\r\n\r\nping\r\n")
        expected = b"+PONG\r\n+OK\r\n$5\r\nhello\r\n"
        expected += b"-ERR wrong number of arguments for 'echo' command\r\n+PONG\r\n"
        assert recv_exactly(sock, len(expected)) == expected
        command = resp_command(b"SET", b"split", b"x\r\ny")
        for i in range(len(command)):  # one byte at a time
            sock.sendall(command[i : i + 1])
            time.sleep(0.001)
        assert recv_exactly(sock, 5) == b"+OK\r\n"
        inline = b"GET split\r\n"
        for i in range(len(inline)):
            sock.sendall(inline[i : i + 1])
            time.sleep(0.001)
        assert recv_exactly(sock, 10) == b"$4\r\nx\r\ny\r\n"
        # inline lines followed by multibulk commands in one write, then many at once
        sock.sendall(b"PING\r\n" + resp_command(b"ECHO", b"mixed") + resp_command(b"PING"))
        expected = b"+PONG\r\n$5\r\nmixed\r\n+PONG\r\n"
        assert recv_exactly(sock, len(expected)) == expected
        stream = b"".join(resp_command(b"INCR", b"n") for _ in range(5000))
        sock.sendall(stream)
        expected = b"".join(b":%d\r\n" % i for i in range(1, 5001))
        assert recv_exactly(sock, len(expected)) == expected
        sock.sendall(resp_command(b"QUIT"))
        assert recv_exactly(sock, 5) == b"+OK\r\n"
        assert sock.recv(10) == b""  # QUIT closes the connection


def test_protocol_error_closes_the_connection() -> None:
    with resp_server() as port, socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.settimeout(10)
        sock.sendall(b"*1\r\n$x\r\n")
        reply = b""
        while chunk := sock.recv(1000):
            reply += chunk
        assert reply.startswith(b"-ERR Protocol error")
        with client(port) as r:  # the server goes on
            assert r.ping() is True


# -- redis-cli and redis-benchmark ---------------------------------------------------------


@loops
def test_redis_cli(uvloop: bool) -> None:
    cli = need("redis-cli")
    with resp_server(uvloop) as port:

        def run(*args: str, stdin: bytes | None = None) -> str:
            proc = subprocess.run(
                [cli, "-h", "127.0.0.1", "-p", str(port), *args],
                input=stdin, capture_output=True, timeout=60, check=False,
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            return proc.stdout.decode()

        assert run("PING") == "PONG\n"
        assert run("SET", "greeting", "hello world") == "OK\n"
        assert run("GET", "greeting") == "hello world\n"
        assert run("ECHO", "hi") == "hi\n"
        assert run("INCR", "visits") == "1\n"
        assert run("EXISTS", "greeting", "nope") == "1\n"
        assert run("MGET", "greeting", "nope", "visits") == "hello world\n\n1\n"
        assert run("DEL", "greeting", "visits") == "2\n"
        assert "unknown command" in run("FROBNICATE")
        # commands read from stdin, one per line
        assert run(stdin=b"SET a 1\nINCR a\nGET a\n") == "OK\n2\n2\n"
        # --pipe: raw protocol in, then redis-cli's own ECHO marker finds the end
        n = 20_000
        data = b"".join(resp_command(b"SET", b"p:%d" % i, b"%d" % i) for i in range(n))
        data += b"".join(resp_command(b"INCR", b"piped") for _ in range(n))
        out = run("--pipe", stdin=data)
        assert f"errors: 0, replies: {2 * n}" in out, out
        assert run("GET", "piped") == f"{n}\n"
        assert run("GET", f"p:{n - 1}") == f"{n - 1}\n"


@pytest.mark.parametrize("pipeline", [1, 16])
def test_redis_benchmark(pipeline: int) -> None:
    tool = need("redis-benchmark")
    with resp_server() as port:
        proc = subprocess.run(
            [tool, "-h", "127.0.0.1", "-p", str(port), "-t", "ping_inline,ping_mbulk,set,get",
             "-n", "2000", "-c", "10", "-P", str(pipeline), "-q"],
            capture_output=True, text=True, timeout=90, check=False,
        )  # fmt: skip
        out = proc.stdout.replace("\r", "\n")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for test in ("PING_INLINE", "PING_MBULK", "SET", "GET"):
            assert any(
                line.startswith(f"{test}: ") and "requests per second" in line
                for line in out.splitlines()
            ), out
        # redis-benchmark exits non-zero on an error reply; it asks CONFIG GET first
        assert "Could not fetch server CONFIG" not in proc.stderr, proc.stderr
