#!/bin/sh
# Run every benchmark in bench/ (each bench_*.py), passing the same flags to each:
#   sh bench/run_all.sh                  # the issue's sizes
#   sh bench/run_all.sh --repeats 1      # quicker
# BENCH_PYTHON picks the interpreter (default: the project's .venv).
set -e
cd "$(dirname "$0")/.."
python="${BENCH_PYTHON:-.venv/bin/python}"
for script in bench/bench_*.py; do
    echo "# $script"
    "$python" "$script" "$@"
done
