#!/usr/bin/env bash
# The request path's figures (BENCHMARKS.md, "The request path"): `baseline`, `limits`, `create`
# closed loop with the CPU each create costs, and `create` open loop at half the closed-loop
# rate, against a running system (start it first, see BENCHMARKS.md).
#   bench/request-path.sh <label> [business units] [seconds]
# Environment: SSPM_PID (the system's processes), PG_CPU=1 to count PostgreSQL's processes'
# CPU too, OUT (default bench/out), LOAD (default target/release/sspm-load).
set -euo pipefail
label=$1 units=${2:-1000} secs=${3:-10}
out=${OUT:-bench/out} load=${LOAD:-target/release/sspm-load}
source "$(dirname "$0")/lib.sh"
# CPU time (user + system, in clock ticks) of the system's processes, and PostgreSQL's.
ticks() {
  local total=0 p u s
  local all=("${pids[@]}")
  if [ -n "${PG_CPU:-}" ]; then mapfile -t -O "${#all[@]}" all < <(pgrep -x postgres); fi
  for p in "${all[@]}"; do
    read -r u s < <(awk '{print $14, $15}' "/proc/$p/stat" 2>/dev/null || echo "0 0")
    total=$((total + u + s))
  done
  echo "$total"
}
at_rest
header
run baseline --scenario baseline
run limits --scenario limits
before=$(ticks)
run create --scenario create
after=$(ticks)
python3 - "$out/$label-create.json" "$before" "$after" "$(getconf CLK_TCK)" "$secs" <<'PY'
import json, sys
path, before, after, hz, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
r = json.load(open(path))
# The CPU spans the 2 s of warm-up too: count its creates at the measured rate.
n = r["total"]["per_second"] * (secs + 2)
ms = (after - before) / hz * 1000 / max(n, 1)
r["cpu_ms_per_create"] = round(ms, 2)
json.dump(r, open(path, "w"), indent=1)
print(f"CPU per create: {ms:.2f} ms (all the system's processes{', and PostgreSQL' if len(sys.argv) > 6 else ''})")
PY
half=$(python3 -c "import json; print(max(1, round(json.load(open('$out/$label-create.json'))['total']['per_second'] / 2)))")
run "create-open-$half" --scenario create --rate "$half" --concurrency 64
