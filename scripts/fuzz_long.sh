#!/usr/bin/env bash
# The long fuzz runs of docs/reliability.md, one after another, with a summary line per run.
#
#   scripts/fuzz_long.sh                       # release build in .venv (atheris + randomized)
#   FUZZ_PY=/tmp/netpoll-sanitize/.venv/bin/python FUZZ_ASAN=1 scripts/fuzz_long.sh random
#                                              # randomized runs on the ASan/UBSan build
#
# Counts (override with the environment): LB_RUNS (atheris LinkBuffer, 1,000,000),
# PARSER_RUNS (atheris per parser, 200,000), RANDOM_RUNS (randomized LinkBuffer,
# 20,000), RANDOM_PARSER_RUNS (randomized per parser, 50,000). The first argument
# picks the kinds: "all" (default), "atheris" or "random"; FUZZ_TARGETS picks the harnesses
# (default "linkbuffer rpc resp http"). A failure stops the script with the failing input
# left in $FUZZ_OUT (libFuzzer's crash-* file); the corpora there are reused by later runs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${FUZZ_PY:-$root/.venv/bin/python}
out=${FUZZ_OUT:-/tmp/netpoll-fuzz}
kinds=${1:-all}
mkdir -p "$out"
pre=()
if [[ -n "${FUZZ_ASAN:-}" ]]; then
  # As scripts/sanitize.sh: CPython uses malloc so that ASan sees every block.
  export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
  export PYTHONMALLOC=malloc
  export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
fi

summary() { echo "$(date -u +%FT%TZ) $*" | tee -a "$out/summary.txt"; }

atheris_run() {   # script target runs
  local script=$1 target=$2 runs=$3 log="$out/$2-atheris.log" t0=$SECONDS
  local args=("$root/fuzz/$script" "-runs=$runs" -seed=1 -len_control=0 -max_len=512
              "-artifact_prefix=$out/" -print_final_stats=1)
  [[ $target != linkbuffer ]] && args+=("--target=$target")
  mkdir -p "$out/corpus-$target"
  if ! "$py" "${args[@]}" "$out/corpus-$target" >"$log" 2>&1; then
    summary "FAIL atheris $target after $((SECONDS - t0))s: see $log"; tail -40 "$log"; exit 1
  fi
  summary "ok   atheris $target: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$log")," \
          "corpus $(ls "$out/corpus-$target" | wc -l) inputs," \
          "$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -1)"
}

random_run() {    # script target runs
  local script=$1 target=$2 runs=$3 log="$out/$2-random.log"
  local args=("$root/fuzz/$script" --random --runs "$runs" --seed 7)
  [[ $target != linkbuffer ]] && args+=("--target=$target")
  if ! "$py" "${args[@]}" >"$log" 2>&1; then
    summary "FAIL random $target: see $log"; tail -40 "$log"; exit 1
  fi
  summary "ok   random $target${FUZZ_ASAN:+ (ASan+UBSan)}: $(tail -1 "$log")"
}

targets=${FUZZ_TARGETS:-linkbuffer rpc resp http}
for kind in random atheris; do
  [[ $kinds == all || $kinds == "$kind" ]] || continue
  for t in $targets; do
    if [[ $t == linkbuffer ]]; then
      if [[ $kind == random ]]; then random_run fuzz_linkbuffer.py linkbuffer "${RANDOM_RUNS:-20000}"
      else atheris_run fuzz_linkbuffer.py linkbuffer "${LB_RUNS:-1000000}"; fi
    elif [[ $kind == random ]]; then random_run fuzz_parsers.py "$t" "${RANDOM_PARSER_RUNS:-50000}"
    else atheris_run fuzz_parsers.py "$t" "${PARSER_RUNS:-200000}"; fi
  done
done
