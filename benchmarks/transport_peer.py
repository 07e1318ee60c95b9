"""A netpoll.bench.peers server on the netpoll loop (``netpoll.loop_factory``).

Same arguments as ``python -m netpoll.bench.peers``; ``--uvloop`` picks uvloop as
the base loop. The peer's unchanged asyncio code (``loop.create_server`` with a
Protocol) then runs on netpoll transports; its ``asyncio.start_server`` /
``start_unix_server`` (the Streams kinds) are netpoll's
(``netpoll.transports.start_server``: the Streams objects on the core).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import netpoll
import netpoll.transports
from netpoll.bench import peers


def main() -> int:
    base: Any = asyncio.SelectorEventLoop  # not new_event_loop: the policy below calls us
    if "--uvloop" in sys.argv:
        import uvloop

        base = uvloop.new_event_loop
    factory = netpoll.loop_factory(base)

    class Policy(asyncio.DefaultEventLoopPolicy):
        def new_event_loop(self) -> asyncio.AbstractEventLoop:
            return factory()

    asyncio.set_event_loop_policy(Policy())
    asyncio.start_server = netpoll.transports.start_server  # type: ignore[assignment]
    asyncio.start_unix_server = netpoll.transports.start_unix_server  # type: ignore[assignment]
    asyncio.set_event_loop_policy = lambda policy: None  # type: ignore[assignment]
    # --uvloop is ours: passed on, peers.main would run on a plain uvloop loop
    # (its Runner takes uvloop.new_event_loop as the loop factory), not on netpoll's
    return peers.main([a for a in sys.argv[1:] if a != "--uvloop"])


if __name__ == "__main__":
    raise SystemExit(main())
