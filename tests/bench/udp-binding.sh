#!/usr/bin/env bash
# STUN Binding over UDP: turnpike vs coturn vs mini-responder, on loopback.
#
# Runs, in one go and under the same conditions:
#   * coturn (STUN only, one relay thread), pinned to core $SERVER_CORE,
#   * mini-responder (turnpike-bench's minimal batched responder: the
#     reference upper bound), pinned to core $SERVER_CORE,
#   * turnpike with --udp-workers 1, pinned to core $SERVER_CORE,
#   * turnpike with --udp-workers 2, unpinned ("all cores"; the load client
#     then shares the cores with it),
# and for each target
#   * a throughput run: stun-flood closed loop ($SOCKETS sockets x $WINDOW
#     outstanding), client pinned to core $CLIENT_CORE,
#   * a latency run: stun-flood open loop at $RATE requests/s (default: 50 %
#     of the slowest target's throughput), client pinned to $CLIENT_CORE.
# Prints a Markdown table and keeps the raw JSON of every run (and the server
# logs) in bench-results/udp-binding-<timestamp>/ (git-ignored).
#
# Usage: tests/bench/udp-binding.sh            (from anywhere in the repo)
# Environment knobs (defaults in brackets):
#   DURATION [5]  WARMUP [1]  SOCKETS [16]  WINDOW [32]
#   RATE [auto]         open-loop rate in requests/s; auto = 50 % of the
#                       slowest target's closed-loop throughput
#   REPEAT [1]          runs per measurement; the best one is reported
#                       (highest throughput / lowest p99), all are kept
#   MAX_OTHER [10]      a run during which other processes used more than
#                       this % of a core is "disturbed" (shared machine)...
#   RETRIES [2]         ...and is retried up to this many extra times; a
#                       row still disturbed is flagged in the table
#   RUN_TURNPIKE [auto] auto: run turnpike if it builds and has the `serve`
#                       flags, else skip it with a warning; 1: required; 0: skip
#   SERVER_CORE [0]  CLIENT_CORE [1]
#   PORT_BASE [34780]   first port tried; busy ports are skipped
#   QUIET_WAIT [60]     seconds to wait for an idle machine before each run
#                       (other builds running skew results); 0 = don't wait
#   SKIP_BUILD [0]      1: use the existing target/release binaries
#   OUT_DIR [bench-results]
#
# All traffic stays on 127.0.0.1. Every process started here is bounded in
# time and killed on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
SOCKETS=${SOCKETS:-16}
WINDOW=${WINDOW:-32}
RATE=${RATE:-auto}
REPEAT=${REPEAT:-1}
RETRIES=${RETRIES:-2}
MAX_OTHER=${MAX_OTHER:-10}
RUN_TURNPIKE=${RUN_TURNPIKE:-auto}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
PORT_BASE=${PORT_BASE:-34780}
QUIET_WAIT=${QUIET_WAIT:-60}
QUIET_MAX_BUSY=${QUIET_MAX_BUSY:-15}
SKIP_BUILD=${SKIP_BUILD:-0}
OUT_DIR=${OUT_DIR:-bench-results}

BIN="$ROOT/target/release"
FLOOD="$BIN/stun-flood"
MINI="$BIN/mini-responder"
TURNPIKE_BIN="$BIN/turnpike"
# Hard upper bound on the life of any server started here (seconds).
SERVER_MAX_S=900
STARTUP_TIMEOUT_S=15

STAMP=$(date +%Y%m%d-%H%M%S)
[[ $OUT_DIR == /* ]] || OUT_DIR="$ROOT/$OUT_DIR"
RUN_DIR="$OUT_DIR/udp-binding-$STAMP"

log() { printf '[udp-binding] %s\n' "$*" >&2; }
die() {
    printf '[udp-binding] ERROR: %s\n' "$*" >&2
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

# Stops one server started by start_bg (by pid) and forgets it.
stop_bg() {
    local pid=$1 p keep=()
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do
        [[ $p == "$pid" ]] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

# start_bg LOGFILE CMD...: starts CMD in the background under `timeout`
# (bounded life), records its pid in PIDS and sets BG_PID.
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
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "REPEAT must be a positive integer"
[[ $RETRIES =~ ^[0-9]+$ ]] || die "RETRIES must be a non-negative integer"
[[ $RATE == auto || $RATE =~ ^[1-9][0-9]*$ ]] || die "RATE must be 'auto' or a positive integer"

# ---------------------------------------------------------------- build
TURNPIKE_OK=0
TURNPIKE_WHY=""
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
    [[ -x $FLOOD && -x $MINI ]] || die "turnpike-bench binaries missing in $BIN"
    if [[ $RUN_TURNPIKE != 0 && -z $TURNPIKE_WHY ]]; then
        if [[ ! -x $TURNPIKE_BIN ]]; then
            TURNPIKE_WHY="$TURNPIKE_BIN not found"
        elif ! "$TURNPIKE_BIN" serve --help 2>/dev/null | grep -q -- '--udp-workers'; then
            TURNPIKE_WHY="'turnpike serve' has no --udp-workers flag yet"
        else
            TURNPIKE_OK=1
        fi
    fi
    if [[ $RUN_TURNPIKE != 0 && $TURNPIKE_OK == 0 ]]; then
        [[ $RUN_TURNPIKE == 1 ]] && die "$TURNPIKE_WHY"
        log "WARNING: skipping turnpike: $TURNPIKE_WHY"
    fi
    [[ $RUN_TURNPIKE == 0 ]] && TURNPIKE_WHY="RUN_TURNPIKE=0"
    return 0
}

# ---------------------------------------------------------------- coturn
ensure_coturn() {
    if command -v turnserver >/dev/null; then
        return 0
    fi
    log "coturn not installed: apt-get install -y coturn"
    if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y coturn ||
        { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y coturn; }; }; then
        die "could not install coturn (apt-get install -y coturn failed; are you root?)"
    fi
    command -v turnserver >/dev/null || die "coturn installed but turnserver not on PATH"
}

# ---------------------------------------------------------------- targets
# Each start_* function starts one server in the background (BG_PID) on the
# given port and waits until it answers a Binding request.

port_free() {
    ! ss -Hlun "sport = :$1" 2>/dev/null | grep -q . &&
        ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
}

# free_port START: first port >= START free for UDP and TCP (other servers may
# run on this machine). Callers pass increasing STARTs.
free_port() {
    local p=$1
    while ! port_free "$p"; do
        p=$((p + 1))
        ((p < 65000)) || die "no free port found from $1"
    done
    echo "$p"
}

wait_ready() {
    local name=$1 addr=$2 pid=$3 deadline=$((SECONDS + STARTUP_TIMEOUT_S))
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || die "$name exited during startup (log: $RUN_DIR/$name.log)"
        if "$FLOOD" --server "$addr" --sockets 1 --window 1 --warmup 0 --duration 0.3 \
            --max-requests 1 --timeout 0.25 >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    die "$name did not answer a Binding request on $addr within ${STARTUP_TIMEOUT_S}s (log: $RUN_DIR/$name.log)"
}

# coturn, STUN only, UDP only, one relay thread (-m 1: every UDP listener
# socket lives in that thread; the other coturn threads - main listener,
# auth, admin - stay idle for STUN), pinned to the server core.
COTURN_FLAGS=(-n --stun-only --listening-ip 127.0.0.1 --no-tcp --no-tls --no-dtls --no-cli
    --relay-threads 1 --simple-log)
start_coturn() {
    local port=$1
    port_free "$port" || die "port $port is busy"
    start_bg "$RUN_DIR/coturn.log" taskset -c "$SERVER_CORE" turnserver "${COTURN_FLAGS[@]}" \
        --listening-port "$port" --log-file stdout --pidfile "$RUN_DIR/coturn.pid"
    wait_ready coturn "127.0.0.1:$port" "$BG_PID"
}

start_mini() {
    local port=$1
    port_free "$port" || die "port $port is busy"
    start_bg "$RUN_DIR/mini-responder.log" taskset -c "$SERVER_CORE" "$MINI" \
        --listen "127.0.0.1:$port" --duration "$SERVER_MAX_S"
    wait_ready mini-responder "127.0.0.1:$port" "$BG_PID"
}

# Turnpike is kept separate: its `serve` CLI is developed in parallel.
# start_turnpike PORT WORKERS PIN(yes|no)
start_turnpike() {
    local port=$1 workers=$2 pin=$3 name="turnpike-w$2"
    local cmd=("$TURNPIKE_BIN" serve --listen "127.0.0.1:$port" --http off --metrics off
        --udp-workers "$workers")
    port_free "$port" || die "port $port is busy"
    if [[ $pin == yes ]]; then
        start_bg "$RUN_DIR/$name.log" taskset -c "$SERVER_CORE" "${cmd[@]}"
    else
        start_bg "$RUN_DIR/$name.log" "${cmd[@]}"
    fi
    wait_ready "$name" "127.0.0.1:$port" "$BG_PID"
}

# Target table: name|port|start command|client pinned (yes/no)|note
TARGETS=()
define_targets() {
    local p1 p2 p3 p4
    p1=$(free_port "$PORT_BASE")
    p2=$(free_port $((p1 + 10)))
    TARGETS=(
        "coturn|$p1|start_coturn $p1|yes|core $SERVER_CORE, 1 relay thread"
        "mini-responder|$p2|start_mini $p2|yes|core $SERVER_CORE, 1 thread"
    )
    if [[ $TURNPIKE_OK == 1 ]]; then
        p3=$(free_port $((p2 + 10)))
        p4=$(free_port $((p3 + 10)))
        TARGETS+=(
            "turnpike-w1|$p3|start_turnpike $p3 1 yes|yes|core $SERVER_CORE, --udp-workers 1"
            "turnpike-w2|$p4|start_turnpike $p4 2 no|no|all cores, --udp-workers 2, client shares the cores"
        )
    fi
}

# ---------------------------------------------------------------- runs
# Waits (up to QUIET_WAIT s) until no core is busier than QUIET_MAX_BUSY %
# over one second; sets LAST_BUSY to the last sample ("c0/c1" percents).
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
        if ((max <= QUIET_MAX_BUSY)); then
            return 0
        fi
        if ((SECONDS >= deadline)); then
            log "WARNING: machine busy before the run (cores busy % $LAST_BUSY): results may be skewed"
            return 0
        fi
        log "machine busy (cores busy % $LAST_BUSY), waiting for it to settle"
    done
}

# flood NAME KIND(throughput|latency) PORT CLIENT_PINNED SERVER_PID [RATE]
# Runs REPEAT times (plus up to RETRIES more when a run was disturbed: other
# processes used more than MAX_OTHER % of a core during it), writes
# NAME-KIND-N.json and symlinks the best run to NAME-KIND.json (undisturbed
# first, then highest throughput / lowest p99).
flood() {
    local name=$1 kind=$2 port=$3 pinned=$4 spid=$5 rate=${6:-}
    local i=0 good=0 out txt best="" best_key="" key score other disturbed
    local args=(--server "127.0.0.1:$port" --sockets "$SOCKETS" --window "$WINDOW"
        --duration "$DURATION" --warmup "$WARMUP" --json --label "$name/$kind"
        --server-pid "$spid")
    [[ $kind == latency ]] && args+=(--rate "$rate")
    local pin=()
    [[ $pinned == yes ]] && pin=(taskset -c "$CLIENT_CORE")
    local limit
    limit=$(awk -v d="$DURATION" -v w="$WARMUP" 'BEGIN { printf "%d", d + w + 15 }')
    while ((good < REPEAT && i < REPEAT + RETRIES)); do
        i=$((i + 1))
        wait_quiet
        out="$RUN_DIR/$name-$kind-$i.json"
        txt="$RUN_DIR/$name-$kind-$i.txt"
        log "$name: $kind run $i${rate:+ at $rate/s} (idle check: cores busy % $LAST_BUSY)"
        if ! timeout -k 5 "$limit" "${pin[@]}" "$FLOOD" "${args[@]}" >"$out" 2>"$txt"; then
            cat "$txt" >&2
            die "stun-flood against $name failed (see $RUN_DIR/$name-$kind-$i.*)"
        fi
        sed 's/^/    /' "$txt" >&2
        other=$(jq '.other_cpu_pct // 0' "$out")
        if awk -v o="$other" -v m="$MAX_OTHER" 'BEGIN { exit !(o > m) }'; then
            disturbed=true
            log "WARNING: run disturbed: other processes used ${other}% of a core (MAX_OTHER=$MAX_OTHER)"
        else
            disturbed=false
            good=$((good + 1))
        fi
        jq --arg busy "$LAST_BUSY" --argjson d "$disturbed" \
            '. + {pre_run_core_busy: $busy, disturbed: $d}' "$out" >"$out.tmp" && mv "$out.tmp" "$out"
        if [[ $kind == throughput ]]; then
            score=$(jq '.responses_per_sec' "$out")
        else
            score=$(jq '-.p99_us' "$out")
        fi
        key="$([[ $disturbed == true ]] && echo 0 || echo 1) $score"
        if [[ -z $best ]] || awk -v a="$key" -v b="$best_key" \
            'BEGIN { split(a, x, " "); split(b, y, " "); exit !(x[1] > y[1] || (x[1] == y[1] && x[2] > y[2])) }'; then
            best=$out
            best_key=$key
        fi
    done
    ln -sf "$(basename "$best")" "$RUN_DIR/$name-$kind.json"
}

# phase KIND [RATE]: for each target, start the server, run, stop it.
phase() {
    local kind=$1 rate=${2:-} t name port start pinned note pid spid
    for t in "${TARGETS[@]}"; do
        IFS='|' read -r name port start pinned note <<<"$t"
        log "starting $name ($note) on 127.0.0.1:$port"
        $start
        pid=$BG_PID
        # The server is the child of `timeout` (taskset execs into it).
        spid=$(pgrep -P "$pid" | head -1)
        [[ -n $spid ]] || die "cannot find the pid of $name"
        flood "$name" "$kind" "$port" "$pinned" "$spid" "$rate"
        stop_bg "$pid"
    done
}

# ---------------------------------------------------------------- report
report() {
    local rate=$1 t name port start pinned note
    local files=()
    for t in "${TARGETS[@]}"; do
        IFS='|' read -r name port start pinned note <<<"$t"
        files+=("$RUN_DIR/$name-throughput.json" "$RUN_DIR/$name-latency.json")
    done
    # One JSON document with everything the table shows.
    jq -s --arg rate "$rate" --argjson targets "$(printf '%s\n' "${TARGETS[@]}" |
        jq -R 'split("|") | {name: .[0], pinned: .[3], note: .[4]}' | jq -s .)" '
        (. as $runs | $targets | map(. as $t | $t + {
            throughput: ($runs[] | select(.label == ($t.name + "/throughput"))),
            latency: ($runs[] | select(.label == ($t.name + "/latency")))
        })) as $rows
        | ($rows | map(select(.name == "mini-responder"))[0].throughput.responses_per_sec) as $mini
        | ($rows | map(select(.name == "coturn"))[0].throughput.responses_per_sec) as $coturn
        | { rate: ($rate | tonumber), targets: ($rows | map(. + {
              vs_mini_responder: (if $mini > 0 then .throughput.responses_per_sec / $mini else null end),
              vs_coturn: (if $coturn > 0 then .throughput.responses_per_sec / $coturn else null end)
          })) }' "${files[@]}" >"$RUN_DIR/summary.json"

    {
        echo "### STUN Binding over UDP on loopback ($(date -u +%Y-%m-%dT%H:%MZ))"
        echo
        echo "$(nproc) cores, $(uname -r); server pinned to core $SERVER_CORE, stun-flood pinned to core $CLIENT_CORE" \
            "unless noted; $SOCKETS client sockets; throughput = closed loop, $WINDOW outstanding per socket;" \
            "latency = open loop at $rate req/s; ${DURATION}s measured after ${WARMUP}s warmup; best of $REPEAT."
        echo
        echo "| target | setup | responses/s | p50 µs (max load) | p99 µs (max load) | p50 µs @ $rate/s | p99 µs @ $rate/s | lost | vs mini-responder | vs coturn | server / client / other CPU % (max load) |"
        echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        jq -r 'def r: if . == null then "?" else round end;
            .targets[] | "| \(.name) | \(.note) | \(.throughput.responses_per_sec | floor) | \(.throughput.p50_us) | \(.throughput.p99_us) | \(.latency.p50_us) | \(.latency.p99_us) | \(.throughput.lost + .latency.lost) | \(if .vs_mini_responder then (.vs_mini_responder * 100 | round / 100) else "-" end) | \(if .vs_coturn then (.vs_coturn * 100 | round / 100) else "-" end) | \(.throughput.server_cpu_pct | r)/\(.throughput.client_cpu_pct | r)/\(.throughput.other_cpu_pct | r)\(if .throughput.disturbed or .latency.disturbed then " ⚠ disturbed" else "" end) |"' \
            "$RUN_DIR/summary.json"
        if jq -e '[.targets[] | .throughput.disturbed, .latency.disturbed] | any' "$RUN_DIR/summary.json" >/dev/null; then
            echo
            echo "⚠ disturbed: other processes used more than $MAX_OTHER % of a core during that row's selected run even after $RETRIES retries; rerun on a quiet machine."
        fi
        if [[ $TURNPIKE_OK == 0 ]]; then
            echo
            echo "turnpike not measured: ${TURNPIKE_WHY:-skipped}."
        fi
        if [[ $TURNPIKE_OK == 1 ]]; then
            echo
            echo "turnpike-w2 runs unpinned on all cores: the load client shares those cores, so its numbers are not comparable 1:1 with the pinned rows."
        fi
        echo
        echo "coturn: turnserver $(turnserver --version 2>/dev/null | tail -1) ${COTURN_FLAGS[*]}"
        echo "Raw JSON: ${RUN_DIR#"$ROOT"/}/"
    } | tee "$RUN_DIR/summary.md"
}

# ---------------------------------------------------------------- main
main() {
    build
    ensure_coturn
    mkdir -p "$RUN_DIR"
    log "results go to $RUN_DIR"
    define_targets

    log "phase 1: throughput (closed loop)"
    phase throughput

    local rate=$RATE
    if [[ $rate == auto ]]; then
        local min t name port start pinned note v
        min=""
        for t in "${TARGETS[@]}"; do
            IFS='|' read -r name port start pinned note <<<"$t"
            v=$(jq '.responses_per_sec | floor' "$RUN_DIR/$name-throughput.json")
            if [[ -z $min ]] || ((v < min)); then min=$v; fi
        done
        rate=$((min / 2 / 1000 * 1000))
        ((rate >= 1000)) || rate=1000
        log "open-loop rate: $rate/s (50 % of the slowest target, $min/s)"
    fi

    log "phase 2: latency (open loop at $rate/s)"
    phase latency "$rate"

    report "$rate"
}

main "$@"
