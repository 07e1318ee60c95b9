"""Two independent load generators must measure a peer alike.

loadgen (one epoll thread, nonblocking sockets) once measured stock asyncio
Protocol about 3x slower than another generator did against the same server
(docs/benchmarks.md, "Round 2 baseline": a fresh CPython server pays mmap +
mremap + munmap per 256 KiB recv until a connection has closed).  refgen
shares no code with loadgen and makes the plainest choices (blocking sockets,
one poll() thread, one request per connection at a time, a warm-up round whose
connections close), so if the two agree on the peer that was wrong, loadgen
is not choosing a winner.

Noise: this runs on small shared VMs.  Each pair of runs is back to back and
the verdict is the median of the per-pair ratios, which cancels slow drift.
A pair in which the server did not have its core (other processes took it) is
not clean; with three clean pairs the median must be within 15%.  After five
pairs with fewer clean ones, the median of all of them must still be within
0.7-1.43x (the old loadgen measured 0.33-0.47x), and a result between that and
15% skips, saying why: on a busy machine it cannot be told from noise.  Three
clean pairs whose median is a gross disagreement are followed by three more
(a CI run on 3.13 once measured 0.94, 0.57, 0.56 on a quiet machine; the old
loadgen was wrong in every pair, so six pairs still catch it).
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
MIN_SERVER_CPU = 85.0  # % of a core: below it the pair was disturbed
BUSY_BOUNDS = (0.7, 1 / 0.7)  # on a disturbed machine, only a gross disagreement fails


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return h.build_tools(tmp_path_factory.mktemp("bench-cache"))


@pytest.mark.timeout(90)
def test_refgen_counts_c_echo(tools: Any) -> None:
    for case in (h.Case("echo 64B x4", 64, 4), h.Case("frame 3000B x3", 3000, 3, mode="frame")):
        res = h.measure_refgen(h.c_echo_spec(tools), case, tools, duration=0.4, warmup=0.1)
        assert res["errors"] == 0 and res["warmup_errors"] == 0, res
        assert res["requests"] > 0 and res["rps"] > 0, res
        assert res["connections"] == case.connections


@pytest.mark.timeout(90)
def test_generators_agree_on_asyncio_protocol(tools: Any) -> None:
    """Echo 1 KiB x 50 on asyncio Protocol: the case the old loadgen got wrong."""
    case = h.Case("echo 1KiB x50", 1024, 50)
    spec = h.peer_spec("protocol")
    clean: list[float] = []
    every: list[float] = []
    detail: list[str] = []
    for i in range(8):
        if len(clean) >= 3 and i >= 3:
            verdict = statistics.median(clean)
            if BUSY_BOUNDS[0] <= verdict <= BUSY_BOUNDS[1] or i >= 6:
                break   # a gross disagreement is measured again: 6 pairs, not 3 outliers
        elif i == 5:
            break
        ours = h.measure(spec, case, tools, duration=1.5, warmup=0.3)
        ref = h.measure_refgen(spec, case, tools, duration=1.5, warmup=0.3)
        assert ours["errors"] == 0 and ref["errors"] == 0, (ours, ref)
        every.append(ours["rps"] / ref["rps"])
        # asyncio Protocol is server-bound: with a core to itself the server runs at
        # ~100% under either generator.  Less means other processes took its core.
        if min(ours["server_cpu_pct"], ref["server_cpu_pct"]) >= MIN_SERVER_CPU:
            clean.append(every[-1])
        detail.append(
            f"loadgen {ours['rps']:.0f} ({ours['server_cpu_pct']:.0f}% cpu) "
            f"refgen {ref['rps']:.0f} ({ref['server_cpu_pct']:.0f}% cpu)"
        )
    print("pairs:", detail)  # shown by pytest -rA
    # A gross disagreement (the old loadgen was at 0.33-0.47x) always fails. Within 15%
    # passes. Between the two the run is reported and skipped: on this 2-vCPU VM single
    # 1.5 s runs of the same server move by up to ~20% even with the server at 100% of
    # its core (seen: pairs at 0.76, 1.01, 0.84 on a quiet machine), so a moderate
    # difference cannot be told from noise in a test this short.
    ratio = statistics.median(clean if len(clean) >= 3 else every)
    assert BUSY_BOUNDS[0] <= ratio <= BUSY_BOUNDS[1], f"loadgen/refgen = {ratio:.2f}: {detail}"
    if abs(ratio - 1) > TOLERANCE:
        pytest.skip(f"loadgen/refgen = {ratio:.2f}, outside 15% but within the noise of "
                    f"this machine; not conclusive: {detail}")


@pytest.mark.timeout(90)
def test_loadgen_meets_asyncio_warm(tools: Any) -> None:
    """The root cause, measured without a clock: page faults per request.

    A fresh asyncio server mmaps a 256 KiB buffer per recv (two faults per
    request) until a connection has closed; loadgen's priming connection
    (-k, default 1) gets it past that, as any long-running server is."""
    case = h.Case("echo 1KiB x10", 1024, 10)
    spec = h.peer_spec("protocol")
    warm = h.measure(spec, case, tools, duration=0.6, warmup=0.2)
    cold = h.measure(spec, case, tools, duration=0.6, warmup=0.2, loadgen_args=["-k", "0"])
    assert warm["primed"] == 1 and cold["primed"] == 0
    assert warm["server_faults_per_req"] < 0.2, warm
    # Unprimed, the mmap path shows (unless the harness's readiness probe happened
    # to connect and close before the server printed "ready": that primes it too).
    assert cold["server_faults_per_req"] > 1.0, cold
