//! A throwaway `redis-server` for the hub's cluster tests (`turnpike serve --redis URL`), and a
//! minimal RESP2 client to look at what the hub keeps in Redis (no Redis crate needed).
//!
//! [`RedisServer::start`] runs Debian's `redis-server` on 127.0.0.1 on a free port, with
//! persistence off, in a fresh temporary directory, and waits until it answers `PING`. Tests
//! can kill it (SIGKILL, as a crash) and restart it on the same port, empty. `tests/run.sh`
//! installs `redis-server`; without it the tests fail, never skip.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::server::free_port;

/// How long a start or restart may take until `PING` answers.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Read and write timeout of [`RedisConn`]s.
const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// Name of the log file (redis-server's stdout and stderr) in the server's directory.
const LOG: &str = "redis.log";

/// A running `redis-server` on 127.0.0.1, killed (and its directory removed) on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts `redis-server` on a free port of 127.0.0.1, with persistence off
    /// (`--save "" --appendonly no`), in a fresh temporary directory, and waits until it
    /// answers `PING`. Panics, naming `tests/run.sh`, if `redis-server` is not on PATH.
    pub fn start() -> RedisServer {
        let dir = fresh_dir();
        let mut last = String::new();
        // A port can be taken between free_port's probe and redis-server's bind: retry.
        for _ in 0..5 {
            let mut srv = RedisServer {
                child: None,
                port: free_port("127.0.0.1"),
                dir: dir.clone(),
            };
            match srv.launch() {
                Ok(()) => return srv,
                Err(log) if log.contains("Address already in use") => {
                    // Keep the directory for the next attempt.
                    srv.dir = PathBuf::new();
                    last = log;
                }
                Err(log) => panic!("{log}"),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!("redis-server could not bind a free port 5 times; last attempt:\n{last}");
    }

    /// Its port on 127.0.0.1 (the same after [`RedisServer::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its address, `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The URL for `turnpike serve --redis`: `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills it with SIGKILL (a crash: nothing is saved) and waits for it to exit. Does
    /// nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty (killing it first if it still runs), and waits
    /// until it answers `PING`.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(log) = self.launch() {
            panic!("{log}");
        }
    }

    /// Sends one command on a new connection and returns the reply; panics on an I/O error.
    pub fn cmd(&self, args: &[&str]) -> Reply {
        self.connect().cmd(args)
    }

    /// `KEYS pattern`, sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys = self.cmd(&["KEYS", pattern]).strings();
        keys.sort();
        keys
    }

    /// A new connection to it; panics if it cannot connect.
    pub fn connect(&self) -> RedisConn {
        RedisConn::connect(self.addr())
            .unwrap_or_else(|e| panic!("cannot connect to redis-server at {}: {e}", self.addr()))
    }

    /// Spawns redis-server on `self.port` and waits until it answers `PING`; on failure returns
    /// a message with its log.
    fn launch(&mut self) -> Result<(), String> {
        let log_path = self.dir.join(LOG);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log_err = log.try_clone().expect("clone the log file handle");
        let port = self.port.to_string();
        let dir = self
            .dir
            .to_str()
            .expect("temporary directory path is UTF-8");
        let spawned = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", dir, "--logfile", "", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => panic!(
                "redis-server is not on PATH: the hub cluster tests need it. tests/run.sh \
                 installs it (Debian package redis-server: apt-get install redis-server)"
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                return Err(format!(
                    "redis-server on 127.0.0.1:{port} exited during start-up ({status}); its log:\n{}",
                    read_log_from(&log_path, log_start)
                ));
            }
            if ping(self.addr()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "redis-server on 127.0.0.1:{port} did not answer PING within {READY_TIMEOUT:?}; its log:\n{}",
                    read_log_from(&log_path, log_start)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A new, empty directory under the system's temporary directory.
fn fresh_dir() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    for _ in 0..100 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "turnpike-redis-{}-{}-{nanos:08x}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create {}: {e}", dir.display()),
        }
    }
    panic!("cannot create a fresh temporary directory");
}

/// The log from byte `from` on (this start's part), or why it cannot be read.
fn read_log_from(path: &Path, from: u64) -> String {
    let mut text = String::new();
    match File::open(path) {
        Ok(mut f) => {
            use std::io::Seek;
            let _ = f.seek(io::SeekFrom::Start(from));
            let _ = f.read_to_string(&mut text);
        }
        Err(e) => text = format!("(cannot read {}: {e})", path.display()),
    }
    text
}

/// Whether a raw RESP `PING` to `addr` answers `+PONG`, within about a second.
pub fn ping(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR …`
    Error(String),
    /// `:1`
    Int(i64),
    /// `$3 abc`
    Bulk(Vec<u8>),
    /// `$-1` or `*-1` (no value).
    Nil,
    /// `*2 …`
    Array(Vec<Reply>),
}

impl Reply {
    /// The text of a simple string or a UTF-8 bulk string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Reply::Simple(s) => Some(s),
            Reply::Bulk(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The integer; panics on another reply.
    pub fn int(&self) -> i64 {
        match self {
            Reply::Int(n) => *n,
            other => panic!("expected an integer reply, got {other:?}"),
        }
    }

    /// The elements of an array of strings, in order (`Nil` is an empty list); panics on
    /// another reply.
    pub fn strings(&self) -> Vec<String> {
        match self {
            Reply::Nil => Vec::new(),
            Reply::Array(items) => items
                .iter()
                .map(|r| {
                    r.as_str()
                        .unwrap_or_else(|| panic!("expected a string in the array, got {r:?}"))
                        .to_owned()
                })
                .collect(),
            other => panic!("expected an array reply, got {other:?}"),
        }
    }
}

/// A plain RESP2 connection (no `HELLO 3`), with 3 s read and write timeouts.
pub struct RedisConn {
    stream: BufReader<TcpStream>,
}

impl RedisConn {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> io::Result<RedisConn> {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        s.set_nodelay(true)?;
        Ok(RedisConn {
            stream: BufReader::new(s),
        })
    }

    /// Sends one command and reads its reply; panics on an I/O or protocol error (a Redis
    /// error is [`Reply::Error`]).
    pub fn cmd(&mut self, args: &[&str]) -> Reply {
        self.send(args)
            .and_then(|()| self.read_reply())
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    /// Sends one command without reading a reply.
    pub fn send(&mut self, args: &[&str]) -> io::Result<()> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.stream.get_mut().write_all(&out)
    }

    /// Reads the next reply (e.g. a pub/sub message after `SUBSCRIBE`), waiting at most the
    /// read timeout.
    pub fn read_reply(&mut self) -> io::Result<Reply> {
        let line = self.read_line()?;
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        let (kind, rest) = line.split_at_checked(1).ok_or_else(|| bad("empty line"))?;
        let number = |s: &str| {
            s.parse::<i64>()
                .map_err(|_| bad(&format!("bad number in {line:?}")))
        };
        Ok(match kind {
            "+" => Reply::Simple(rest.to_owned()),
            "-" => Reply::Error(rest.to_owned()),
            ":" => Reply::Int(number(rest)?),
            "$" => match number(rest)? {
                -1 => Reply::Nil,
                n if n >= 0 => {
                    let mut buf = vec![0u8; n as usize + 2];
                    self.stream.read_exact(&mut buf)?;
                    if !buf.ends_with(b"\r\n") {
                        return Err(bad("bulk string not ended by CRLF"));
                    }
                    buf.truncate(n as usize);
                    Reply::Bulk(buf)
                }
                _ => return Err(bad(&format!("bad bulk length in {line:?}"))),
            },
            "*" => match number(rest)? {
                -1 => Reply::Nil,
                n if n >= 0 => {
                    let mut items = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        items.push(self.read_reply()?);
                    }
                    Reply::Array(items)
                }
                _ => return Err(bad(&format!("bad array length in {line:?}"))),
            },
            _ => return Err(bad(&format!("not a RESP2 reply: {line:?}"))),
        })
    }

    /// Sets the read timeout (`None`: wait forever).
    pub fn set_read_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        self.stream.get_ref().set_read_timeout(t)
    }

    /// One CRLF-terminated line, without the CRLF.
    fn read_line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        self.stream.read_until(b'\n', &mut line)?;
        if line.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if !line.ends_with(b"\r\n") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "line not ended by CRLF",
            ));
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

#[test]
fn redis_server_starts_answers_is_killed_and_restarts() {
    let mut r = RedisServer::start();
    let port = r.port();
    assert_eq!(r.url(), format!("redis://127.0.0.1:{port}/"));
    assert_eq!(r.addr(), SocketAddr::from(([127, 0, 0, 1], port)));
    assert!(ping(r.addr()));

    // The client: every reply type.
    assert_eq!(r.cmd(&["PING"]), Reply::Simple("PONG".to_owned()));
    assert_eq!(r.cmd(&["SET", "k1", "v 1"]).as_str(), Some("OK"));
    assert_eq!(r.cmd(&["GET", "k1"]), Reply::Bulk(b"v 1".to_vec()));
    assert_eq!(r.cmd(&["GET", "missing"]), Reply::Nil);
    assert_eq!(r.cmd(&["INCR", "k2"]).int(), 1);
    assert_eq!(r.cmd(&["RPUSH", "k3", "a", "", "c"]).int(), 3);
    assert_eq!(
        r.cmd(&["LRANGE", "k3", "0", "-1"]).strings(),
        ["a", "", "c"]
    );
    assert_eq!(r.keys("*"), ["k1", "k2", "k3"]);
    assert!(matches!(r.cmd(&["NOSUCHCOMMAND"]), Reply::Error(e) if e.starts_with("ERR")));
    // Persistence is off.
    assert_eq!(r.cmd(&["CONFIG", "GET", "save"]).strings(), ["save", ""]);
    assert_eq!(
        r.cmd(&["CONFIG", "GET", "appendonly"]).strings(),
        ["appendonly", "no"]
    );

    // Pub/sub on a kept connection.
    let mut sub = r.connect();
    assert_eq!(
        sub.cmd(&["SUBSCRIBE", "ch"]),
        Reply::Array(vec![
            Reply::Bulk(b"subscribe".to_vec()),
            Reply::Bulk(b"ch".to_vec()),
            Reply::Int(1)
        ])
    );
    assert_eq!(r.cmd(&["PUBLISH", "ch", "hello"]).int(), 1);
    assert_eq!(
        sub.read_reply().expect("a published message").strings(),
        ["message", "ch", "hello"]
    );
    sub.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert!(sub.read_reply().is_err(), "nothing more");

    // SIGKILL: it is gone, and so is the subscriber's connection.
    let pid = r.pid().expect("running");
    r.kill();
    assert_eq!(r.pid(), None);
    assert!(!ping(r.addr()), "no answer after kill");
    sub.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    assert!(sub.read_reply().is_err(), "connection closed by the kill");
    assert!(!Path::new(&format!("/proc/{pid}")).exists());

    // Restart: the same port, empty (nothing was persisted), answering again.
    r.restart();
    assert_eq!(r.port(), port);
    assert!(ping(r.addr()));
    assert_eq!(r.cmd(&["PING"]).as_str(), Some("PONG"));
    assert_eq!(r.keys("*"), Vec::<String>::new());
    assert_eq!(r.cmd(&["DBSIZE"]).int(), 0);
    // A restart of a running server works too.
    r.cmd(&["SET", "k", "v"]);
    r.restart();
    assert_eq!(r.cmd(&["DBSIZE"]).int(), 0);

    // Drop kills it and removes its directory.
    let pid = r.pid().expect("running");
    let dir = r.dir.clone();
    assert!(dir.join(LOG).exists());
    drop(r);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(!dir.exists());
}

#[test]
fn redis_servers_run_side_by_side() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.dir, b.dir);
    a.cmd(&["SET", "only-in", "a"]);
    assert_eq!(a.keys("*"), ["only-in"]);
    assert!(b.keys("*").is_empty());
}
