#!/usr/bin/env bash
# What partner pools cost the request path (BENCHMARKS.md, "Partner pools' cost"): the
# request path's figures (bench/request-path.sh) with the load partner's pool unset
# ("unsized": one statement more per automatic create than before pools) and set
# ("sized": every load business unit draws on one pool, so each increase locks its row and
# sums the pool's 1,000 business units), alternated in one sitting on one SQLite database,
# each run with its own `baseline`.
#   bench/pools.sh [rounds] [seconds]
# Needs the release builds (cargo build --release -p sspm-cli -p sspm-load) and grpcurl
# (GRPCURL, default target/ci-venv/bin/grpcurl, which .ci/grpcurl-smoke installs).
set -euo pipefail
rounds=${1:-2} secs=${2:-10}
bin=${SSPM:-target/release/sspm} load=${LOAD:-target/release/sspm-load}
grpcurl=${GRPCURL:-target/ci-venv/bin/grpcurl}
export OUT=${OUT:-bench/out} LOAD=$load
data=/tmp/sspm-bench-pools
mkdir -p "$OUT"
rm -rf "$data"
env SSPM__ADMISSION__PER_PRINCIPAL_PER_SECOND=0 SSPM__ADMISSION__PER_PRINCIPAL_MAX_IN_FLIGHT=0 RUST_LOG=warn \
  setsid "$bin" up --data-dir "$data" >"$OUT/pools-sspm.log" 2>&1 &
trap 'pkill -f " up --data-dir $data" || true' EXIT
until curl -sf http://127.0.0.1:9461/metrics >/dev/null; do sleep 0.2; done
"$load" seed --business-units 1000 --requests 2000 >/dev/null
rep=$("$bin" token rep@sspm.example)
pool() { # sized|unsized
  if [ "$1" = sized ]; then
    "$grpcurl" -plaintext -H "authorization: Bearer $rep" -d '{"partner_id": "bu-load",
      "size": {"concurrent": 10000000, "outbound": 10000000, "agentless": 10000000}, "reason": "bench"}' \
      127.0.0.1:50051 sspm.v1.PortRequestService/SetPartnerPool >/dev/null
  else
    "$grpcurl" -plaintext -H "authorization: Bearer $rep" -d '{"partner_id": "bu-load", "reason": "bench"}' \
      127.0.0.1:50051 sspm.v1.PortRequestService/ClearPartnerPool >/dev/null
  fi
}
for ((i = 1; i <= rounds; i++)); do
  order="unsized sized"; ((i % 2 == 0)) && order="sized unsized"
  for p in $order; do
    pool "$p"
    label="pools-$p-$i"
    rm -f "$OUT/$label"-*
    echo "## $label"
    SSPM_PID="$(pgrep -f " up --data-dir $data")" bench/request-path.sh "$label" 1000 "$secs"
  done
done
