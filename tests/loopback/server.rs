//! Starting and stopping the real binary.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_turnpike");

/// A port free for UDP and TCP on `ip`, and the next one too (RFC 5780 tests use port + 1),
/// also on 127.0.0.2 when `ip` is 127.0.0.1 (RFC 5780 tests use both). It comes from below the
/// kernel's ephemeral range when there is room: there no client socket of a parallel test can
/// take it between this probe and the server's bind.
pub fn free_port(ip: &str) -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(0);
    let ips: Vec<&str> = if ip == "127.0.0.1" {
        vec![ip, "127.0.0.2"]
    } else {
        vec![ip]
    };
    let free = |port: u16| {
        ips.iter().all(|ip| {
            [port, port + 1].iter().all(|p| {
                UdpSocket::bind(format!("{ip}:{p}")).is_ok()
                    && TcpListener::bind(format!("{ip}:{p}")).is_ok()
            })
        })
    };
    let mut x = (u64::from(std::process::id()) << 32)
        ^ u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos(),
        )
        ^ N.fetch_add(0x9E37_79B9, Ordering::Relaxed);
    for _ in 0..200 {
        let port = if low > 12_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            10_000 + (x % u64::from(low - 10_002)) as u16
        } else {
            // No room below the ephemeral range: take one the kernel hands out.
            let u = UdpSocket::bind(format!("{ip}:0")).expect("bind probe");
            u.local_addr().unwrap().port()
        };
        if port < u16::MAX && free(port) {
            return port;
        }
    }
    panic!("no free port pair on {ip}");
}

/// A running `turnpike serve`, killed on drop.
pub struct Server {
    child: Option<Child>,
    /// Its HTTP address.
    pub http: SocketAddr,
    /// Its metrics address.
    pub metrics: SocketAddr,
}

fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("TURNPIKE_") {
            c.env_remove(k);
        }
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

impl Server {
    /// Starts `turnpike serve ARGS` with HTTP and metrics on free loopback ports, and waits
    /// until `/readyz` answers.
    pub fn start(args: &[&str]) -> Server {
        let http = free_tcp();
        let metrics = free_tcp();
        let mut all = vec!["serve", "--log-format", "json"];
        let http_s = http.to_string();
        let metrics_s = metrics.to_string();
        all.extend_from_slice(&["--http", &http_s, "--metrics", &metrics_s]);
        if !args.contains(&"--udp-workers") {
            all.extend_from_slice(&["--udp-workers", "1"]);
        }
        all.extend_from_slice(args);
        let child = command(&all, &[])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start turnpike");
        let mut srv = Server {
            child: Some(child),
            http,
            metrics,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(c) = srv.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("turnpike exited during start-up: {status}");
                }
            }
            if try_http_get(http, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
                return srv;
            }
            assert!(Instant::now() < deadline, "turnpike did not become ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` without waiting.
    pub fn send_signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
        // SAFETY: kill(2) on our own child's pid with a valid signal number has no memory
        // effects; the child has not been reaped yet, so the pid cannot have been reused.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill -{signal} failed");
    }

    /// Sends `signal` and waits for the process to exit.
    pub fn signal_and_wait(self, signal: i32, timeout: Duration) -> ExitStatus {
        self.send_signal(signal);
        self.wait_exit(timeout)
    }

    /// Waits for the process to exit (it was told to by a signal), killing it after `timeout`.
    pub fn wait_exit(mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let signal = "the signal sent";
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("turnpike did not exit within {timeout:?} after {signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The value of one metrics series, e.g. `turnpike_turn_allocations` or
    /// `turnpike_turn_auth_failures_total{reason="expired"}`.
    pub fn metric(&self, series: &str) -> u64 {
        let body = http_get(self.metrics, "/metrics");
        body.lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no series {series} in /metrics:\n{body}"))
    }

    /// Waits (metrics are published every 100 ms) until `series` equals `want`.
    pub fn wait_metric(&self, series: &str, want: u64) {
        self.wait_metric_until(series, |v| v == want, &format!("{want}"));
    }

    /// Waits up to 5 s until `ok(value of series)`; `expected` describes it for the panic.
    pub fn wait_metric_until(&self, series: &str, ok: impl Fn(u64) -> bool, expected: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.metric(series);
            if ok(v) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {series} is {v}, expected {expected}",
                self.http
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls `/readyz` until `ok(response)` (status line, headers and body), within
    /// `within`; returns the response.
    pub fn wait_readyz(&self, ok: impl Fn(&str) -> bool, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let r = http_get(self.http, "/readyz");
            if ok(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz of {} never became as expected: {r}",
                self.http
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server with SIGTERM and checks it exits cleanly.
    pub fn stop(self) {
        let status = self.signal_and_wait(15, Duration::from_secs(10));
        assert!(status.success(), "turnpike exit status {status}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_tcp() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// GET over HTTP/1.1; `None` when the connection or the exchange fails.
pub fn try_http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// GET over HTTP/1.1; panics on failure.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    try_http_get(addr, path).unwrap_or_else(|| panic!("GET {path} from {addr} failed"))
}

/// Runs `turnpike ARGS` to completion; returns (success, stdout + stderr).
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = command(args, env).output().expect("run turnpike");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}
