#!/usr/bin/env bash
# TURN over UDP on loopback: coturn vs relay-forwarder vs turnpike.
#
# For each target (server pinned to core $SERVER_CORE, turn-load pinned to core $CLIENT_CORE):
#   * relay-1:  1 allocation, ChannelData round trips through the relay to turn-load's echo
#               peer, $WINDOW in flight (latency);
#   * relay-N:  $MANY allocations, $WINDOW_MANY in flight each (throughput, server CPU per
#               round trip);
#   * alloc-1 / alloc-N: authenticated Allocate + Refresh(0) cycles on 1 and $MANY sockets
#               (allocations/s, server CPU per allocation, 438 re-tries, errors);
#   * hold:     a fresh server, then $HOLD allocations held: server RSS (VmRSS) before and
#               with them, and the cost per allocation.
# Server CPU comes from /proc/PID/stat (utime + stime) over each measured period.
# Prints a Markdown table and keeps every run's JSON (and the server logs) in
# bench-results/turn-relay-<timestamp>/ (git-ignored).
#
# Targets:
#   coturn          turnserver, REST API secret, one relay thread
#   relay-forwarder turnpike-bench's minimal batched forwarder (no auth): the reference limit
#   turnpike        turnpike serve --auth-secret ... (skipped with a message if it does not
#                   build or its `serve` lacks the TURN flags)
#
# Usage: tests/bench/turn-relay.sh            (from anywhere in the repo)
# Environment knobs (defaults in brackets):
#   DURATION [5]  WARMUP [1]  PAYLOAD [100]  WINDOW [1]  MANY [50]  WINDOW_MANY [4]
#   HOLD [10000]        allocations held for the memory measurement (0 = skip)
#   REPEAT [1]          runs per measurement; the best is reported, all are kept
#   RUN_TURNPIKE [auto] auto: run turnpike if it builds and has the flags; 1: required; 0: skip
#   SERVER_CORE [0]  CLIENT_CORE [1]
#   PORT_BASE [34790]   first port tried; busy ports are skipped
#   SECRET [turn-relay-bench]  REALM [turnpike]
#   QUIET_WAIT [60]     seconds to wait for an idle machine before each run (other builds
#                       skew results); 0 = don't wait
#   SKIP_BUILD [0]      1: use the existing release binaries
#   OUT_DIR [bench-results]
# Binaries are taken from ${CARGO_TARGET_DIR:-target}/release.
#
# All traffic stays on 127.0.0.0/8. Every process started here is bounded in time and killed
# on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
PAYLOAD=${PAYLOAD:-100}
WINDOW=${WINDOW:-1}
MANY=${MANY:-50}
WINDOW_MANY=${WINDOW_MANY:-4}
HOLD=${HOLD:-10000}
REPEAT=${REPEAT:-1}
RUN_TURNPIKE=${RUN_TURNPIKE:-auto}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
PORT_BASE=${PORT_BASE:-34790}
SECRET=${SECRET:-turn-relay-bench}
REALM=${REALM:-turnpike}
SKIP_BUILD=${SKIP_BUILD:-0}
QUIET_WAIT=${QUIET_WAIT:-60}
QUIET_MAX_BUSY=${QUIET_MAX_BUSY:-15}
OUT_DIR=${OUT_DIR:-bench-results}

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN="$TARGET_DIR/release"
LOAD="$BIN/turn-load"
FWD="$BIN/relay-forwarder"
TURNPIKE_BIN="$BIN/turnpike"
# Hard upper bound on the life of any server started here (seconds).
SERVER_MAX_S=900
STARTUP_TIMEOUT_S=15
# coturn deletes a Refresh(0)'d allocation at its next 1 s timer tick: pause between runs.
SETTLE_S=1.5

STAMP=$(date +%Y%m%d-%H%M%S)
[[ $OUT_DIR == /* ]] || OUT_DIR="$ROOT/$OUT_DIR"
RUN_DIR="$OUT_DIR/turn-relay-$STAMP"

log() { printf '[turn-relay] %s\n' "$*" >&2; }
die() {
    printf '[turn-relay] ERROR: %s\n' "$*" >&2
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

# start_bg LOGFILE CMD...: starts CMD under `timeout` (bounded life), sets BG_PID.
start_bg() {
    local logfile=$1
    shift
    timeout -k 5 "$SERVER_MAX_S" "$@" >"$logfile" 2>&1 &
    BG_PID=$!
    PIDS+=("$BG_PID")
}

# ---------------------------------------------------------------- checks
command -v taskset >/dev/null || die "taskset not found (util-linux)"
command -v jq >/dev/null || die "jq not found (apt-get install -y jq)"
[[ $(nproc) -ge 2 ]] || die "need at least 2 cores for server/client pinning"
for v in DURATION WARMUP; do
    [[ ${!v} =~ ^[0-9]+([.][0-9]+)?$ ]] || die "$v must be a number of seconds"
done
awk -v d="$DURATION" 'BEGIN { exit !(d <= 120) }' || die "DURATION is capped at 120 s"
for v in REPEAT MANY WINDOW WINDOW_MANY PAYLOAD; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
done
[[ $HOLD =~ ^[0-9]+$ ]] || die "HOLD must be a non-negative integer"

# Every held allocation costs a socket here and (at least) one in the server.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if ((HOLD > 0)) && (($(ulimit -n) < HOLD + 256)); then
    die "open-file limit $(ulimit -n) is too low for HOLD=$HOLD (need $((HOLD + 256))); lower HOLD"
fi

# ---------------------------------------------------------------- build
TURNPIKE_OK=0
TURNPIKE_WHY=""
TURNPIKE_EXTRA=()
build() {
    if [[ $SKIP_BUILD == 1 ]]; then
        log "SKIP_BUILD=1: using existing binaries in $BIN"
    elif [[ $RUN_TURNPIKE == 0 ]]; then
        log "building turnpike-bench (release)"
        cargo build --release -p turnpike-bench
    elif cargo build --release -p turnpike -p turnpike-bench; then
        :
    elif [[ $RUN_TURNPIKE == 1 ]]; then
        die "cargo build --release -p turnpike -p turnpike-bench failed"
    else
        TURNPIKE_WHY="turnpike did not build"
        log "WARNING: $TURNPIKE_WHY; building turnpike-bench only and skipping turnpike"
        cargo build --release -p turnpike-bench
    fi
    [[ -x $LOAD && -x $FWD ]] || die "turnpike-bench binaries missing in $BIN"
    if [[ $RUN_TURNPIKE != 0 && -z $TURNPIKE_WHY ]]; then
        local help flag
        if [[ ! -x $TURNPIKE_BIN ]]; then
            TURNPIKE_WHY="$TURNPIKE_BIN not found"
        else
            help=$("$TURNPIKE_BIN" serve --help 2>/dev/null || true)
            for flag in --auth-secret --realm --relay-ip --allow-peer; do
                if ! grep -q -- "$flag" <<<"$help"; then
                    TURNPIKE_WHY="'turnpike serve' has no $flag flag yet"
                    break
                fi
            done
            [[ -n $TURNPIKE_WHY ]] || TURNPIKE_OK=1
            # Lift the allocation limits (all clients come from loopback) where they exist.
            if grep -q -- --max-allocations <<<"$help"; then
                TURNPIKE_EXTRA+=(--max-allocations $((HOLD + MANY + 1000)))
            fi
            if grep -q -- --ip-quota <<<"$help"; then
                TURNPIKE_EXTRA+=(--ip-quota 0)
            fi
        fi
    fi
    if [[ $RUN_TURNPIKE != 0 && $TURNPIKE_OK == 0 ]]; then
        [[ $RUN_TURNPIKE == 1 ]] && die "$TURNPIKE_WHY"
        log "WARNING: skipping turnpike: $TURNPIKE_WHY"
    fi
    [[ $RUN_TURNPIKE == 0 ]] && TURNPIKE_WHY="RUN_TURNPIKE=0"
    return 0
}

ensure_coturn() {
    command -v turnserver >/dev/null && return 0
    log "coturn not installed: apt-get install -y coturn"
    if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y coturn ||
        { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y coturn; }; }; then
        die "could not install coturn (apt-get install -y coturn failed; are you root?)"
    fi
    command -v turnserver >/dev/null || die "coturn installed but turnserver not on PATH"
}

# ---------------------------------------------------------------- servers
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

AUTH=(--secret "$SECRET")

# Waits until one relayed round trip works (Allocate with auth, permission, channel, echo).
wait_ready() {
    local name=$1 port=$2 pid=$3 deadline=$((SECONDS + STARTUP_TIMEOUT_S)) probe
    probe="$RUN_DIR/$name-probe.txt"
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || die "$name exited during startup (log: $RUN_DIR/$name.log)"
        if "$LOAD" --server "127.0.0.1:$port" "${AUTH[@]}" --allocations 1 --duration 0.2 \
            --warmup 0 --timeout 0.5 --setup-timeout 3 >"$probe" 2>&1; then
            return 0
        fi
        sleep 0.3
    done
    cat "$probe" >&2
    die "$name did not relay a round trip on 127.0.0.1:$port within ${STARTUP_TIMEOUT_S}s (log: $RUN_DIR/$name.log)"
}

# coturn with the TURN REST API secret, UDP only, one relay thread, relay ports outside the
# ephemeral range (the load tool's sockets use that).
COTURN_FLAGS=(-n --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 --use-auth-secret
    --static-auth-secret "$SECRET" --realm "$REALM" --allow-loopback-peers --no-cli --no-tls
    --no-dtls --no-tcp --no-tcp-relay --min-port 10000 --max-port 31999 --relay-threads 1
    --simple-log)
start_coturn() {
    local port=$1 log=$2
    start_bg "$log" taskset -c "$SERVER_CORE" turnserver "${COTURN_FLAGS[@]}" \
        --listening-port "$port" --log-file stdout
}

start_relay_forwarder() {
    local port=$1 log=$2
    start_bg "$log" taskset -c "$SERVER_CORE" "$FWD" --listen "127.0.0.1:$port" \
        --duration "$SERVER_MAX_S" --max-allocations $((HOLD + MANY + 1000))
}

start_turnpike() {
    local port=$1 log=$2
    start_bg "$log" taskset -c "$SERVER_CORE" "$TURNPIKE_BIN" serve --listen "127.0.0.1:$port" \
        --http off --metrics off --udp-workers 1 --auth-secret "$SECRET" --realm "$REALM" \
        --relay-ip 127.0.0.1 --allow-peer 127.0.0.1/32 "${TURNPIKE_EXTRA[@]}"
}

# start NAME PORT: starts target NAME, waits until it relays; sets SPID (the server's pid).
SPID=""
SERVER_BG=""
start() {
    local name=$1 port=$2 log
    port_free "$port" || die "port $port is busy"
    log="$RUN_DIR/$name.log"
    [[ -e $log ]] && log="$RUN_DIR/$name-$(date +%s%N).log"
    "start_${name//-/_}" "$port" "$log"
    SERVER_BG=$BG_PID
    wait_ready "$name" "$port" "$SERVER_BG"
    # The server is the child of `timeout` (taskset execs into it).
    SPID=$(pgrep -P "$SERVER_BG" | head -1)
    [[ -n $SPID ]] || die "cannot find the pid of $name"
}

# ---------------------------------------------------------------- runs
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

# load NAME RUN PORT ARGS...: runs turn-load REPEAT times (client pinned), keeps every JSON
# and links the best (highest round trips/s or allocations/s) to NAME-RUN.json.
load() {
    local name=$1 run=$2 port=$3
    shift 3
    local i out txt best="" best_score="" score limit
    limit=$(awk -v d="$DURATION" -v w="$WARMUP" 'BEGIN { printf "%d", d + w + 90 }')
    for i in $(seq 1 "$REPEAT"); do
        out="$RUN_DIR/$name-$run-$i.json"
        txt="$RUN_DIR/$name-$run-$i.txt"
        if ((QUIET_WAIT > 0)); then wait_quiet; fi
        log "$name: $run run $i${LAST_BUSY:+ (cores busy % before: $LAST_BUSY)}"
        if ! timeout -k 5 "$limit" taskset -c "$CLIENT_CORE" "$LOAD" --server "127.0.0.1:$port" \
            "${AUTH[@]}" --duration "$DURATION" --warmup "$WARMUP" --payload "$PAYLOAD" \
            --server-pid "$SPID" --label "$name/$run" --json "$@" >"$out" 2>"$txt"; then
            cat "$txt" >&2
            die "turn-load against $name ($run) failed (see $RUN_DIR/$name-$run-$i.*)"
        fi
        sed 's/^/    /' "$txt" >&2
        score=$(jq '.round_trips_per_sec + .allocations_per_sec' "$out")
        if [[ -z $best ]] || awk -v a="$score" -v b="$best_score" 'BEGIN { exit !(a > b) }'; then
            best=$out
            best_score=$score
        fi
        sleep "$SETTLE_S"
    done
    ln -sf "$(basename "$best")" "$RUN_DIR/$name-$run.json"
}

rss_kib() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

# hold NAME PORT: fresh server, RSS before, HOLD allocations, RSS with them.
hold() {
    local name=$1 port=$2
    local ready="$RUN_DIR/$name-hold.ready" before after lpid held i
    start "$name" "$port"
    sleep 0.5
    before=$(rss_kib "$SPID")
    rm -f "$ready"
    log "$name: holding $HOLD allocations (server RSS before: $before KiB)"
    timeout -k 5 150 taskset -c "$CLIENT_CORE" "$LOAD" --server "127.0.0.1:$port" "${AUTH[@]}" \
        --mode hold --allocations "$HOLD" --duration 100 --setup-timeout 90 --setup-window 256 \
        --ready-file "$ready" --label "$name/hold" --json \
        >"$RUN_DIR/$name-hold.json" 2>"$RUN_DIR/$name-hold.txt" &
    lpid=$!
    PIDS+=("$lpid")
    for i in $(seq 1 1000); do
        [[ -e $ready ]] && break
        kill -0 "$lpid" 2>/dev/null || break
        sleep 0.1
    done
    [[ -e $ready ]] || {
        cat "$RUN_DIR/$name-hold.txt" >&2
        die "$name: turn-load did not report $HOLD allocations ready"
    }
    sleep 1
    after=$(rss_kib "$SPID")
    held=$(cat "$ready")
    # SIGTERM: turn-load deletes its allocations and prints its report.
    kill -TERM "$lpid" 2>/dev/null || true
    wait "$lpid" 2>/dev/null || true
    forget_pid "$lpid"
    sed 's/^/    /' "$RUN_DIR/$name-hold.txt" >&2
    jq -n --arg name "$name" --argjson before "$before" --argjson after "$after" \
        --argjson held "$held" --argjson wanted "$HOLD" \
        '{name: $name, rss_before_kib: $before, rss_held_kib: $after, held: $held, wanted: $wanted,
          kib_per_allocation: (if $held > 0 then (($after - $before) / $held * 100 | round / 100) else null end)}' \
        >"$RUN_DIR/$name-rss.json"
    log "$name: RSS $before KiB -> $after KiB with $held allocations"
    stop_bg "$SERVER_BG"
}

# target NAME: every run against one target.
target() {
    local name=$1 port
    port=$(free_port "$NEXT_PORT")
    NEXT_PORT=$((port + 10))
    log "starting $name on 127.0.0.1:$port (core $SERVER_CORE)"
    start "$name" "$port"
    load "$name" relay-1 "$port" --mode relay --allocations 1 --window "$WINDOW"
    load "$name" relay-n "$port" --mode relay --allocations "$MANY" --window "$WINDOW_MANY"
    load "$name" alloc-1 "$port" --mode alloc --allocations 1
    load "$name" alloc-n "$port" --mode alloc --allocations "$MANY"
    stop_bg "$SERVER_BG"
    if ((HOLD > 0)); then
        port=$(free_port "$NEXT_PORT")
        NEXT_PORT=$((port + 10))
        hold "$name" "$port"
    fi
}

# ---------------------------------------------------------------- report
report() {
    local name rows=()
    for name in "${TARGETS[@]}"; do
        rows+=("$(jq -n --arg name "$name" \
            --slurpfile r1 "$RUN_DIR/$name-relay-1.json" --slurpfile rn "$RUN_DIR/$name-relay-n.json" \
            --slurpfile a1 "$RUN_DIR/$name-alloc-1.json" --slurpfile an "$RUN_DIR/$name-alloc-n.json" \
            --slurpfile rss "$(if [[ -e $RUN_DIR/$name-rss.json ]]; then echo "$RUN_DIR/$name-rss.json"; else echo /dev/null; fi)" \
            '{name: $name, relay_1: $r1[0], relay_n: $rn[0], alloc_1: $a1[0], alloc_n: $an[0], rss: ($rss[0] // null)}')")
    done
    printf '%s\n' "${rows[@]}" | jq -s '{targets: .}' >"$RUN_DIR/summary.json"
    {
        echo "### TURN over UDP on loopback ($(date -u +%Y-%m-%dT%H:%MZ))"
        echo
        echo "$(nproc) cores, $(uname -r); server pinned to core $SERVER_CORE, turn-load (client and echo peer) to core $CLIENT_CORE;" \
            "${DURATION}s measured after ${WARMUP}s warmup; payload $PAYLOAD B; best of $REPEAT."
        echo "relay-1: 1 allocation, window $WINDOW; relay-$MANY: $MANY allocations x $WINDOW_MANY in flight;" \
            "alloc: authenticated Allocate + Refresh(0) cycles, a new 5-tuple per cycle (same source IP per socket, next port), nonce reused."
        echo
        echo "| target | relay-1 rt/s | relay-1 p50 / p99 µs | relay-$MANY rt/s | relay-$MANY p50 / p99 µs | lost | server CPU µs / rt | setup $MANY allocs ms | alloc-1 /s | alloc-$MANY /s | server CPU µs / alloc | 438 per alloc | errors | RSS idle → $HOLD allocs MiB | KiB / alloc |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"
        jq -r 'def n: if . == null then "?" else . end;
            def mib: if . == null then "?" else (. / 1024 * 10 | round / 10) end;
            .targets[] | "| \(.name) | \(.relay_1.round_trips_per_sec) | \(.relay_1.p50_us) / \(.relay_1.p99_us) | \(.relay_n.round_trips_per_sec) | \(.relay_n.p50_us) / \(.relay_n.p99_us) | \(.relay_1.lost + .relay_n.lost) | \(.relay_n.server_cpu_us_per_op | n) | \(.relay_n.setup_s * 1000 | round) | \(.alloc_1.allocations_per_sec) | \(.alloc_n.allocations_per_sec) | \(.alloc_n.server_cpu_us_per_op | n) | \(if .alloc_n.allocations_ok > 0 then (.alloc_n.stale_nonce_retries / .alloc_n.allocations_ok * 100 | round / 100) else "-" end) | \((.alloc_1.errors_by_code + .alloc_n.errors_by_code) | to_entries | map("\(.key)×\(.value)") | join(" ") | if . == "" then "none" else . end) | \(.rss.rss_before_kib | mib) → \(.rss.rss_held_kib | mib) (\(.rss.held | n)) | \(.rss.kib_per_allocation | n) |"' \
            "$RUN_DIR/summary.json"
        if [[ $TURNPIKE_OK == 0 ]]; then
            echo
            echo "turnpike not measured: ${TURNPIKE_WHY:-skipped}."
        fi
        echo
        echo "coturn: turnserver $(turnserver --version 2>/dev/null | tail -1) ${COTURN_FLAGS[*]/$SECRET/SECRET}"
        if [[ $TURNPIKE_OK == 1 ]]; then
            echo "turnpike: turnpike serve --http off --metrics off --udp-workers 1 --auth-secret SECRET --realm $REALM --relay-ip 127.0.0.1 --allow-peer 127.0.0.1/32 ${TURNPIKE_EXTRA[*]}"
        fi
        echo "Raw JSON: ${RUN_DIR#"$ROOT"/}/"
    } | tee "$RUN_DIR/summary.md"
}

# ---------------------------------------------------------------- main
main() {
    build
    ensure_coturn
    mkdir -p "$RUN_DIR"
    log "results go to $RUN_DIR"
    TARGETS=(coturn relay-forwarder)
    [[ $TURNPIKE_OK == 1 ]] && TARGETS+=(turnpike)
    NEXT_PORT=$PORT_BASE
    local t
    for t in "${TARGETS[@]}"; do
        target "$t"
    done
    report
}

main "$@"
