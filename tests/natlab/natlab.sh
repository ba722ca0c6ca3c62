#!/usr/bin/env bash
# natlab.sh: a NAT lab in network namespaces for Turnpike.
#
# A client namespace sits behind a router namespace configured (with nftables) as a given
# NAT type; a "public" server namespace hosts a STUN server on two IPs (RFC 5780).
# See docs/nat-lab.md for the topology, the exact rules of each type and why they give the
# RFC 4787 behaviour they claim.
#
#   natlab.sh up TYPE [--loss PCT]   build the lab (tears down an older one of the same prefix)
#   natlab.sh down                   remove everything of the prefix (idempotent)
#   natlab.sh server BIN [ARGS...]   run `BIN serve ...` in the srv namespace, wait for UDP 3478
#   natlab.sh exec NS -- CMD...      run CMD in cli, cli2, rtr or srv
#   natlab.sh show                   the router's ruleset, addresses, conntrack table
#   natlab.sh types                  list the NAT types, one per line
#
# The pair lab (WebRTC paths, see docs/nat-lab.md): two peers, each behind its own router.
#   natlab.sh pair-up TYPE_A TYPE_B       clia behind rtra (TYPE_A), clib behind rtrb (TYPE_B)
#   natlab.sh pair-server BIN [ARGS...]   run `BIN serve ...` (STUN, TURN, hub) in srv
#   natlab.sh block-turn                  drop TURN Allocate requests arriving at srv
#   natlab.sh server-log                  print the server's log
#
# Environment: NATLAB_PREFIX (default tpl) prefixes every namespace name, so parallel labs
# don't collide; TMPDIR places the per-prefix state directory.
#
# tests/natlab/verify.sh checks every type with coturn's turnutils_natdiscovery and
# tests/natlab/probe.py (hairpinning, port collisions, --loss).
#
# Everything lives inside namespaces this script creates: the veths are created directly
# inside them, and nothing touches the root namespace's interfaces, routes or firewall.
set -euo pipefail

PREFIX="${NATLAB_PREFIX:-tpl}"
STATE_DIR="${TMPDIR:-/tmp}/natlab-${PREFIX}"

# --- addressing (TEST-NET-2 for the "internet", a private /24 for the LAN) -----------------
PUB_LEN=24                  # 198.51.100.0/24
SRV_IP1="198.51.100.1"      # primary STUN address
SRV_IP2="198.51.100.2"      # RFC 5780 alternate address
WAN_IP="198.51.100.254"     # the router's public address, the NAT's external address
LAN_NET="192.168.77.0/24"
LAN_LEN=24
LAN_GW="192.168.77.1"
CLI_IP="192.168.77.2"
CLI2_IP="192.168.77.3"
STUN_PORT=3478

# Interface names; they live inside the namespaces, so they never collide across labs.
RTR_WAN="wan"      # rtr side of the rtr<->srv veth
RTR_LAN="lan"      # bridge in rtr holding the LAN gateway address
RTR_LAN1="lan-cli"  # rtr side of the rtr<->cli veth (bridge port)
RTR_LAN2="lan-cli2" # rtr side of the rtr<->cli2 veth (bridge port)
HOST_IF="eth0"     # the single interface of srv, cli and cli2

TABLE="natlab"
MAP_TIMEOUT="120s"  # lifetime of a full/restricted-cone mapping without outbound traffic

TYPES=(full-cone restricted-cone port-restricted-cone symmetric none firewall blocked full-cone-hairpin)
NAMESPACES=(cli cli2 rtr srv)

# --- the pair lab (two peers, each behind its own NAT; `pair-up`) --------------------------
# srv holds a bridge "pub" (the public segment) with the server's address; each router's WAN
# veth is a port of it. The two LANs are different subnets and no router has a route to the
# other's LAN, so the peers' host candidates can never reach each other: every working path
# crosses both NATs (server-reflexive, peer-reflexive) or the TURN relay.
PAIR_NAMESPACES=(srv rtra clia rtrb clib)
PAIR_TYPES=(full-cone restricted-cone port-restricted-cone symmetric full-cone-hairpin)
PUB_BRIDGE="pub"
WAN_IP_A="198.51.100.10"     # rtra's public address
WAN_IP_B="198.51.100.20"     # rtrb's public address
LAN_NET_A="192.168.77.0/24"
LAN_GW_A="192.168.77.1"
CLI_IP_A="192.168.77.2"
LAN_NET_B="192.168.78.0/24"
LAN_GW_B="192.168.78.1"
CLI_IP_B="192.168.78.2"
HTTP_PORT=8080               # the signaling hub (ws://198.51.100.1:8080/v1/ws)
SRV_TABLE="natlab_srv"       # srv's own table (block-turn)

# Every namespace either lab may have created; `down` removes whichever exist.
ALL_NAMESPACES=(cli cli2 rtr srv rtra clia rtrb clib)

die() {
    echo "natlab: error: $*" >&2
    exit 1
}

note() {
    echo "natlab: $*" >&2
}

ns() {
    echo "${PREFIX}-$1"
}

nsexec() {
    local n="$1"
    shift
    ip netns exec "$(ns "$n")" "$@"
}

ns_exists() {
    [[ -e "/run/netns/$(ns "$1")" ]] || ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$(ns "$1")"
}

# Write a sysctl inside a namespace (no procps needed): nsysctl NS net.ipv4.ip_forward 1
nsysctl() {
    local n="$1" key="$2" value="$3"
    # shellcheck disable=SC2016  # expanded by the inner sh
    nsexec "$n" sh -c 'echo "$1" > "/proc/sys/$2"' sh "$value" "${key//.//}"
}

usage() {
    cat <<EOF
usage: natlab.sh COMMAND

  up TYPE [--loss PCT]   build the lab with the router as TYPE (see 'types');
                         --loss drops PCT % of forwarded packets in each direction
  down                   remove every namespace of the prefix and stop the server
  server BIN [ARGS...]   run 'BIN serve --listen ${SRV_IP1}:${STUN_PORT} --alternate-ip ${SRV_IP2}
                         --http off --metrics off ARGS...' in the srv namespace
  exec NS -- CMD...      run CMD in namespace NS (cli, cli2, rtr, srv)
  show                   print the router's nftables ruleset, addresses and conntrack table
  types                  list the NAT types

The pair lab (two peers, each behind its own NAT; for WebRTC paths):
  pair-up TYPE_A TYPE_B  clia (${CLI_IP_A}) behind rtra (${WAN_IP_A}) as TYPE_A, clib
                         (${CLI_IP_B}) behind rtrb (${WAN_IP_B}) as TYPE_B, srv (${SRV_IP1})
                         on the public segment; types: ${PAIR_TYPES[*]}
  pair-server BIN [ARGS...]
                         run 'BIN serve --listen ${SRV_IP1}:${STUN_PORT} --http ${SRV_IP1}:${HTTP_PORT}
                         --metrics off --relay-ip ${SRV_IP1} ARGS...' in srv (STUN, TURN, hub)
  block-turn             drop TURN Allocate requests arriving at srv (STUN keeps working)
  server-log             print the server's log
  exec NS -- CMD...      also clia, rtra, clib, rtrb

NATLAB_PREFIX (now '${PREFIX}') prefixes the namespace names: ${PREFIX}-cli, ${PREFIX}-rtr, ...
State (server pid and log): ${STATE_DIR}
EOF
}

# --- preflight -----------------------------------------------------------------------------

need_root() {
    [[ "$(id -u)" == 0 ]] || die "must run as root (network namespaces and nftables need CAP_NET_ADMIN); try: sudo $0"
}

need_ip() {
    command -v ip >/dev/null 2>&1 || die "'ip' not found: install iproute2 (apt-get install -y iproute2)"
    ip netns list >/dev/null 2>&1 || die "'ip netns' is unusable here (no network namespace support, or /run/netns not writable)"
}

need_nft() {
    command -v nft >/dev/null 2>&1 || die "'nft' not found: install nftables (apt-get install -y nftables)"
}

need_lab() {
    local n
    for n in "${NAMESPACES[@]}"; do
        ns_exists "$n" || die "namespace $(ns "$n") does not exist: run 'natlab.sh up TYPE' first (NATLAB_PREFIX=${PREFIX})"
    done
}

need_pair_lab() {
    local n
    for n in "${PAIR_NAMESPACES[@]}"; do
        ns_exists "$n" || die "namespace $(ns "$n") does not exist: run 'natlab.sh pair-up TYPE_A TYPE_B' first (NATLAB_PREFIX=${PREFIX})"
    done
}

# --- the nftables ruleset of the router ----------------------------------------------------

# Prints the ruleset for TYPE with LOSS percent random drop on forwarded packets.
ruleset() {
    local type="$1" loss="$2"
    local forward_extra="" input_extra="" sets="" prerouting="" postrouting="" track=""

    # Unsolicited UDP to the router's own addresses (e.g. a filtered STUN response to an
    # unmapped port) is dropped silently, as a NAT box would, instead of drawing an ICMP
    # port unreachable.
    input_extra="iifname \"${RTR_WAN}\" meta l4proto udp ct state new drop"

    case "$type" in
        full-cone | full-cone-hairpin | restricted-cone)
            # Mapping: port-preserving SNAT (masquerade keeps the source port when the
            # resulting tuple is free), which is endpoint-independent.
            # @mapping remembers, for every external port in use, which internal address and
            # port owns it; it is updated after SNAT (priority srcnat + 10) so the key is the
            # port actually chosen.
            sets="
    map mapping {
        type inet_service : ipv4_addr . inet_service
        flags dynamic, timeout
        timeout ${MAP_TIMEOUT}
    }"
            postrouting="oifname \"${RTR_WAN}\" ip saddr ${LAN_NET} masquerade"
            track="ct direction original ct status snat ip saddr ${WAN_IP} meta l4proto udp update @mapping { udp sport timeout ${MAP_TIMEOUT} : ct original ip saddr . ct original proto-src }"
            ;;
    esac

    case "$type" in
        full-cone)
            # Endpoint-independent filtering: anything sent to a mapped port is let in.
            prerouting="iifname \"${RTR_WAN}\" ip daddr ${WAN_IP} meta l4proto udp dnat ip to udp dport map @mapping"
            ;;
        full-cone-hairpin)
            # Same, but also for packets from the LAN to the public address (hairpin), which
            # are then source-NATed to the public address so the peer sees the sender's
            # mapped address and the replies come back through the router.
            prerouting="ip daddr ${WAN_IP} meta l4proto udp dnat ip to udp dport map @mapping"
            postrouting="${postrouting}
        ip saddr ${LAN_NET} ip daddr ${LAN_NET} ct original ip daddr ${WAN_IP} ct status dnat meta l4proto udp snat ip to ${WAN_IP}"
            ;;
        restricted-cone)
            # Address-dependent filtering: @peers holds (remote IP, external port) for every
            # remote IP the client has sent to from that port; inbound is let in from any
            # port of such an IP.
            sets="${sets}
    set peers {
        type ipv4_addr . inet_service
        flags dynamic, timeout
        timeout ${MAP_TIMEOUT}
    }"
            track="${track}
        ct direction original ct status snat ip saddr ${WAN_IP} meta l4proto udp update @peers { ip daddr . udp sport timeout ${MAP_TIMEOUT} }"
            prerouting="iifname \"${RTR_WAN}\" ip daddr ${WAN_IP} meta l4proto udp ip saddr . udp dport @peers dnat ip to udp dport map @mapping"
            ;;
        port-restricted-cone)
            # Plain port-preserving masquerade: conntrack lets in only exact replies
            # (address-and-port-dependent filtering).
            postrouting="oifname \"${RTR_WAN}\" ip saddr ${LAN_NET} masquerade"
            ;;
        symmetric)
            # 'random' skips port preservation: every new (destination IP, port) gets its own
            # external port (address-and-port-dependent mapping).
            postrouting="oifname \"${RTR_WAN}\" ip saddr ${LAN_NET} masquerade random"
            ;;
        none)
            ;;
        firewall)
            forward_extra="iifname \"${RTR_WAN}\" ct state established,related accept
        iifname \"${RTR_WAN}\" drop"
            ;;
        blocked)
            forward_extra="meta l4proto udp drop"
            ;;
        *)
            die "unknown NAT type '$type' (see 'natlab.sh types')"
            ;;
    esac

    local loss_rule=""
    if [[ "$loss" -gt 0 ]]; then
        loss_rule="counter comment \"forwarded\"
        numgen random mod 100 < ${loss} counter drop comment \"--loss ${loss}\""
    fi

    cat <<EOF
table ip ${TABLE} {${sets}

    chain input {
        type filter hook input priority filter; policy accept;
        ${input_extra}
    }

    chain forward {
        type filter hook forward priority filter; policy accept;
        ${loss_rule}
        ${forward_extra}
    }

    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        ${prerouting}
    }

    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        ${postrouting}
    }

    chain track {
        type filter hook postrouting priority srcnat + 10; policy accept;
        ${track}
    }
}
EOF
}

# --- server --------------------------------------------------------------------------------

server_pid() {
    local f="${STATE_DIR}/server.pid"
    [[ -f "$f" ]] || return 1
    local pid
    pid="$(cat "$f")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

stop_server() {
    local pid i
    if pid="$(server_pid)"; then
        note "stopping server (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            note "server (pid $pid) ignored SIGTERM for 5 s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "${STATE_DIR}/server.pid"
}

# One STUN Binding request from inside srv to the primary address; 0 if anything answers.
stun_answers() {
    # shellcheck disable=SC2016  # expanded by the inner bash
    nsexec srv timeout 2 bash -c '
        exec 3<>"/dev/udp/$1/$2" || exit 1
        printf "\x00\x01\x00\x00\x21\x12\xa4\x42natlabprobe0" >&3 || exit 1
        IFS= read -r -N 1 -t 0.3 -u 3 _
    ' bash "$SRV_IP1" "$STUN_PORT" 2>/dev/null
}

# Resolves the server binary BIN to an absolute path (printed).
server_path() {
    local bin="$1" path
    path="$(command -v -- "$bin" 2>/dev/null)" || die "server binary '$bin' not found"
    [[ -x "$path" ]] || die "server binary '$path' is not executable"
    case "$path" in /*) ;; *) path="$PWD/$path" ;; esac
    echo "$path"
}

# launch_server WHERE PATH ARGS...: runs 'PATH ARGS...' in srv in the background (pid and log
# in the state dir) and waits until it answers STUN on ${SRV_IP1}:${STUN_PORT}; WHERE
# describes the addresses for the success note.
launch_server() {
    local where="$1" path="$2"
    shift 2
    mkdir -p "$STATE_DIR"
    stop_server
    local log="${STATE_DIR}/server.log"
    : >"$log"
    # $! is the background subshell, not the server: the inner sh writes its own pid and
    # then execs the server, so the pid file holds the server's pid.
    local pidfile="${STATE_DIR}/server.pid"
    rm -f "$pidfile"
    # shellcheck disable=SC2016  # expanded by the inner sh
    nsexec srv sh -c 'echo "$$" >"$1.tmp" && mv "$1.tmp" "$1" && shift && exec "$@"' sh "$pidfile" \
        "$path" "$@" </dev/null >>"$log" 2>&1 &
    local wrapper=$! pid=""
    local j
    for ((j = 0; j < 50; j++)); do
        [[ -s "$pidfile" ]] && break
        kill -0 "$wrapper" 2>/dev/null || break
        sleep 0.1
    done
    [[ -s "$pidfile" ]] || die "could not start '$path' in $(ns srv); log: ${log}"
    pid="$(cat "$pidfile")"

    local i
    for ((i = 0; i < 50; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "${STATE_DIR}/server.pid"
            echo "natlab: error: server exited before answering; its log (${log}):" >&2
            tail -n 30 "$log" >&2 || true
            exit 1
        fi
        if stun_answers; then
            note "server pid $pid answers on ${where}; log: ${log}"
            return 0
        fi
        sleep 0.1
    done
    echo "natlab: error: server (pid $pid) did not answer STUN on ${SRV_IP1}:${STUN_PORT} within 5 s; its log (${log}):" >&2
    tail -n 30 "$log" >&2 || true
    stop_server
    exit 1
}

cmd_server() {
    [[ $# -ge 1 ]] || die "usage: natlab.sh server BIN [ARGS...]"
    need_root
    need_ip
    need_lab
    local path
    path="$(server_path "$1")" || exit 1
    shift
    launch_server "${SRV_IP1}:${STUN_PORT} (alternate ${SRV_IP2})" "$path" \
        serve --listen "${SRV_IP1}:${STUN_PORT}" --alternate-ip "$SRV_IP2" \
        --http off --metrics off "$@"
}

# --- up / down -----------------------------------------------------------------------------

teardown() {
    local n pids pid i
    stop_server
    for n in "${ALL_NAMESPACES[@]}"; do
        ns_exists "$n" || continue
        # Anything still running inside a lab namespace would keep it (and its veths) alive.
        pids="$(ip netns pids "$(ns "$n")" 2>/dev/null || true)"
        if [[ -n "$pids" ]]; then
            note "stopping processes left in $(ns "$n"): $(echo "$pids" | tr '\n' ' ')"
            for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
            for ((i = 0; i < 30; i++)); do
                [[ -z "$(ip netns pids "$(ns "$n")" 2>/dev/null || true)" ]] && break
                sleep 0.1
            done
            for pid in $(ip netns pids "$(ns "$n")" 2>/dev/null || true); do
                kill -KILL "$pid" 2>/dev/null || true
            done
        fi
        ip netns del "$(ns "$n")" 2>/dev/null || note "warning: could not delete namespace $(ns "$n")"
    done
    rm -rf "$STATE_DIR"
}

cmd_down() {
    need_root
    command -v ip >/dev/null 2>&1 || die "'ip' not found: install iproute2 (apt-get install -y iproute2)"
    teardown
    note "lab '${PREFIX}' is down"
}

UP_DONE=0
up_cleanup() {
    if [[ "$UP_DONE" != 1 ]]; then
        note "up failed: tearing the half-built lab down"
        teardown || true
    fi
}

# wait_links_up NS...: waits until every link of these namespaces reports operstate UP (veth
# peers, bridge ports; IPv4 has no DAD and the bridges run without STP, so that is all it
# takes to pass traffic); dies after 5 s.
wait_links_up() {
    local i n ok=0 down=""
    for ((i = 0; i < 50; i++)); do
        down=""
        for n in "$@"; do
            # stderr dropped: 'ip link' resolves peer namespaces by name and complains about
            # another lab's namespace that is being created or deleted at the same moment.
            down+="$(ip -n "$(ns "$n")" -o link show 2>/dev/null | awk -v ns="$(ns "$n")" \
                '$2 != "lo:" && $0 !~ /state UP/ {sub(/@.*/, "", $2); printf "%s/%s ", ns, $2}')"
        done
        if [[ -z "$down" ]]; then
            ok=1
            break
        fi
        sleep 0.1
    done
    [[ "$ok" == 1 ]] || die "the lab's links did not come up within 5 s: ${down}"
}

cmd_up() {
    local type="" loss=0
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --loss)
                [[ $# -ge 2 ]] || die "--loss needs a percentage (0-100)"
                loss="$2"
                shift 2
                ;;
            --loss=*)
                loss="${1#--loss=}"
                shift
                ;;
            -*) die "unknown option '$1'" ;;
            *)
                [[ -z "$type" ]] || die "only one TYPE, got '$type' and '$1'"
                type="$1"
                shift
                ;;
        esac
    done
    [[ -n "$type" ]] || die "usage: natlab.sh up TYPE [--loss PCT]; types: ${TYPES[*]}"
    local t known=0
    for t in "${TYPES[@]}"; do [[ "$t" == "$type" ]] && known=1; done
    [[ "$known" == 1 ]] || die "unknown NAT type '$type'; types: ${TYPES[*]}"
    if ! [[ "$loss" =~ ^[0-9]{1,3}$ ]] || ((10#$loss > 100)); then
        die "--loss must be an integer percentage 0-100, got '$loss'"
    fi
    loss=$((10#$loss))

    need_root
    need_ip
    need_nft

    teardown
    trap up_cleanup EXIT
    mkdir -p "$STATE_DIR"

    # Fresh namespaces every time: no conntrack entry, nft set element or route from an
    # earlier run can leak into this one.
    local n
    for n in "${NAMESPACES[@]}"; do
        ip netns add "$(ns "$n")" || die "cannot create namespace $(ns "$n") ('ip netns' unusable?)"
        ip -n "$(ns "$n")" link set lo up
    done

    # veths are created inside the namespaces: no interface ever appears in the root namespace.
    ip -n "$(ns rtr)" link add "$RTR_WAN" type veth peer name "$HOST_IF" netns "$(ns srv)"
    ip -n "$(ns rtr)" link add "$RTR_LAN1" type veth peer name "$HOST_IF" netns "$(ns cli)"
    ip -n "$(ns rtr)" link add "$RTR_LAN2" type veth peer name "$HOST_IF" netns "$(ns cli2)"
    ip -n "$(ns rtr)" link add "$RTR_LAN" type bridge

    # The router's bridge must not run bridged frames through the IP hooks (br_netfilter):
    # cli<->cli2 traffic is plain LAN traffic, not forwarded, not NATed, not subject to --loss.
    if nsexec rtr test -e /proc/sys/net/bridge/bridge-nf-call-iptables; then
        nsysctl rtr net.bridge.bridge-nf-call-iptables 0
    fi
    nsysctl rtr net.ipv4.ip_forward 1
    # Hairpinned packets leave the interface they came in on; no ICMP redirects for that.
    nsysctl rtr net.ipv4.conf.all.send_redirects 0
    nsysctl rtr net.ipv4.conf.default.send_redirects 0

    # srv: one veth with both public STUN addresses.
    ip -n "$(ns srv)" addr add "${SRV_IP1}/${PUB_LEN}" dev "$HOST_IF"
    ip -n "$(ns srv)" addr add "${SRV_IP2}/${PUB_LEN}" dev "$HOST_IF"
    ip -n "$(ns srv)" link set "$HOST_IF" up
    # Only useful for type none/firewall/blocked: with NAT the client's address never shows.
    ip -n "$(ns srv)" route add "$LAN_NET" via "$WAN_IP" dev "$HOST_IF"

    # rtr: WAN address, LAN bridge with the gateway address.
    ip -n "$(ns rtr)" addr add "${WAN_IP}/${PUB_LEN}" dev "$RTR_WAN"
    ip -n "$(ns rtr)" link set "$RTR_WAN" up
    ip -n "$(ns rtr)" link set "$RTR_LAN1" master "$RTR_LAN"
    ip -n "$(ns rtr)" link set "$RTR_LAN2" master "$RTR_LAN"
    ip -n "$(ns rtr)" addr add "${LAN_GW}/${LAN_LEN}" dev "$RTR_LAN"
    ip -n "$(ns rtr)" link set "$RTR_LAN1" up
    ip -n "$(ns rtr)" link set "$RTR_LAN2" up
    ip -n "$(ns rtr)" link set "$RTR_LAN" up

    # clients
    local c ipaddr
    for c in cli cli2; do
        if [[ "$c" == cli ]]; then ipaddr="$CLI_IP"; else ipaddr="$CLI2_IP"; fi
        ip -n "$(ns "$c")" addr add "${ipaddr}/${LAN_LEN}" dev "$HOST_IF"
        ip -n "$(ns "$c")" link set "$HOST_IF" up
        ip -n "$(ns "$c")" route add default via "$LAN_GW" dev "$HOST_IF"
    done

    ruleset "$type" "$loss" >"${STATE_DIR}/ruleset.nft"
    if ! nsexec rtr nft -f "${STATE_DIR}/ruleset.nft"; then
        echo "natlab: the ruleset nft rejected:" >&2
        cat -n "${STATE_DIR}/ruleset.nft" >&2
        die "nft rejected the ruleset for '$type' (nftables too old? 1.0 or newer is known to work)"
    fi

    wait_links_up "${NAMESPACES[@]}"

    echo "$type" >"${STATE_DIR}/type"
    echo "$loss" >"${STATE_DIR}/loss"
    UP_DONE=1
    trap - EXIT
    note "lab '${PREFIX}' is up: type ${type}$( ((loss > 0)) && echo ", ${loss}% loss per direction"); namespaces $(ns cli) $(ns cli2) $(ns rtr) $(ns srv)"
}

# --- the pair lab: pair-up / pair-server / block-turn / server-log ------------------------

# pair_ruleset WAN_IP LAN_NET TYPE: the ruleset of one pair-lab router. `ruleset` reads
# WAN_IP and LAN_NET; bash's dynamic scoping hands it this router's values.
pair_ruleset() {
    # shellcheck disable=SC2034  # read by ruleset
    local WAN_IP="$1" LAN_NET="$2"
    ruleset "$3" 0
}

cmd_pair_up() {
    [[ $# -eq 2 ]] || die "usage: natlab.sh pair-up TYPE_A TYPE_B; types: ${PAIR_TYPES[*]}"
    local type_a="$1" type_b="$2" t u known
    for t in "$type_a" "$type_b"; do
        known=0
        for u in "${PAIR_TYPES[@]}"; do [[ "$u" == "$t" ]] && known=1; done
        [[ "$known" == 1 ]] || die "unknown pair-lab NAT type '$t'; types: ${PAIR_TYPES[*]}"
    done

    need_root
    need_ip
    need_nft

    teardown
    trap up_cleanup EXIT
    mkdir -p "$STATE_DIR"

    local n
    for n in "${PAIR_NAMESPACES[@]}"; do
        ip netns add "$(ns "$n")" || die "cannot create namespace $(ns "$n") ('ip netns' unusable?)"
        ip -n "$(ns "$n")" link set lo up
    done

    # The public segment: a bridge in srv holding the server's address; each router's WAN
    # veth is one of its ports. Bridged frames between the routers skip srv's IP hooks.
    ip -n "$(ns srv)" link add "$PUB_BRIDGE" type bridge
    if nsexec srv test -e /proc/sys/net/bridge/bridge-nf-call-iptables; then
        nsysctl srv net.bridge.bridge-nf-call-iptables 0
    fi
    ip -n "$(ns srv)" addr add "${SRV_IP1}/${PUB_LEN}" dev "$PUB_BRIDGE"
    ip -n "$(ns srv)" link set "$PUB_BRIDGE" up

    local side type wan lan gw cli
    for side in a b; do
        if [[ "$side" == a ]]; then
            type="$type_a" wan="$WAN_IP_A" lan="$LAN_NET_A" gw="$LAN_GW_A" cli="$CLI_IP_A"
        else
            type="$type_b" wan="$WAN_IP_B" lan="$LAN_NET_B" gw="$LAN_GW_B" cli="$CLI_IP_B"
        fi
        ip -n "$(ns "rtr$side")" link add "$RTR_WAN" type veth peer name "to-$side" netns "$(ns srv)"
        ip -n "$(ns srv)" link set "to-$side" master "$PUB_BRIDGE"
        ip -n "$(ns srv)" link set "to-$side" up
        ip -n "$(ns "rtr$side")" link add "$RTR_LAN" type veth peer name "$HOST_IF" netns "$(ns "cli$side")"

        nsysctl "rtr$side" net.ipv4.ip_forward 1
        ip -n "$(ns "rtr$side")" addr add "${wan}/${PUB_LEN}" dev "$RTR_WAN"
        ip -n "$(ns "rtr$side")" link set "$RTR_WAN" up
        ip -n "$(ns "rtr$side")" addr add "${gw}/${LAN_LEN}" dev "$RTR_LAN"
        ip -n "$(ns "rtr$side")" link set "$RTR_LAN" up

        ip -n "$(ns "cli$side")" addr add "${cli}/${LAN_LEN}" dev "$HOST_IF"
        ip -n "$(ns "cli$side")" link set "$HOST_IF" up
        ip -n "$(ns "cli$side")" route add default via "$gw" dev "$HOST_IF"

        pair_ruleset "$wan" "$lan" "$type" >"${STATE_DIR}/ruleset-${side}.nft"
        if ! nsexec "rtr$side" nft -f "${STATE_DIR}/ruleset-${side}.nft"; then
            echo "natlab: the ruleset nft rejected:" >&2
            cat -n "${STATE_DIR}/ruleset-${side}.nft" >&2
            die "nft rejected the ruleset for '$type' in $(ns "rtr$side")"
        fi
    done

    wait_links_up "${PAIR_NAMESPACES[@]}"

    echo "$type_a $type_b" >"${STATE_DIR}/pair"
    UP_DONE=1
    trap - EXIT
    note "pair lab '${PREFIX}' is up: $(ns clia) behind ${type_a} (${WAN_IP_A}), $(ns clib) behind ${type_b} (${WAN_IP_B}), server namespace $(ns srv) (${SRV_IP1})"
}

# One HTTP request for /healthz from inside srv; 0 if the hub's HTTP server answers 200.
http_answers() {
    # shellcheck disable=SC2016  # expanded by the inner bash
    nsexec srv timeout 2 bash -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf "GET /healthz HTTP/1.0\r\nHost: %s:%s\r\n\r\n" "$1" "$2" >&3 || exit 1
        IFS= read -r -t 1 -u 3 line || exit 1
        [[ "$line" == HTTP/1.?" 200"* ]]
    ' bash "$SRV_IP1" "$HTTP_PORT" 2>/dev/null
}

cmd_pair_server() {
    [[ $# -ge 1 ]] || die "usage: natlab.sh pair-server BIN [ARGS...]"
    need_root
    need_ip
    need_pair_lab
    local path
    path="$(server_path "$1")" || exit 1
    shift
    launch_server "${SRV_IP1}:${STUN_PORT} (STUN and TURN, relay ${SRV_IP1})" "$path" \
        serve --listen "${SRV_IP1}:${STUN_PORT}" --http "${SRV_IP1}:${HTTP_PORT}" \
        --metrics off --relay-ip "$SRV_IP1" "$@"
    local i
    for ((i = 0; i < 50; i++)); do
        if http_answers; then
            note "the hub answers on http://${SRV_IP1}:${HTTP_PORT} (ws://${SRV_IP1}:${HTTP_PORT}/v1/ws)"
            return 0
        fi
        sleep 0.1
    done
    echo "natlab: error: the hub did not answer on http://${SRV_IP1}:${HTTP_PORT}/healthz within 5 s; server log:" >&2
    tail -n 30 "${STATE_DIR}/server.log" >&2 || true
    stop_server
    exit 1
}

# Drops every TURN Allocate request (STUN message type 0x0003, the first two bytes of the UDP
# payload) that reaches srv on UDP ${STUN_PORT}: TURN is unreachable while STUN Binding (and
# the hub) keep working, so peers still gather server-reflexive candidates.
cmd_block_turn() {
    need_root
    need_ip
    need_nft
    ns_exists srv || die "namespace $(ns srv) does not exist: build a lab first (NATLAB_PREFIX=${PREFIX})"
    nsexec srv nft -f - <<EOF || die "nft rejected the block-turn rule"
table ip ${SRV_TABLE} {
    chain input {
        type filter hook input priority filter; policy accept;
        udp dport ${STUN_PORT} @th,64,16 0x0003 counter drop comment "TURN Allocate requests"
    }
}
EOF
    note "TURN Allocate requests to ${STUN_PORT}/udp are dropped in $(ns srv)"
}

cmd_server_log() {
    local log="${STATE_DIR}/server.log"
    [[ -f "$log" ]] || die "no server log at ${log} (no server started for NATLAB_PREFIX=${PREFIX})"
    cat -- "$log"
}

show_pair() {
    need_pair_lab
    echo "# pair lab '${PREFIX}': $(cat "${STATE_DIR}/pair")"
    local pid n
    if pid="$(server_pid)"; then echo "# server: pid ${pid}, log ${STATE_DIR}/server.log"; else echo "# server: not running"; fi
    for n in "${PAIR_NAMESPACES[@]}"; do
        echo "# addresses in $(ns "$n")"
        ip -n "$(ns "$n")" -br addr show
    done
    for n in srv rtra rtrb; do
        echo "# nftables ruleset in $(ns "$n")"
        nsexec "$n" nft list ruleset
        if [[ "$n" != srv ]] && command -v conntrack >/dev/null 2>&1; then
            echo "# conntrack table in $(ns "$n")"
            nsexec "$n" conntrack -L 2>/dev/null || true
        fi
    done
}

# --- exec / show / types -------------------------------------------------------------------

cmd_exec() {
    [[ $# -ge 1 ]] || die "usage: natlab.sh exec NS -- CMD..."
    local n="$1"
    shift
    case "$n" in
        cli | cli2 | rtr | srv | clia | rtra | clib | rtrb) ;;
        *) die "unknown namespace '$n': one of cli, cli2, rtr, srv (pair lab: clia, rtra, clib, rtrb, srv)" ;;
    esac
    [[ "${1:-}" == "--" ]] && shift
    [[ $# -ge 1 ]] || die "usage: natlab.sh exec NS -- CMD..."
    need_root
    need_ip
    ns_exists "$n" || die "namespace $(ns "$n") does not exist: run 'natlab.sh up TYPE' first"
    exec ip netns exec "$(ns "$n")" "$@"
}

cmd_show() {
    need_root
    need_ip
    need_nft
    if [[ -f "${STATE_DIR}/pair" ]]; then
        show_pair
        return
    fi
    need_lab
    local type="?" loss="0"
    [[ -f "${STATE_DIR}/type" ]] && type="$(cat "${STATE_DIR}/type")"
    [[ -f "${STATE_DIR}/loss" ]] && loss="$(cat "${STATE_DIR}/loss")"
    echo "# lab '${PREFIX}': type ${type}, loss ${loss}%"
    local pid
    if pid="$(server_pid)"; then echo "# server: pid ${pid}, log ${STATE_DIR}/server.log"; else echo "# server: not running"; fi
    local n
    for n in "${NAMESPACES[@]}"; do
        echo "# addresses in $(ns "$n")"
        ip -n "$(ns "$n")" -br addr show
    done
    echo "# routes in $(ns rtr)"
    ip -n "$(ns rtr)" route show
    echo "# nftables ruleset in $(ns rtr)"
    nsexec rtr nft list ruleset
    if command -v conntrack >/dev/null 2>&1; then
        echo "# conntrack table in $(ns rtr)"
        nsexec rtr conntrack -L 2>/dev/null || true
    fi
}

cmd_types() {
    printf '%s\n' "${TYPES[@]}"
}

main() {
    local cmd="${1:-}"
    [[ $# -gt 0 ]] && shift
    [[ "$PREFIX" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,30}$ ]] ||
        die "NATLAB_PREFIX '$PREFIX' must be 1-31 characters of letters, digits, '_', '.', '-'"
    case "$cmd" in
        up) cmd_up "$@" ;;
        down) cmd_down "$@" ;;
        server) cmd_server "$@" ;;
        exec) cmd_exec "$@" ;;
        show) cmd_show "$@" ;;
        types) cmd_types "$@" ;;
        pair-up) cmd_pair_up "$@" ;;
        pair-server) cmd_pair_server "$@" ;;
        block-turn) cmd_block_turn "$@" ;;
        server-log) cmd_server_log "$@" ;;
        -h | --help | help) usage ;;
        "") usage >&2; exit 2 ;;
        *) usage >&2; die "unknown command '$cmd'" ;;
    esac
}

main "$@"
