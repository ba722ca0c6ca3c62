#!/usr/bin/env bash
# WebRTC set-up time and data-channel throughput through the relay, on loopback, with the
# release `turnpike peer` and (optionally) the web demo in headless Chromium.
#
# One `turnpike serve --listen 127.0.0.1:P --http 127.0.0.1:H --metrics off --ip-quota 0`
# (no per-IP allocation quota: every run allocates from 127.0.0.1) serves every run; each
# run uses a fresh room. Measured:
#   * peer ↔ peer set-up, direct ("host") and --relay-only ("relay"): $RUNS runs each. Peer A
#     joins and waits, peer B joins and offers; `setup_ms` from both --json reports (from the
#     moment the other peer was known to the data channel's opening). The selected pair of
#     every run is checked (host/host, relay/relay).
#   * peer ↔ peer throughput through the relay: B sends a generated $FILE_BYTES-byte file
#     with --send-file to A, both --relay-only; $FILE_RUNS runs. MB/s = bytes / transfer_ms
#     (from sending the header to receiving file-ok, so it includes A's last SHA-256 step).
#   * with BROWSER=1 (tests/browser/peer-bench.mjs): page ↔ peer set-up, direct and relay
#     only ($RUNS runs each; the Rust peer's setup_ms and the page's equivalent from its
#     event log), and page ↔ page relay-only transfer of a generated $FILE_BYTES-byte file
#     through the hook's sendFile ($FILE_RUNS runs).
# Prints a Markdown table (median, min, max, and the exact commands) and keeps the reports
# and logs in bench-results/peer-setup-<time>/ (git-ignored). Exits 1 if any run failed.
#
# Usage: tests/bench/peer-setup.sh          (from anywhere in the repo)
# Environment knobs (defaults in brackets):
#   RUNS [10]             set-up runs per path
#   FILE_BYTES [50000000] size of the generated file (MB = 10^6 bytes)
#   FILE_RUNS [3]         throughput runs
#   BROWSER [1]           0: skip the Chromium measurements
#   PEER_TIMEOUT [30]     --timeout of each set-up run; throughput runs get 300
#   SKIP_BUILD [0]        1: use the existing release binary
#   TURNPIKE_BIN [${CARGO_TARGET_DIR:-target}/release/turnpike]
#   OUT_DIR [bench-results]
# Every process started here runs under `timeout` and is killed on exit; the whole script is
# bounded by about RUNS × 4 × (PEER_TIMEOUT + 10) s plus FILE_RUNS × 2 × 310 s in the worst
# case, and takes a few minutes when nothing fails.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

RUNS=${RUNS:-10}
FILE_BYTES=${FILE_BYTES:-50000000}
FILE_RUNS=${FILE_RUNS:-3}
BROWSER=${BROWSER:-1}
PEER_TIMEOUT=${PEER_TIMEOUT:-30}
SKIP_BUILD=${SKIP_BUILD:-0}
OUT_DIR=${OUT_DIR:-bench-results}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TURNPIKE_BIN=${TURNPIKE_BIN:-$TARGET_DIR/release/turnpike}
FILE_TIMEOUT=300
SERVER_MAX_S=3600

STAMP=$(date +%Y%m%d-%H%M%S)
[[ $OUT_DIR == /* ]] || OUT_DIR="$ROOT/$OUT_DIR"
RUN_DIR="$OUT_DIR/peer-setup-$STAMP"

log() { printf '[peer-setup] %s\n' "$*" >&2; }
die() {
    printf '[peer-setup] ERROR: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------- cleanup
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        for _ in $(seq 1 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
    [[ -z ${FILE:-} ]] || rm -f "$FILE"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

forget_pid() {
    local pid=$1 p keep=()
    for p in "${PIDS[@]+"${PIDS[@]}"}"; do
        [[ $p == "$pid" ]] || keep+=("$p")
    done
    PIDS=("${keep[@]+"${keep[@]}"}")
}

# ---------------------------------------------------------------- checks
command -v jq >/dev/null || die "jq not found (apt-get install -y jq)"
command -v curl >/dev/null || die "curl not found (apt-get install -y curl)"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer"
[[ $FILE_RUNS =~ ^[0-9]+$ ]] || die "FILE_RUNS must be a non-negative integer"
[[ $FILE_BYTES =~ ^[1-9][0-9]*$ ]] || die "FILE_BYTES must be a positive integer"
((FILE_BYTES <= 1000000000)) || die "FILE_BYTES must be at most 10^9"
[[ $PEER_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "PEER_TIMEOUT must be a positive integer"
if [[ $BROWSER == 1 ]]; then
    command -v node >/dev/null || die "node not found (BROWSER=0 skips the Chromium runs)"
    [[ -d tests/browser/node_modules/playwright-core ]] ||
        die "tests/browser/node_modules is missing: run npm ci in tests/browser (or BROWSER=0)"
fi

if [[ $SKIP_BUILD == 1 ]]; then
    log "SKIP_BUILD=1: using $TURNPIKE_BIN"
else
    log "building turnpike (release)"
    cargo build --release -p turnpike
fi
[[ -x $TURNPIKE_BIN ]] || die "$TURNPIKE_BIN not found"
mkdir -p "$RUN_DIR"
log "results in $RUN_DIR"

# ---------------------------------------------------------------- server
port_free() {
    ! ss -Hlun "sport = :$1" 2>/dev/null | grep -q . &&
        ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
}
free_port() {
    local p=$1
    while ! port_free "$p"; do
        p=$((p + 1))
        ((p < 40000)) || die "no free port found from $1"
    done
    echo "$p"
}
SPORT=$(free_port 27600)
HPORT=$(free_port $((SPORT + 1)))
SIGNAL="ws://127.0.0.1:$HPORT/v1/ws"
timeout -k 5 "$SERVER_MAX_S" "$TURNPIKE_BIN" serve --listen "127.0.0.1:$SPORT" \
    --http "127.0.0.1:$HPORT" --metrics off --ip-quota 0 >"$RUN_DIR/server.log" 2>&1 &
SERVER_PID=$!
PIDS+=("$SERVER_PID")
deadline=$((SECONDS + 15))
until curl -sf -m 1 "http://127.0.0.1:$HPORT/readyz" >/dev/null 2>&1; do
    kill -0 "$SERVER_PID" 2>/dev/null || die "turnpike serve exited during start-up (log: $RUN_DIR/server.log)"
    ((SECONDS < deadline)) || die "turnpike serve not ready in 15 s (log: $RUN_DIR/server.log)"
    sleep 0.2
done
SERVE_CMD="turnpike serve --listen 127.0.0.1:$SPORT --http 127.0.0.1:$HPORT --metrics off --ip-quota 0"
log "server: $SERVE_CMD"

# ---------------------------------------------------------------- peer pairs
FAILED=0
# pair NAME TIMEOUT A_ARGS... -- B_ARGS...: peer A joins and waits, then peer B joins (and
# offers); their --json reports go to NAME-a.json and NAME-b.json. Returns 1 if either failed.
pair() {
    local name=$1 limit=$2
    shift 2
    local a_args=() b_args=() in_b=0 x
    for x in "$@"; do
        if [[ $x == -- ]]; then in_b=1; elif ((in_b)); then b_args+=("$x"); else a_args+=("$x"); fi
    done
    local room="$name-$$" a b rc_a=0 rc_b=0 deadline
    timeout -k 2 $((limit + 10)) "$TURNPIKE_BIN" peer --signal "$SIGNAL" --room "$room" \
        --json --timeout "$limit" "${a_args[@]+"${a_args[@]}"}" >"$RUN_DIR/$name-a.json" 2>"$RUN_DIR/$name-a.err" &
    a=$!
    PIDS+=("$a")
    deadline=$((SECONDS + 10))
    until grep -q "waiting for the other peer" "$RUN_DIR/$name-a.err"; do
        if ! kill -0 "$a" 2>/dev/null || ((SECONDS >= deadline)); then
            log "$name: peer A did not start waiting (see $RUN_DIR/$name-a.err)"
            wait "$a" 2>/dev/null || true
            forget_pid "$a"
            return 1
        fi
        sleep 0.02
    done
    timeout -k 2 $((limit + 10)) "$TURNPIKE_BIN" peer --signal "$SIGNAL" --room "$room" \
        --json --timeout "$limit" "${b_args[@]+"${b_args[@]}"}" >"$RUN_DIR/$name-b.json" 2>"$RUN_DIR/$name-b.err" &
    b=$!
    PIDS+=("$b")
    wait "$a" || rc_a=$?
    wait "$b" || rc_b=$?
    forget_pid "$a"
    forget_pid "$b"
    if ((rc_a != 0 || rc_b != 0)); then
        log "$name: FAILED (exit $rc_a/$rc_b): $(tail -1 "$RUN_DIR/$name-a.err") / $(tail -1 "$RUN_DIR/$name-b.err")"
        return 1
    fi
}

# setup_runs MODE EXPECTED_PAIR FLAGS...: RUNS pairs; collects A's and B's setup_ms.
setup_runs() {
    local mode=$1 want=$2 i got
    shift 2
    : >"$RUN_DIR/setup-$mode.tsv"
    for i in $(seq 1 "$RUNS"); do
        if ! pair "setup-$mode-$i" "$PEER_TIMEOUT" "$@" -- "$@"; then
            FAILED=1
            continue
        fi
        got=$(jq -r '"\(.local_candidate_type)/\(.remote_candidate_type)"' "$RUN_DIR/setup-$mode-$i-b.json")
        if [[ $got != "$want" ]]; then
            log "setup-$mode-$i: selected pair $got, expected $want"
            FAILED=1
            continue
        fi
        printf '%s\t%s\n' "$(jq .setup_ms "$RUN_DIR/setup-$mode-$i-a.json")" \
            "$(jq .setup_ms "$RUN_DIR/setup-$mode-$i-b.json")" >>"$RUN_DIR/setup-$mode.tsv"
        log "setup-$mode-$i: $got, setup_ms A (answerer) $(cut -f1 <(tail -1 "$RUN_DIR/setup-$mode.tsv")), B (offerer) $(cut -f2 <(tail -1 "$RUN_DIR/setup-$mode.tsv"))"
    done
}

setup_runs host host/host
setup_runs relay relay/relay --relay-only

FILE=$(mktemp --suffix=.bin)
head -c "$FILE_BYTES" /dev/urandom >"$FILE"
: >"$RUN_DIR/relay-file.tsv"
for i in $(seq 1 "$FILE_RUNS"); do
    if ! pair "relay-file-$i" "$FILE_TIMEOUT" --relay-only -- --relay-only --send-file "$FILE"; then
        FAILED=1
        continue
    fi
    jq -r '"\(.transfer_ms)\t\(.local_candidate_type)/\(.remote_candidate_type)"' \
        "$RUN_DIR/relay-file-$i-b.json" >>"$RUN_DIR/relay-file.tsv"
    log "relay-file-$i: $(tail -1 "$RUN_DIR/relay-file.tsv")"
done
rm -f "$FILE"

if [[ $BROWSER == 1 ]]; then
    log "Chromium: page ↔ peer set-up and page ↔ page relay transfer"
    if ! (cd tests/browser && TURNPIKE_BIN="$TURNPIKE_BIN" timeout -k 5 \
        $((RUNS * 2 * (PEER_TIMEOUT + 20) + FILE_RUNS * 200 + 60)) node peer-bench.mjs \
        --http "$HPORT" --out "$RUN_DIR/browser.json" --runs "$RUNS" \
        --file-bytes "$FILE_BYTES" --file-runs "$FILE_RUNS" --peer-timeout "$PEER_TIMEOUT"); then
        FAILED=1
    fi
fi

# ---------------------------------------------------------------- report
# stats: reads numbers (one a line) and prints "n median min max" (median of an even count:
# the mean of the middle two).
stats() {
    sort -n | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "0 - - -"; exit }
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%d %g %g %g\n", NR, m, v[1], v[NR] }'
}
row() { # row WHAT UNIT COMMAND < numbers
    local what=$1 unit=$2 cmd=$3 n med min max
    read -r n med min max < <(stats)
    echo "| $what | $n | $med $unit | $min – $max | \`$cmd\` |"
}
mbps() { awk -v b="$FILE_BYTES" '$1 > 0 { printf "%.2f\n", b / 1e6 / ($1 / 1000) }'; }

PEER="turnpike peer --signal $SIGNAL --room R --json"
{
    echo "### WebRTC set-up and relay throughput on loopback ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "$(nproc) cores, $(uname -r); release build; one server for every run: \`$SERVE_CMD\`." \
        "Set-up: peer A joins first and waits, B joins second and makes the offer." \
        "File: $FILE_BYTES bytes (MB = 10^6 bytes), MB/s = bytes / transfer_ms (header sent → file-ok received)."
    echo
    echo "| measurement | runs | median | min – max | command (each run in a new room R) |"
    echo "|---|---:|---:|---:|---|"
    cut -f2 "$RUN_DIR/setup-host.tsv" | row "peer ↔ peer, host/host: setup_ms of B (offerer)" ms "$PEER (A, then B)"
    cut -f1 "$RUN_DIR/setup-host.tsv" | row "peer ↔ peer, host/host: setup_ms of A (answerer)" ms "$PEER (A, then B)"
    cut -f2 "$RUN_DIR/setup-relay.tsv" | row "peer ↔ peer, relay/relay: setup_ms of B (offerer)" ms "$PEER --relay-only (A, then B)"
    cut -f1 "$RUN_DIR/setup-relay.tsv" | row "peer ↔ peer, relay/relay: setup_ms of A (answerer)" ms "$PEER --relay-only (A, then B)"
    cut -f1 "$RUN_DIR/relay-file.tsv" | mbps | row "peer → peer through the relay, $FILE_BYTES B file" MB/s \
        "A: $PEER --relay-only --timeout $FILE_TIMEOUT; B: $PEER --relay-only --timeout $FILE_TIMEOUT --send-file FILE"
    cut -f1 "$RUN_DIR/relay-file.tsv" | row "  (transfer_ms of the same runs)" ms "as above"
    if [[ -s $RUN_DIR/browser.json ]]; then
        page_url="page http://127.0.0.1:$HPORT/?room=R"
        for mode in host relay; do
            if [[ $mode == relay ]]; then q="&policy=relay&turn=udp" f=" --relay-only"; else q="" f=""; fi
            jq -r --arg m "$mode" '.setup[$m][] | .peer_setup_ms // empty' "$RUN_DIR/browser.json" |
                row "page ↔ peer, $mode: setup_ms of the Rust peer (offerer)" ms "$page_url$q (first), then $PEER$f"
            jq -r --arg m "$mode" '.setup[$m][] | .page_setup_ms // empty' "$RUN_DIR/browser.json" |
                row "page ↔ peer, $mode: the page's set-up (answerer; \"P joined\" → channel open)" ms "same runs"
        done
        jq -r '.page_file.runs[] | (.mb_per_s * 100 | round / 100)' "$RUN_DIR/browser.json" |
            row "page → page through the relay (TURN UDP), $FILE_BYTES B generated" MB/s \
                "two pages at http://127.0.0.1:$HPORT/?room=R&policy=relay&turn=udp; turnpikeDemo.sendFile(name, bytes)"
        jq -r '.page_file.runs[] | .ms' "$RUN_DIR/browser.json" | row "  (sendFile ms of the same runs)" ms "as above"
    fi
} | tee "$RUN_DIR/summary.md"
exit "$FAILED"
