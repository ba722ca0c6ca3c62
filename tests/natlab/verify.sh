#!/usr/bin/env bash
# verify.sh: check that every NAT type of natlab.sh behaves as it claims, with an
# independent RFC 5780 client (coturn's turnutils_natdiscovery) and tests/natlab/probe.py.
#
#   tests/natlab/verify.sh [TURNPIKE_BIN]     (default: target/debug/turnpike)
#
# Needs root, iproute2, nftables, python3 and coturn (apt-get install -y coturn; no coturn
# daemon needs to run). Uses the lab prefix ${NATLAB_PREFIX:-nlv} and tears it down at the end.
# Prints one line per check and 'N passed, N failed'; exits non-zero if any check failed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
LAB="$HERE/natlab.sh"
PROBE="$HERE/probe.py"
BIN="${1:-$ROOT/target/debug/turnpike}"
export NATLAB_PREFIX="${NATLAB_PREFIX:-nlv}"
SERVER=198.51.100.1
WAN_IP=198.51.100.254
CLI_IP=192.168.77.2
WORK="$(mktemp -d -p "${TMPDIR:-/tmp}")"

passed=0
failed=0

die() {
    echo "verify: error: $*" >&2
    exit 1
}

cleanup() {
    bash "$LAB" down >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

[[ "$(id -u)" == 0 ]] || die "must run as root"
command -v turnutils_natdiscovery >/dev/null 2>&1 || die "turnutils_natdiscovery not found: apt-get install -y coturn"
command -v python3 >/dev/null 2>&1 || die "python3 not found"
[[ -x "$BIN" ]] || die "turnpike binary '$BIN' not found: cd $ROOT && cargo build -p turnpike"

check() {
    local name="$1" ok="$2" detail="$3"
    if [[ "$ok" == 1 ]]; then
        passed=$((passed + 1))
        printf 'ok    %-52s %s\n' "$name" "$detail"
    else
        failed=$((failed + 1))
        printf 'FAIL  %-52s %s\n' "$name" "$detail"
    fi
}

up() {
    bash "$LAB" up "$@" >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; die "natlab.sh up $* failed"; }
    bash "$LAB" server "$BIN" >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; die "natlab.sh server failed"; }
}

in_ns() {
    local n="$1"
    shift
    bash "$LAB" exec "$n" -- "$@"
}

# natdiscovery -m -f; prints "<mapping>|<filtering>|<reflexive ip>" (empty fields if absent).
discover() {
    local out mapping filtering refl
    out="$(timeout 60 bash "$LAB" exec cli -- turnutils_natdiscovery -m -f -p 3478 "$SERVER" 2>&1 || true)"
    echo "$out" >"$WORK/discover.$(date +%s%N).log"
    mapping="$(echo "$out" | sed -n 's/^NAT with \(.*Mapping\)!$/\1/p' | head -1)"
    filtering="$(echo "$out" | sed -n 's/^NAT with \(.*Filtering\)!$/\1/p' | head -1)"
    refl="$(echo "$out" | sed -n 's/.*UDP reflexive addr: \([0-9.]*\):.*/\1/p' | head -1)"
    echo "${mapping}|${filtering}|${refl}"
}

expect_discovery() {
    local type="$1" want_map="$2" want_filter="$3" want_ip="$4" got map filter ip ok=1
    up "$type"
    got="$(discover)"
    IFS='|' read -r map filter ip <<<"$got"
    [[ "$map" =~ ^($want_map)$ ]] || ok=0
    [[ "$filter" =~ ^($want_filter)$ ]] || ok=0
    [[ "$ip" == "$want_ip" ]] || ok=0
    check "$type: natdiscovery -m -f" "$ok" "mapping='${map}' filtering='${filter}' reflexive=${ip:-none}"
}

echo "# NAT lab verification (prefix ${NATLAB_PREFIX}, server ${BIN})"

EIM="Endpoint Independent Mapping"
expect_discovery full-cone "$EIM" "Endpoint Independent Filtering" "$WAN_IP"
expect_discovery restricted-cone "$EIM" "Address Dependent Filtering" "$WAN_IP"
expect_discovery port-restricted-cone "$EIM" "Address and Port Dependent Filtering" "$WAN_IP"
expect_discovery symmetric "Address and Port Dependent Mapping|Address Dependent Mapping" \
    "Address and Port Dependent Filtering" "$WAN_IP"
expect_discovery none "$EIM" "Endpoint Independent Filtering" "$CLI_IP"
expect_discovery firewall "$EIM" "Address and Port Dependent Filtering" "$CLI_IP"
expect_discovery full-cone-hairpin "$EIM" "Endpoint Independent Filtering" "$WAN_IP"

# blocked: nothing answers at all.
up blocked
out="$(timeout 60 bash "$LAB" exec cli -- turnutils_natdiscovery -m -f -p 3478 "$SERVER" 2>&1 || true)"
n_timeout="$(grep -c "STUN receive timeout" <<<"$out" || true)"
n_refl="$(grep -c "reflexive addr" <<<"$out" || true)"
check "blocked: natdiscovery -m -f" "$([[ "$n_timeout" -ge 2 && "$n_refl" == 0 ]] && echo 1 || echo 0)" \
    "${n_timeout} receive timeouts, ${n_refl} answers"
out="$(in_ns cli python3 "$PROBE" stun "$SERVER" --count 5 --timeout 0.3 2>&1 || true)"
check "blocked: 5 STUN requests" "$([[ "$out" == *"answered 0/5"* ]] && echo 1 || echo 0)" "${out##* }"

# Hairpinning: coturn's own test (same client, second socket), then client-to-client.
hairpin_natdiscovery() {
    local type="$1" want="$2" out ok
    up "$type"
    out="$(timeout 30 bash "$LAB" exec cli -- turnutils_natdiscovery -H -p 3478 "$SERVER" 2>&1 || true)"
    if [[ "$out" == *"Received a request"* ]]; then got=yes; else got=no; fi
    ok=0
    [[ "$got" == "$want" ]] && ok=1
    check "$type: natdiscovery -H hairpin=$want" "$ok" "hairpin=$got"
}
hairpin_natdiscovery full-cone-hairpin yes
hairpin_natdiscovery full-cone no
hairpin_natdiscovery port-restricted-cone no

# cli listens on 40000 and learns its mapped address; cli2 (also bound to 40000, so its
# mapping collides with cli's and cannot keep the port) sends to cli's mapped address.
hairpin_pair() {
    local type="$1" want="$2" addr_file="$WORK/hp.addr" lout sout lpid ok=0 cli2_mapped from
    up "$type"
    rm -f "$addr_file"
    in_ns cli python3 "$PROBE" listen --bind 40000 --addr-file "$addr_file" --timeout 4 >"$WORK/hp.listen" 2>&1 &
    lpid=$!
    for _ in $(seq 50); do [[ -s "$addr_file" ]] && break; sleep 0.1; done
    if [[ ! -s "$addr_file" ]]; then
        wait "$lpid" || true
        check "$type: cli2 -> cli mapped address" 0 "listener got no mapped address: $(cat "$WORK/hp.listen")"
        return
    fi
    sout="$(in_ns cli2 python3 "$PROBE" send "$(cat "$addr_file")" --bind 40000 --timeout 2 2>&1 || true)"
    wait "$lpid" || true
    lout="$(cat "$WORK/hp.listen")"
    cli2_mapped="$(sed -n 's/^mapped //p' <<<"$sout")"
    from="$(sed -n 's/^from \([^ ]*\) .*/\1/p' <<<"$lout")"
    if [[ "$want" == yes ]]; then
        # Delivered, the source is cli2's own mapped address, and the answer came back.
        [[ -n "$from" && "$from" == "$cli2_mapped" && "$sout" == *"answer from $(cat "$addr_file") pong"* ]] && ok=1
    else
        [[ -z "$from" ]] && ok=1
    fi
    check "$type: cli2 -> cli mapped $(cat "$addr_file") hairpin=$want" "$ok" \
        "cli2 mapped ${cli2_mapped:-?}, cli saw ${from:-nothing}"
}
hairpin_pair full-cone-hairpin yes
hairpin_pair full-cone no

# EIM under a port collision: cli and cli2 both use local port 40000; cli2 cannot keep the
# port, and must still get one external port for every destination.
collision() {
    local type="$1" out ports
    up "$type"
    in_ns cli python3 "$PROBE" stun "$SERVER" --bind 40000 >/dev/null
    out="$(in_ns cli2 python3 "$PROBE" stun "$SERVER" 198.51.100.2 "$SERVER:3479" 198.51.100.2:3479 --bind 40000 2>&1 || true)"
    ports="$(sed -n 's/.* mapped [0-9.]*:\([0-9]*\) .*/\1/p' <<<"$out" | sort -u | tr '\n' ' ')"
    check "$type: EIM with a port collision" \
        "$([[ "$(wc -w <<<"$ports")" == 1 && "$ports" != "40000 " ]] && echo 1 || echo 0)" \
        "cli2's external ports for 4 destinations: ${ports}"
}
collision full-cone
collision port-restricted-cone
collision restricted-cone

# Symmetric: a new external port per destination.
up symmetric
out="$(in_ns cli python3 "$PROBE" stun "$SERVER" 198.51.100.2 "$SERVER:3479" 198.51.100.2:3479 2>&1 || true)"
ports="$(sed -n 's/.* mapped [0-9.]*:\([0-9]*\) .*/\1/p' <<<"$out" | sort -u | wc -l)"
check "symmetric: 4 destinations, 4 external ports" "$([[ "$ports" == 4 ]] && echo 1 || echo 0)" "$ports distinct ports"

# Loss: one-way counts in each direction (type none, so srv can reach cli), then STUN round
# trips behind a full cone (two chances to be dropped: about 1 - 0.8^2 = 36 % lost).
up none --loss 20
one_way() {
    local from="$1" to_ns="$2" to="$3" out pct
    in_ns "$to_ns" python3 "$PROBE" count --bind "$to:9999" --expect 1000 >"$WORK/count.out" 2>&1 &
    local cpid=$!
    sleep 0.5
    in_ns "$from" python3 "$PROBE" blast "$to:9999" --count 1000 >/dev/null
    wait "$cpid" || true
    out="$(cat "$WORK/count.out")"
    pct="$(sed -n 's/.* lost \([0-9]*\).*/\1/p' <<<"$out")"
    check "none --loss 20: $from -> $to_ns one way" "$([[ -n "$pct" && "$pct" -ge 13 && "$pct" -le 27 ]] && echo 1 || echo 0)" "$out"
}
one_way cli srv 198.51.100.1
one_way srv cli 192.168.77.2
up full-cone --loss 20
out="$(in_ns cli python3 "$PROBE" stun "$SERVER" --count 200 --timeout 0.2 2>&1 || true)"
answered="$(sed -n 's/.*answered \([0-9]*\)\/.*/\1/p' <<<"$out")"
check "full-cone --loss 20: 200 STUN round trips" \
    "$([[ -n "$answered" && "$answered" -ge 104 && "$answered" -le 152 ]] && echo 1 || echo 0)" \
    "answered ${answered:-0}/200 (expect about 128)"

bash "$LAB" down >/dev/null 2>&1
left="$(ip netns list 2>/dev/null | grep -c "^${NATLAB_PREFIX}-" || true)"
check "down removes every namespace" "$([[ "$left" == 0 ]] && echo 1 || echo 0)" "$left left"

echo "natlab: ${passed} passed, ${failed} failed"
[[ "$failed" == 0 ]]
