#!/usr/bin/env bash
# Cost against the size of the history (BENCHMARKS.md): grows the synthetic history of the
# running system's request database to each size in turn (sspm-load history), and runs
# limits, list and create (three times) at each. The history is spread over $units business units only, so
# every page of `list` is full and every business unit the scenarios touch carries
# size/$units requests.
#   bench/history.sh <label> <request database url> [business units] [seconds] [sizes...]
# Environment as bench/figures.sh.
set -euo pipefail
label=$1 db=$2 units=${3:-100} secs=${4:-10}
shift $(($# < 4 ? $# : 4))
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(10000 1000000)
out=${OUT:-bench/out} load=${LOAD:-target/release/sspm-load}
source "$(dirname "$0")/lib.sh"
for n in "${sizes[@]}"; do
  "$load" history --database-url "$db" --requests "$n" --business-units "$units" >&2
  echo
  echo "$n synthetic requests over $units business units; $(at_rest)"
  header
  run "$n-limits" --scenario limits
  run "$n-list" --scenario list
  # create three times: consecutive runs on two shared cores vary by 10-20%
  for i in 1 2 3; do run "$n-create-$i" --scenario create; done
done
