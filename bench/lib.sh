# Shared by bench/figures.sh and bench/history.sh: `run NAME ARGS...` runs one scenario
# (sspm-load run ARGS) for $secs seconds over $units business units, keeps its JSON report as
# $out/$label-NAME.json with the peak resident memory of each process in $SSPM_PID added, and
# prints a table row.
# SSPM_PID: the system's processes, separated by spaces (one for `sspm up`, four for
# `sspm serve` each); their memory is reported in that order.
mkdir -p "$out"
read -r -a pids <<<"${SSPM_PID:-}"
# Anonymous resident memory (heap, stacks) in KiB: what the process itself uses. VmRSS also
# counts the pages of the SQLite files mapped into memory, which the kernel reclaims at will.
rss() { awk '/RssAnon/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
mib() { local out=() p; for p in "$@"; do out+=("$((p / 1024))"); done; (IFS=/; echo "${out[*]:-—}"); }
at_rest() { local now=() p; for p in "${pids[@]}"; do now+=("$(rss "$p")"); done; echo "at rest: $(mib "${now[@]}") MiB resident (anonymous)"; }
run() { # name, then sspm-load run arguments
  local name=$1; shift
  local peak=() pid i r
  for i in "${!pids[@]}"; do peak[i]=0; done
  "$load" run --business-units "$units" --duration "${secs}s" --json "$@" >"$out/$label-$name.json" 2>/dev/null &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    for i in "${!pids[@]}"; do r=$(rss "${pids[i]}"); [ "$r" -gt "${peak[i]}" ] && peak[i]=$r; done
    sleep 0.5
  done
  wait "$pid"
  python3 - "$out/$label-$name.json" "$name" "$(mib "${peak[@]}")" "${peak[@]}" <<'PY'
import json, sys
path, name, shown, peaks = sys.argv[1], sys.argv[2], sys.argv[3], [int(p) for p in sys.argv[4:]]
r = json.load(open(path)); t = r["total"]; l = t.get("latency_ms", {})
r["peak_rss_kib"] = peaks
json.dump(r, open(path, "w"), indent=1)
print(f"| {name} | {t['per_second']:.0f} | {l.get('p50')} | {l.get('p90')} | {l.get('p99')} | {l.get('p99.9')} | {l.get('max')} | {r['errors']} | {shown} |")
PY
}
header() {
  echo "| scenario | ops/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | peak anon RSS MiB |"
  echo "|---|---|---|---|---|---|---|---|---|"
}
