"""Smoke tests of the benchmark harness (netpoll.bench): build the C tools, drive the
C echo server and the Python baseline peers for about a second each, and check
that requests flowed with no errors and every response byte was right."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_harness() -> ModuleType:
    # The harness is stdlib-only; load it by path when netpoll itself is not built.
    try:
        from netpoll.bench import harness

        return harness
    except ImportError:
        path = ROOT / "src" / "netpoll" / "bench" / "harness.py"
        spec = importlib.util.spec_from_file_location("netpoll_bench_harness", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module


h = _load_harness()

pytestmark = pytest.mark.skipif(
    h.find_compiler() is None,
    reason="no C compiler (cc, gcc or clang; or $CC) to build the benchmark's loadgen",
)


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return h.build_tools(tmp_path_factory.mktemp("bench-cache"))


def _check(res: dict[str, Any], connections: int) -> None:
    assert res["requests"] > 0, res
    assert res["errors"] == 0, res
    assert res["data_errors"] == 0, res
    assert res["connections"] == connections
    assert res["open_at_end"] == connections, res
    assert 0 < res["p50_us"] <= res["p99_us"] <= res["p999_us"], res
    assert res["rps"] > 0
    # The server's CPU and memory were sampled over the measured window.
    assert res["cpu_us_per_req"] > 0, res
    assert res["rss_mb"] > 0, res


@pytest.mark.timeout(120)
def test_build_is_cached(tools: Any) -> None:
    again = h.build_tools(tools.loadgen.parent.parent)
    assert again == tools
    assert tools.loadgen.is_file() and tools.c_echo.is_file()


@pytest.mark.timeout(120)
def test_c_echo_with_loadgen(tools: Any) -> None:
    case = h.Case("echo 64B x8", 64, 8)
    res = h.measure(h.c_echo_spec(tools), case, tools, duration=1.0, warmup=0.2, verify=True)
    _check(res, 8)
    assert res["mode"] == "echo" and res["depth"] == 1


@pytest.mark.timeout(120)
def test_c_echo_framed_pipelined_with_idle(tools: Any) -> None:
    case = h.Case("frame 1000B x4 d8", 1000, 4, depth=8, idle=16, mode="frame")
    res = h.measure(h.c_echo_spec(tools), case, tools, duration=1.0, warmup=0.2, verify=True)
    _check(res, 4)
    assert res["idle"] == 16 and res["frame_errors"] == 0


@pytest.mark.timeout(120)
def test_python_protocol_peer(tools: Any) -> None:
    case = h.Case("echo 1KiB x10", 1024, 10)
    res = h.measure(h.peer_spec("protocol"), case, tools, duration=1.0, warmup=0.2, verify=True)
    _check(res, 10)


@pytest.mark.timeout(120)
def test_python_rpc_peer_frames_split_and_batched(tools: Any) -> None:
    # 100 kB frames arrive split over many reads; depth 4 puts several per read.
    case = h.Case("rpc x4 d4", 100_000, 4, depth=4, mode="frame")
    spec = h.peer_spec("rpc-buffered")
    res = h.measure(spec, case, tools, duration=1.0, warmup=0.2, verify=True)
    _check(res, 4)


@pytest.mark.timeout(120)
def test_suite_table_and_ratios(tools: Any) -> None:
    c = h.c_echo_spec(tools)
    other = h.c_echo_spec(tools, name="c-echo-2")
    missing = h.ServerSpec("missing", ("true",), probe=("false",), note="not here")
    notes: list[str] = []
    res = h.run_suite(
        [c, other, missing],
        [h.Case("echo 64B x2", 64, 2)],
        tools,
        repeat=1,
        duration=0.3,
        warmup=0.1,
        refs={"C": "c-echo"},
        progress=notes.append,
    )
    assert res.skipped == ["missing"]
    assert any("skipping missing: not here" in n for n in notes)
    assert [r["peer"] for r in res.rows] == ["c-echo", "c-echo-2"]
    assert res.rows[0]["rps_vs_C"] == pytest.approx(1.0)
    table = h.format_table(res.rows, h.default_columns(["C"]))
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["case", "peer", "req/s"]
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule aligned
    assert "| c-echo |" in h.format_markdown(res.rows, h.default_columns(["C"]))


@pytest.mark.timeout(120)
def test_aiofastnet_peers(tools: Any) -> None:
    if not h.have_aiofastnet():
        pytest.skip("aiofastnet is not installed (pip install 'netpoll[aiofastnet]')")
    case = h.Case("rpc 1000B x4 d4", 1000, 4, depth=4, mode="frame")
    for uvloop in (False, True) if h.have_uvloop() else (False,):
        spec = h.peer_spec("rpc-protocol", uvloop, aiofastnet=True)
        assert spec.name.startswith("aiofastnet-")
        res = h.measure(spec, case, tools, duration=0.5, warmup=0.1, verify=True)
        _check(res, 4)


@pytest.mark.timeout(60)
def test_server_rejecting_its_command_line_is_skipped(tools: Any) -> None:
    # How a server that predates `--handler sync` answers: argparse's exit 2.
    script = (
        "import sys; sys.stderr.write('error: unrecognized arguments: --handler\\n'); sys.exit(2)"
    )
    old = h.ServerSpec("netpoll-sync-asyncio", (sys.executable, "-c", script))
    notes: list[str] = []
    res = h.run_suite(
        [h.c_echo_spec(tools), old],
        [h.Case("echo 64B x2", 64, 2)],
        tools,
        repeat=2,
        duration=0.2,
        warmup=0.1,
        progress=notes.append,
    )
    assert [r["peer"] for r in res.rows] == ["c-echo"]
    assert res.skipped == ["netpoll-sync-asyncio"]
    assert sum("rejected its command line" in n for n in notes) == 1  # tried once only
    assert not any(r.get("errors") for r in res.rows)


def test_handler_style_specs() -> None:
    sync = h.netpoll_echo_spec(True, handler="sync")
    assert sync.name == "netpoll-sync-uvloop"
    assert sync.argv[-3:] == ("--handler", "sync", "--uvloop")
    assert sync.probe_expect == "--handler"
    default = h.netpoll_rpc_spec(False, handler="async")
    assert default.name == "netpoll-asyncio" and "--handler" not in default.argv
    with pytest.raises(ValueError):
        h.netpoll_echo_spec(handler="threads")


def _fake_rows() -> list[dict[str, Any]]:
    runs = [
        {"case": c, "peer": p, "rps": rps, "user_us_per_req": u, "cpu_pressure_pct": psi}
        for c in ("echo 1KiB x50", "rpc 64B x100")
        for p, rps, u, psi in (
            ("netpoll-asyncio", 80_000.0, 3.0, 0.0),
            ("uvloop-protocol", 82_000.0, 3.2, 40.0 if c.startswith("rpc") else 1.0),
            ("aiofastnet-uvloop-protocol", 81_000.0, 3.1, 0.0),
        )
    ]
    runs.append({**runs[0], "cpu_pressure_pct": 30.0})  # one of two runs disturbed
    return h.summarize(runs, ["echo 1KiB x50", "rpc 64B x100"], [r["peer"] for r in runs[:3]])


def test_busy_rows_are_marked_in_the_table() -> None:
    rows = _fake_rows()
    cols = h.default_columns(["uvloop"])
    lines = h.format_table(rows, cols).splitlines()
    assert lines[0].rstrip().endswith("busy")
    marked = [line for line in lines if "!" in line]
    assert len(marked) == 2
    assert any("netpoll-asyncio" in m and "! 1/2 runs" in m for m in marked)
    assert any(m.startswith("rpc 64B x100") and "uvloop-protocol" in m for m in marked)
    assert "| ! 1/1 runs |" in h.format_markdown(rows, cols)
    quiet = [{**r, "busy_runs": 0} for r in rows]
    assert "busy" not in h.format_table(quiet, cols)


@pytest.mark.timeout(60)
def test_chart_legend_clears_bars_and_says_disturbed() -> None:
    pytest.importorskip("matplotlib")
    rows = _fake_rows()
    fig = h.draw_chart(rows, "netpoll bench")
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        legend = fig.legends[0].get_window_extent(renderer)
        bars = [p for ax in fig.axes for p in ax.patches]
        assert len(bars) == 2 * len(rows)
        for bar in bars:
            assert not legend.overlaps(bar.get_window_extent(renderer)), bar
        assert "disturbed" in fig._suptitle.get_text()
        hatched = [p for p in fig.axes[0].patches if p.get_hatch()]
        assert len(hatched) == 2  # the two busy rows
    finally:
        importlib.import_module("matplotlib.pyplot").close(fig)
