//! Criterion benchmarks of [`StunServer::handle`]: a plain Binding request on the fast path
//! (with and without RFC 5780 discovery), a CHANGE-REQUEST on the general path, and 420s.
//!
//! Run with `cargo bench -p turnpike-relay-core --bench core`. Throughput is one request per
//! iteration, so criterion reports requests per second (elem/s).

use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use criterion::{Criterion, Throughput};
use turnpike_proto::{MAGIC_COOKIE, attr};
use turnpike_relay_core::{Action, AddressSet, Incoming, Path, StunConfig, StunServer, Transport};

const TID: [u8; 12] = [
    0x8a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f, 0x60, 0x71, 0x82, 0x93, 0xa4, 0xb5,
];

/// A Binding request with the given attributes (type, value), plus FINGERPRINT if asked.
fn request(attrs: &[(u16, &[u8])], fingerprint: bool) -> Vec<u8> {
    let mut req = Vec::new();
    req.extend_from_slice(&0x0001u16.to_be_bytes());
    req.extend_from_slice(&0u16.to_be_bytes());
    req.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    req.extend_from_slice(&TID);
    for (t, v) in attrs {
        req.extend_from_slice(&t.to_be_bytes());
        req.extend_from_slice(&u16::try_from(v.len()).expect("short").to_be_bytes());
        req.extend_from_slice(v);
        req.resize(req.len().next_multiple_of(4), 0);
    }
    let body = req.len() - 20 + if fingerprint { 8 } else { 0 };
    req[2..4].copy_from_slice(&u16::try_from(body).expect("short").to_be_bytes());
    if fingerprint {
        let crc = turnpike_proto::fingerprint(&req);
        req.extend_from_slice(&attr::FINGERPRINT.to_be_bytes());
        req.extend_from_slice(&4u16.to_be_bytes());
        req.extend_from_slice(&crc.to_be_bytes());
    }
    req
}

fn address_set() -> AddressSet {
    AddressSet {
        primary_ip: IpAddr::from([198, 51, 100, 1]),
        alternate_ip: IpAddr::from([198, 51, 100, 2]),
        primary_port: 3478,
        alternate_port: 3479,
    }
}

struct Case {
    name: &'static str,
    server: StunServer,
    data: Vec<u8>,
    path: Path,
    error: Option<u16>,
}

fn cases() -> Vec<Case> {
    let plain = StunServer::new(StunConfig::default());
    let discovery = StunServer::new(StunConfig {
        software: None,
        discovery_v4: Some(address_set()),
        discovery_v6: None,
    });
    vec![
        Case {
            name: "binding/fast",
            server: plain.clone(),
            data: request(&[], false),
            path: Path::Fast,
            error: None,
        },
        Case {
            name: "binding+fingerprint/fast",
            server: plain.clone(),
            data: request(&[], true),
            path: Path::Fast,
            error: None,
        },
        Case {
            name: "binding+fingerprint/fast/rfc5780",
            server: discovery.clone(),
            data: request(&[], true),
            path: Path::Fast,
            error: None,
        },
        Case {
            name: "change-request/general/rfc5780",
            server: discovery.clone(),
            data: request(&[(attr::CHANGE_REQUEST, &[0, 0, 0, 0x06])], true),
            path: Path::General,
            error: None,
        },
        Case {
            name: "unknown-attribute/420",
            server: discovery,
            data: request(&[(0x7F00, &[1, 2, 3, 4])], true),
            path: Path::Fast,
            error: Some(420),
        },
        Case {
            name: "change-request-no-discovery/420",
            server: plain,
            data: request(&[(attr::CHANGE_REQUEST, &[0, 0, 0, 0x06])], true),
            path: Path::Fast,
            error: Some(420),
        },
    ]
}

fn bench_handle(c: &mut Criterion) {
    let local: SocketAddr = "198.51.100.1:3478".parse().expect("valid address");
    let remote: SocketAddr = "192.0.2.1:32853".parse().expect("valid address");
    let mut group = c.benchmark_group("handle");
    group.throughput(Throughput::Elements(1));
    for mut case in cases() {
        let incoming = Incoming {
            transport: Transport::Udp,
            local,
            remote,
            data: &case.data,
        };
        // Sanity: the case takes the path it is named after.
        let mut out = Vec::with_capacity(256);
        let outcome = case.server.handle(incoming, &mut out);
        match outcome.action {
            Action::Reply { path, error, .. } => {
                assert_eq!((path, error), (case.path, case.error), "{}", case.name);
            }
            other => panic!("{}: unexpected {other:?}", case.name),
        }
        group.bench_function(case.name, |b| {
            b.iter(|| {
                out.clear();
                let outcome = case.server.handle(black_box(incoming), &mut out);
                black_box((outcome, &out));
            });
        });
    }
    group.finish();
}

// A hand-written `main` rather than `criterion_group!`/`criterion_main!`: the macros define an
// undocumented `pub fn`, which the workspace's `missing_docs` lint rejects.
fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .configure_from_args();
    bench_handle(&mut c);
    c.final_summary();
}
