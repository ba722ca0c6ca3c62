//! Thin Linux syscall wrappers used by the benchmark binaries: batched UDP
//! I/O (`recvmmsg`/`sendmmsg`), `ppoll`, SIGINT/SIGTERM handling and the
//! timer slack knob.
// This module is the only place in turnpike-bench that calls libc directly;
// the workspace denies `unsafe_code`, so it is allowed here and every unsafe
// block carries a SAFETY comment.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// `recvmmsg` flag: block for the first datagram only, then return what is queued.
pub const MSG_WAITFORONE: libc::c_int = libc::MSG_WAITFORONE;
/// Per-call non-blocking flag.
pub const MSG_DONTWAIT: libc::c_int = libc::MSG_DONTWAIT;

/// Control buffer per message, in u64 words (room for one timestamp cmsg).
const CTRL_WORDS: usize = 8;

/// A fixed set of message buffers, addresses and headers for one
/// `recvmmsg` or `sendmmsg` call.
///
/// The kernel-facing header arrays are rebuilt from the owned buffers on
/// every call, so the struct can be moved freely between calls.
pub struct MmsgBatch {
    msg_size: usize,
    /// Control-message buffers (`CTRL_WORDS` u64 per message, for
    /// alignment), empty unless [`Self::with_timestamps`] was used.
    ctrl: Vec<u64>,
    ctrl_lens: Vec<usize>,
    bufs: Vec<u8>,
    lens: Vec<usize>,
    names: Vec<libc::sockaddr_storage>,
    name_lens: Vec<libc::socklen_t>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl MmsgBatch {
    /// Creates a batch of `capacity` messages of at most `msg_size` bytes.
    ///
    /// # Panics
    /// If `capacity` or `msg_size` is zero or `capacity` exceeds 1024
    /// (`UIO_MAXIOV`).
    pub fn new(capacity: usize, msg_size: usize) -> Self {
        assert!(capacity > 0 && capacity <= 1024 && msg_size > 0);
        // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for
        // which the all-zero bit pattern is valid (null pointers, zero lengths).
        let zero_storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let zero_iov: libc::iovec = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let zero_hdr: libc::mmsghdr = unsafe { mem::zeroed() };
        MmsgBatch {
            msg_size,
            ctrl: Vec::new(),
            ctrl_lens: vec![0; capacity],
            bufs: vec![0; capacity * msg_size],
            lens: vec![0; capacity],
            names: vec![zero_storage; capacity],
            name_lens: vec![0; capacity],
            iovs: vec![zero_iov; capacity],
            hdrs: vec![zero_hdr; capacity],
        }
    }

    /// Reserves room for control messages so that [`Self::rx_timestamp_ns`]
    /// can return the kernel receive timestamps of sockets set up with
    /// [`enable_rx_timestamps`].
    pub fn with_timestamps(mut self) -> Self {
        self.ctrl = vec![0; self.capacity() * CTRL_WORDS];
        self
    }

    /// Number of messages the batch holds.
    pub fn capacity(&self) -> usize {
        self.lens.len()
    }

    /// Points headers `0..count` at their buffers (full size for receiving,
    /// the set length for sending) and, if `with_names`, at their address
    /// slots.
    fn prepare(&mut self, count: usize, recv: bool, with_names: bool) {
        let base = self.bufs.as_mut_ptr();
        for i in 0..count {
            let len = if recv { self.msg_size } else { self.lens[i] };
            // SAFETY: i < capacity, so the offset stays inside `bufs`.
            self.iovs[i].iov_base = unsafe { base.add(i * self.msg_size) }.cast();
            self.iovs[i].iov_len = len;
            let h = &mut self.hdrs[i].msg_hdr;
            let name_len = if recv {
                mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t
            } else {
                self.name_lens[i]
            };
            if with_names && name_len > 0 {
                h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
                h.msg_namelen = name_len;
            } else {
                h.msg_name = ptr::null_mut();
                h.msg_namelen = 0;
            }
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            if recv && !self.ctrl.is_empty() {
                h.msg_control = self.ctrl[i * CTRL_WORDS..].as_mut_ptr().cast();
                h.msg_controllen = CTRL_WORDS * 8;
            } else {
                h.msg_control = ptr::null_mut();
                h.msg_controllen = 0;
            }
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
    }

    /// Receives up to `capacity` datagrams from `fd` with one `recvmmsg`.
    /// Returns how many were received; read them with [`Self::received`]
    /// and [`Self::source`]. `flags` is e.g. [`MSG_WAITFORONE`] or
    /// [`MSG_DONTWAIT`]. Source addresses are recorded only if `with_names`.
    pub fn recv(&mut self, fd: RawFd, flags: libc::c_int, with_names: bool) -> io::Result<usize> {
        let n = self.capacity();
        self.prepare(n, true, with_names);
        if !with_names {
            self.name_lens.iter_mut().for_each(|l| *l = 0);
        }
        // SAFETY: `hdrs[..n]` point at live buffers/iovecs/addresses owned by
        // `self` that stay borrowed (and unmoved) for the duration of the
        // call; the lengths given match the allocations; timeout is null.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                flags,
                ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let r = r as usize;
        for i in 0..r {
            self.lens[i] = (self.hdrs[i].msg_len as usize).min(self.msg_size);
            if with_names {
                self.name_lens[i] = self.hdrs[i].msg_hdr.msg_namelen;
            }
            self.ctrl_lens[i] = if self.ctrl.is_empty() {
                0
            } else {
                self.hdrs[i].msg_hdr.msg_controllen.min(CTRL_WORDS * 8)
            };
        }
        Ok(r)
    }

    /// Payload of received message `i`.
    pub fn received(&self, i: usize) -> &[u8] {
        let off = i * self.msg_size;
        &self.bufs[off..off + self.lens[i]]
    }

    /// Kernel receive timestamp (`SCM_TIMESTAMPNS`, CLOCK_REALTIME, in
    /// nanoseconds since the Unix epoch) of received message `i`, if the
    /// batch was built [`Self::with_timestamps`] and the socket has
    /// [`enable_rx_timestamps`].
    pub fn rx_timestamp_ns(&self, i: usize) -> Option<u64> {
        let len = self.ctrl_lens[i];
        if len == 0 {
            return None;
        }
        // SAFETY: a zeroed msghdr is valid; we only point its control fields
        // at message i's control buffer (owned by self, `len` bytes written by
        // the kernel) and walk it with the libc CMSG_* helpers, which stay
        // within msg_controllen. CMSG_DATA of an SCM_TIMESTAMPNS header holds
        // a timespec, read unaligned.
        unsafe {
            let mut mh: libc::msghdr = mem::zeroed();
            mh.msg_control = self.ctrl[i * CTRL_WORDS..].as_ptr() as *mut libc::c_void;
            mh.msg_controllen = len;
            let mut c = libc::CMSG_FIRSTHDR(&mh);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET
                    && (*c).cmsg_type == libc::SCM_TIMESTAMPNS
                    && (*c).cmsg_len
                        >= libc::CMSG_LEN(mem::size_of::<libc::timespec>() as u32) as usize
                {
                    let ts: libc::timespec =
                        ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                    return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
                }
                c = libc::CMSG_NXTHDR(&mh, c);
            }
        }
        None
    }

    /// Source address of received message `i` (or destination set with
    /// [`Self::set_dest`]), if any.
    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        sockaddr_to_std(&self.names[i], self.name_lens[i])
    }

    /// Full writable buffer of message `i` (`msg_size` bytes); set the
    /// length to send with [`Self::set_len`].
    pub fn buf_mut(&mut self, i: usize) -> &mut [u8] {
        let off = i * self.msg_size;
        &mut self.bufs[off..off + self.msg_size]
    }

    /// Sets the payload length of message `i` for the next [`Self::send`].
    pub fn set_len(&mut self, i: usize, len: usize) {
        assert!(len <= self.msg_size);
        self.lens[i] = len;
    }

    /// Sets (or clears, for connected sockets) the destination of message `i`.
    pub fn set_dest(&mut self, i: usize, dest: Option<SocketAddr>) {
        self.name_lens[i] = match dest {
            Some(a) => std_to_sockaddr(a, &mut self.names[i]),
            None => 0,
        };
    }

    /// Sends the messages in `msgs` (indices) with one `sendmmsg` and
    /// returns how many the kernel accepted: it may be fewer than requested
    /// (retry the rest), and an error is returned only if the first one
    /// failed.
    pub fn send(
        &mut self,
        fd: RawFd,
        msgs: std::ops::Range<usize>,
        flags: libc::c_int,
    ) -> io::Result<usize> {
        let end = msgs.end.min(self.capacity());
        if msgs.start >= end {
            return Ok(0);
        }
        self.prepare(end, false, true);
        // SAFETY: as in `recv`: headers `start..end` point at buffers owned
        // by `self`, borrowed mutably for the whole call, with matching
        // lengths; `start < end <= capacity` keeps the pointer in bounds.
        let r = unsafe {
            libc::sendmmsg(
                fd,
                self.hdrs.as_mut_ptr().add(msgs.start),
                (end - msgs.start) as libc::c_uint,
                flags,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }
}

/// Turns on `SO_TIMESTAMPNS`: every datagram received on `fd` carries the
/// time (CLOCK_REALTIME) the kernel queued it, read with
/// [`MmsgBatch::rx_timestamp_ns`].
pub fn enable_rx_timestamps(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: passes a pointer to a live c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Current CLOCK_REALTIME in nanoseconds since the Unix epoch (the clock of
/// kernel receive timestamps).
pub fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Converts a C socket address to a [`SocketAddr`] (IPv4/IPv6 only).
pub fn sockaddr_to_std(sa: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(sa.ss_family) {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: family is AF_INET and the kernel wrote at least a full
            // sockaddr_in; sockaddr_storage is suitably aligned for it.
            let sin =
                unsafe { &*(sa as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above for AF_INET6 / sockaddr_in6.
            let sin6 =
                unsafe { &*(sa as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Writes `addr` into `out` and returns the length to pass to the kernel.
pub fn std_to_sockaddr(addr: SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in; all-zero is a valid sockaddr_in.
            let sin =
                unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            // SAFETY: all-zero is a valid sockaddr_in.
            *sin = unsafe { mem::zeroed() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above for sockaddr_in6.
            let sin6 =
                unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            // SAFETY: all-zero is a valid sockaddr_in6.
            *sin6 = unsafe { mem::zeroed() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::Relaxed);
}

/// Installs SIGINT and SIGTERM handlers that set a flag read by
/// [`stop_requested`]. The handlers are installed without `SA_RESTART`, so a
/// blocking `recvmmsg`/`ppoll` returns `EINTR` when a signal arrives.
pub fn install_stop_signals() -> io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid; we set a handler that only
        // performs an atomic store (async-signal-safe), an empty mask and no
        // flags, and pass valid pointers to sigemptyset/sigaction.
        let rc = unsafe {
            let mut sa: libc::sigaction = mem::zeroed();
            sa.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = 0;
            libc::sigaction(sig, &sa, ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// True once SIGINT or SIGTERM was received (after [`install_stop_signals`]).
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Waits with `ppoll` (nanosecond timeout) until one of `fds` is ready or
/// `timeout` passes; returns the number of ready descriptors. `EINTR` is
/// reported as `Ok(0)`.
pub fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<usize> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `fds` is a valid mutable slice of pollfd of the given length,
    // `ts` lives across the call, and a null sigmask leaves it unchanged.
    let r = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &ts,
            ptr::null(),
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(r as usize)
}

/// Sets this thread's timer slack (how late the kernel may wake sleeping
/// calls such as `ppoll`); the default is 50 µs, too coarse for pacing.
pub fn set_timer_slack(ns: u64) -> io::Result<()> {
    // SAFETY: PR_SET_TIMERSLACK takes one unsigned long argument; the
    // remaining variadic arguments are ignored.
    let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CPU time (user + system) consumed so far by the whole process.
pub fn process_cpu_time() -> Duration {
    // SAFETY: a zeroed rusage is valid and getrusage only writes into it.
    let ru = unsafe {
        let mut ru: libc::rusage = mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut ru) != 0 {
            return Duration::ZERO;
        }
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn sockaddr_roundtrip() {
        // SAFETY: all-zero sockaddr_storage is valid.
        let mut st: libc::sockaddr_storage = unsafe { mem::zeroed() };
        for a in ["127.0.0.1:3478", "[::1]:9", "[fe80::1%3]:1"] {
            let a: SocketAddr = a.parse().unwrap();
            let len = std_to_sockaddr(a, &mut st);
            assert_eq!(sockaddr_to_std(&st, len), Some(a));
        }
    }

    #[test]
    fn mmsg_loopback() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let baddr = b.local_addr().unwrap();
        let mut tx = MmsgBatch::new(4, 64);
        for i in 0..3 {
            tx.buf_mut(i)[..3].copy_from_slice(&[i as u8; 3]);
            tx.set_len(i, 3);
            tx.set_dest(i, Some(baddr));
        }
        assert_eq!(tx.send(a.as_raw_fd(), 0..3, 0).unwrap(), 3);
        let mut rx = MmsgBatch::new(8, 64);
        let mut got = 0;
        while got < 3 {
            let n = rx.recv(b.as_raw_fd(), MSG_WAITFORONE, true).unwrap();
            for i in 0..n {
                assert_eq!(rx.received(i), &[(got + i) as u8; 3]);
                assert_eq!(rx.source(i), Some(a.local_addr().unwrap()));
            }
            got += n;
        }
        b.set_nonblocking(true).unwrap();
        enable_rx_timestamps(b.as_raw_fd()).unwrap();
        let before = realtime_ns();
        assert_eq!(tx.send(a.as_raw_fd(), 0..1, 0).unwrap(), 1);
        let mut rx = MmsgBatch::new(8, 64).with_timestamps();
        let mut n = 0;
        for _ in 0..1000 {
            match rx.recv(b.as_raw_fd(), MSG_DONTWAIT, false) {
                Ok(k) => {
                    n = k;
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        assert_eq!(n, 1);
        let ts = rx.rx_timestamp_ns(0).expect("kernel timestamp");
        assert!(ts >= before.saturating_sub(1_000_000) && ts <= realtime_ns());
        let e = rx.recv(b.as_raw_fd(), MSG_DONTWAIT, false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }
}
