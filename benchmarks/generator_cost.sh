#!/bin/bash
# What does each load generator make the server do per request?  perf stat of one
# fresh server (pinned to cpu 0) driven by loadgen or refgen (pinned to cpu 1) for
# 0.5 s warm-up + 2 s: CPU time, page faults, epoll_wait, recvfrom and sendto per
# request.  A neutral pair of generators gives the same syscalls per request and
# CPU per request within the noise.  Needs perf (tracepoints: run as root or lower
# kernel.perf_event_paranoid).
#
#   benchmarks/generator_cost.sh [loadgen|refgen ...]    # default: refgen loadgen, 3 times
#   KIND=rpc-protocol PEERARGS=--uvloop benchmarks/generator_cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
KIND=${KIND:-protocol}
PEERARGS=${PEERARGS:-}
read -r LOADGEN REFGEN < <($PY -c 'from netpoll.bench import harness as h; t = h.build_tools(); print(t.loadgen, t.refgen)')
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
one() {
    local gen=$1 port=$((20000 + RANDOM % 20000)) n
    rm -f "$TMP/out" "$TMP/stat" "$TMP/res"
    taskset -c 0 perf stat -x, -o "$TMP/stat" \
        -e task-clock,page-faults,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto \
        $PY src/netpoll/bench/peers.py --kind "$KIND" --port $port $PEERARGS > "$TMP/out" 2>&1 &
    local perf_pid=$!
    for _ in $(seq 300); do grep -q ready "$TMP/out" 2>/dev/null && break; sleep 0.05; done
    local status=0
    if [ "$gen" = loadgen ]; then
        taskset -c 1 "$LOADGEN" -p $port -c 50 -s 1024 -t 2 -w 0.5 -q > "$TMP/res" || status=$?
    else
        taskset -c 1 "$REFGEN" -p $port -c 50 -s 1024 -t 2 -w 0.5 > "$TMP/res" || status=$?
    fi
    n=$($PY -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["requests"]+d["warmup_requests"])' "$TMP/res")
    kill -INT $(pgrep -P $perf_pid) 2>/dev/null || true  # the server: perf's child
    wait $perf_pid || true
    if [ $status -ne 0 ]; then echo "$gen failed (exit $status)"; return; fi
    awk -F, -v n="$n" -v g="$gen" '
        /task-clock/{tc=$1} /page-faults/{pf=$1} /epoll_wait/{ew=$1} /recvfrom/{rf=$1} /sendto/{st=$1}
        END{printf "%-8s requests %7d  cpu %6.2f us/req  faults %.3f  epoll_wait %.3f  recv %.3f  send %.3f per req\n",
            g, n, tc*1000/n, pf/n, ew/n, rf/n, st/n}' "$TMP/stat"
}
gens=("$@")
[ ${#gens[@]} -eq 0 ] && gens=(refgen loadgen refgen loadgen refgen loadgen)
for g in "${gens[@]}"; do one "$g"; done
