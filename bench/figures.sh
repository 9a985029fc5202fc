#!/usr/bin/env bash
# The figures of BENCHMARKS.md: every scenario against a running system (start it first, see
# BENCHMARKS.md), one JSON report per run into $OUT, and a summary table at the end.
#   bench/figures.sh <label> [business units] [seconds]
# Environment: SSPM_PID (the system's process, for its resident memory), OUT (default
# bench/out), LOAD (default target/release/sspm-load).
set -euo pipefail
label=$1 units=${2:-1000} secs=${3:-10}
out=${OUT:-bench/out} load=${LOAD:-target/release/sspm-load}
mkdir -p "$out"
# Anonymous resident memory (heap, stacks): what the process itself uses. VmRSS also counts
# the pages of the SQLite files mapped into memory, which the kernel reclaims at will.
rss() { [ -n "${SSPM_PID:-}" ] && awk '/RssAnon/{print $2}' "/proc/$SSPM_PID/status" || echo 0; }
run() { # name, then sspm-load run arguments
  local name=$1; shift
  local peak=0 pid
  "$load" run --business-units "$units" --duration "${secs}s" --json "$@" >"$out/$label-$name.json" 2>/dev/null &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do r=$(rss); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.5; done
  wait "$pid"
  python3 - "$out/$label-$name.json" "$name" "$peak" <<'PY'
import json, sys
path, name, peak = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = json.load(open(path)); t = r["total"]; l = t.get("latency_ms", {})
r["peak_rss_kib"] = peak
json.dump(r, open(path, "w"), indent=1)
print(f"| {name} | {t['per_second']:.0f} | {l.get('p50')} | {l.get('p90')} | {l.get('p99')} | {l.get('p99.9')} | {l.get('max')} | {r['errors']} | {peak // 1024} |")
PY
}
echo "at rest: $(( $(rss) / 1024 )) MiB resident (anonymous)"
echo "| scenario | ops/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | peak anon RSS MiB |"
echo "|---|---|---|---|---|---|---|---|---|"
run baseline --scenario baseline
run limits --scenario limits
run limits-1user --scenario limits --principals 1
run list --scenario list
run create --scenario create
run review --scenario review --concurrency 16
run mixed --scenario mixed
half=$(python3 -c "import json; print(max(1, round(json.load(open('$out/$label-create.json'))['total']['per_second'] / 2)))")
run "create-open-$half" --scenario create --rate "$half" --concurrency 64
