#!/usr/bin/env bash
#
# pgo.sh -- a profile-guided (PGO) release build of switchyard.
#
# WHAT IT DOES
#   1. Builds switchyard instrumented (-Cprofile-generate), with the release
#      profile, into OUT/gen.
#   2. Trains it: three switchyard-backend processes on loopback, the
#      instrumented proxy in front of them with each reference strategy in
#      turn (the Wasm round-robin, least-conn and ip-hash plugins, then the
#      host's own round robin), and switchyard-stress sending keep-alive
#      HTTP/1.1 GETs at 1, 50 and 256 connections for TRAIN seconds each.
#      The proxy is stopped with SIGTERM, so it drains and writes its
#      profile as it exits.
#   3. Merges the profiles with llvm-profdata (rustup component
#      llvm-tools, added if missing).
#   4. Builds switchyard again with -Cprofile-use: OUT/switchyard.
#
#   LLVM then knows which branches and calls the request path takes: hot
#   code is laid out together and inlined along the paths it runs, so fewer
#   instructions run and fewer cache lines of code are touched per request.
#   On the 2-core benchmark machine (README, "Instructions per request";
#   examples/bench/HISTORY.md, session 13) it cut
#   instructions per proxied request by about a fifth and user CPU time per
#   request by about a quarter against the same commit's plain release build.
#   Paths the training does not run (TLS, HTTP/2, WebSocket, the admin API)
#   are built as well as in a plain build but laid out as cold code.
#
# USAGE
#   examples/bench/pgo.sh            # about 20 minutes on 2 cores
#   TRAIN=4 OUT=target/pgo examples/bench/pgo.sh
#   examples/bench/compare.sh -b target/pgo/switchyard
#
#   Needs only the workspace: the backends and the load generator are its
#   own switchyard-backend and switchyard-stress (built here, plainly).
#   Both builds use their own target directories under OUT, so the usual
#   target/release is left as it is; each starts from scratch (the flags
#   differ for every crate), which is most of the time it takes.

set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/../.." && pwd)
cd "$REPO_ROOT"

OUT=${OUT:-"$REPO_ROOT/target/pgo"}
TRAIN=${TRAIN:-4}
mkdir -p "$OUT"
OUT=$(cd -- "$OUT" && pwd)

die() { echo "pgo.sh: $*" >&2; exit 1; }
step() { echo "== $*" >&2; }

# --- tools ---------------------------------------------------------------

HOST=$(rustc -vV | awk '/^host:/ { print $2 }')
PROFDATA="$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata"
if [[ ! -x $PROFDATA ]]; then
    step "adding the rustup component llvm-tools (llvm-profdata)"
    rustup component add llvm-tools
fi
[[ -x $PROFDATA ]] || die "no llvm-profdata at $PROFDATA"

# --- processes, stopped on exit ------------------------------------------

# The backends, and the proxy while one runs (cleared once it has exited, so
# that its number, free again, is never signalled).
PIDS=()
PROXY=
cleanup() {
    local pid
    for pid in "${PIDS[@]}" $PROXY; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# usage: address_in LOG PATTERN -> the first host:port after PATTERN in LOG,
# waiting up to 10 s for the process to write it.
address_in() {
    local log=$1 pattern=$2 addr i
    for ((i = 0; i < 100; i++)); do
        addr=$(grep -o -m1 "${pattern}[0-9.]*:[0-9]*" "$log" 2>/dev/null | head -n1) || true
        if [[ -n $addr ]]; then
            echo "${addr#"$pattern"}"
            return 0
        fi
        sleep 0.1
    done
    cat "$log" >&2
    die "no address in $log"
}

# --- 1. instrumented build -----------------------------------------------

# --target: RUSTFLAGS then reach only the target's crates, not build scripts
# or proc macros (host/build.rs also clears them for the plugin build).
step "building the load tools (plain release)"
cargo build --release --locked -p switchyard-backend -p switchyard-stress
BACKEND_BIN="$REPO_ROOT/target/release/switchyard-backend"
STRESS_BIN="$REPO_ROOT/target/release/switchyard-stress"

PROFILES="$OUT/profiles"
rm -rf "$PROFILES"
mkdir -p "$PROFILES"
step "building switchyard instrumented (-Cprofile-generate) into $OUT/gen"
RUSTFLAGS="-Cprofile-generate=$PROFILES" \
    cargo build --release --locked -p switchyard --target "$HOST" --target-dir "$OUT/gen"
GEN_BIN="$OUT/gen/$HOST/release/switchyard"

# --- 2. training -----------------------------------------------------------

WORK="$OUT/train"
rm -rf "$WORK"
mkdir -p "$WORK"
BACKENDS=()
for i in 1 2 3; do
    "$BACKEND_BIN" --listen 127.0.0.1:0 --name "backend $i" >"$WORK/backend-$i.log" 2>&1 &
    PIDS+=($!)
done
for i in 1 2 3; do
    BACKENDS+=("\"$(address_in "$WORK/backend-$i.log" "listening on http://")\"")
done

for strategy in round-robin least-conn ip-hash host:round-robin; do
    conf="$WORK/${strategy//:/-}.toml"
    log="${conf%.toml}.log"
    cat >"$conf" <<EOF
listen = "127.0.0.1:0"
admin = "off"
plugins = "$REPO_ROOT/plugins"

[[upstream]]
name = "app"
strategy = "$strategy"
servers = [$(IFS=,; echo "${BACKENDS[*]}")]
EOF
    LLVM_PROFILE_FILE="$PROFILES/switchyard-%p-%m.profraw" "$GEN_BIN" run --config "$conf" >"$log" 2>&1 &
    PROXY=$!
    url="http://$(address_in "$log" "listen=")/"
    for conns in 1 50 256; do
        step "training: $strategy, $conns connections, ${TRAIN}s"
        # Exit 1 (some request failed) is judged from the report below.
        report=$("$STRESS_BIN" -u "$url" -c "$conns" -d "${TRAIN}s") || (($? == 1)) ||
            die "switchyard-stress could not run ($log)"
        grep -E '^(GET|ok)' <<<"$report" >&2
        # A profile of failing requests would train the error paths.
        grep -q '^ok .*, failed 0$' <<<"$report" || die "requests failed while training ($log)"
    done
    kill -TERM "$PROXY"
    status=0
    wait "$PROXY" || status=$?
    PROXY=
    ((status == 0)) || die "the instrumented proxy exited with $status ($log)"
done

# --- 3. merge ---------------------------------------------------------------

shopt -s nullglob
raw=("$PROFILES"/*.profraw)
((${#raw[@]})) || die "the training wrote no profiles to $PROFILES"
"$PROFDATA" merge -o "$OUT/switchyard.profdata" "${raw[@]}"

# --- 4. optimized build ------------------------------------------------------

step "building switchyard with the profile (-Cprofile-use) into $OUT/use"
RUSTFLAGS="-Cprofile-use=$OUT/switchyard.profdata" \
    cargo build --release --locked -p switchyard --target "$HOST" --target-dir "$OUT/use"
install -m 0755 "$OUT/use/$HOST/release/switchyard" "$OUT/switchyard"
step "done: $OUT/switchyard"
