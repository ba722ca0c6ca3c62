//! Integration tests against the real `turnpike` binary over loopback sockets.
//!
//! Each test starts its own server on free ports of 127.0.0.1 / 127.0.0.2 / ::1 (all of
//! 127.0.0.0/8 is loopback on Linux), talks to it with plain std sockets, and stops it.

mod cluster;
mod hub;
mod peer;
mod redis;
mod server;
mod stun;
mod turn;
mod turn_fleet;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use server::{Server, free_port, http_get, run_to_exit};
use stun::{Response, binding_request, classic_request, parse_response};
use turnpike_proto::attr;

const T: Duration = Duration::from_secs(3);

fn udp_client(bind: &str) -> UdpSocket {
    let s = UdpSocket::bind(bind).expect("bind client");
    s.set_read_timeout(Some(T)).unwrap();
    s
}

fn udp_exchange(sock: &UdpSocket, to: SocketAddr, req: &[u8]) -> (Response, SocketAddr) {
    sock.send_to(req, to).expect("send");
    let mut buf = [0u8; 2048];
    let (n, from) = sock
        .recv_from(&mut buf)
        .expect("a reply within the timeout");
    (parse_response(&buf[..n]), from)
}

fn expect_silence(sock: &UdpSocket, wait: Duration) {
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 2048];
    if let Ok((n, from)) = sock.recv_from(&mut buf) {
        panic!("unexpected {n}-byte reply from {from}");
    }
    sock.set_read_timeout(Some(T)).unwrap();
}

#[test]
fn binding_over_udp_and_tcp_on_ipv4_and_ipv6() {
    let p4 = free_port("127.0.0.1");
    let p6 = free_port("[::1]");
    let srv = Server::start(&[
        "--listen",
        &format!("127.0.0.1:{p4}"),
        "--listen",
        &format!("[::1]:{p6}"),
    ]);
    for (client, server) in [
        ("127.0.0.1:0", format!("127.0.0.1:{p4}")),
        ("[::1]:0", format!("[::1]:{p6}")),
    ] {
        let server: SocketAddr = server.parse().unwrap();
        let sock = udp_client(client);
        let req = binding_request(&[], true);
        let (r, from) = udp_exchange(&sock, server, &req);
        assert_eq!(from, server);
        assert_eq!(r.class, 0x0101);
        assert_eq!(r.transaction_id, req[8..20]);
        assert_eq!(r.xor_mapped, Some(sock.local_addr().unwrap()));
        assert!(r.fingerprint);
        assert!(r.other_address.is_none(), "no RFC 5780 without a second IP");
        assert!(!r.has(attr::SOFTWARE), "SOFTWARE is off by default");

        let mut tcp = TcpStream::connect(server).unwrap();
        tcp.set_read_timeout(Some(T)).unwrap();
        tcp.write_all(&req).unwrap();
        let r = stun::read_tcp_response(&mut tcp);
        assert_eq!(r.xor_mapped, Some(tcp.local_addr().unwrap()));
    }
    srv.stop();
}

#[test]
fn tcp_back_to_back_and_partial_reads() {
    let p = free_port("127.0.0.1");
    let srv = Server::start(&["--listen", &format!("127.0.0.1:{p}")]);
    let addr: SocketAddr = format!("127.0.0.1:{p}").parse().unwrap();
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(T)).unwrap();
    tcp.set_nodelay(true).unwrap();
    // Three messages in one write.
    let reqs: Vec<Vec<u8>> = (0..3)
        .map(|i| binding_request(&[(attr::SOFTWARE, &[b'a' + i; 5])], i % 2 == 0))
        .collect();
    tcp.write_all(&reqs.concat()).unwrap();
    for req in &reqs {
        let r = stun::read_tcp_response(&mut tcp);
        assert_eq!(r.transaction_id, req[8..20], "answers in order");
    }
    // One message dribbled byte by byte.
    let req = binding_request(&[], true);
    for b in &req {
        tcp.write_all(std::slice::from_ref(b)).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let r = stun::read_tcp_response(&mut tcp);
    assert_eq!(r.transaction_id, req[8..20]);

    // A valid request followed by garbage in one segment: the answer still arrives, then
    // the server closes the stream.
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(T)).unwrap();
    let req = binding_request(&[], false);
    tcp.write_all(&[&req[..], &[0xFF, 0xFF, 0xFF, 0xFF]].concat())
        .unwrap();
    let r = stun::read_tcp_response(&mut tcp);
    assert_eq!(r.transaction_id, req[8..20]);
    let mut rest = [0u8; 16];
    assert!(
        matches!(tcp.read(&mut rest), Ok(0) | Err(_)),
        "closed after the garbage"
    );
    srv.stop();
}

#[test]
fn tcp_many_connections_cap_and_idle_timeout() {
    let p = free_port("127.0.0.1");
    let srv = Server::start(&[
        "--listen",
        &format!("127.0.0.1:{p}"),
        "--tcp-max-connections",
        "50",
        "--tcp-idle-timeout",
        "1",
    ]);
    let addr: SocketAddr = format!("127.0.0.1:{p}").parse().unwrap();
    let mut conns: Vec<TcpStream> = (0..50)
        .map(|_| {
            let c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(T)).unwrap();
            c
        })
        .collect();
    for c in &mut conns {
        c.write_all(&binding_request(&[], false)).unwrap();
    }
    for c in &mut conns {
        let r = stun::read_tcp_response(c);
        assert_eq!(r.class, 0x0101);
    }
    // Connection 51 is over the cap: the server closes it without an answer.
    let mut extra = TcpStream::connect(addr).unwrap();
    extra.set_read_timeout(Some(T)).unwrap();
    let _ = extra.write_all(&binding_request(&[], false));
    let mut buf = [0u8; 64];
    assert!(
        matches!(extra.read(&mut buf), Ok(0) | Err(_)),
        "over-cap connection is closed"
    );
    let metrics = http_get(srv.metrics, "/metrics");
    assert!(
        metrics.contains("turnpike_tcp_connections_rejected_total 1"),
        "{metrics}"
    );

    // After the idle timeout every connection is closed by the server.
    let start = Instant::now();
    for c in &mut conns {
        assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)));
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "closed after about 1 s idle"
    );

    // Trickling a partial message does not keep a connection alive.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let req = binding_request(&[(attr::SOFTWARE, &[b'x'; 64])], false);
    let start = Instant::now();
    let mut closed = false;
    for b in &req[..req.len() - 1] {
        if slow.write_all(std::slice::from_ref(b)).is_err() {
            closed = true;
            break;
        }
        match slow.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => panic!("no reply to an incomplete message"),
            Err(_) => {}
        }
    }
    assert!(closed, "slowloris connection closed");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "closed at the idle deadline"
    );
    // Freed slots are reusable.
    let mut again = TcpStream::connect(addr).unwrap();
    again.set_read_timeout(Some(T)).unwrap();
    again.write_all(&binding_request(&[], false)).unwrap();
    assert_eq!(stun::read_tcp_response(&mut again).class, 0x0101);
    srv.stop();
}

#[test]
fn rfc5780_with_two_ips() {
    let p = free_port("127.0.0.1");
    let alt = p + 1;
    let srv = Server::start(&[
        "--listen",
        &format!("127.0.0.1:{p}"),
        "--alternate-ip",
        "127.0.0.2",
    ]);
    let primary: SocketAddr = format!("127.0.0.1:{p}").parse().unwrap();
    let sock = udp_client("127.0.0.1:0");

    let (r, from) = udp_exchange(&sock, primary, &binding_request(&[], true));
    assert_eq!(from, primary);
    assert_eq!(
        r.other_address,
        Some(format!("127.0.0.2:{alt}").parse().unwrap())
    );
    assert_eq!(r.response_origin, Some(primary));

    for (flags, expect) in [
        (0x06u8, format!("127.0.0.2:{alt}")),
        (0x04, format!("127.0.0.2:{p}")),
        (0x02, format!("127.0.0.1:{alt}")),
        (0x00, format!("127.0.0.1:{p}")),
    ] {
        let (r, from) = udp_exchange(
            &sock,
            primary,
            &binding_request(&[(attr::CHANGE_REQUEST, &[0, 0, 0, flags])], true),
        );
        let expect: SocketAddr = expect.parse().unwrap();
        assert_eq!(
            from, expect,
            "CHANGE-REQUEST {flags:#x} answered from the right socket"
        );
        assert_eq!(r.response_origin, Some(expect));
        assert_eq!(r.xor_mapped, Some(sock.local_addr().unwrap()));
    }

    // The other three addresses answer too, each naming its own opposite.
    for (to, other) in [
        (format!("127.0.0.2:{p}"), format!("127.0.0.1:{alt}")),
        (format!("127.0.0.2:{alt}"), format!("127.0.0.1:{p}")),
        (format!("127.0.0.1:{alt}"), format!("127.0.0.2:{p}")),
    ] {
        let to: SocketAddr = to.parse().unwrap();
        let (r, from) = udp_exchange(&sock, to, &binding_request(&[], false));
        assert_eq!(from, to);
        assert_eq!(r.other_address, Some(other.parse().unwrap()));
    }

    // RESPONSE-PORT, in both encodings, sends the answer to another port of the client.
    let target = udp_client("127.0.0.1:0");
    let tport = target.local_addr().unwrap().port().to_be_bytes();
    for value in [&tport[..], &[tport[0], tport[1], 0, 0][..]] {
        sock.send_to(
            &binding_request(&[(attr::RESPONSE_PORT, value)], true),
            primary,
        )
        .unwrap();
        let mut buf = [0u8; 512];
        let (n, from) = target
            .recv_from(&mut buf)
            .expect("reply at the RESPONSE-PORT");
        assert_eq!(from, primary);
        assert_eq!(
            parse_response(&buf[..n]).xor_mapped,
            Some(sock.local_addr().unwrap())
        );
    }

    // PADDING is echoed.
    let (r, _) = udp_exchange(
        &sock,
        primary,
        &binding_request(&[(attr::PADDING, &[0; 512])], true),
    );
    assert_eq!(r.attr_len(attr::PADDING), Some(512));

    // RFC 3489 clients get MAPPED-ADDRESS, SOURCE-ADDRESS and CHANGED-ADDRESS.
    let req = classic_request(&[(attr::CHANGE_REQUEST, &[0, 0, 0, 0x06])]);
    sock.send_to(&req, primary).unwrap();
    let mut buf = [0u8; 512];
    let (n, from) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(from, format!("127.0.0.2:{alt}").parse().unwrap());
    let r = stun::parse_classic(&buf[..n]);
    assert_eq!(&buf[4..20], &req[4..20]);
    assert_eq!(r.mapped, Some(sock.local_addr().unwrap()));
    assert_eq!(r.source, Some(from));
    assert_eq!(r.changed, Some(format!("127.0.0.2:{alt}").parse().unwrap()));

    // TCP listens on all four addresses too.
    let mut tcp = TcpStream::connect(format!("127.0.0.2:{alt}")).unwrap();
    tcp.set_read_timeout(Some(T)).unwrap();
    tcp.write_all(&binding_request(&[], false)).unwrap();
    assert_eq!(
        stun::read_tcp_response(&mut tcp).other_address,
        Some(primary)
    );
    srv.stop();
}

#[test]
fn single_ip_rejects_change_request() {
    let p = free_port("127.0.0.1");
    let srv = Server::start(&["--listen", &format!("127.0.0.1:{p}")]);
    let primary: SocketAddr = format!("127.0.0.1:{p}").parse().unwrap();
    let sock = udp_client("127.0.0.1:0");
    let (r, from) = udp_exchange(
        &sock,
        primary,
        &binding_request(&[(attr::CHANGE_REQUEST, &[0, 0, 0, 0x06])], true),
    );
    assert_eq!(from, primary, "never answered from another address");
    assert_eq!(r.class, 0x0111);
    assert_eq!(r.error_code, Some(420));
    assert_eq!(r.unknown_attributes, vec![attr::CHANGE_REQUEST]);
    srv.stop();
}

#[test]
fn wildcard_listener_replies_from_the_address_the_request_arrived_at() {
    let p = free_port("0.0.0.0");
    let srv = Server::start(&["--listen", &format!("0.0.0.0:{p}"), "--udp-workers", "2"]);
    let sock = udp_client("127.0.0.1:0");
    for ip in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        let to: SocketAddr = format!("{ip}:{p}").parse().unwrap();
        for _ in 0..5 {
            let (r, from) = udp_exchange(&sock, to, &binding_request(&[], true));
            assert_eq!(from, to, "reply must leave from {to}");
            assert_eq!(r.xor_mapped, Some(sock.local_addr().unwrap()));
        }
    }
    srv.stop();
}

#[test]
fn bad_input_is_dropped_and_counted() {
    let p = free_port("127.0.0.1");
    let srv = Server::start(&["--listen", &format!("127.0.0.1:{p}")]);
    let server: SocketAddr = format!("127.0.0.1:{p}").parse().unwrap();
    let sock = udp_client("127.0.0.1:0");
    let good = binding_request(&[(attr::SOFTWARE, b"client")], true);
    let mut bad_fp = good.clone();
    let n = bad_fp.len();
    bad_fp[n - 1] ^= 0xFF;
    let mut bad_len = good.clone();
    bad_len[3] = bad_len[3].wrapping_add(8);
    let mut garbage = vec![0xC3u8; 64];
    garbage[1] = 7;
    let mut response = good.clone();
    response[0] = 0x01; // a Binding success response sent to us
    stun::refingerprint(&mut response);
    let mut wrong_cookie_indication = good.clone();
    wrong_cookie_indication[1] = 0x11;
    wrong_cookie_indication[4] = 0;
    let cases: [(&[u8], &str); 7] = [
        (&good[..10], "too-short"),
        (&bad_len, "bad-length"),
        (&bad_fp, "bad-fingerprint"),
        (&garbage, "not-stun"),
        (&response, "unexpected-response"),
        (&wrong_cookie_indication, "bad-magic-cookie"),
        (&[0u8; 5000], "oversize"),
    ];
    for (data, _) in &cases {
        sock.send_to(data, server).unwrap();
    }
    expect_silence(&sock, Duration::from_millis(300));
    // Still serving.
    let (r, _) = udp_exchange(&sock, server, &good);
    assert_eq!(r.class, 0x0101);
    let m = http_get(srv.metrics, "/metrics");
    for (_, reason) in cases {
        assert!(
            m.contains(&format!(
                "turnpike_stun_drops_total{{transport=\"udp\",reason=\"{reason}\"}} 1"
            )),
            "drop {reason} counted:\n{m}"
        );
    }
    // 420 for an unknown comprehension-required attribute, counted by code.
    let (r, _) = udp_exchange(
        &sock,
        server,
        &binding_request(&[(0x0024, &[0, 0, 0, 1])], true),
    );
    assert_eq!(
        (r.error_code, r.unknown_attributes.clone()),
        (Some(420), vec![0x0024])
    );
    let m = http_get(srv.metrics, "/metrics");
    assert!(
        m.contains("turnpike_stun_errors_total{transport=\"udp\",code=\"420\"} 1"),
        "{m}"
    );
    assert!(
        m.contains(
            "turnpike_stun_messages_total{transport=\"udp\",method=\"binding\",class=\"request\"} 2"
        ),
        "{m}"
    );
    // A Binding indication is accepted silently.
    let mut ind = binding_request(&[], true);
    ind[1] = 0x11;
    stun::refingerprint(&mut ind);
    sock.send_to(&ind, server).unwrap();
    expect_silence(&sock, Duration::from_millis(200));
    let m = http_get(srv.metrics, "/metrics");
    assert!(m.contains("turnpike_stun_messages_total{transport=\"udp\",method=\"binding\",class=\"indication\"} 1"), "{m}");
    srv.stop();
}

#[test]
fn software_and_health_endpoints() {
    let p = free_port("127.0.0.1");
    let srv = Server::start(&[
        "--listen",
        &format!("127.0.0.1:{p}"),
        "--software",
        "turnpike-test",
    ]);
    let sock = udp_client("127.0.0.1:0");
    let (r, _) = udp_exchange(
        &sock,
        format!("127.0.0.1:{p}").parse().unwrap(),
        &binding_request(&[(attr::PADDING, &[0; 64])], true),
    );
    assert_eq!(r.software.as_deref(), Some("turnpike-test"));
    assert!(http_get(srv.http, "/healthz").starts_with("HTTP/1.1 200"));
    let ready = http_get(srv.http, "/readyz");
    assert!(
        ready.starts_with("HTTP/1.1 200") && ready.ends_with("ready\n"),
        "{ready}"
    );
    assert!(http_get(srv.http, "/nope").starts_with("HTTP/1.1 404"));
    let m = http_get(srv.metrics, "/metrics");
    assert!(m.contains("# TYPE turnpike_stun_messages_total counter"));
    srv.stop();
}

#[test]
fn graceful_shutdown_on_sigterm_and_sigint() {
    for signal in [libc_signal::SIGTERM, libc_signal::SIGINT] {
        let p = free_port("127.0.0.1");
        let srv = Server::start(&["--listen", &format!("127.0.0.1:{p}")]);
        let status = srv.signal_and_wait(signal, Duration::from_secs(10));
        assert!(
            status.success(),
            "clean exit after signal {signal}: {status:?}"
        );
    }
}

mod libc_signal {
    pub const SIGINT: i32 = 2;
    pub const SIGTERM: i32 = 15;
}

#[test]
fn clear_startup_errors() {
    // Port in use.
    let holder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let (ok, err) = run_to_exit(
        &[
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--http",
            "off",
            "--metrics",
            "off",
            "--udp-workers",
            "1",
        ],
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("already uses this port"),
        "{err}"
    );

    // Bad address.
    let (ok, err) = run_to_exit(&["serve", "--listen", "127.0.0.1"], &[]);
    assert!(!ok && err.contains("--listen"), "{err}");

    // Bad config key: the key and its line.
    let dir = std::env::temp_dir().join(format!("turnpike-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "listen = [\"127.0.0.1:3478\"]\n\nsoftwar = \"x\"\n").unwrap();
    let (ok, err) = run_to_exit(&["serve", "--config", file.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(
        err.contains("softwar") && err.contains("line 3") && err.contains("bad.toml"),
        "{err}"
    );

    // RFC 5780 on a wildcard primary.
    let (ok, err) = run_to_exit(
        &[
            "serve",
            "--listen",
            "0.0.0.0:3478",
            "--alternate-ip",
            "127.0.0.2",
        ],
        &[],
    );
    assert!(!ok && err.contains("wildcard"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn print_config_layers_file_env_and_flags() {
    let dir = std::env::temp_dir().join(format!("turnpike-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("t.toml");
    std::fs::write(&file, "software = \"from-file\"\nhttp = \"off\"\nudp_workers = 3\nlisten = [\"127.0.0.1:1000\"]\n").unwrap();
    let path = file.to_str().unwrap();
    // File alone.
    let (ok, out) = run_to_exit(&["serve", "--config", path, "--print-config"], &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("software = \"from-file\"")
            && out.contains("http = \"off\"")
            && out.contains("udp_workers = 3"),
        "{out}"
    );
    // Env beats file; flag beats env.
    let (ok, out) = run_to_exit(
        &[
            "serve",
            "--config",
            path,
            "--print-config",
            "--udp-workers",
            "5",
        ],
        &[
            ("TURNPIKE_SOFTWARE", "from-env"),
            ("TURNPIKE_UDP_WORKERS", "4"),
            ("TURNPIKE_LISTEN", "127.0.0.1:2000,[::1]:2001"),
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("software = \"from-env\""), "{out}");
    assert!(out.contains("udp_workers = 5"), "{out}");
    assert!(
        out.contains("listen = [\"127.0.0.1:2000\", \"[::1]:2001\"]"),
        "{out}"
    );
    assert!(out.contains("http = \"off\""), "{out}");
    // The shipped example file is valid and equals the defaults.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/turnpike.toml");
    let (ok, from_file) = run_to_exit(&["serve", "--config", example, "--print-config"], &[]);
    let (ok2, defaults) = run_to_exit(&["serve", "--print-config"], &[]);
    assert!(ok && ok2);
    assert_eq!(from_file, defaults);
    let _ = std::fs::remove_dir_all(dir);
}
