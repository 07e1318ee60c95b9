"""Two independent load generators must measure a peer alike.

loadgen (one epoll thread, nonblocking sockets) once measured stock asyncio
Protocol about 3x slower than another generator did against the same server
(docs/benchmarks.md, "Round 2 baseline": a fresh CPython server pays mmap +
mremap + munmap per 256 KiB recv until a connection has closed).  refgen
shares no code or design with loadgen (one blocking thread per connection,
a warm-up round whose connections close), so if the two agree on the peer
that was wrong, loadgen is not choosing a winner.

Noise: this runs on small shared VMs.  Each pair of runs is back to back and
the verdict is the median of the per-pair ratios, which cancels slow drift;
busy runs are repeated once.
"""

from __future__ import annotations

import statistics
from typing import Any

import pytest

from test_bench_harness import h

pytestmark = [
    pytest.mark.skipif(
        h.find_compiler() is None,
        reason="no C compiler (cc, gcc or clang; or $CC) to build loadgen and refgen",
    ),
    pytest.mark.slow,
]

TOLERANCE = 0.15  # |loadgen / refgen - 1| for the median pair


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return h.build_tools(tmp_path_factory.mktemp("bench-cache"))


@pytest.mark.timeout(90)
def test_refgen_counts_c_echo(tools: Any) -> None:
    case = h.Case("echo 64B x4", 64, 4)
    res = h.measure_refgen(h.c_echo_spec(tools), case, tools, duration=0.5, warmup=0.1)
    assert res["errors"] == 0, res
    assert res["requests"] > 0 and res["rps"] > 0, res
    assert res["connections"] == 4


@pytest.mark.timeout(90)
def test_generators_agree_on_asyncio_protocol(tools: Any) -> None:
    """Echo 1 KiB x 50 on asyncio Protocol: the case the old loadgen got wrong."""
    case = h.Case("echo 1KiB x50", 1024, 50)
    spec = h.peer_spec("protocol")
    ratios: list[float] = []
    detail: list[str] = []
    for _ in range(5):
        if len(ratios) == 3:
            break
        ours = h.measure(spec, case, tools, duration=1.5, warmup=0.3)
        ref = h.measure_refgen(spec, case, tools, duration=1.5, warmup=0.3)
        assert ours["errors"] == 0 and ref["errors"] == 0, (ours, ref)
        busy = (ours.get("cpu_pressure_pct") or 0) > 50
        detail.append(f"loadgen {ours['rps']:.0f} refgen {ref['rps']:.0f}{' busy' if busy else ''}")
        if not busy:
            ratios.append(ours["rps"] / ref["rps"])
    if len(ratios) < 3:
        pytest.skip(f"the machine was too busy to compare throughput: {detail}")
    ratio = statistics.median(ratios)
    assert abs(ratio - 1) <= TOLERANCE, f"loadgen/refgen = {ratio:.2f}: {detail}"
