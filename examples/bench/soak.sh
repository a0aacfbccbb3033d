#!/usr/bin/env bash
#
# soak.sh -- hot reload under load: change the plugin or the config CHANGES
# times while a client keeps a fixed request rate, and count failed requests
# (the target is 0).
#
# WHAT IT DOES
#   Starts three example backends (target/release/switchyard-backend) and
#   target/release/switchyard from a config in a temporary directory, drives
#   it with target/release/switchyard-stress at RATE requests/s on CONNS
#   connections, and meanwhile makes CHANGES changes, one every INTERVAL
#   seconds, alternating:
#     * plugin: copy least-conn.wasm or round-robin.wasm (in turn) over the
#       plugin the upstream uses, the way a user does (cp, not atomic);
#     * config: rewrite the config with the next weight for backend 1
#       (1, 2, 3, 1, ...), which rebuilds the upstream.
#   At the end it prints the stress report (requests, failures by kind,
#   latency, split), the reloads the proxy counted by result (from its
#   /metrics), and PASS when no request failed and every change was applied.
#
# USAGE
#   examples/bench/soak.sh [-n CHANGES] [-i INTERVAL] [-r RATE] [-c CONNS]
#   Defaults: 100 changes every 0.4 s at 2000 req/s on 20 connections
#   (about 45 s). Build first:
#     cargo build --release -p switchyard -p switchyard-backend -p switchyard-stress
#
# OUTPUT
#   The summary on stdout; the stress report (JSON) and the logs stay in the
#   temporary directory when KEEP_TMP=1.

set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/../.." && pwd)
BIN=${BIN:-"$REPO_ROOT/target/release"}
CHANGES=${CHANGES:-100}
INTERVAL=${INTERVAL:-0.4}
RATE=${RATE:-2000}
CONNS=${CONNS:-20}
KEEP_TMP=${KEEP_TMP:-0}

while (($#)); do
    case $1 in
        -n) CHANGES=${2:?}; shift 2 ;;
        -i) INTERVAL=${2:?}; shift 2 ;;
        -r) RATE=${2:?}; shift 2 ;;
        -c) CONNS=${2:?}; shift 2 ;;
        -h | --help) sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
done

die() { echo "error: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }

[[ $CHANGES =~ ^[1-9][0-9]*$ ]] || die "CHANGES must be a positive integer"
for b in switchyard switchyard-backend switchyard-stress; do
    [[ -x $BIN/$b ]] || die "$BIN/$b not found; build with:" \
        "cargo build --release -p switchyard -p switchyard-backend -p switchyard-stress"
done
PLUGINS_SRC=$REPO_ROOT/plugins
for p in round-robin least-conn; do
    [[ -f $PLUGINS_SRC/$p.wasm ]] || die "$PLUGINS_SRC/$p.wasm not found (cargo build --release -p switchyard writes it)"
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/switchyard-soak.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ $KEEP_TMP == 1 ]]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listens on 127.0.0.1:$1 after 10 s"
}

# --- backends and proxy -------------------------------------------------------

SERVERS=()
for n in 1 2 3; do
    port=$(free_port)
    "$BIN/switchyard-backend" --name "$n" --listen "127.0.0.1:$port" >"$TMP/backend$n.log" 2>&1 &
    PIDS+=("$!")
    wait_port "$port"
    SERVERS+=("127.0.0.1:$port")
done

mkdir "$TMP/plugins"
cp "$PLUGINS_SRC/round-robin.wasm" "$TMP/plugins/strategy.wasm"
PROXY_PORT=$(free_port)
ADMIN_PORT=$(free_port)
write_config() {
    local weight=$1
    cat >"$TMP/switchyard.toml.new" <<EOF
listen = "127.0.0.1:$PROXY_PORT"
admin = "127.0.0.1:$ADMIN_PORT"
plugins = "$TMP/plugins"

[[upstream]]
name = "app"
strategy = "strategy"
servers = [{ address = "${SERVERS[0]}", weight = $weight }, "${SERVERS[1]}", "${SERVERS[2]}"]
EOF
    # Rewritten in place, as an editor without atomic saves would.
    cat "$TMP/switchyard.toml.new" >"$TMP/switchyard.toml"
}
write_config 1
RUST_LOG=${RUST_LOG:-warn} "$BIN/switchyard" run --config "$TMP/switchyard.toml" >"$TMP/switchyard.log" 2>&1 &
PIDS+=("$!")
wait_port "$PROXY_PORT"

# --- load and changes -----------------------------------------------------------

seconds=$(awk -v n="$CHANGES" -v i="$INTERVAL" 'BEGIN { printf "%d", n * i + 4 }')
log "load: $RATE req/s on $CONNS connections for ${seconds}s; $CHANGES changes every ${INTERVAL}s"
"$BIN/switchyard-stress" -u "http://127.0.0.1:$PROXY_PORT/" -d "${seconds}s" --rate "$RATE" \
    -c "$CONNS" --json >"$TMP/stress.json" 2>"$TMP/stress.log" &
STRESS=$!
sleep 2

plugins=(least-conn round-robin)
plugin_changes=0
config_changes=0
for ((i = 0; i < CHANGES; i++)); do
    if ((i % 2 == 0)); then
        cp "$PLUGINS_SRC/${plugins[$((plugin_changes % 2))]}.wasm" "$TMP/plugins/strategy.wasm"
        plugin_changes=$((plugin_changes + 1))
    else
        config_changes=$((config_changes + 1))
        write_config $((config_changes % 3 + 1))
    fi
    sleep "$INTERVAL"
done
# Exit 1 means some requests failed: the report is written, and judged below.
stress_status=0
wait "$STRESS" || stress_status=$?
((stress_status <= 1)) || die "switchyard-stress failed: $(cat "$TMP/stress.log")"
sleep 1

# --- report ---------------------------------------------------------------------

metrics=$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" 2>/dev/null ||
    python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$ADMIN_PORT/metrics').read().decode())")
reloads() { awk -v k="$1" -v r="$2" 'index($0, "switchyard_reloads_total{kind=\"" k "\",result=\"" r "\"}") == 1 { print $2 }' <<<"$metrics"; }
plugin_ok=$(reloads plugin ok); plugin_err=$(reloads plugin error)
config_ok=$(reloads config ok); config_err=$(reloads config error)

python3 - "$TMP/stress.json" <<EOF
import json, sys
r = json.load(open(sys.argv[1]))
f = r["failures"]
print(f"requests: {r['total']} in {r['elapsed_s']:.1f} s ({r['rps']:.0f} req/s), ok {r['successes']}, failed {f['total']}")
print("failures by kind:", {k: v for k, v in f.items() if k != "total" and v})
lat = r.get("latency") or {}
print("latency ms: " + ", ".join(f"{k} {v:.2f}" for k, v in lat.items() if isinstance(v, (int, float))))
print("split:", {b["name"]: b["count"] for b in r["backends"]})
EOF
echo "changes made: $plugin_changes plugin copies, $config_changes config edits"
echo "reloads counted by the proxy: plugin ok ${plugin_ok:-0}, plugin error ${plugin_err:-0}, config ok ${config_ok:-0}, config error ${config_err:-0}"
failed=$(python3 -c "import json; print(json.load(open('$TMP/stress.json'))['failures']['total'])")
if [[ $failed == 0 && ${plugin_ok:-0} -ge 1 && ${config_ok:-0} -ge 1 ]]; then
    echo "PASS: 0 failed requests across $CHANGES changes"
else
    echo "FAIL: $failed failed requests"
    exit 1
fi
