#!/usr/bin/env bash
# Scale-out throughput (issue #7): `dp3 api` + 1 worker, then `dp3 api` + 2 workers, on the
# local RabbitMQ (127.0.0.1:5672, guest/guest) and one shared SQLite store. For each setup,
# `dp3 load` posts DATAPOINTS datapoints (same seed) and the script waits until the workers
# have applied all of them; it prints end-to-end datapoints per second (first POST until the
# last datapoint is applied) for both setups and their ratio.
#
# The example configuration is used with no modules enabled, so every applied datapoint is an
# accepted one (`dp3_datapoints_applied_total` of the workers reaches the accepted count).
#
# Usage: scripts/scaleout_bench.sh
#   env: DATAPOINTS BATCH CONCURRENCY ENTITIES; SKIP_BUILD=1 uses the existing release build
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
DATAPOINTS=${DATAPOINTS:-200000}
BATCH=${BATCH:-1000}
CONCURRENCY=${CONCURRENCY:-4}
ENTITIES=${ENTITIES:-10000}
APP=dp3bench
BIN=$ROOT/target/release/dp3

command -v rabbitmqctl >/dev/null || { echo "rabbitmqctl not found" >&2; exit 1; }
(exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null || {
    echo "RabbitMQ is not reachable on 127.0.0.1:5672" >&2
    exit 1
}

if [[ -z ${SKIP_BUILD:-} ]]; then
    echo "== cargo build --release --workspace"
    cargo build --release --workspace
fi

WORK=$(mktemp -d /tmp/dp3-scaleout-bench.XXXXXX)
PIDS=()

stop_all() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}

delete_queues() {
    local w kind
    for w in 0 1; do
        for kind in "" -pri -snapshots -control; do
            rabbitmqctl -q delete_queue "$APP-worker-$w$kind" >/dev/null 2>&1 || true
        done
    done
}

cleanup() {
    stop_all
    delete_queues
    echo "logs and stores: $WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Sum of a metric over the given /metrics ports.
metric_sum() {
    local name=$1
    shift
    local port total=0 v
    for port in "$@"; do
        v=$(curl -s "http://127.0.0.1:$port/metrics" |
            awk -v n="$name" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%.0f", s }')
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

now() { date +%s.%N; }

# bench N: sets ACCEPTED and SECONDS_TAKEN.
bench() {
    local n=$1
    local dir=$WORK/workers$n
    mkdir -p "$dir"
    cp -r "$ROOT/config" "$dir/config"
    sed -i -e 's/^\(\s*host:\).*/\1 127.0.0.1/' \
        -e "s/^worker_processes:.*/worker_processes: $n/" \
        -e "s|^modules_dir:.*|modules_dir: $ROOT/target/release|" \
        -e '/^enabled_modules:/,/^$/d' "$dir/config/processing_core.yml"
    echo "enabled_modules: []" >>"$dir/config/processing_core.yml"

    delete_queues
    APP_NAME=$APP "$BIN" rabbitmq-setup --config "$dir/config" >"$dir/setup.log" 2>&1

    local ports=() i port
    for ((i = 0; i < n; i++)); do
        port=$(free_port)
        ports+=("$port")
        APP_NAME=$APP RUST_LOG=warn "$BIN" worker --config "$dir/config" --data "$dir/data" \
            --metrics-listen "127.0.0.1:$port" "$i" 2>"$dir/worker$i.log" &
        PIDS+=($!)
        until curl -sf "http://127.0.0.1:$port/metrics" >/dev/null; do sleep 0.2; done
    done
    local api_port
    api_port=$(free_port)
    APP_NAME=$APP RUST_LOG=warn "$BIN" api --config "$dir/config" --data "$dir/data" \
        --listen "127.0.0.1:$api_port" 2>"$dir/api.log" &
    PIDS+=($!)
    until curl -sf "http://127.0.0.1:$api_port/" >/dev/null; do sleep 0.2; done

    local t0 t1 accepted applied=0 waited=0
    t0=$(now)
    "$BIN" load --url "http://127.0.0.1:$api_port" --config "$dir/config" \
        --datapoints "$DATAPOINTS" --batch "$BATCH" --concurrency "$CONCURRENCY" \
        --entities "$ENTITIES" --no-wait 2>/dev/null | tee "$dir/load.txt"
    accepted=$(awk -F: '/datapoints accepted/ { gsub(/ /, "", $2); print $2 }' "$dir/load.txt")
    until ((applied >= accepted)); do
        sleep 0.1
        applied=$(metric_sum dp3_datapoints_applied_total "${ports[@]}")
        waited=$((waited + 1))
        if ((waited > 6000)); then
            echo "workers applied only $applied of $accepted datapoints in 10 minutes" >&2
            exit 1
        fi
    done
    t1=$(now)
    stop_all
    ACCEPTED=$accepted
    SECONDS_TAKEN=$(echo "$t1 - $t0" | bc -l)
}

echo "== 1 worker"
bench 1
acc1=$ACCEPTED secs1=$SECONDS_TAKEN
echo "== 2 workers"
bench 2
acc2=$ACCEPTED secs2=$SECONDS_TAKEN

rate1=$(echo "$acc1 / $secs1" | bc -l)
rate2=$(echo "$acc2 / $secs2" | bc -l)
echo
printf 'datapoints: %s per run, batch %s, %s connections, %s entities per type, %s CPUs\n' \
    "$DATAPOINTS" "$BATCH" "$CONCURRENCY" "$ENTITIES" "$(nproc)"
printf '1 worker:  %8.0f datapoints/s  (%s applied in %.1f s)\n' "$rate1" "$acc1" "$secs1"
printf '2 workers: %8.0f datapoints/s  (%s applied in %.1f s)\n' "$rate2" "$acc2" "$secs2"
printf 'ratio 2/1: %.2f\n' "$(echo "$rate2 / $rate1" | bc -l)"
