#!/usr/bin/env bash
# The signaling hub over real WebSockets on loopback: idle memory per connection, relayed
# messages/s and relay latency, with `hub-load` (crates/turnpike-bench).
#
# For each connection count in $COUNTS and each mode, a fresh `turnpike serve` (hub on
# --http, STUN/TURN on --listen, metrics off) pinned to core $SERVER_CORE, and `hub-load`
# pinned to core $CLIENT_CORE:
#   * open:   --rate $RATE candidates/s per connection (open loop): relay latency at a fixed
#             load, and the server's RSS before connecting and with every connection joined
#             and idle (KiB per connection, MiB per 1,000);
#   * closed: --window $WINDOW in flight per connection (closed loop): relay throughput.
# Connections are pairs in rooms of two, spread over $SOURCE_IPS source addresses of
# 127.0.0.0/8. The hub's limits are raised for the load (see start_node).
#
# Hub cluster: with NODES=2 (or any N >= 2) each run starts a fresh redis-server on a free
# loopback port (persistence off) and N `turnpike serve --redis redis://127.0.0.1:PORT/` nodes,
# each on its own --http and --listen ports, and hub-load gets one --url per node: with
# SPREAD=peers the two peers of every room are on different nodes (every message crosses
# nodes through Redis), with SPREAD=rooms each room stays on one node. NODES="1 2" runs every
# measurement with one node and with two, into one table. In a cluster run the server columns
# (RSS, CPU) are the sums over every node and redis-server (each one's share is in the run's
# JSON, `server_processes`); runs are named e.g. 1000-open-2nodes.
# Prints a Markdown table and keeps every run's JSON and logs in bench-results/hub-load-<time>/
# (git-ignored). A run that fails (e.g. the server refuses connections) becomes a table row
# with the reason, and the script exits 1.
#
# Usage: tests/bench/hub-load.sh            (from anywhere in the repo)
#        NODES="1 2" tests/bench/hub-load.sh (one node, then a two-node cluster through Redis)
# Environment knobs (defaults in brackets):
#   COUNTS ["1000 5000"]  connection counts (even numbers)
#   RATE [5]              open loop: candidates/s per connection
#   WINDOW [2]            closed loop: in flight per connection (0 = skip the closed-loop runs)
#   DURATION [10]  WARMUP [1]  (DURATION is capped at 120 s)
#   REPEAT [1]            runs per measurement, each on a fresh server; the least disturbed
#                         (lowest other_cpu_pct) is reported, all are kept
#   SOURCE_IPS [8]        source addresses 127.0.0.1 .. 127.0.0.N
#   SERVER_CORE [0]  CLIENT_CORE [1]
#   NODES ["1"]           hub nodes per run; a list runs each count (1: no Redis)
#   SPREAD [peers]        cluster runs: hub-load --spread (peers | rooms)
#   NODE_CORES [$SERVER_CORE]  cluster runs: core of node 1, 2, ... (the list is cycled); by
#                         default every node shares the one-node run's core
#   REDIS_CORE [$SERVER_CORE]  cluster runs: core of redis-server
#   REDIS_SERVER [redis-server]  the Redis binary (Debian: apt-get install -y redis-server)
#   SERVER_ARGS [""]      extra arguments for every `turnpike serve` (word-split)
#   QUIET_WAIT [60]       seconds to wait for the machine to be quiet before each run (0 = don't)
#   QUIET_MAX_BUSY [25]   a core busier than this (%) counts as not quiet
#   MAX_OTHER [10]        a run where other processes used more CPU (% of a core) is flagged
#   PORT_BASE [27400]     first port tried; busy ports are skipped. Keep it below the
#                         ephemeral range (ip_local_port_range), which hub-load's sockets use
#   SKIP_BUILD [0]        1: use the existing release binaries
#   TURNPIKE_BIN [${CARGO_TARGET_DIR:-target}/release/turnpike]  the server binary to measure
#   OUT_DIR [bench-results]
# Binaries are taken from ${CARGO_TARGET_DIR:-target}/release.
#
# All traffic stays on 127.0.0.0/8. Every process started here is bounded in time and killed
# on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

COUNTS=${COUNTS:-"1000 5000"}
RATE=${RATE:-5}
WINDOW=${WINDOW:-2}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
REPEAT=${REPEAT:-1}
SOURCE_IPS=${SOURCE_IPS:-8}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
NODES=${NODES:-1}
SPREAD=${SPREAD:-peers}
NODE_CORES=${NODE_CORES:-$SERVER_CORE}
REDIS_CORE=${REDIS_CORE:-$SERVER_CORE}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
SERVER_ARGS=${SERVER_ARGS:-}
QUIET_WAIT=${QUIET_WAIT:-60}
QUIET_MAX_BUSY=${QUIET_MAX_BUSY:-25}
MAX_OTHER=${MAX_OTHER:-10}
PORT_BASE=${PORT_BASE:-27400}
SKIP_BUILD=${SKIP_BUILD:-0}
OUT_DIR=${OUT_DIR:-bench-results}

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN="$TARGET_DIR/release"
LOAD="$BIN/hub-load"
TURNPIKE_BIN=${TURNPIKE_BIN:-$BIN/turnpike}
# Hard upper bound on the life of any server started here (seconds).
SERVER_MAX_S=600
STARTUP_TIMEOUT_S=15
# hub-load's own bound on setting up every connection (seconds).
SETUP_TIMEOUT_S=60

STAMP=$(date +%Y%m%d-%H%M%S)
[[ $OUT_DIR == /* ]] || OUT_DIR="$ROOT/$OUT_DIR"
RUN_DIR="$OUT_DIR/hub-load-$STAMP"

log() { printf '[hub-load] %s\n' "$*" >&2; }
die() {
    printf '[hub-load] ERROR: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------- cleanup
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

forget_pid() {
    local pid=$1 p keep=()
    for p in "${PIDS[@]}"; do
        [[ $p == "$pid" ]] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

# Stops one process started by start_bg (by pid) and forgets it.
stop_bg() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}

# ---------------------------------------------------------------- checks
command -v taskset >/dev/null || die "taskset not found (util-linux)"
command -v jq >/dev/null || die "jq not found (apt-get install -y jq)"
command -v curl >/dev/null || die "curl not found (apt-get install -y curl)"
[[ $(nproc) -ge 2 ]] || die "need at least 2 cores for server/client pinning"
for v in DURATION WARMUP RATE; do
    [[ ${!v} =~ ^[0-9]+([.][0-9]+)?$ ]] || die "$v must be a number"
done
awk -v d="$DURATION" 'BEGIN { exit !(d > 0 && d <= 120) }' || die "DURATION must be in (0, 120] s"
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "REPEAT must be a positive integer"
for v in WINDOW SOURCE_IPS QUIET_WAIT QUIET_MAX_BUSY MAX_OTHER SERVER_CORE CLIENT_CORE REDIS_CORE; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer"
done
read -r -a NODE_CORE_LIST <<<"$NODE_CORES"
((${#NODE_CORE_LIST[@]} > 0)) || die "NODE_CORES is empty"
for c in "${NODE_CORE_LIST[@]}"; do
    [[ $c =~ ^[0-9]+$ ]] || die "NODE_CORES entries must be core numbers, got '$c'"
done
read -r -a EXTRA_SERVER_ARGS <<<"$SERVER_ARGS"
[[ $SPREAD == peers || $SPREAD == rooms ]] || die "SPREAD must be peers or rooms"
CLUSTER=0
for k in $NODES; do
    [[ $k =~ ^[1-9][0-9]?$ ]] || die "NODES entries must be node counts 1..99, got '$k'"
    if ((k > 1)); then CLUSTER=1; fi
done
[[ -n ${NODES// /} ]] || die "NODES is empty"
((SOURCE_IPS >= 1 && SOURCE_IPS <= 250)) || die "SOURCE_IPS must be in 1..250"
MAX_N=0
for n in $COUNTS; do
    if ! [[ $n =~ ^[1-9][0-9]*$ ]] || ((n % 2 != 0 || n > 60000)); then
        die "COUNTS entries must be even numbers up to 60000, got '$n'"
    fi
    if ((n > MAX_N)); then MAX_N=$n; fi
done
((MAX_N > 0)) || die "COUNTS is empty"

# Each connection is a socket in hub-load and one in the server.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(($(ulimit -n) >= MAX_N + 256)) ||
    die "open-file limit $(ulimit -n) is too low for $MAX_N connections (need $((MAX_N + 256))): raise the hard limit (ulimit -Hn) or lower COUNTS"

# ---------------------------------------------------------------- build
if [[ $SKIP_BUILD == 1 ]]; then
    log "SKIP_BUILD=1: using existing binaries in $BIN"
else
    log "building turnpike and turnpike-bench (release)"
    cargo build --release -p turnpike -p turnpike-bench
fi
[[ -x $LOAD ]] || die "$LOAD not found"
[[ -x $TURNPIKE_BIN ]] || die "$TURNPIKE_BIN not found"
HELP=$("$TURNPIKE_BIN" serve --help 2>/dev/null || true)
for flag in --hub-max-connections-per-ip --hub-messages-per-second --hub-keepalive-timeout; do
    grep -q -- "$flag" <<<"$HELP" || die "'turnpike serve' has no $flag flag"
done
if ((CLUSTER)); then
    grep -q -- "--redis" <<<"$HELP" ||
        die "'turnpike serve' has no --redis flag (hub cluster mode), which NODES=\"$NODES\" needs"
    command -v "$REDIS_SERVER" >/dev/null ||
        die "$REDIS_SERVER not found: NODES=\"$NODES\" needs Redis (apt-get install -y redis-server)"
    "$LOAD" --help | grep -q -- "--spread" || die "$LOAD has no --spread flag: rebuild it"
fi
mkdir -p "$RUN_DIR"

# ---------------------------------------------------------------- server
port_free() {
    ! ss -Hlun "sport = :$1" 2>/dev/null | grep -q . &&
        ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
}

free_port() {
    local p=$1
    while ! port_free "$p"; do
        p=$((p + 1))
        ((p < 65000)) || die "no free port found from $1"
    done
    echo "$p"
}

NEXT_PORT=$PORT_BASE
SPID=""
SERVER_BG=""
HPORT=""
# start_node N LOG CORE [ARGS...]: a fresh turnpike on core CORE with the hub's limits raised
# for N connections (and ARGS, e.g. --redis URL); sets SPID (the server's pid), SERVER_BG (its
# `timeout` wrapper) and HPORT. A port taken between the check and the bind (e.g. by a client
# socket) is retried on the next ports, 5 times.
start_node() {
    local n=$1 logfile=$2 core=$3 sport deadline attempt
    shift 3
    for attempt in 1 2 3 4 5; do
        sport=$(free_port "$NEXT_PORT")
        HPORT=$(free_port $((sport + 1)))
        NEXT_PORT=$((HPORT + 1))
        timeout -k 5 "$SERVER_MAX_S" taskset -c "$core" "$TURNPIKE_BIN" serve \
            --listen "127.0.0.1:$sport" --http "127.0.0.1:$HPORT" --metrics off \
            --hub-max-connections $((n + 64)) --hub-max-connections-per-ip $((n + 64)) \
            --hub-max-rooms $((n / 2 + 64)) --hub-messages-per-second 10000 \
            --hub-message-burst 10000 --hub-keepalive-timeout 300 \
            ${EXTRA_SERVER_ARGS[@]+"${EXTRA_SERVER_ARGS[@]}"} "$@" >"$logfile" 2>&1 &
        SERVER_BG=$!
        PIDS+=("$SERVER_BG")
        deadline=$((SECONDS + STARTUP_TIMEOUT_S))
        until curl -sf -m 1 "http://127.0.0.1:$HPORT/readyz" >/dev/null 2>&1; do
            if ! kill -0 "$SERVER_BG" 2>/dev/null; then
                wait "$SERVER_BG" 2>/dev/null || true
                forget_pid "$SERVER_BG"
                grep -q "Address already in use" "$logfile" ||
                    die "turnpike exited during startup (log: $logfile)"
                log "port $sport or $HPORT taken meanwhile (attempt $attempt); trying the next ones"
                continue 2
            fi
            ((SECONDS < deadline)) || die "turnpike not ready on 127.0.0.1:$HPORT in ${STARTUP_TIMEOUT_S}s (log: $logfile)"
            sleep 0.2
        done
        # The server is the child of `timeout` (taskset execs into it).
        SPID=$(pgrep -P "$SERVER_BG" | head -1)
        [[ -n $SPID ]] || die "cannot find the pid of turnpike"
        return 0
    done
    die "turnpike could not bind free ports 5 times (log: $logfile)"
}

# Whether a raw RESP PING to 127.0.0.1:PORT answers +PONG within 2 s.
redis_ping() {
    # shellcheck disable=SC2016 # $1 and $line belong to the inner shell
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "*1\r\n\$4\r\nPING\r\n" >&3
        IFS= read -r line <&3 && [[ $line == +PONG* ]]' redis-ping "$1" 2>/dev/null
}

RPID=""
REDIS_BG=""
RPORT=""
# start_redis NAME: a fresh redis-server on a free port of 127.0.0.1, persistence off, its
# directory $RUN_DIR/NAME-redis; sets RPID, REDIS_BG (its `timeout` wrapper) and RPORT.
start_redis() {
    local name=$1 logfile="$RUN_DIR/$1-redis.log" dir="$RUN_DIR/$1-redis" deadline attempt
    mkdir -p "$dir"
    for attempt in 1 2 3 4 5; do
        RPORT=$(free_port "$NEXT_PORT")
        NEXT_PORT=$((RPORT + 1))
        timeout -k 5 "$SERVER_MAX_S" taskset -c "$REDIS_CORE" "$REDIS_SERVER" \
            --bind 127.0.0.1 --port "$RPORT" --save "" --appendonly no --dir "$dir" \
            --logfile "" --daemonize no >"$logfile" 2>&1 &
        REDIS_BG=$!
        PIDS+=("$REDIS_BG")
        deadline=$((SECONDS + STARTUP_TIMEOUT_S))
        until redis_ping "$RPORT"; do
            if ! kill -0 "$REDIS_BG" 2>/dev/null; then
                wait "$REDIS_BG" 2>/dev/null || true
                forget_pid "$REDIS_BG"
                grep -q "Address already in use" "$logfile" ||
                    die "redis-server exited during startup (log: $logfile)"
                log "port $RPORT taken meanwhile (attempt $attempt); trying the next one"
                continue 2
            fi
            ((SECONDS < deadline)) || die "redis-server not ready on 127.0.0.1:$RPORT in ${STARTUP_TIMEOUT_S}s (log: $logfile)"
            sleep 0.2
        done
        RPID=$(pgrep -P "$REDIS_BG" | head -1)
        [[ -n $RPID ]] || die "cannot find the pid of redis-server"
        return 0
    done
    die "redis-server could not bind a free port 5 times (log: $logfile)"
}

# start_hub NAME N K: K = 1: one turnpike (as start_node); K > 1: redis-server and K nodes
# with --redis. Sets HUB_URLS (hub-load --url arguments), HUB_PIDS (--server-pid arguments),
# HUB_BGS (wrappers to stop, redis last) and HUB_DESC (for the log).
HUB_URLS=()
HUB_PIDS=()
HUB_BGS=()
HUB_DESC=""
start_hub() {
    local name=$1 n=$2 k=$3 i core
    HUB_URLS=()
    HUB_PIDS=()
    HUB_BGS=()
    if ((k == 1)); then
        start_node "$n" "$RUN_DIR/$name-server.log" "$SERVER_CORE"
        HUB_URLS=(--url "ws://127.0.0.1:$HPORT/v1/ws")
        HUB_PIDS=(--server-pid "$SPID")
        HUB_BGS=("$SERVER_BG")
        HUB_DESC="server pid $SPID on core $SERVER_CORE"
        return 0
    fi
    start_redis "$name"
    HUB_DESC="redis-server pid $RPID on 127.0.0.1:$RPORT, core $REDIS_CORE; nodes"
    for ((i = 0; i < k; i++)); do
        core=${NODE_CORE_LIST[i % ${#NODE_CORE_LIST[@]}]}
        start_node "$n" "$RUN_DIR/$name-server$((i + 1)).log" "$core" \
            --redis "redis://127.0.0.1:$RPORT/"
        HUB_URLS+=(--url "ws://127.0.0.1:$HPORT/v1/ws")
        HUB_PIDS+=(--server-pid "$SPID")
        HUB_BGS+=("$SERVER_BG")
        HUB_DESC+=" pid $SPID (:$HPORT, core $core)"
    done
    HUB_PIDS+=(--server-pid "$RPID")
    HUB_BGS+=("$REDIS_BG")
}

# Waits (up to QUIET_WAIT s) until no core is busier than QUIET_MAX_BUSY % over one second;
# sets LAST_BUSY ("c0/c1" percents).
LAST_BUSY=""
core_sample() {
    awk '/^cpu[0-9]/ { idle = $5 + $6; tot = 0; for (i = 2; i <= 9; i++) tot += $i; print idle, tot }' /proc/stat
}
wait_quiet() {
    local deadline=$((SECONDS + QUIET_WAIT)) a b max
    while :; do
        a=$(core_sample)
        sleep 1
        b=$(core_sample)
        LAST_BUSY=$(paste -d' ' <(echo "$a") <(echo "$b") |
            awk '{ dt = $4 - $2; di = $3 - $1; printf "%s%.0f", (NR > 1 ? "/" : ""), (dt > 0 ? 100 * (dt - di) / dt : 0) }')
        max=$(tr '/' '\n' <<<"$LAST_BUSY" | sort -n | tail -1)
        ((max <= QUIET_MAX_BUSY)) && return 0
        if ((SECONDS >= deadline)); then
            log "WARNING: machine busy before the run (cores busy % $LAST_BUSY): results may be skewed"
            return 0
        fi
        log "machine busy (cores busy % $LAST_BUSY), waiting for it to settle"
    done
}

# ---------------------------------------------------------------- runs
FAILED=0
# once NAME N K ARGS...: fresh hub of K nodes, one hub-load run; its JSON (or a failure
# record) goes to $RUN_DIR/NAME.json.
once() {
    local name=$1 n=$2 k=$3
    shift 3
    local out txt limit why bg rc=0 spread=()
    out="$RUN_DIR/$name.json"
    txt="$RUN_DIR/$name.txt"
    start_hub "$name" "$n" "$k"
    if ((k > 1)); then spread=(--spread "$SPREAD"); fi
    if ((QUIET_WAIT > 0)); then wait_quiet; fi
    log "$name: $n connections, $HUB_DESC${LAST_BUSY:+ (cores busy % before: $LAST_BUSY)}"
    limit=$(awk -v d="$DURATION" -v w="$WARMUP" -v s="$SETUP_TIMEOUT_S" 'BEGIN { printf "%d", d + w + s + 30 }')
    timeout -k 5 "$limit" taskset -c "$CLIENT_CORE" "$LOAD" \
        "${HUB_URLS[@]}" "${spread[@]+"${spread[@]}"}" --connections "$n" --duration "$DURATION" \
        --warmup "$WARMUP" --source-ips "$SOURCE_IPS" "${HUB_PIDS[@]}" \
        --setup-timeout "$SETUP_TIMEOUT_S" --json "$@" >"$out" 2>"$txt" || rc=$?
    sed 's/^/    /' "$txt" >&2
    if ((rc != 0)); then
        why=$(grep -E '^hub-load: ' "$txt" | tail -1 | sed 's/^hub-load: //' || true)
        [[ -n $why ]] || why="hub-load exited with status $rc (see $txt)"
        log "$name: FAILED: $why"
        jq -n --arg why "$why" --argjson n "$n" '{connections: $n, failed: $why}' >"$out"
    fi
    for bg in "${HUB_BGS[@]}"; do
        stop_bg "$bg"
    done
}

# run N K MODE ARGS...: REPEAT runs on hubs of K nodes; the least disturbed successful one
# becomes N-MODE.json (N-MODE-Knodes.json for K > 1), named in RUN_NAME.
RUN_NAME=""
run() {
    local n=$1 k=$2 mode=$3
    shift 3
    local i best="" best_other="" other name="$n-$mode"
    if ((k > 1)); then name+="-${k}nodes"; fi
    for i in $(seq 1 "$REPEAT"); do
        once "$name-$i" "$n" "$k" "$@"
        if jq -e '.failed' "$RUN_DIR/$name-$i.json" >/dev/null; then
            # A refusal is not noise: do not repeat it.
            [[ -n $best ]] || best="$name-$i.json"
            FAILED=1
            break
        fi
        other=$(jq -r '.other_cpu_pct // 1e8' "$RUN_DIR/$name-$i.json")
        if [[ -z $best ]] || awk -v a="$other" -v b="$best_other" 'BEGIN { exit !(a < b) }'; then
            best="$name-$i.json"
            best_other=$other
        fi
    done
    cp "$RUN_DIR/$best" "$RUN_DIR/$name.json"
    RUN_NAME=$name
}

log "results in $RUN_DIR"
MODES=()
declare -A HUB_NODES=()
for n in $COUNTS; do
    for k in $NODES; do
        run "$n" "$k" open --rate "$RATE"
        MODES+=("$RUN_NAME")
        HUB_NODES[$RUN_NAME]=$k
        if ((WINDOW > 0)); then
            run "$n" "$k" closed --window "$WINDOW"
            MODES+=("$RUN_NAME")
            HUB_NODES[$RUN_NAME]=$k
        fi
    done
done

# ---------------------------------------------------------------- report
for m in "${MODES[@]}"; do
    jq --arg run "$m" --argjson k "${HUB_NODES[$m]}" '. + {run: $run, hub_nodes: $k}' "$RUN_DIR/$m.json"
done | jq -s '{runs: .}' >"$RUN_DIR/summary.json"
if ((CLUSTER)); then
    HUB_TEXT="hub nodes: $NODES (a cluster of K > 1: redis-server on core $REDIS_CORE, nodes on cores $NODE_CORES, peers spread by $SPREAD; server RSS and CPU are summed over the nodes and redis-server); one node pinned to core $SERVER_CORE"
else
    HUB_TEXT="turnpike serve pinned to core $SERVER_CORE"
fi
{
    echo "### Signaling hub over WebSockets on loopback ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "$(nproc) cores, $(uname -r); $HUB_TEXT, hub-load to core $CLIENT_CORE;" \
        "pairs in rooms of two from $SOURCE_IPS source IPs; ${DURATION}s measured after ${WARMUP}s warm-up;" \
        "open loop: $RATE candidates/s per connection; closed loop: $WINDOW in flight per connection;" \
        "least disturbed of $REPEAT run(s) each."
    echo
    echo "| run | connections | setup s | server RSS before → idle MiB | idle KiB / conn | idle MiB / 1,000 | relayed msg/s | p50 µs | p99 µs | max µs | lost | hub errors | closed early | server CPU % | client CPU % | other CPU % | note |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---|"
    jq -r --argjson maxother "$MAX_OTHER" '.runs[] |
        def n: if . == null then "?" else . end;
        def mib: if . == null then "?" else (. / 1024 * 10 | round / 10) end;
        if .failed then
            "| \(.run) | \(.connections) | | | | | | | | | | | | | | | FAILED: \(.failed) |"
        else
            "| \(.run) | \(.connections) | \(.setup_s) | \(.server_rss_before_kib | mib) → \(.server_rss_idle_kib | mib) | \(.idle_kib_per_connection | n) | \(.idle_mib_per_1000_connections | n) | \(.relayed_per_s) | \(.latency.p50_us) | \(.latency.p99_us) | \(.latency.max_us) | \(.lost) | \(.hub_errors | to_entries | map("\(.key) \(.value)") | join(", ")) | \(.closed_early | to_entries | map("\(.key) \(.value)") | join(", ")) | \(.server_cpu_pct | n) | \(.client_cpu_pct | n) | \(.other_cpu_pct | n) | \(if (.other_cpu_pct // 0) > $maxother then "disturbed" else "" end) |"
        end' "$RUN_DIR/summary.json"
} | tee "$RUN_DIR/summary.md"
exit "$FAILED"
