"""``netpoll.loop_factory`` and ``netpoll.run``: asyncio loops whose transports are netpoll's.

A loop made here is the base loop (stock asyncio, or uvloop) with its class
swapped for a subclass that routes the loop's socket transports to
``netpoll.transports`` (see that module's docstring): ``create_server``,
``create_connection``, ``create_unix_*``, ``connect_accepted_socket``,
``start_tls`` and everything asyncio builds on them (``asyncio.start_server``,
``open_connection``, frameworks) then run on netpoll's reactor. The rest of
the loop — timers, tasks, subprocesses, datagrams, ``sock_*`` — is the base
loop's own.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from netpoll.transports import _netpoll_class

__all__ = ["loop_factory", "run"]

T = TypeVar("T")


def loop_factory(
    base: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> Callable[[], asyncio.AbstractEventLoop]:
    """A zero-argument factory of event loops whose transports are netpoll's.

    ``base`` makes the underlying loop: ``asyncio.new_event_loop`` (the
    default) or ``uvloop.new_event_loop`` (or any factory of loops whose class
    is a Python class). Use it as ``asyncio.run(main(), loop_factory=...)``
    (Python 3.12+), ``asyncio.Runner(loop_factory=...)``, or through
    ``netpoll.run``.
    """
    make = base if base is not None else asyncio.new_event_loop
    if not callable(make):
        raise TypeError(f"loop_factory: base must be callable, not {type(make).__name__}")

    def new_event_loop() -> asyncio.AbstractEventLoop:
        cls = _direct_class(make)
        if cls is not None:
            return cls()  # type: ignore[no-any-return]
        loop = make()
        try:
            loop.__class__ = _netpoll_class(type(loop))
        except TypeError as exc:
            loop.close()
            raise TypeError(
                f"loop_factory: cannot route the transports of {type(loop).__name__} "
                "loops to netpoll (its class cannot be subclassed)"
            ) from exc
        return loop

    new_event_loop.__qualname__ = new_event_loop.__name__ = "netpoll_new_event_loop"
    return new_event_loop


_stock_new_event_loop = asyncio.new_event_loop


def _direct_class(make: Callable[[], asyncio.AbstractEventLoop]) -> type | None:
    """The netpoll class to instantiate instead of calling ``make``, or None.

    ``asyncio.new_event_loop()`` under the default policy is
    ``policy._loop_factory()``, a class: an instance of its netpoll subclass,
    made by that same constructor, is the loop ``make()`` plus the class swap.
    Made directly, its attributes are laid out for its own class, so CPython
    specialises the frameworks' ``loop.method()`` calls on it (on an instance
    whose class was swapped after it was made, those calls stay generic).
    """
    if make is not _stock_new_event_loop or sys.version_info >= (3, 14):  # (3.14: policies deprecated)
        return None
    policy = asyncio.get_event_loop_policy()
    base_policy = getattr(asyncio.events, "BaseDefaultEventLoopPolicy", None)
    if base_policy is None or type(policy).new_event_loop is not base_policy.new_event_loop:
        return None
    factory = getattr(policy, "_loop_factory", None)
    if not isinstance(factory, type):
        return None
    return _netpoll_class(factory)


def run(
    main: Coroutine[Any, Any, T],
    *,
    base: Callable[[], asyncio.AbstractEventLoop] | None = None,
    debug: bool | None = None,
) -> T:
    """``asyncio.run(main)`` on a loop from ``loop_factory(base)`` (works on 3.11)."""
    with asyncio.Runner(debug=debug, loop_factory=loop_factory(base)) as runner:
        return runner.run(main)
