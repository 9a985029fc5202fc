#!/usr/bin/env bash
# The figures of BENCHMARKS.md: every scenario against a running system (start it first, see
# BENCHMARKS.md), one JSON report per run into $OUT, and a summary table at the end.
#   bench/figures.sh <label> [business units] [seconds]
# Environment: SSPM_PID (the system's processes, for their resident memory: see lib.sh), OUT (default
# bench/out), LOAD (default target/release/sspm-load).
set -euo pipefail
label=$1 units=${2:-1000} secs=${3:-10}
out=${OUT:-bench/out} load=${LOAD:-target/release/sspm-load}
source "$(dirname "$0")/lib.sh"
at_rest
header
run baseline --scenario baseline
run limits --scenario limits
run limits-1user --scenario limits --principals 1
run list --scenario list
run create --scenario create
run review --scenario review --concurrency 16
run mixed --scenario mixed
half=$(python3 -c "import json; print(max(1, round(json.load(open('$out/$label-create.json'))['total']['per_second'] / 2)))")
run "create-open-$half" --scenario create --rate "$half" --concurrency 64
