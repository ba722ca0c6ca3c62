#!/usr/bin/env python3
"""Small UDP/STUN probes for the NAT lab (tests/natlab/natlab.sh); standard library only.

Run inside a lab namespace, e.g. `natlab.sh exec cli -- python3 tests/natlab/probe.py stun 198.51.100.1`.

  stun HOST[:PORT]... [--port P] [--bind PORT] [--count N] [--timeout S]
      From one socket, send N STUN Binding requests (one at a time) to each server in
      turn; per server print the mapped address of the first answer and 'answered A/N'.
      Exit 1 if nothing answered at all.
  listen [--bind PORT] [--stun HOST:PORT] [--timeout S] [--addr-file F]
      Learn this socket's mapped address with STUN (written to F), then wait for one
      datagram, print 'from IP:PORT PAYLOAD' and answer it with 'pong'.
  send TO_IP:TO_PORT [--bind PORT] [--stun HOST:PORT] [--timeout S]
      Learn this socket's mapped address with STUN, send 'ping from MAPPED' to TO,
      print the answer and where it came from.
  blast TO_IP:TO_PORT [--count N] [--interval S]
      Send N numbered datagrams (one direction), print 'sent N'.
  count [--bind IP:PORT] [--idle S] [--expect N]
      Count datagrams until none arrive for S seconds; print 'received R' (and the loss
      against N when given).
"""

import argparse
import os
import socket
import struct
import sys
import time

MAGIC = 0x2112A442


def binding_request():
    txid = os.urandom(12)
    return struct.pack("!HHI", 0x0001, 0, MAGIC) + txid, txid


def parse_mapped(data, txid):
    """XOR-MAPPED-ADDRESS (or MAPPED-ADDRESS) of a Binding success response, or None."""
    if len(data) < 20:
        return None
    mtype, mlen, magic = struct.unpack("!HHI", data[:8])
    if mtype != 0x0101 or magic != MAGIC or data[8:20] != txid:
        return None
    pos, end = 20, min(len(data), 20 + mlen)
    plain = None
    while pos + 4 <= end:
        atype, alen = struct.unpack("!HH", data[pos:pos + 4])
        val = data[pos + 4:pos + 4 + alen]
        if atype in (0x0020, 0x0001) and len(val) >= 8 and val[1] == 0x01:
            port = struct.unpack("!H", val[2:4])[0]
            ip = bytes(val[4:8])
            if atype == 0x0020:
                port ^= MAGIC >> 16
                ip = bytes(a ^ b for a, b in zip(ip, struct.pack("!I", MAGIC)))
                return (socket.inet_ntoa(ip), port)
            plain = (socket.inet_ntoa(ip), port)
        pos += 4 + alen + (-alen % 4)
    return plain


def hostport(s, default_port=None):
    host, sep, port = s.rpartition(":")
    if not sep:
        if default_port is None:
            raise SystemExit(f"probe: expected IP:PORT, got {s!r}")
        return (s, default_port)
    return (host, int(port))


def stun_query(sock, server, timeout, attempts=1):
    """Send Binding requests (each waits `timeout`) until one is answered; mapped address or None."""
    for _ in range(attempts):
        req, txid = binding_request()
        sock.sendto(req, server)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                data, _src = sock.recvfrom(2048)
            except socket.timeout:
                break
            except ConnectionRefusedError:
                continue
            mapped = parse_mapped(data, txid)
            if mapped:
                return mapped
    return None


def udp_socket(bind_port=0, bind_ip="0.0.0.0"):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((bind_ip, bind_port))
    return s


def cmd_stun(a):
    s = udp_socket(a.bind)
    local = s.getsockname()
    total = 0
    for target in a.servers:
        server = hostport(target, a.port)
        answered, first = 0, None
        for _ in range(a.count):
            mapped = stun_query(s, server, a.timeout)
            if mapped:
                answered += 1
                first = first or mapped
        total += answered
        shown = f"{first[0]}:{first[1]}" if first else "none"
        print(f"local {local[0]}:{local[1]} to {server[0]}:{server[1]} mapped {shown} answered {answered}/{a.count}")
    return 0 if total else 1


def cmd_listen(a):
    s = udp_socket(a.bind)
    mapped = stun_query(s, hostport(a.stun, 3478), 1.0, attempts=3)
    if not mapped:
        print("no STUN answer", file=sys.stderr)
        return 1
    print(f"mapped {mapped[0]}:{mapped[1]}", flush=True)
    if a.addr_file:
        tmp = a.addr_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{mapped[0]}:{mapped[1]}\n")
        os.replace(tmp, a.addr_file)
    s.settimeout(a.timeout)
    try:
        data, src = s.recvfrom(2048)
    except socket.timeout:
        print("nothing received", flush=True)
        return 1
    print(f"from {src[0]}:{src[1]} {data.decode(errors='replace')}", flush=True)
    s.sendto(b"pong", src)
    return 0


def cmd_send(a):
    s = udp_socket(a.bind)
    mapped = stun_query(s, hostport(a.stun, 3478), 1.0, attempts=3)
    if not mapped:
        print("no STUN answer", file=sys.stderr)
        return 1
    print(f"mapped {mapped[0]}:{mapped[1]}", flush=True)
    to = hostport(a.to)
    s.sendto(f"ping from {mapped[0]}:{mapped[1]}".encode(), to)
    s.settimeout(a.timeout)
    try:
        data, src = s.recvfrom(2048)
    except (socket.timeout, ConnectionRefusedError) as e:
        print(f"no answer ({type(e).__name__})", flush=True)
        return 1
    print(f"answer from {src[0]}:{src[1]} {data.decode(errors='replace')}", flush=True)
    return 0


def cmd_blast(a):
    s = udp_socket()
    to = hostport(a.to)
    for i in range(a.count):
        s.sendto(f"{i}".encode(), to)
        if a.interval:
            time.sleep(a.interval)
    print(f"sent {a.count}")
    return 0


def cmd_count(a):
    host, port = hostport(a.bind)
    s = udp_socket(port, host)
    if a.ready_file:
        open(a.ready_file, "w").close()
    seen = set()
    s.settimeout(a.first)
    try:
        data, _ = s.recvfrom(2048)
        seen.add(data)
        s.settimeout(a.idle)
        while True:
            data, _ = s.recvfrom(2048)
            seen.add(data)
    except socket.timeout:
        pass
    r = len(seen)
    if a.expect:
        print(f"received {r}/{a.expect} lost {100.0 * (a.expect - r) / a.expect:.1f}%")
    else:
        print(f"received {r}")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    q = sub.add_parser("stun")
    q.add_argument("servers", nargs="+", metavar="HOST[:PORT]")
    q.add_argument("--port", type=int, default=3478)
    q.add_argument("--bind", type=int, default=0)
    q.add_argument("--count", type=int, default=1)
    q.add_argument("--timeout", type=float, default=0.5)
    q.set_defaults(fn=cmd_stun)

    q = sub.add_parser("listen")
    q.add_argument("--bind", type=int, default=0)
    q.add_argument("--stun", default="198.51.100.1:3478")
    q.add_argument("--timeout", type=float, default=5.0)
    q.add_argument("--addr-file")
    q.set_defaults(fn=cmd_listen)

    q = sub.add_parser("send")
    q.add_argument("to")
    q.add_argument("--bind", type=int, default=0)
    q.add_argument("--stun", default="198.51.100.1:3478")
    q.add_argument("--timeout", type=float, default=2.0)
    q.set_defaults(fn=cmd_send)

    q = sub.add_parser("blast")
    q.add_argument("to")
    q.add_argument("--count", type=int, default=1000)
    q.add_argument("--interval", type=float, default=0.0005)
    q.set_defaults(fn=cmd_blast)

    q = sub.add_parser("count")
    q.add_argument("--bind", default="0.0.0.0:9999")
    q.add_argument("--first", type=float, default=5.0, help="seconds to wait for the first datagram")
    q.add_argument("--idle", type=float, default=1.0)
    q.add_argument("--expect", type=int, default=0)
    q.add_argument("--ready-file")
    q.set_defaults(fn=cmd_count)

    a = p.parse_args()
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
