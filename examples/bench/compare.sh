#!/usr/bin/env bash
#
# compare.sh -- Switchyard vs nginx and HAProxy as a round-robin HTTP reverse
# proxy, on this machine, over loopback only.
#
# WHAT IT MEASURES
#   BACKENDS fast backends (default 3; one private nginx instance with one
#   `server` block per backend, backend i answering
#   `200 "Hello from backend i\n"`) sit behind the proxies, each of which
#   lists all of them and goes round robin over them:
#     * nginx       - `upstream` round-robin, keepalive 64 (or BACKENDS if
#                     more), HTTP/1.1 to the backends, worker_processes =
#                     nproc, access_log off;
#     * haproxy     - `mode http`, `balance roundrobin`, `http-reuse always`
#                     (keep-alive to the backends), nbthread = nproc, logging
#                     off, generous timeouts;
#     * switchyard  - target/release/switchyard with the round-robin Wasm
#                     plugin from the repo's plugins/ directory (its
#                     default `workers`: one serving thread per core);
#     * switchyard-native - the same binary with `strategy =
#                     "host:round-robin"` (the host's own round robin, no
#                     Wasm call): switchyard / switchyard-native is the cost
#                     of the plugin.
#   nginx and haproxy are the peers (PEERS, default both; the first one is
#   the baseline of the ratios). wrk drives each proxy with keep-alive
#   connections at each concurrency in CONNS, interleaved (nginx, haproxy,
#   switchyard, switchyard-native, nginx, ...) for ROUNDS rounds of DURATION
#   seconds each, and records requests/s and the p50/p99 latency reported by
#   `wrk --latency`.
#   Every proxy's limits are raised to the largest concurrency: the script's
#   soft open-files limit goes up to the hard one (`ulimit -n`), nginx's
#   worker_rlimit_nofile / worker_connections (proxy and backends, the
#   backends' also counting their listening sockets), HAProxy's maxconn and
#   Switchyard's client.max-connections are set from it and from BACKENDS.
#
# HOW TO READ IT
#   One row per (concurrency, round): each proxy's rps, p50 and p99 (ms), and
#   the rps ratios switchyard / each peer and switchyard-native / each peer
#   (>1 means Switchyard served more).
#   Below each concurrency, the median ratios over the rounds: those are the
#   headline numbers; the spread between rounds tells you how noisy the
#   machine was. Everything (wrk, the proxies, the backends) shares the same
#   cores, so this measures the whole loop on one box, not a proxy in
#   isolation; on a small or busy machine treat the numbers as indicative.
#   Also per concurrency: each proxy's own CPU time per request (user +
#   system µs, medians over the rounds; from /proc, nginx's workers and
#   HAProxy's threads included). It moves far less than rps from round to
#   round, and shows whether a difference is in user space (the proxy's
#   code) or in the kernel. The CSV has it per round.
#   Non-2xx responses or socket errors reported by wrk are flagged with `!`
#   and listed after the table; the proxies' logs are scanned for errors too.
#
# INSTRUCTIONS PER REQUEST (-i)
#   Requests per second on a shared or virtual machine move by 10-25% from
#   one round to the next. With -i each proxy runs instead under valgrind's
#   callgrind, with one worker (nginx: one process), and the user-space
#   instructions it executes per proxied request are counted over DURATION
#   seconds of `wrk -t1 -c8` after a warm-up: the same build gives the same
#   count within about 1%, so a change to the request path can be judged by
#   it. System-call and kernel costs are not counted. The peer is nginx
#   only (HAProxy is not run with -i: its threads under valgrind are not a
#   like-for-like one-worker count).
#
# USAGE
#   examples/bench/compare.sh [-r ROUNDS] [-d SECONDS] [-c "1 50 256"]
#                             [-n BACKENDS] [-p "nginx haproxy"]
#                             [-b SWITCHYARD_BIN] [-o OUT_DIR] [-i]
#   or the same through the environment:
#     ROUNDS=3 DURATION=5 CONNS="1 50 256" WARMUP=2 BACKENDS=3 \
#     PEERS="nginx haproxy" SWITCHYARD_BIN=target/release/switchyard \
#     OUT_DIR=examples/bench/results examples/bench/compare.sh
#   -n / BACKENDS: how many backends (1 to 10000; 1000 works): all of them in
#   every proxy's upstream.
#   -p / PEERS: the peers to run, nginx and/or haproxy, in that order of
#   mention; the first is the baseline of the ratios (PEERS=nginx: as
#   before HAProxy was added).
#   Many clients: -c "1000 5000" works; each proxy needs about two open files
#   per client connection (client + backend side), so the hard limit
#   (`ulimit -Hn`) must be at least 2 x the largest concurrency + nproc x
#   BACKENDS + 256, or the script stops and says so. Listen queues are
#   sized to the largest concurrency too, but the kernel caps them at
#   net.core.somaxconn (4096 by default): for -c 5000 raise it (sysctl -w
#   net.core.somaxconn=8192), else connections wrk opens at once may wait
#   for a SYN retry (1 s). The script changes no system setting.
#   -i: instructions per request under callgrind instead of rps (see
#   above); nginx is then the only peer (HAProxy is left out).
#   UPSTREAM_EXTRA='limit-req = { rate = "1000000/s", burst = 1000000 }'
#   adds its text to Switchyard's upstream (both builds), to measure what
#   a setting costs.
#   Defaults (3 rounds x 3 concurrencies x 4 proxies x 5 s + warm-up) take
#   about 3m10s. Build first: cargo build --release -p switchyard
#   (this also writes plugins/round-robin.wasm).
#
# PREREQUISITES (nothing is installed by this script)
#   nginx, wrk   (Debian/Ubuntu: apt-get install -y nginx wrk)
#   haproxy      unless PEERS leaves it out (apt-get install -y haproxy;
#                Debian 12 has HAProxy 2.6)
#   valgrind     for -i only
#   python3 is used to find free ports if present (optional).
#   The system nginx and haproxy services are not touched: private instances
#   run from a temporary directory and are stopped on exit (also on Ctrl-C
#   or error).
#
# OUTPUT
#   The table goes to stdout and to OUT_DIR/compare-<timestamp>.txt; the CSV
#   goes next to it as compare-<timestamp>.csv, raw wrk outputs and the
#   processes' logs and configs in compare-<timestamp>.logs/ (paths printed
#   at the end). The table's header says which peers ran and how many
#   backends there were.

set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/../.." && pwd)

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-"1 50 256"}
WARMUP=${WARMUP:-2}
SWITCHYARD_BIN=${SWITCHYARD_BIN:-"$REPO_ROOT/target/release/switchyard"}
PLUGINS_DIR=${PLUGINS_DIR:-"$REPO_ROOT/plugins"}
OUT_DIR=${OUT_DIR:-"$SCRIPT_DIR/results"}
KEEP_TMP=${KEEP_TMP:-0}
INSTRUCTIONS=${INSTRUCTIONS:-0}
UPSTREAM_EXTRA=${UPSTREAM_EXTRA:-}
BACKENDS=${BACKENDS:-3}
PEERS=${PEERS:-"nginx haproxy"}

die() { echo "error: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }

usage() {
    sed -n '/^# USAGE/,/^# PREREQUISITES/{/^# PREREQUISITES/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

while (($#)); do
    case $1 in
        -r | --rounds) ROUNDS=${2:?}; shift 2 ;;
        -d | --duration) DURATION=${2:?}; shift 2 ;;
        -c | --conns) CONNS=${2:?}; shift 2 ;;
        -n | --backends) BACKENDS=${2:?}; shift 2 ;;
        -p | --peers) PEERS=${2:?}; shift 2 ;;
        -b | --switchyard-bin) SWITCHYARD_BIN=${2:?}; shift 2 ;;
        -o | --out-dir) OUT_DIR=${2:?}; shift 2 ;;
        -i | --instructions) INSTRUCTIONS=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
done

# --- arguments ---------------------------------------------------------------

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer (got '$ROUNDS')"
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer of seconds (got '$DURATION')"
[[ $WARMUP =~ ^[0-9]+$ ]] || die "WARMUP must be a non-negative integer of seconds (got '$WARMUP')"
read -r -a CONN_LIST <<<"$CONNS"
((${#CONN_LIST[@]})) || die "CONNS is empty"
for c in "${CONN_LIST[@]}"; do
    [[ $c =~ ^[1-9][0-9]*$ ]] || die "CONNS must be positive integers (got '$c')"
done
MAX_C=$(printf '%s\n' "${CONN_LIST[@]}" | sort -n | tail -n 1)
if [[ ! $BACKENDS =~ ^[1-9][0-9]*$ ]] || ((BACKENDS > 10000)); then
    die "BACKENDS must be an integer from 1 to 10000 (got '$BACKENDS')"
fi
read -r -a PEER_LIST <<<"$PEERS"
((${#PEER_LIST[@]})) || die "PEERS is empty (nginx and/or haproxy)"
for p in "${PEER_LIST[@]}"; do
    [[ $p == nginx || $p == haproxy ]] || die "PEERS: unknown peer '$p' (nginx and/or haproxy)"
done
[[ $(printf '%s\n' "${PEER_LIST[@]}" | sort | uniq -d) == "" ]] || die "PEERS: a peer is named twice"
if ((INSTRUCTIONS)) && [[ " ${PEER_LIST[*]} " == *" haproxy "* ]]; then
    # Callgrind counts one worker; HAProxy stays out of -i.
    log "-i: nginx is the only peer (HAProxy is not run under callgrind)"
    PEER_LIST=(nginx)
fi

# --- open files --------------------------------------------------------------

# Every proxy holds a client and (at most) a backend connection per wrk
# connection, plus its listening socket(s) and idle backend connections: the
# soft limit goes up to the hard one, which has to be large enough. The
# processes started below inherit it (nginx sets its own from
# worker_rlimit_nofile, HAProxy raises its own to what maxconn needs).
FD_NEED=$((2 * MAX_C + $(nproc) * BACKENDS + 256))
FD_HARD=$(ulimit -Hn)
[[ $FD_HARD == unlimited ]] && FD_HARD=1048576
((FD_HARD >= FD_NEED)) ||
    die "-c $MAX_C with $BACKENDS backends needs about $FD_NEED open files per process," \
        "but the hard limit (ulimit -Hn) is $FD_HARD. Raise it (as root: ulimit -Hn $FD_NEED," \
        "or LimitNOFILE= / /etc/security/limits.conf) or use a smaller -c."
ulimit -Sn "$FD_HARD" || die "cannot raise the soft open-files limit to $FD_HARD"

# --- prerequisites -----------------------------------------------------------

missing=()
tools=(nginx wrk)
[[ " ${PEER_LIST[*]} " == *" haproxy "* ]] && tools+=(haproxy)
((INSTRUCTIONS)) && tools+=(valgrind callgrind_control callgrind_annotate)
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    die "missing: ${missing[*]}. Install with: apt-get install -y nginx wrk haproxy valgrind" \
        "(or your distribution's equivalent; valgrind is for -i only; PEERS=nginx runs without haproxy)"
fi
# nginx lives in /usr/sbin, which is not always on a user's PATH.
NGINX=$(command -v nginx)
WRK=$(command -v wrk)
HAPROXY=$(command -v haproxy || true)
if [[ ! -x $SWITCHYARD_BIN ]]; then
    die "switchyard binary not found at $SWITCHYARD_BIN." \
        "Build it with: (cd $REPO_ROOT && cargo build --release -p switchyard)," \
        "or point SWITCHYARD_BIN at it."
fi
SWITCHYARD_BIN=$(cd -- "$(dirname -- "$SWITCHYARD_BIN")" && pwd)/$(basename -- "$SWITCHYARD_BIN")
[[ -f $PLUGINS_DIR/round-robin.wasm ]] ||
    die "$PLUGINS_DIR/round-robin.wasm not found; cargo build --release -p switchyard writes it"
PLUGINS_DIR=$(cd -- "$PLUGINS_DIR" && pwd)

NPROC=$(nproc)

# --- process bookkeeping and cleanup -----------------------------------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/switchyard-bench.XXXXXX")
# nginx workers drop to `nobody` when started as root; let them traverse.
chmod 755 "$TMP"
declare -a PIDS=()
declare -A PID_NAME=()

cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM HUP
    # Keep going if stdout/stderr is a closed pipe (e.g. `| head`).
    trap '' PIPE
    # Stop in reverse start order (proxies first, then the backends), each
    # with SIGTERM and up to 5 s to exit, then SIGKILL.
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[i]}
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "warning: ${PID_NAME[$pid]} (pid $pid) ignored SIGTERM; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    if ((rc != 0)); then
        echo "benchmark aborted (exit $rc); logs:" >&2
        for f in "$TMP"/*.log "$TMP"/*/error.log; do
            [[ -s $f ]] || continue
            echo "--- $f (last 20 lines)" >&2
            tail -n 20 "$f" >&2
        done
    fi
    if [[ $KEEP_TMP == 1 ]]; then
        echo "kept temporary directory $TMP" >&2
    else
        rm -rf -- "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Start a long-running process in the background and remember it. It gets a
# session of its own (setsid does not fork here, so $! is its pid): a Ctrl-C
# then reaches wrk and this script only, and cleanup() stops the servers in
# order instead of all of them dying at once mid-request.
SETSID=()
command -v setsid >/dev/null 2>&1 && SETSID=(setsid)
# usage: spawn NAME LOGFILE CMD [ARGS...]
spawn() {
    local name=$1 logfile=$2
    shift 2
    ${SETSID[@]+"${SETSID[@]}"} "$@" >"$logfile" 2>&1 </dev/null &
    PIDS+=("$!")
    PID_NAME[$!]=$name
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Wait until PORT accepts connections, or fail if PID died / timed out.
# Under valgrind, start-up (Switchyard compiles its plugin) takes far longer.
WAIT_TENTHS=100
((INSTRUCTIONS)) && WAIT_TENTHS=1200
wait_port() {
    local port=$1 pid=$2 name=$3
    for _ in $(seq "$WAIT_TENTHS"); do
        kill -0 "$pid" 2>/dev/null || die "$name exited during start-up"
        port_in_use "$port" && return 0
        sleep 0.1
    done
    die "$name did not listen on 127.0.0.1:$port within $((WAIT_TENTHS / 10)) s"
}

# One HTTP/1.1 request over bash's /dev/tcp (no curl needed); prints the body.
http_get() {
    local port=$1 resp
    resp=$(
        exec 3<>"/dev/tcp/127.0.0.1/$port"
        printf 'GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
        timeout 5 cat <&3
    ) || return 1
    [[ $resp == "HTTP/1."?" 200"* ]] || { printf '%s\n' "$resp" | head -n 1 >&2; return 1; }
    printf '%s\n' "${resp#*$'\r\n\r\n'}"
}

# --- ports -------------------------------------------------------------------

# The backends + nginx + haproxy + switchyard + switchyard-native, found in
# one go (1000 backends: 1004 sockets, within the raised limit).
NPORTS=$((BACKENDS + 4))
if command -v python3 >/dev/null 2>&1; then
    # Let the kernel pick free ports (bound simultaneously, so distinct).
    mapfile -t PORTS < <(python3 - "$NPORTS" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
EOF
    )
else
    PORTS=()
    for ((p = 18001; p < 18100 + NPORTS && ${#PORTS[@]} < NPORTS; p++)); do
        port_in_use "$p" || PORTS+=("$p")
    done
fi
((${#PORTS[@]} == NPORTS)) || die "could not find $NPORTS free ports"
BACKEND_PORTS=("${PORTS[@]:0:BACKENDS}")
NGINX_PORT=${PORTS[BACKENDS]}
HAPROXY_PORT=${PORTS[BACKENDS + 1]}
SWITCHYARD_PORT=${PORTS[BACKENDS + 2]}
SWITCHYARD_NATIVE_PORT=${PORTS[BACKENDS + 3]}

# --- connection limits -------------------------------------------------------

# nginx's upstream keepalive cache (per worker, shared by all the backends)
# holds 64 idle connections, or one per backend if there are more: with
# 1000 backends and 64, round robin would find no idle connection to the
# next backend and open one per request.
NGINX_KEEPALIVE=$((BACKENDS > 64 ? BACKENDS : 64))
# nginx counts listening sockets, client and upstream connections in
# worker_connections, per worker. The proxy: a client and an upstream
# connection per wrk connection (all may land on one worker) plus its
# keepalive cache. The backends: their listening sockets, and the backend
# connections of all the proxies (the running one's, the others' idle
# pools: HAProxy and Switchyard keep idle connections per backend and
# thread, so up to BACKENDS x nproc each). Never below nginx's default of
# 1024.
at_least_1024() { echo $(($1 > 1024 ? $1 : 1024)); }
NGINX_PROXY_CONNS=$(at_least_1024 $((2 * MAX_C + NGINX_KEEPALIVE + 256)))
NGINX_BACKEND_CONNS=$(at_least_1024 $((BACKENDS + 4 * MAX_C + NPROC * (NGINX_KEEPALIVE + 3 * BACKENDS) + 256)))
# HAProxy's maxconn counts client connections, and HAProxy sizes its fds
# from it (about twice maxconn); its idle backend connections (up to one per
# backend and thread) count against it too. Switchyard's
# client.max-connections counts client connections (20000 is its default).
HAPROXY_MAXCONN=$((MAX_C + NPROC * BACKENDS + 1024))
SWITCHYARD_MAX_CONNS=$((MAX_C + 1024 > 20000 ? MAX_C + 1024 : 20000))
# Connections opened at once (wrk's to a proxy, a proxy's to the backends)
# must not overflow a listen queue (a dropped SYN is retried after 1 s):
# nginx's default backlog is 511, HAProxy's its maxconn; the kernel caps
# both at net.core.somaxconn. (Switchyard's listener takes tokio's 1024.)
NGINX_BACKLOG=$((MAX_C > 511 ? MAX_C : 511))
SOMAXCONN=$(cat /proc/sys/net/core/somaxconn 2>/dev/null || echo 4096)
if ((MAX_C > SOMAXCONN)); then
    log "note: net.core.somaxconn=$SOMAXCONN caps listen queues below -c $MAX_C;" \
        "connections wrk opens at once may wait for a SYN retry (raise it with" \
        "sysctl -w net.core.somaxconn=$MAX_C for such runs)"
fi
NGINX_LISTEN_OPTS=""
((NGINX_BACKLOG > 511)) && NGINX_LISTEN_OPTS=" backlog=$NGINX_BACKLOG"

# --- nginx configs -----------------------------------------------------------

# Common settings. keepalive_requests is raised on every hop because nginx
# closes a keep-alive connection after 1000 requests by default, which would
# make wrk reconnect to nginx (but not to Switchyard) every 1000 requests.
# usage: nginx_common DIR CONNECTIONS [PROCESSES]  (1: one process, no master)
nginx_common() {
    local processes=${3:-$NPROC} conns=$2 rlimit=$(($2 + 64))
    # Not above the hard limit: raising it needs CAP_SYS_RESOURCE, which
    # root in a container often lacks (nginx then logs an alert).
    if ((rlimit > FD_HARD)); then
        rlimit=$FD_HARD
        conns=$((FD_HARD - 64))
        log "$(basename "$1"): worker_connections $2 capped at $conns by the hard open-files limit"
    fi
    cat <<EOF
daemon off;
master_process $( ((processes == 1)) && echo off || echo on);
worker_processes $processes;
worker_rlimit_nofile $rlimit;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections $conns; }
EOF
}

nginx_http_common() {
    cat <<EOF
    access_log off;
    default_type text/plain;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    client_body_temp_path $1/client_body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
EOF
}

write_backend_conf() {
    local dir=$1 i
    mkdir -p "$dir"
    {
        nginx_common "$dir" "$NGINX_BACKEND_CONNS"
        echo "http {"
        nginx_http_common "$dir"
        for ((i = 1; i <= BACKENDS; i++)); do
            cat <<EOF
    server {
        listen 127.0.0.1:${BACKEND_PORTS[i - 1]}$NGINX_LISTEN_OPTS;
        location / { return 200 "Hello from backend $i\n"; }
    }
EOF
        done
        echo "}"
    } >"$dir/nginx.conf"
}

write_proxy_conf() {
    local dir=$1 p
    mkdir -p "$dir"
    {
        # Counted instructions: one process, as Switchyard gets one worker.
        nginx_common "$dir" "$NGINX_PROXY_CONNS" "$( ((INSTRUCTIONS)) && echo 1 || echo "$NPROC")"
        echo "http {"
        nginx_http_common "$dir"
        echo "    upstream app {"
        for p in "${BACKEND_PORTS[@]}"; do
            echo "        server 127.0.0.1:$p;"
        done
        cat <<EOF
        keepalive $NGINX_KEEPALIVE;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT$NGINX_LISTEN_OPTS;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    } >"$dir/nginx.conf"
}

# HAProxy: one process, nbthread = nproc, no log lines (logging off),
# keep-alive to the backends shared between client connections. HAProxy
# stops keeping idle backend connections once the fds in use pass
# tune.pool-low-fd-ratio (default 20%) of what maxconn allows, and kills
# idle ones past tune.pool-high-fd-ratio (25%): with a client and a backend
# connection per wrk connection that is passed from about 400 connections
# on, and it then opened a backend connection per request. 90/95 keeps
# them up to the largest concurrency.
write_haproxy_conf() {
    local file=$1 i
    {
        cat <<EOF
global
    nbthread $NPROC
    maxconn $HAPROXY_MAXCONN
    tune.pool-low-fd-ratio 90
    tune.pool-high-fd-ratio 95

defaults
    mode http
    maxconn $HAPROXY_MAXCONN
    timeout connect 10s
    timeout client 300s
    timeout server 300s
    timeout http-request 300s
    timeout http-keep-alive 300s

frontend proxy
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend app

backend app
    balance roundrobin
    http-reuse always
EOF
        for ((i = 1; i <= BACKENDS; i++)); do
            echo "    server b$i 127.0.0.1:${BACKEND_PORTS[i - 1]}"
        done
    } >"$file"
}

write_switchyard_conf() {
    local file=$1 port=$2 strategy=$3 servers="" p
    for p in "${BACKEND_PORTS[@]}"; do
        servers+="${servers:+, }\"127.0.0.1:$p\""
    done
    cat >"$file" <<EOF
listen = "127.0.0.1:$port"
admin = "127.0.0.1:0"
plugins = "$PLUGINS_DIR"
$( ((INSTRUCTIONS)) && echo "workers = 1")

[client]
max-connections = $SWITCHYARD_MAX_CONNS

[[upstream]]
name = "app"
strategy = "$strategy"
servers = [$servers]
$UPSTREAM_EXTRA
EOF
}

# `-e` (nginx >= 1.19.5) keeps nginx from touching /var/log/nginx at start-up.
nginx_help=$("$NGINX" -h 2>&1 || true)
NGINX_HAS_E=0
[[ $nginx_help == *"-e filename"* ]] && NGINX_HAS_E=1

# The proxies run under callgrind for -i (instrumentation off until the
# measured window); the backends never do.
declare -A TARGET_PID=()
counted() {
    local name=$1
    ((INSTRUCTIONS)) && [[ $name != backends ]] &&
        echo valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/$name.callgrind"
}

start_nginx() {
    local name=$1 dir=$2 port=$3 args
    args=(-p "$dir" -c "$dir/nginx.conf")
    ((NGINX_HAS_E)) && args+=(-e "$dir/error.log")
    "$NGINX" "${args[@]}" -t >"$dir/test.log" 2>&1 ||
        { cat "$dir/test.log" >&2; die "$name: nginx -t failed"; }
    # shellcheck disable=SC2046  # word splitting intended
    spawn "$name" "$TMP/$name.log" $(counted "$name") "$NGINX" "${args[@]}"
    TARGET_PID[$name]=${PIDS[-1]}
    wait_port "$port" "${PIDS[-1]}" "$name"
}

start_haproxy() {
    local name=$1 port=$2
    write_haproxy_conf "$TMP/$name.cfg"
    "$HAPROXY" -c -f "$TMP/$name.cfg" >"$TMP/$name.test.log" 2>&1 ||
        { cat "$TMP/$name.test.log" >&2; die "$name: haproxy -c failed"; }
    # -db: in the foreground, no master process.
    spawn "$name" "$TMP/$name.log" "$HAPROXY" -db -f "$TMP/$name.cfg"
    TARGET_PID[$name]=${PIDS[-1]}
    wait_port "$port" "${PIDS[-1]}" "$name"
}

start_switchyard() {
    local name=$1 port=$2 strategy=$3
    write_switchyard_conf "$TMP/$name.toml" "$port" "$strategy"
    # shellcheck disable=SC2046  # word splitting intended
    spawn "$name" "$TMP/$name.log" \
        env RUST_LOG="${RUST_LOG:-warn}" NO_COLOR=1 $(counted "$name") "$SWITCHYARD_BIN" run --config "$TMP/$name.toml"
    TARGET_PID[$name]=${PIDS[-1]}
    wait_port "$port" "${PIDS[-1]}" "$name"
}

# Smoke test: six requests (one connection each) through a proxy must all
# answer 200 "Hello from backend N" (1 <= N <= BACKENDS) and reach more than
# one backend (if there are several). The exact
# sequence is informational: nginx without a `zone` keeps its round-robin
# position per worker process, so fresh connections landing on different
# workers do not give a strict 1 2 3 1 2 3.
check_proxy() {
    local name=$1 port=$2 seen=() body distinct
    for _ in 1 2 3 4 5 6; do
        body=$(http_get "$port") || die "$name: request to 127.0.0.1:$port failed"
        if [[ ! $body =~ ^Hello\ from\ backend\ ([1-9][0-9]*)$ ]] || ((BASH_REMATCH[1] > BACKENDS)); then
            die "$name: unexpected body '$body'"
        fi
        seen+=("${BASH_REMATCH[1]}")
    done
    distinct=$(printf '%s\n' "${seen[@]}" | sort -u | wc -l)
    log "$name: 6 requests reached backends ${seen[*]}"
    ((distinct > 1 || BACKENDS == 1)) || echo "warning: $name: all requests went to one backend" >&2
}

# --- start everything --------------------------------------------------------

if ((BACKENDS <= 8)); then
    log "starting $BACKENDS backends (nginx) on 127.0.0.1:${BACKEND_PORTS[*]}"
else
    log "starting $BACKENDS backends (nginx) on 127.0.0.1:${BACKEND_PORTS[0]} ... ${BACKEND_PORTS[-1]}"
fi
write_backend_conf "$TMP/backends"
start_nginx backends "$TMP/backends" "${BACKEND_PORTS[0]}"
# nginx opens all its listening sockets before it accepts on any.
for p in "${BACKEND_PORTS[@]}"; do
    wait_port "$p" "${PIDS[-1]}" backends
done

# Targets, in the order they take turns: the peers, then Switchyard; the
# first peer is the baseline of the ratios.
TARGETS=()
declare -A TARGET_PORT=()
for peer in "${PEER_LIST[@]}"; do
    case $peer in
        nginx)
            log "starting nginx proxy on 127.0.0.1:$NGINX_PORT"
            write_proxy_conf "$TMP/nginx"
            start_nginx nginx "$TMP/nginx" "$NGINX_PORT"
            check_proxy nginx "$NGINX_PORT"
            TARGET_PORT[nginx]=$NGINX_PORT
            ;;
        haproxy)
            log "starting haproxy on 127.0.0.1:$HAPROXY_PORT"
            start_haproxy haproxy "$HAPROXY_PORT"
            check_proxy haproxy "$HAPROXY_PORT"
            TARGET_PORT[haproxy]=$HAPROXY_PORT
            ;;
    esac
    TARGETS+=("$peer")
done

log "starting switchyard on 127.0.0.1:$SWITCHYARD_PORT ($SWITCHYARD_BIN)"
start_switchyard switchyard "$SWITCHYARD_PORT" round-robin
check_proxy switchyard "$SWITCHYARD_PORT"
TARGETS+=(switchyard)
TARGET_PORT[switchyard]=$SWITCHYARD_PORT

# The same binary with the host's native round robin (no Wasm call per
# request): switchyard / switchyard-native is the cost of the plugin.
log "starting switchyard-native on 127.0.0.1:$SWITCHYARD_NATIVE_PORT (strategy host:round-robin)"
start_switchyard switchyard-native "$SWITCHYARD_NATIVE_PORT" host:round-robin
check_proxy switchyard-native "$SWITCHYARD_NATIVE_PORT"
TARGETS+=(switchyard-native)
TARGET_PORT[switchyard-native]=$SWITCHYARD_NATIVE_PORT

# The ratios reported: each Switchyard build over each peer.
RATIOS=()
for t in switchyard switchyard-native; do
    for peer in "${PEER_LIST[@]}"; do
        RATIOS+=("$t/$peer")
    done
done

# --- instructions per request (-i) -------------------------------------------

if ((INSTRUCTIONS)); then
    mkdir -p "$OUT_DIR"
    OUT_DIR=$(cd -- "$OUT_DIR" && pwd)
    TXT="$OUT_DIR/instructions-$(date +%Y%m%d-%H%M%S).txt"
    declare -A IR=()
    for t in "${TARGETS[@]}"; do
        url="http://127.0.0.1:${TARGET_PORT[$t]}/"
        log "$t: warm-up, then ${DURATION}s counted (wrk -t1 -c8 under callgrind)"
        "$WRK" -t1 -c8 -d2s "$url" >/dev/null
        callgrind_control -i on "${TARGET_PID[$t]}" >/dev/null 2>&1
        "$WRK" -t1 -c8 -d"${DURATION}s" "$url" >"$TMP/$t.wrk" 2>&1
        callgrind_control -i off "${TARGET_PID[$t]}" >/dev/null 2>&1
        callgrind_control -d "${TARGET_PID[$t]}" >/dev/null 2>&1
        requests=$(awk '/requests in/ {print $1}' "$TMP/$t.wrk")
        [[ $requests =~ ^[0-9]+$ && $requests -gt 0 ]] || { cat "$TMP/$t.wrk" >&2; die "$t: wrk served nothing"; }
        grep -q 'Non-2xx' "$TMP/$t.wrk" && die "$t: non-2xx responses while counting"
        total=0
        for f in "$TMP/$t.callgrind".*; do
            ir=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
            total=$((total + ${ir:-0}))
        done
        IR[$t]=$((total / requests))
        log "$t: $requests requests, $total instructions"
    done
    {
        echo "user-space instructions per proxied request (callgrind; one worker each; wrk -t1 -c8, ${DURATION}s)"
        for t in "${TARGETS[@]}"; do
            printf '  %-18s %8d\n' "$t" "${IR[$t]}"
        done
        printf '  ratio switchyard/nginx: %s, switchyard/switchyard-native: %s\n' \
            "$(awk -v a="${IR[switchyard]}" -v b="${IR[nginx]}" 'BEGIN {printf "%.2f", a / b}')" \
            "$(awk -v a="${IR[switchyard]}" -v b="${IR[switchyard-native]}" 'BEGIN {printf "%.2f", a / b}')"
    } | tee "$TXT"
    echo "table: $TXT"
    exit 0
fi

# --- running wrk -------------------------------------------------------------

# Latency as wrk prints it (12.3us, 4.56ms, 1.2s, 1.5m) -> milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "ms") n = n;
        else if (u == "s") n *= 1000; else if (u == "m") n *= 60000;
        else if (u == "h") n *= 3600000; else n = -1
        printf "%.3f", n }'
}

declare -A RPS=() P50=() P99=() NON2XX=() SOCKERR=() USER_US=() SYS_US=()

TICK_US=$((1000000 / $(getconf CLK_TCK)))

# usage: cpu_ticks PID -> "USER SYSTEM": clock ticks used so far by PID and
# its children (nginx's workers), from /proc/PID/stat (fields 14 and 15;
# the name in parentheses is cut first, it may hold spaces).
cpu_ticks() {
    local pid=$1 p u=0 s=0 pu ps
    for p in "$pid" $(pgrep -P "$pid" 2>/dev/null); do
        read -r pu ps < <(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12, $13}') || continue
        [[ $pu =~ ^[0-9]+$ && $ps =~ ^[0-9]+$ ]] || continue
        u=$((u + pu))
        s=$((s + ps))
    done
    echo "$u $s"
}

# usage: run_wrk TARGET CONNS SECONDS OUTFILE
run_wrk() {
    local target=$1 c=$2 secs=$3 out=$4 threads
    threads=$((c < 2 ? c : 2))
    "$WRK" -t"$threads" -c"$c" -d"${secs}s" --latency \
        "http://127.0.0.1:${TARGET_PORT[$target]}/" >"$out" 2>&1 ||
        { cat "$out" >&2; die "wrk against $target failed"; }
}

# usage: cpu_per_request KEY OUTFILE "U0 S0" "U1 S1" (fills USER_US/SYS_US[KEY]):
# the proxy's CPU time over the run divided by the requests wrk completed.
cpu_per_request() {
    local key=$1 out=$2 requests u0 s0 u1 s1
    read -r u0 s0 <<<"$3"
    read -r u1 s1 <<<"$4"
    requests=$(awk '/requests in/ {print $1}' "$out")
    USER_US[$key]=$(us_per_request $((u1 - u0)) "${requests:-0}")
    SYS_US[$key]=$(us_per_request $((s1 - s0)) "${requests:-0}")
}

# usage: us_per_request TICKS REQUESTS -> µs per request (0 without requests)
us_per_request() {
    awk -v t="$1" -v n="$2" -v us="$TICK_US" 'BEGIN {printf "%.2f", (n > 0 ? t * us / n : 0)}'
}

# usage: parse_wrk KEY OUTFILE  (fills RPS/P50/P99/NON2XX/SOCKERR[KEY])
parse_wrk() {
    local key=$1 out=$2 rps p50 p99
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    p50=$(awk '$1 == "50%" {print $2}' "$out")
    p99=$(awk '$1 == "99%" {print $2}' "$out")
    [[ -n $rps && -n $p50 && -n $p99 ]] || { cat "$out" >&2; die "cannot parse wrk output $out"; }
    RPS[$key]=$rps
    P50[$key]=$(to_ms "$p50")
    P99[$key]=$(to_ms "$p99")
    NON2XX[$key]=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")
    NON2XX[$key]=${NON2XX[$key]:-0}
    # "Socket errors: connect 0, read 0, write 0, timeout 0" -> total
    SOCKERR[$key]=$(awk -F'[ ,]+' '/Socket errors:/ {s = 0; for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+$/) s += $i; print s}' "$out")
    SOCKERR[$key]=${SOCKERR[$key]:-0}
}

LOGS_OUT="$TMP/wrk"
mkdir -p "$LOGS_OUT"

nruns=$((ROUNDS * ${#CONN_LIST[@]} * ${#TARGETS[@]}))
total=$((nruns * DURATION + ${#TARGETS[@]} * WARMUP))
log "plan: ${#TARGETS[@]} targets x conns [${CONN_LIST[*]}] x $ROUNDS rounds x ${DURATION}s" \
    "+ warm-up = about ${total}s of load"

if ((WARMUP > 0)); then
    for t in "${TARGETS[@]}"; do
        log "warm-up: $t, -c$MAX_C, ${WARMUP}s"
        run_wrk "$t" "$MAX_C" "$WARMUP" "$LOGS_OUT/warmup-$t.txt"
    done
fi

# Rounds outermost, so the rounds of one concurrency are spread over the whole
# run; within a round, targets alternate A/B at each concurrency.
run=0
for ((r = 1; r <= ROUNDS; r++)); do
    for c in "${CONN_LIST[@]}"; do
        for t in "${TARGETS[@]}"; do
            run=$((run + 1))
            log "[$run/$nruns] round $r, -c$c, $t"
            out="$LOGS_OUT/$t-c$c-r$r.txt"
            cpu0=$(cpu_ticks "${TARGET_PID[$t]}")
            run_wrk "$t" "$c" "$DURATION" "$out"
            cpu1=$(cpu_ticks "${TARGET_PID[$t]}")
            parse_wrk "$t,$c,$r" "$out"
            cpu_per_request "$t,$c,$r" "$out" "$cpu0" "$cpu1"
        done
    done
done

# --- report ------------------------------------------------------------------

mkdir -p "$OUT_DIR"
OUT_DIR=$(cd -- "$OUT_DIR" && pwd)
STAMP=$(date +%Y%m%d-%H%M%S)
TXT="$OUT_DIR/compare-$STAMP.txt"
CSV="$OUT_DIR/compare-$STAMP.csv"
LOGDIR="$OUT_DIR/compare-$STAMP.logs"

cpu_model=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)
[[ -n $cpu_model ]] || cpu_model=$(lscpu 2>/dev/null | awk -F': *' '/^Model name/ {print $2; exit}' || true)
# usage: rps_ratio A/B C ROUND -> A's rps over B's, 3 decimals
rps_ratio() {
    awk -v a="${RPS[${1%/*},$2,$3]}" -v b="${RPS[${1#*/},$2,$3]}" 'BEGIN {printf "%.3f", (b > 0 ? a / b : 0)}'
}

# usage: median V... -> the median of the numbers given.
median() {
    printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {printf "%.3f", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'
}

report() {
    local c r t key ratio pair flag line sep issues=() peers=""
    local -A ratios=()
    echo "machine: nproc=$NPROC, cpu=${cpu_model:-unknown}, kernel=$(uname -sr), somaxconn=$SOMAXCONN," \
        "loadavg at end=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "versions: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'),$(
        [[ -n ${TARGET_PORT[haproxy]:-} ]] && "$HAPROXY" -v 2>&1 | awk 'NR == 1 {printf " haproxy/%s,", $3}'
    ) $("$WRK" -v 2>&1 | head -n 1 | awk '{print $1, $2}')," \
        "$("$SWITCHYARD_BIN" --version 2>/dev/null || echo switchyard) ($SWITCHYARD_BIN)"
    echo "run: rounds=$ROUNDS duration=${DURATION}s warmup=${WARMUP}s conns=[${CONN_LIST[*]}]" \
        "wrk threads=min(c,2) keep-alive; loopback; latencies in ms"
    for t in "${PEER_LIST[@]}"; do
        case $t in
            nginx) peers+=", nginx (keepalive $NGINX_KEEPALIVE, worker_processes $NPROC)" ;;
            haproxy) peers+=", haproxy (http-reuse always, nbthread $NPROC)" ;;
        esac
    done
    echo "peers: ${peers#, }; ratios over ${PEER_LIST[*]}"
    echo "backends: $BACKENDS (one nginx instance, $BACKENDS server blocks), all in every proxy's round robin"
    echo
    # Two header lines: target names over their rps/p50/p99 columns.
    local hdr1 hdr2
    hdr1=$(printf '%6s %5s' "" "")
    hdr2=$(printf '%6s %5s' conns round)
    for t in "${TARGETS[@]}"; do
        hdr1+=$(printf ' | %-28s' "$t")
        hdr2+=$(printf ' | %10s %8s %8s' rps p50_ms p99_ms)
    done
    for pair in "${RATIOS[@]}"; do
        hdr1+=$(printf ' | %-*s' "${#pair}" "rps ratio")
        hdr2+=$(printf ' | %s' "$pair")
    done
    sep=$(printf '%*s' "${#hdr2}" '' | tr ' ' '-')
    echo "${hdr1%"${hdr1##*[! ]}"}"
    echo "$hdr2"
    echo "$sep"
    for c in "${CONN_LIST[@]}"; do
        ratios=()
        for ((r = 1; r <= ROUNDS; r++)); do
            line=$(printf '%6s %5s' "$c" "$r")
            for t in "${TARGETS[@]}"; do
                key="$t,$c,$r"
                flag=""
                if [[ ${NON2XX[$key]} != 0 || ${SOCKERR[$key]} != 0 ]]; then
                    flag="!"
                    issues+=("$t -c$c round $r: non-2xx/3xx=${NON2XX[$key]}, socket errors=${SOCKERR[$key]}")
                fi
                line+=$(printf ' | %10s %8.3f %8.3f' "$(printf '%.0f' "${RPS[$key]}")$flag" \
                    "${P50[$key]}" "${P99[$key]}")
            done
            for pair in "${RATIOS[@]}"; do
                ratio=$(rps_ratio "$pair" "$c" "$r")
                ratios[$pair]+="$ratio "
                line+=$(printf ' | %*s' "${#pair}" "$ratio")
            done
            echo "$line"
        done
        for pair in "${RATIOS[@]}"; do
            # shellcheck disable=SC2086  # word splitting intended
            printf '%12s   median rps ratio %s at -c%s: %s\n' "" "$pair" "$c" \
                "$(median ${ratios[$pair]})"
        done
        if [[ -n ${TARGET_PORT[switchyard-native]:-} ]]; then
            local wasm=""
            for ((r = 1; r <= ROUNDS; r++)); do
                wasm+="$(rps_ratio switchyard/switchyard-native "$c" "$r") "
            done
            # shellcheck disable=SC2086  # word splitting intended
            printf '%12s   median rps ratio switchyard/switchyard-native (Wasm overhead) at -c%s: %s\n' "" "$c" \
                "$(median $wasm)"
        fi
        # The proxies' own CPU time per request (user + system, µs): far
        # steadier than rps on a shared machine, and it shows where the
        # difference is.
        line=""
        for t in "${TARGETS[@]}"; do
            local users=() systems=()
            for ((r = 1; r <= ROUNDS; r++)); do
                users+=("${USER_US[$t,$c,$r]}")
                systems+=("${SYS_US[$t,$c,$r]}")
            done
            line+=$(printf ' %s %.1f + %.1f,' "$t" "$(median "${users[@]}")" "$(median "${systems[@]}")")
        done
        printf '%12s   median CPU per request at -c%s, user + system µs:%s\n' "" "$c" "${line%,}"
        echo "$sep"
    done
    echo
    if ((${#issues[@]})); then
        echo "wrk reported errors (! above):"
        printf '  %s\n' "${issues[@]}"
    else
        echo "wrk: no non-2xx/3xx responses and no socket errors in any run."
    fi
    # Anything the proxies/backends logged at warn or above during the run.
    local f n
    for f in "$TMP/switchyard.log" "$TMP/switchyard-native.log" "$TMP/haproxy.log" \
        "$TMP/backends/error.log" "$TMP/nginx/error.log"; do
        [[ -f $f ]] || continue
        n=$(grep -c . "$f" || true)
        if ((n > 0)); then
            echo "log ${f#"$TMP"/}: $n line(s), first ones:"
            head -n 5 "$f" | sed 's/^/  /'
        else
            echo "log ${f#"$TMP"/}: empty"
        fi
    done
}

report | tee "$TXT"

{
    printf 'conns,round'
    for t in "${TARGETS[@]}"; do
        printf ',%s_rps,%s_p50_ms,%s_p99_ms,%s_non2xx,%s_socket_errors' "$t" "$t" "$t" "$t" "$t"
    done
    for pair in "${RATIOS[@]}"; do
        printf ',ratio_%s_%s' "${pair%/*}" "${pair#*/}"
    done
    for t in "${TARGETS[@]}"; do
        printf ',%s_user_us,%s_sys_us' "$t" "$t"
    done
    printf '\n'
    for c in "${CONN_LIST[@]}"; do
        for ((r = 1; r <= ROUNDS; r++)); do
            printf '%s,%s' "$c" "$r"
            for t in "${TARGETS[@]}"; do
                key="$t,$c,$r"
                printf ',%s,%s,%s,%s,%s' "${RPS[$key]}" "${P50[$key]}" "${P99[$key]}" \
                    "${NON2XX[$key]}" "${SOCKERR[$key]}"
            done
            for pair in "${RATIOS[@]}"; do
                awk -v a="${RPS[${pair%/*},$c,$r]}" -v b="${RPS[${pair#*/},$c,$r]}" \
                    'BEGIN {printf ",%.4f", (b > 0 ? a / b : 0)}'
            done
            for t in "${TARGETS[@]}"; do
                printf ',%s,%s' "${USER_US[$t,$c,$r]}" "${SYS_US[$t,$c,$r]}"
            done
            printf '\n'
        done
    done
} >"$CSV"

# Keep the raw wrk outputs, configs and logs next to the results.
mkdir -p "$LOGDIR"
cp -r "$LOGS_OUT" "$LOGDIR/"
cp "$TMP"/*.toml "$TMP"/*.cfg "$TMP"/*.log "$LOGDIR/" 2>/dev/null || true
for d in backends nginx; do
    mkdir -p "$LOGDIR/$d"
    cp "$TMP/$d/nginx.conf" "$TMP/$d/error.log" "$LOGDIR/$d/" 2>/dev/null || true
done

echo
echo "table: $TXT"
echo "csv:   $CSV"
echo "logs:  $LOGDIR/"
