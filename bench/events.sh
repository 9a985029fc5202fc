#!/usr/bin/env bash
# The event feed's cost (BENCHMARKS.md, "The event feed's cost"): the request path's figures
# (bench/request-path.sh) with and without the NATS JetStream publisher, alternated in one
# sitting on one database (A B, then B A, ...), each run with its own `baseline`.
#   bench/events.sh <sqlite|postgres> [rounds] [seconds]
# Needs the release builds (cargo build --release -p sspm-cli -p sspm-load) and a NATS server
# with JetStream (NATS_URL, default nats://127.0.0.1:4222). Each sitting publishes to a stream
# of its own (SSPM_BENCH_<time>), so no event id repeats one of an earlier sitting's, which
# JetStream would drop as a duplicate instead of storing.
set -euo pipefail
backend=$1 rounds=${2:-2} secs=${3:-10}
nats=${NATS_URL:-nats://127.0.0.1:4222}
bin=${SSPM:-target/release/sspm} load=${LOAD:-target/release/sspm-load}
export OUT=${OUT:-bench/out} LOAD=$load
data=/tmp/sspm-bench-events
sitting=$(date +%s)
mkdir -p "$OUT"
env_db=()
case $backend in
  sqlite) rm -rf "$data" ;;
  postgres)
    export PG_CPU=1
    for s in request authorization approval ticketing; do
      psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS sspm_bench_$s WITH (FORCE)" -c "CREATE DATABASE sspm_bench_$s" postgres
      env_db+=("SSPM__SERVICES__${s^^}__DATABASE_URL=postgres://postgres@127.0.0.1:5432/sspm_bench_$s")
    done ;;
  *) echo "backend: sqlite or postgres" >&2; exit 2 ;;
esac
stop() { pkill -f ' up --data-dir' || true; while pgrep -f ' up --data-dir' >/dev/null; do sleep 0.2; done; }
pending() { curl -s http://127.0.0.1:9461/metrics | awk '/^sspm_events_pending/{print $2}'; }
start() { # on|off: the publisher
  local publisher=()
  if [ "$1" = on ]; then
    publisher=("SSPM__EVENTS__NATS_URL=$nats" "SSPM__EVENTS__STREAM=SSPM_BENCH_$sitting"
      "SSPM__EVENTS__SUBJECT_PREFIX=sspmbench.s$sitting" "SSPM__EVENTS__STREAM_MAX_AGE_SECONDS=3600")
  fi
  stop
  env SSPM__ADMISSION__PER_PRINCIPAL_PER_SECOND=0 SSPM__ADMISSION__PER_PRINCIPAL_MAX_IN_FLIGHT=0 RUST_LOG=warn \
    "${env_db[@]}" "${publisher[@]}" setsid "$bin" up --data-dir "$data" >"$OUT/events-$backend-sspm.log" 2>&1 &
  until curl -sf http://127.0.0.1:9461/metrics >/dev/null; do sleep 0.2; done
  # The events of the runs without a publisher are published first, before anything is measured.
  if [ "$1" = on ]; then
    local t0=$SECONDS
    until [ "$(pending)" = 0 ]; do sleep 0.5; done
    echo "publisher caught up with the earlier runs' events in $((SECONDS - t0)) s"
  fi
}
start off
"$load" seed --business-units 1000 --requests 2000 >/dev/null
for ((i = 1; i <= rounds; i++)); do
  order="off on"; ((i % 2 == 0)) && order="on off"
  for p in $order; do
    start "$p"
    label="events-$backend-$p-$i"
    rm -f "$OUT/$label"-*
    echo "## $label"
    # The broker's CPU counts in CPU per create (its memory is the last figure of each row).
    (while sleep 0.25; do pending; done) >"$OUT/$label-pending.txt" &
    sampler=$!
    SSPM_PID="$(pgrep -f ' up --data-dir') $(pgrep -x nats-server | head -n 1)" \
      bench/request-path.sh "$label" 1000 "$secs"
    kill "$sampler"
    if [ "$p" = on ]; then
      # The largest backlog seen (sampled every 250 ms), and how long the last one took to clear.
      t0=$(date +%s.%N)
      while [ "$(pending)" != 0 ]; do sleep 0.1; done
      python3 - "$OUT/$label-create.json" "$OUT/$label-pending.txt" "$t0" "$(date +%s.%N)" <<'PY'
import json, sys
path, samples, t0, t1 = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
most = max([int(float(x)) for x in open(samples).read().split()] or [0])
r = json.load(open(path)); r["events_pending_max"] = most; r["drain_s"] = round(t1 - t0, 2)
json.dump(r, open(path, "w"), indent=1)
print(f"largest backlog of unpublished events: {most}; the last cleared {t1 - t0:.1f} s after the load")
PY
    fi
  done
done
stop
python3 - "$OUT" "$backend" "$rounds" <<'PY'
import json, sys
out, backend, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
def get(label, name): return json.load(open(f"{out}/{label}-{name}.json"))
print("| run | baseline/s | limits/s | limits ÷ baseline | create/s | create efficiency | CPU ms/create | open-loop p99 ms (rate) | largest backlog |")
print("|---|---|---|---|---|---|---|---|---|")
for i in range(1, rounds + 1):
    for p in ("off", "on"):
        label = f"events-{backend}-{p}-{i}"
        b, l, c = (get(label, n)["total"]["per_second"] for n in ("baseline", "limits", "create"))
        cj = get(label, "create")
        import glob
        op = json.load(open(sorted(glob.glob(f"{out}/{label}-create-open-*.json"))[0]))
        print(f"| {p} {i} | {b:,.0f} | {l:,.0f} | {l/b:.3f} | {c:,.0f} | {c*5/b:.3f} | {cj['cpu_ms_per_create']} | {op['total']['latency_ms']['p99']} ({op['total']['per_second']:.0f}/s) | {cj.get('events_pending_max', '—')} |")
PY
