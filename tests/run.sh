#!/usr/bin/env bash
# Runs every Turnpike check and test, installing what they need on a fresh Debian machine.
# Usage (as root on a fresh machine, or as a developer with the prerequisites): tests/run.sh
# Fails loudly when a prerequisite is missing and cannot be installed; never skips a suite.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'tests/run.sh: error: %s\n' "$*" >&2; exit 1; }

# --- prerequisites ---------------------------------------------------------------------
apt_install() {
  # Installs the Debian packages given, if any of their commands are missing.
  [ "$#" -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    die "missing Debian packages: $*; install them (apt-get install -y $*) or run as root"
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  # Packages must not start their services (coturn's TURN server, a Redis on port 6379): the
  # tests start their own. policy-rc.d exit 101 = "action forbidden" for invoke-rc.d.
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
  fi
  local rc=0
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null || rc=$?
  [ "$made_policy" -eq 1 ] && rm -f "$policy"
  [ "$rc" -eq 0 ] || die "apt-get install $* failed"
}

need_pkgs=()
command -v gcc >/dev/null 2>&1 || need_pkgs+=(gcc)
command -v pkg-config >/dev/null 2>&1 || need_pkgs+=(pkg-config)
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
# The NAT lab (tests/natlab) builds NATs in network namespaces with nftables.
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v nft >/dev/null 2>&1 || need_pkgs+=(nftables)
command -v conntrack >/dev/null 2>&1 || need_pkgs+=(conntrack)
# The TURN interop test (tests/loopback/turn.rs) runs coturn's turnutils_uclient.
command -v turnutils_uclient >/dev/null 2>&1 || need_pkgs+=(coturn)
# The browser tests (tests/browser) drive Debian's Chromium with playwright-core from npm, and
# make a self-signed certificate with openssl for TURN over TLS.
command -v chromium >/dev/null 2>&1 || need_pkgs+=(chromium)
command -v node >/dev/null 2>&1 || need_pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || need_pkgs+=(npm)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
# The hub cluster tests (tests/loopback/redis.rs) start their own redis-server on a free port.
command -v redis-server >/dev/null 2>&1 || need_pkgs+=(redis-server)
apt_install "${need_pkgs[@]+"${need_pkgs[@]}"}"
# Debian's coturn unit ignores TURNSERVER_ENABLED in /etc/default/coturn: under systemd the
# package would start a TURN server on port 3478. The tests need only its client.
if [[ " ${need_pkgs[*]-} " == *" coturn "* ]] && [ -d /run/systemd/system ]; then
  systemctl disable --now coturn.service >/dev/null 2>&1 || true
fi
# Likewise Debian's redis-server package starts a Redis service on 127.0.0.1:6379; the tests
# need only the binary and start their own servers.
if [[ " ${need_pkgs[*]-} " == *" redis-server "* ]] && [ -d /run/systemd/system ]; then
  systemctl disable --now redis-server.service >/dev/null 2>&1 || true
fi
command -v redis-server >/dev/null 2>&1 \
  || die "redis-server not found after installing it (apt-get install redis-server); the hub cluster tests need it"

[ "$(id -u)" -eq 0 ] || die "the NAT lab needs root (network namespaces, nftables); run tests/run.sh as root"
ip netns add tp-runcheck 2>/dev/null && ip netns del tp-runcheck \
  || die "cannot create network namespaces (ip netns add failed); the NAT lab needs them"

node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' \
  || die "the browser tests need Node.js 18 or newer (found $(node --version))"
[ -x /usr/bin/chromium ] || [ -n "${CHROMIUM:-}" ] \
  || die "the browser tests need Chromium at /usr/bin/chromium (apt-get install chromium) or \$CHROMIUM"

command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain (rustup) first"
cargo fmt --version >/dev/null 2>&1 || die "rustfmt missing: rustup component add rustfmt"
cargo clippy --version >/dev/null 2>&1 || die "clippy missing: rustup component add clippy"

# The loopback suites use 127.0.0.2 and ::1.
python3 - <<'PY' 2>/dev/null || die "loopback addresses 127.0.0.2 and ::1 must be usable (IPv6 enabled on lo)"
import socket
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind(("127.0.0.2", 0))
socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).bind(("::1", 0))
PY

# --- checks ------------------------------------------------------------------------------
say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

# Property tests draw random cases; CI runs a fixed seed so a run can be reproduced (set
# PROPTEST_RNG_SEED to explore others; failures land in the committed .proptest-regressions).
export PROPTEST_RNG_SEED="${PROPTEST_RNG_SEED:-20261123}"

say "cargo test (unit, RFC 5769 vectors, differential, loopback integration against the binary)"
cargo test --workspace --locked

say "browser tests (headless Chromium): the web demo against the real binary"
cargo build -p turnpike --locked
target_dir=$(cargo metadata --format-version 1 --no-deps --locked \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])') \
  || die "cargo metadata failed"
(cd tests/browser && npm ci --no-audit --no-fund) \
  || die "npm ci in tests/browser failed (playwright-core comes from the npm registry)"
(cd tests/browser && TURNPIKE_BIN="$target_dir/debug/turnpike" npm test)

say "NAT lab: nat-check against real Linux NATs in network namespaces (matrix, 20 % loss, hairpin)"
cargo test -p turnpike --test natlab --locked -- --nocapture

say "all checks passed"
