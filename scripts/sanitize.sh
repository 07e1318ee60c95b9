#!/usr/bin/env bash
# Build the extensions with AddressSanitizer + UndefinedBehaviorSanitizer (and the
# debug counters) in a scratch copy of the tree, then run the test suite there.
# The development install is not touched.
#
#   scripts/sanitize.sh                 # whole suite (lint tests excluded)
#   scripts/sanitize.sh tests/test_linkbuffer.py -x
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${SANITIZE_DIR:-/tmp/netpoll-sanitize}
rm -rf "$work"
mkdir -p "$work"
git -C "$root" ls-files -z --cached --others --exclude-standard \
  | (cd "$root" && xargs -0 cp --parents -t "$work")
python3 -m venv "$work/.venv"
"$work/.venv/bin/pip" install -q "Cython>=3.0" setuptools wheel pytest pytest-timeout hypothesis uvloop typing_extensions
(cd "$work" && NETPOLL_SANITIZE=1 NETPOLL_DEBUG=1 .venv/bin/pip install -q --no-build-isolation -e .)
asan=$(gcc -print-file-name=libasan.so)
ubsan=$(gcc -print-file-name=libubsan.so)
cd "$work"
# CPython is not instrumented: use the malloc allocator so ASan sees every block;
# leak detection is off (the interpreter keeps objects alive at exit by design).
LD_PRELOAD="$asan $ubsan" PYTHONMALLOC=malloc \
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  .venv/bin/python -m pytest -p no:cacheprovider -o timeout=120 \
    --deselect tests/test_lint.py "${@:-tests}"
