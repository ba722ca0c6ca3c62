//! Criterion benchmarks of the Binding request → success response round trip on the fast
//! (zero-copy [`MessageView`] + [`BindingSuccess`]) and general (`stun_codec`) paths.
//!
//! Run with `cargo bench -p turnpike-proto --bench binding`. Throughput is one request per
//! iteration, so criterion reports requests per second (elem/s).

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use turnpike_proto::fast::BindingSuccess;
use turnpike_proto::{MessageView, TransactionId, attr, general};

const TID: [u8; 12] = [
    0x8a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f, 0x60, 0x71, 0x82, 0x93, 0xa4, 0xb5,
];

/// A 20-byte RFC 8489 Binding request with no attributes.
fn binding_request() -> Vec<u8> {
    let mut req = Vec::with_capacity(20);
    req.extend_from_slice(&0x0001u16.to_be_bytes());
    req.extend_from_slice(&0u16.to_be_bytes());
    req.extend_from_slice(&turnpike_proto::MAGIC_COOKIE.to_be_bytes());
    req.extend_from_slice(&TID);
    req
}

/// A 28-byte Binding request ending with FINGERPRINT.
fn binding_request_fingerprint() -> Vec<u8> {
    let mut req = binding_request();
    req[2..4].copy_from_slice(&8u16.to_be_bytes());
    let crc = turnpike_proto::fingerprint(&req);
    req.extend_from_slice(&attr::FINGERPRINT.to_be_bytes());
    req.extend_from_slice(&4u16.to_be_bytes());
    req.extend_from_slice(&crc.to_be_bytes());
    req
}

fn mapped() -> SocketAddr {
    "192.0.2.1:32853".parse().expect("valid address")
}

/// Fast path: parse the request and write the success response into `out`.
#[inline]
fn fast_round_trip(req: &[u8], mapped: SocketAddr, out: &mut Vec<u8>) {
    let view = MessageView::parse(req).expect("valid request");
    let TransactionId::Modern(tid) = view.transaction_id else {
        panic!("modern request expected");
    };
    BindingSuccess {
        transaction_id: &tid,
        mapped,
        response_origin: None,
        other_address: None,
        software: None,
        padding: None,
        fingerprint: view.fingerprint,
    }
    .encode(out);
}

/// General path: `stun_codec` decode, build and encode.
#[inline]
fn general_round_trip(req: &[u8], mapped: SocketAddr, out: &mut Vec<u8>) {
    let msg = general::decode(req).expect("valid request");
    let fingerprint = general::binding_params(&msg).fingerprint;
    let tid = *msg.transaction_id().as_bytes();
    let resp = general::binding_success(&BindingSuccess {
        transaction_id: &tid,
        mapped,
        response_origin: None,
        other_address: None,
        software: None,
        padding: None,
        fingerprint,
    })
    .expect("encodable response");
    general::encode(resp, out).expect("encodable response");
}

fn cases() -> [(&'static str, Vec<u8>); 2] {
    [
        ("20B", binding_request()),
        ("28B-fingerprint", binding_request_fingerprint()),
    ]
}

fn bench_fast(c: &mut Criterion) {
    let mapped = mapped();
    let mut group = c.benchmark_group("fast");
    group.throughput(Throughput::Elements(1));
    for (name, req) in cases() {
        // Sanity: both paths agree byte for byte before anything is measured.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        fast_round_trip(&req, mapped, &mut a);
        general_round_trip(&req, mapped, &mut b);
        assert_eq!(a, b, "fast and general responses differ for {name}");

        let mut out = Vec::with_capacity(128);
        group.bench_with_input(BenchmarkId::new("decode+encode", name), &req, |bch, req| {
            bch.iter(|| {
                out.clear();
                fast_round_trip(black_box(req), black_box(mapped), &mut out);
                black_box(&out);
            });
        });
    }
    let req = binding_request_fingerprint();
    group.bench_with_input(
        BenchmarkId::new("parse-only", "28B-fingerprint"),
        &req,
        |bch, req| bch.iter(|| black_box(MessageView::parse(black_box(req)))),
    );
    group.finish();
}

fn bench_general(c: &mut Criterion) {
    let mapped = mapped();
    let mut group = c.benchmark_group("general");
    group.throughput(Throughput::Elements(1));
    for (name, req) in cases() {
        let mut out = Vec::with_capacity(128);
        group.bench_with_input(BenchmarkId::new("decode+encode", name), &req, |bch, req| {
            bch.iter(|| {
                out.clear();
                general_round_trip(black_box(req), black_box(mapped), &mut out);
                black_box(&out);
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
    bench_fast(&mut c);
    bench_general(&mut c);
    c.final_summary();
}
