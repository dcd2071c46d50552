#!/usr/bin/env bash
# End-to-end ingestion A/B (issue #3): for each ROUND, every given dp3 binary in turn runs
# `dp3 run` on the example configuration (a fresh store), `dp3 load` posts DATAPOINTS
# datapoints and waits until they are applied; the script prints the load report, the
# server's CPU time per datapoint in total and per thread group (writer, lanes, http,
# acceptor, ...) and its peak resident memory. Runs of different binaries alternate, so a
# machine whose speed drifts (this one does, by ±20%) affects both sides alike: compare the
# binaries by the ratios within one round.
#
# Usage: scripts/ingest_ab.sh BINARY [BINARY ...]
#   env: DATAPOINTS (1000000) ROUNDS (3) PORT (5690) LOAD_ARGS (more `dp3 load` flags, e.g.
#        "--concurrency 16 --rate 220000" for twice the sustainable load)
#   e.g. cp target/release/dp3 /tmp/dp3-new; scripts/ingest_ab.sh /tmp/dp3-old /tmp/dp3-new
# The modules of the example configuration are loaded from target/release (build them with
# `cargo build --release --workspace` first).
set -euo pipefail

cd "$(dirname "$0")/.."
DATAPOINTS=${DATAPOINTS:-1000000}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-5690}
LOAD_ARGS=${LOAD_ARGS:-}
[[ $# -ge 1 ]] || { sed -n '2,15p' "$0"; exit 2; }

ticks() { awk '{print $14 + $15}' "$1"; }   # utime + stime, in clock ticks
HZ=$(getconf CLK_TCK)

run_one() {
    local bin=$1 data
    data=$(mktemp -d)
    "$bin" run --config config --data "$data" --listen "127.0.0.1:$PORT" >"$data/server.log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break
        sleep 0.1
    done
    local before
    before=$(ticks /proc/$pid/stat)
    # Peak anonymous memory (heap): RSS also counts store pages the readers map, which are
    # shared page cache, not memory the server holds.
    (while kill -0 "$pid" 2>/dev/null; do awk '/RssAnon/ {print $2}' /proc/$pid/status; sleep 1; done |
        sort -n | tail -1 >"$data/anon_peak") 2>/dev/null &
    local sampler=$!
    # shellcheck disable=SC2086 # LOAD_ARGS is a list of flags
    "$bin" load --url "http://127.0.0.1:$PORT" --config config --datapoints "$DATAPOINTS" $LOAD_ARGS 2>&1 |
        grep -E "accepted|overloaded|throughput|latency|memory"
    local after
    after=$(ticks /proc/$pid/stat)
    echo "server CPU per datapoint: $(echo "scale=2; ($after - $before) * 1000000 / $HZ / $DATAPOINTS" | bc) µs" \
        "(peak RSS $(awk '/VmHWM/ {printf "%d MiB", $2 / 1024}' /proc/$pid/status))"
    for t in /proc/$pid/task/*; do
        echo "$(cat "$t/comm") $(ticks "$t/stat")"
    done | awk -v n="$DATAPOINTS" -v hz="$HZ" '{g = $1; sub(/-[0-9]+$/, "", g); c[g] += $2}
        END {for (g in c) if (c[g] > 0) printf "  %-16s %6.2f µs/dp\n", g, c[g] * 1e6 / hz / n}' | sort
    kill "$pid"
    wait "$pid" || true
    wait "$sampler" || true
    local anon
    anon=$(cat "$data/anon_peak" 2>/dev/null || true)
    echo "peak anonymous RSS: $((${anon:-0} / 1024)) MiB"
    rm -rf "$data"
}

for round in $(seq "$ROUNDS"); do
    for bin in "$@"; do
        echo "== round $round: $bin"
        run_one "$bin"
    done
done
