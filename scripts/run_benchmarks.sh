#!/usr/bin/env bash
# Run every benchmark and keep the tables in benchmarks/results/ (git-ignored);
# docs/benchmarks.md quotes them. Stop other work on the machine first: the
# harness warns when other processes compete for the CPUs.
#   scripts/run_benchmarks.sh            # about 35 minutes
#   QUICK=1 scripts/run_benchmarks.sh    # a few minutes, smoke only
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
out=benchmarks/results
mkdir -p "$out"
if [ -n "${QUICK:-}" ]; then q=--quick; d=1; r=1; else q=; d=2; r=3; fi
run() { echo "== $*" >&2; "$@"; }
run $py -m netpoll bench ${q:+--quick} --json "$out/bench.json" | tee "$out/bench.txt"
run $py benchmarks/echo.py $q --duration $d --repeat $r --markdown "$out/echo.md"
run $py benchmarks/rpc.py $q --duration $d --repeat $r --connections 100,500,1000 \
    --markdown "$out/rpc.md"
run $py benchmarks/client.py --duration $d --repeat $r --markdown "$out/client.md"
run $py benchmarks/idle.py --connections 10000 | tee "$out/idle.txt"
run $py benchmarks/linkbuffer.py | tee "$out/linkbuffer.txt"
run $py benchmarks/instructions.py | tee "$out/instructions.txt"
[ -f benchmarks/resp.py ] && run $py benchmarks/resp.py --markdown "$out/resp.md"
[ -f benchmarks/http.py ] && run $py benchmarks/http.py --markdown "$out/http.md"
exit 0
