//! Batched UDP I/O with packet info (Linux only).
//!
//! This module wraps `recvmmsg(2)` / `sendmmsg(2)` together with the `IP_PKTINFO` /
//! `IPV6_PKTINFO` ancillary data behind a small safe API:
//!
//! * [`bind_udp`] creates a non-blocking socket; on a wildcard address it enables packet-info
//!   reception, so the socket learns which local address each datagram was sent to
//!   ([`RecvMeta::dst_ip`]). A socket bound to one IP skips it: it knows its address.
//! * [`RecvBatch`] + [`recv_batch`] receive up to `batch` datagrams with one system call into
//!   buffers allocated once up front.
//! * [`SendBatch`] + [`send_batch`] send many datagrams with one system call; each datagram can
//!   carry a source IP so that a reply leaves from the address the request arrived at (the
//!   multi-homed correctness property for a server bound to `0.0.0.0` / `[::]`).
//!
//! No allocation happens per datagram once the batches have been created.
//!
//! Both functions take `&impl AsFd`, which `std::net::UdpSocket` and `tokio::net::UdpSocket`
//! both implement, so they can be used inside `tokio::net::UdpSocket::try_io`:
//!
//! ```no_run
//! # use turnpike_server::udp_batch::{bind_udp, recv_batch, RecvBatch};
//! # async fn demo() -> std::io::Result<()> {
//! use tokio::io::Interest;
//! let sock = tokio::net::UdpSocket::from_std(bind_udp("0.0.0.0:3478".parse().unwrap(), true)?)?;
//! let mut batch = RecvBatch::new(32, 2048);
//! loop {
//!     sock.readable().await?;
//!     match sock.try_io(Interest::READABLE, || recv_batch(&sock, &mut batch)) {
//!         Ok(_) => {
//!             for (meta, payload) in batch.iter() {
//!                 let _ = (meta.src, meta.dst_ip, payload);
//!             }
//!         }
//!         Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
//!         Err(e) => return Err(e),
//!     }
//! }
//! # }
//! ```

// This module is the FFI boundary for recvmmsg/sendmmsg and cmsg ancillary data, none of which
// std, socket2 or tokio expose. The workspace denies `unsafe_code`; it is allowed here only, every
// `unsafe` block carries a `SAFETY:` justification, and the public API is entirely safe.
#![allow(unsafe_code)]
#![cfg(target_os = "linux")]

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::ptr;

use libc::{c_int, c_uint, c_void, socklen_t};
use socket2::{Domain, Protocol, Socket, Type};

/// Largest number of datagrams a batch can hold (the kernel caps `recvmmsg`/`sendmmsg` at
/// `UIO_MAXIOV` = 1024 messages per call). Larger requests are clamped.
pub const MAX_BATCH: usize = 1024;

/// Largest per-datagram buffer size (a UDP payload is at most 65 527 bytes). Larger requests are
/// clamped.
pub const MAX_BUF_SIZE: usize = 65_536;

/// `SO_RCVBUF` / `SO_SNDBUF` size requested by [`bind_udp`] (best effort; the kernel may cap it
/// at `net.core.rmem_max` / `wmem_max`).
pub const SOCKET_BUFFER_SIZE: usize = 4 << 20;

/// Number of `mmsghdr`s built on the stack per `sendmmsg` call.
const SEND_CHUNK: usize = 64;

/// Size of one ancillary-data buffer. Enough for one `in6_pktinfo` cmsg (40 bytes on 64-bit)
/// plus slack for other control messages a caller might enable on the socket.
const CMSG_BUF_LEN: usize = 128;

/// Ancillary-data buffer, aligned for `cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct CmsgBuf([u8; CMSG_BUF_LEN]);

impl CmsgBuf {
    const ZERO: CmsgBuf = CmsgBuf([0; CMSG_BUF_LEN]);
}

/// `CMSG_SPACE(size_of::<T>())`.
const fn cmsg_space<T>() -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic on its argument; it dereferences nothing.
    unsafe { libc::CMSG_SPACE(mem::size_of::<T>() as c_uint) as usize }
}

/// `CMSG_LEN(size_of::<T>())`.
const fn cmsg_len<T>() -> usize {
    // SAFETY: CMSG_LEN is pure arithmetic on its argument; it dereferences nothing.
    unsafe { libc::CMSG_LEN(mem::size_of::<T>() as c_uint) as usize }
}

const _: () = {
    assert!(cmsg_space::<libc::in_pktinfo>() <= CMSG_BUF_LEN);
    assert!(cmsg_space::<libc::in6_pktinfo>() <= CMSG_BUF_LEN);
    assert!(mem::align_of::<CmsgBuf>() >= mem::align_of::<libc::cmsghdr>());
};

/// An all-zero `mmsghdr` (null pointers, zero lengths). Built this way because some libcs have
/// private padding fields, which rules out a struct literal.
fn zeroed_mmsghdr() -> libc::mmsghdr {
    // SAFETY: mmsghdr is a plain C struct of integers and raw pointers; all-zero is a valid value.
    unsafe { mem::zeroed() }
}

fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is a plain C struct of integers; all-zero is a valid value.
    unsafe { mem::zeroed() }
}

fn set_int_opt(fd: RawFd, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
    // SAFETY: `fd` is an open socket borrowed by the caller for the duration of the call; optval
    // points to a live `c_int` and optlen is exactly its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const c_int).cast::<c_void>(),
            mem::size_of::<c_int>() as socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the Don't Fragment bit on datagrams sent from `sock` (path MTU discovery "do"): the
/// TURN DONT-FRAGMENT attribute asks for it on relayed packets.
pub fn set_dont_fragment(sock: &impl AsFd, v6: bool) -> io::Result<()> {
    let fd = sock.as_fd().as_raw_fd();
    if v6 {
        set_int_opt(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        )
    } else {
        set_int_opt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    }
}

/// Create a non-blocking UDP socket bound to `addr`, ready for [`recv_batch`] / [`send_batch`].
///
/// * `SO_REUSEPORT` when `reuse_port` is true, so several workers can bind the same address and
///   the kernel load-balances datagrams between them;
/// * `IPV6_V6ONLY` for IPv6 addresses (an IPv6 socket never sees IPv4 traffic);
/// * packet-info reception (`IP_PKTINFO` / `IPV6_RECVPKTINFO`) on wildcard addresses only, so
///   [`RecvMeta::dst_ip`] is set where the local address is ambiguous;
/// * a [`SOCKET_BUFFER_SIZE`] receive and send buffer request (failures ignored);
/// * `O_NONBLOCK` and `O_CLOEXEC`.
///
/// The result can be wrapped with `tokio::net::UdpSocket::from_std`.
pub fn bind_udp(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    // Best effort: the kernel silently caps at rmem_max/wmem_max, and a failure here is not fatal.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_SIZE);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_SIZE);
    // Packet info is only needed where the local address is ambiguous: on a wildcard socket.
    // A socket bound to one IP knows it, and skipping the per-datagram control message is
    // measurably cheaper on the hot path.
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            set_int_opt(socket.as_raw_fd(), libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => set_int_opt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_RECVPKTINFO,
            1,
        )?,
        _ => {}
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

// ---------------------------------------------------------------------------------------------
// Address conversion
// ---------------------------------------------------------------------------------------------

/// A destination address in the form `sendmsg` wants.
#[repr(C)]
#[derive(Clone, Copy)]
union RawSockAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

fn std_to_raw(addr: &SocketAddr) -> (RawSockAddr, socklen_t) {
    match addr {
        SocketAddr::V4(a) => (
            RawSockAddr {
                v4: libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*a.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                },
            },
            mem::size_of::<libc::sockaddr_in>() as socklen_t,
        ),
        SocketAddr::V6(a) => (
            RawSockAddr {
                v6: libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    // Same convention as std: the value is passed through unchanged.
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                },
            },
            mem::size_of::<libc::sockaddr_in6>() as socklen_t,
        ),
    }
}

fn raw_to_std(storage: &libc::sockaddr_storage, len: socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match c_int::from(storage.ss_family) {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: sockaddr_storage is larger than and at least as aligned as sockaddr_in, is
            // fully initialised (zeroed, then written by the kernel) and the family says it holds
            // a sockaddr_in.
            let sin: libc::sockaddr_in =
                unsafe { ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6: libc::sockaddr_in6 =
                unsafe { ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Extract the destination address from `IP_PKTINFO` / `IPV6_PKTINFO` in a received message.
// `msg_controllen` / `cmsg_len` are `size_t` on glibc but `socklen_t` on musl.
#[allow(clippy::unnecessary_cast)]
fn parse_pktinfo(hdr: &libc::msghdr, ctrl: &CmsgBuf) -> Option<IpAddr> {
    let controllen = hdr.msg_controllen as usize;
    // Only trust the header if it still describes our own buffer.
    if !ptr::eq(hdr.msg_control.cast_const().cast::<CmsgBuf>(), ctrl) || controllen > CMSG_BUF_LEN {
        return None;
    }
    let base = ctrl.0.as_ptr() as usize;
    // SAFETY: hdr.msg_control points to `ctrl` (checked above), which is live for this function
    // and CMSG_BUF_LEN >= msg_controllen bytes long; CMSG_FIRSTHDR only returns msg_control when a
    // whole cmsghdr fits in msg_controllen.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(hdr) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR only return non-null pointers to a cmsghdr that lies
        // entirely within [msg_control, msg_control + msg_controllen), i.e. inside `ctrl`, at a
        // cmsghdr-aligned offset (CmsgBuf is aligned for cmsghdr).
        let c = unsafe { &*cmsg };
        let offset = (cmsg as usize).wrapping_sub(base);
        let avail = (c.cmsg_len as usize).min(controllen.saturating_sub(offset));
        // SAFETY: CMSG_DATA is pointer arithmetic past the header; the result is only read below
        // after checking that the payload lies within both cmsg_len and msg_controllen.
        let data = unsafe { libc::CMSG_DATA(cmsg) };
        if c.cmsg_level == libc::IPPROTO_IP
            && c.cmsg_type == libc::IP_PKTINFO
            && avail >= cmsg_len::<libc::in_pktinfo>()
        {
            // SAFETY: the in_pktinfo payload lies inside `ctrl` (checked above); read_unaligned
            // makes no alignment assumption; any bit pattern is a valid in_pktinfo.
            let info: libc::in_pktinfo = unsafe { ptr::read_unaligned(data.cast()) };
            // `ipi_spec_dst` is the local address the packet belongs to: the destination for
            // unicast, the interface's address for broadcast (a reply must not be sourced
            // from a broadcast address).
            return Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                info.ipi_spec_dst.s_addr,
            ))));
        }
        if c.cmsg_level == libc::IPPROTO_IPV6
            && c.cmsg_type == libc::IPV6_PKTINFO
            && avail >= cmsg_len::<libc::in6_pktinfo>()
        {
            // SAFETY: as above, for in6_pktinfo.
            let info: libc::in6_pktinfo = unsafe { ptr::read_unaligned(data.cast()) };
            return Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
        }
        // SAFETY: `hdr` describes `ctrl` and `cmsg` is a valid header inside it (see above);
        // CMSG_NXTHDR returns null when no further complete header fits.
        cmsg = unsafe { libc::CMSG_NXTHDR(hdr, cmsg) };
    }
    None
}

/// Which packet-info control message to attach for a (destination, source) pair.
enum SrcInfo {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

fn src_info_for(dst: &SocketAddr, src: IpAddr) -> Result<Option<SrcInfo>, ()> {
    if src.is_unspecified() {
        return Ok(None);
    }
    Ok(Some(match (dst, src) {
        (SocketAddr::V4(_), IpAddr::V4(a)) => SrcInfo::V4(a),
        (SocketAddr::V4(_), IpAddr::V6(a)) => match a.to_ipv4_mapped() {
            Some(v4) => SrcInfo::V4(v4),
            // An IPV6_PKTINFO cmsg would be silently ignored on an IPv4 socket and the datagram
            // would leave from the wrong address; refuse instead.
            None => return Err(()),
        },
        (SocketAddr::V6(_), IpAddr::V4(a)) => SrcInfo::V6(a.to_ipv6_mapped()),
        (SocketAddr::V6(_), IpAddr::V6(a)) => SrcInfo::V6(a),
    }))
}

/// Write one packet-info cmsg into `buf`; returns the control length to pass to `sendmsg`.
fn write_src_cmsg(info: &SrcInfo, buf: &mut CmsgBuf) -> usize {
    let (level, kind, data_len, space) = match info {
        SrcInfo::V4(_) => (
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            cmsg_len::<libc::in_pktinfo>(),
            cmsg_space::<libc::in_pktinfo>(),
        ),
        SrcInfo::V6(_) => (
            libc::IPPROTO_IPV6,
            libc::IPV6_PKTINFO,
            cmsg_len::<libc::in6_pktinfo>(),
            cmsg_space::<libc::in6_pktinfo>(),
        ),
    };
    let mut msg = zeroed_mmsghdr().msg_hdr;
    msg.msg_control = buf.0.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` describes `buf`, which is CMSG_BUF_LEN >= `space` bytes (checked at compile
    // time) and aligned for cmsghdr, so CMSG_FIRSTHDR returns `buf`'s start (non-null). Writing
    // the header fields goes through that aligned pointer; the payload is written unaligned at
    // CMSG_DATA, which ends at CMSG_LEN <= CMSG_SPACE <= CMSG_BUF_LEN bytes into `buf`.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return 0;
        }
        (*cmsg).cmsg_len = data_len as _;
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = kind;
        let data = libc::CMSG_DATA(cmsg);
        match info {
            SrcInfo::V4(ip) => ptr::write_unaligned(
                data.cast::<libc::in_pktinfo>(),
                libc::in_pktinfo {
                    // 0: let the routing table pick the interface for `ipi_spec_dst`.
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(*ip).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                },
            ),
            SrcInfo::V6(ip) => ptr::write_unaligned(
                data.cast::<libc::in6_pktinfo>(),
                libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: ip.octets(),
                    },
                    ipi6_ifindex: 0,
                },
            ),
        }
    }
    space
}

// ---------------------------------------------------------------------------------------------
// Receive
// ---------------------------------------------------------------------------------------------

/// Metadata of one received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// Number of payload bytes stored in the buffer (at most the batch's `buf_size`).
    pub len: usize,
    /// Sender address. (`0.0.0.0:0` if the kernel reported an address family other than
    /// IPv4/IPv6, which does not happen for UDP sockets.)
    pub src: SocketAddr,
    /// Local address the datagram was sent to, from `IP_PKTINFO` / `IPV6_PKTINFO`; `None` if
    /// packet-info reception is not enabled on the socket (see [`bind_udp`]).
    pub dst_ip: Option<IpAddr>,
    /// The datagram was larger than the buffer and has been cut to `len` bytes (`MSG_TRUNC`).
    pub truncated: bool,
}

impl RecvMeta {
    const EMPTY: RecvMeta = RecvMeta {
        len: 0,
        src: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
        dst_ip: None,
        truncated: false,
    };
}

/// The `mmsghdr`/`iovec` arrays handed to `recvmmsg`. They hold raw pointers into the other
/// buffers of the same [`RecvBatch`]; the pointers are rewritten before every call.
struct RawRecvHdrs {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
}

// SAFETY: the raw pointers stored here only ever point into heap buffers owned by the same
// `RecvBatch`; they are overwritten at the start of every `recv_batch` call (which holds
// `&mut RecvBatch`) and only dereferenced (by the kernel) during that call. Moving the batch to
// another thread or sharing `&RecvBatch` never touches them.
unsafe impl Send for RawRecvHdrs {}
// SAFETY: see above; `&RawRecvHdrs` gives no way to dereference the pointers.
unsafe impl Sync for RawRecvHdrs {}

/// Pre-allocated buffers for receiving up to `capacity()` datagrams of up to `buf_size()` bytes
/// each with one [`recv_batch`] call. All memory is allocated in [`RecvBatch::new`].
pub struct RecvBatch {
    buf_size: usize,
    bufs: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    ctrls: Vec<CmsgBuf>,
    metas: Vec<RecvMeta>,
    raw: RawRecvHdrs,
    filled: usize,
}

impl RecvBatch {
    /// Allocate buffers for `batch` datagrams (clamped to `1..=`[`MAX_BATCH`]) of `buf_size`
    /// bytes each (clamped to [`MAX_BUF_SIZE`]). Datagrams longer than `buf_size` are truncated
    /// and flagged with [`RecvMeta::truncated`].
    pub fn new(batch: usize, buf_size: usize) -> Self {
        let batch = batch.clamp(1, MAX_BATCH);
        let buf_size = buf_size.min(MAX_BUF_SIZE);
        RecvBatch {
            buf_size,
            bufs: vec![0; batch * buf_size],
            names: vec![zeroed_storage(); batch],
            ctrls: vec![CmsgBuf::ZERO; batch],
            metas: vec![RecvMeta::EMPTY; batch],
            raw: RawRecvHdrs {
                hdrs: vec![zeroed_mmsghdr(); batch],
                iovs: vec![
                    libc::iovec {
                        iov_base: ptr::null_mut(),
                        iov_len: 0,
                    };
                    batch
                ],
            },
            filled: 0,
        }
    }

    /// Maximum number of datagrams one [`recv_batch`] call can return.
    pub fn capacity(&self) -> usize {
        self.metas.len()
    }

    /// Size of each datagram buffer.
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// Number of datagrams received by the last [`recv_batch`] call (0 after an error).
    pub fn len(&self) -> usize {
        self.filled
    }

    /// True if the last [`recv_batch`] call received nothing.
    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// The `i`-th datagram received by the last [`recv_batch`] call, or `None` if `i >= len()`.
    pub fn get(&self, i: usize) -> Option<(&RecvMeta, &[u8])> {
        if i >= self.filled {
            return None;
        }
        let meta = self.metas.get(i)?;
        let start = i * self.buf_size;
        let data = self.bufs.get(start..start + meta.len)?;
        Some((meta, data))
    }

    /// Iterate over the datagrams received by the last [`recv_batch`] call.
    pub fn iter(&self) -> impl Iterator<Item = (&RecvMeta, &[u8])> + '_ {
        (0..self.filled).filter_map(move |i| self.get(i))
    }
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("capacity", &self.capacity())
            .field("buf_size", &self.buf_size)
            .field("len", &self.filled)
            .finish()
    }
}

/// Receive up to `batch.capacity()` datagrams with one non-blocking `recvmmsg` call
/// (`MSG_DONTWAIT`, retried on `EINTR`).
///
/// Returns the number of datagrams received (`>= 1`), readable through [`RecvBatch::get`] /
/// [`RecvBatch::iter`] until the next call. Returns an error of kind
/// [`io::ErrorKind::WouldBlock`] if no datagram is queued, which makes it suitable for
/// `tokio::net::UdpSocket::try_io(Interest::READABLE, ..)`.
pub fn recv_batch(sock: &impl AsFd, batch: &mut RecvBatch) -> io::Result<usize> {
    recv_batch_with(sock, batch, libc::MSG_DONTWAIT)
}

/// Like [`recv_batch`], but for a blocking socket: waits until at least one datagram is queued
/// (`MSG_WAITFORONE`), then takes whatever else is already there, up to the batch capacity.
/// With a receive timeout set on the socket (`SO_RCVTIMEO`), returns
/// [`io::ErrorKind::WouldBlock`] when it expires, so a worker thread can look at a shutdown flag.
pub fn recv_batch_wait(sock: &impl AsFd, batch: &mut RecvBatch) -> io::Result<usize> {
    recv_batch_with(sock, batch, libc::MSG_WAITFORONE)
}

fn recv_batch_with(sock: &impl AsFd, batch: &mut RecvBatch, flags: c_int) -> io::Result<usize> {
    batch.filled = 0;
    let cap = batch.capacity();
    let buf_size = batch.buf_size;

    // (Re)build the headers. Pointers are derived once per buffer so they stay valid together.
    let bufs_ptr = batch.bufs.as_mut_ptr();
    for (i, iov) in batch.raw.iovs.iter_mut().enumerate() {
        *iov = libc::iovec {
            iov_base: bufs_ptr.wrapping_add(i * buf_size).cast(),
            iov_len: buf_size,
        };
    }
    let iovs_ptr = batch.raw.iovs.as_mut_ptr();
    let names_ptr = batch.names.as_mut_ptr();
    let ctrls_ptr = batch.ctrls.as_mut_ptr();
    for (i, h) in batch.raw.hdrs.iter_mut().enumerate() {
        *h = zeroed_mmsghdr();
        h.msg_hdr.msg_name = names_ptr.wrapping_add(i).cast();
        h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as socklen_t;
        h.msg_hdr.msg_iov = iovs_ptr.wrapping_add(i);
        h.msg_hdr.msg_iovlen = 1;
        h.msg_hdr.msg_control = ctrls_ptr.wrapping_add(i).cast();
        h.msg_hdr.msg_controllen = CMSG_BUF_LEN as _;
    }

    let fd = sock.as_fd().as_raw_fd();
    let n = loop {
        // SAFETY: `fd` is an open descriptor borrowed for the call. `hdrs` holds `cap` entries;
        // entry i points to names[i] (sockaddr_storage, namelen = its size), iovs[i] (one iovec
        // covering bytes [i*buf_size, (i+1)*buf_size) of `bufs`, which has cap*buf_size bytes)
        // and ctrls[i] (CMSG_BUF_LEN bytes). All are live, exclusively borrowed through
        // `&mut batch` and not otherwise accessed until the call returns. Timeout is null.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                batch.raw.hdrs.as_mut_ptr(),
                cap as c_uint,
                flags as _,
                ptr::null_mut(),
            )
        };
        if rc >= 0 {
            break rc as usize;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    if n == 0 {
        // Not expected for UDP; report it as "nothing to read" so callers never spin on Ok(0).
        return Err(io::ErrorKind::WouldBlock.into());
    }
    let n = n.min(cap);

    for i in 0..n {
        let (Some(h), Some(name), Some(ctrl)) = (
            batch.raw.hdrs.get(i),
            batch.names.get(i),
            batch.ctrls.get(i),
        ) else {
            break;
        };
        let meta = RecvMeta {
            len: (h.msg_len as usize).min(buf_size),
            src: raw_to_std(name, h.msg_hdr.msg_namelen).unwrap_or(RecvMeta::EMPTY.src),
            dst_ip: parse_pktinfo(&h.msg_hdr, ctrl),
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        };
        if let Some(slot) = batch.metas.get_mut(i) {
            *slot = meta;
        }
    }
    batch.filled = n;
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// Send
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct SendEntry {
    len: usize,
    addr: RawSockAddr,
    addr_len: socklen_t,
    ctrl: CmsgBuf,
    ctrl_len: usize,
}

/// Outgoing datagrams for one [`send_batch`] call: up to `capacity()` datagrams of up to
/// `buf_size()` bytes each, stored in one contiguous buffer allocated in [`SendBatch::new`].
pub struct SendBatch {
    buf_size: usize,
    cap: usize,
    buf: Vec<u8>,
    entries: Vec<SendEntry>,
}

impl SendBatch {
    /// Allocate room for `batch` datagrams (clamped to `1..=`[`MAX_BATCH`]) of up to `buf_size`
    /// bytes each (clamped to [`MAX_BUF_SIZE`]).
    pub fn new(batch: usize, buf_size: usize) -> Self {
        let cap = batch.clamp(1, MAX_BATCH);
        let buf_size = buf_size.min(MAX_BUF_SIZE);
        SendBatch {
            buf_size,
            cap,
            buf: vec![0; cap * buf_size],
            entries: Vec::with_capacity(cap),
        }
    }

    /// Maximum number of datagrams the batch can hold.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Maximum payload size of one datagram.
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// Number of queued datagrams.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if no datagram is queued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True if no further datagram can be pushed.
    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.cap
    }

    /// Remove all queued datagrams (keeps the allocation).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Queue a copy of `payload` for `dst`. See [`SendBatch::push_with`] for `src_ip` and the
    /// return value.
    pub fn push(&mut self, dst: SocketAddr, src_ip: Option<IpAddr>, payload: &[u8]) -> bool {
        self.push_with(dst, src_ip, |slot| {
            let out = slot.get_mut(..payload.len())?;
            out.copy_from_slice(payload);
            Some(payload.len())
        })
    }

    /// Queue a datagram for `dst` whose payload is written in place by `write`.
    ///
    /// `write` receives the whole `buf_size()`-byte slot and returns the number of bytes written,
    /// or `None` to abandon the datagram. `src_ip`, if given (and not unspecified), is attached
    /// as an `IP_PKTINFO` (`ipi_spec_dst`, interface 0) or `IPV6_PKTINFO` control message so the
    /// datagram leaves from that local address even on a wildcard-bound socket. IPv4 and
    /// IPv4-mapped IPv6 forms are converted to match `dst`'s family.
    ///
    /// Returns false, without queuing anything, if the batch is full, `write` returned `None`
    /// or a length larger than the slot, or `src_ip` is a (non-mapped) IPv6 address for an IPv4
    /// destination. `write` is not called if the batch is full or the addresses are invalid.
    pub fn push_with<F>(&mut self, dst: SocketAddr, src_ip: Option<IpAddr>, write: F) -> bool
    where
        F: FnOnce(&mut [u8]) -> Option<usize>,
    {
        if self.is_full() {
            return false;
        }
        let mut ctrl = CmsgBuf::ZERO;
        let ctrl_len = match src_ip.map(|ip| src_info_for(&dst, ip)) {
            None | Some(Ok(None)) => 0,
            Some(Ok(Some(info))) => write_src_cmsg(&info, &mut ctrl),
            Some(Err(())) => return false,
        };
        let (addr, addr_len) = std_to_raw(&dst);
        let start = self.entries.len() * self.buf_size;
        let Some(slot) = self.buf.get_mut(start..start + self.buf_size) else {
            return false;
        };
        let Some(len) = write(slot) else {
            return false;
        };
        if len > self.buf_size {
            return false;
        }
        self.entries.push(SendEntry {
            len,
            addr,
            addr_len,
            ctrl,
            ctrl_len,
        });
        true
    }

    /// Payload of the `i`-th queued datagram.
    pub fn payload(&self, i: usize) -> Option<&[u8]> {
        let e = self.entries.get(i)?;
        let start = i * self.buf_size;
        self.buf.get(start..start + e.len)
    }
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("capacity", &self.cap)
            .field("buf_size", &self.buf_size)
            .field("len", &self.entries.len())
            .finish()
    }
}

/// Outcome of a [`send_batch`] call.
#[derive(Debug)]
pub struct SendProgress {
    /// Index of the first datagram not yet handled; pass it as `start` to the next call.
    /// Equals `batch.len()` when the whole batch has been handled.
    pub next: usize,
    /// Datagrams accepted by the kernel in this call.
    pub sent: usize,
    /// Datagrams skipped in this call because the kernel rejected them (unreachable or invalid
    /// destination, bad source address, message too large, ...).
    pub failed: usize,
    /// The error of the last skipped datagram, if any.
    pub last_error: Option<io::Error>,
    total: usize,
}

impl SendProgress {
    /// True if every datagram from `start` to the end of the batch has been sent or skipped.
    pub fn is_complete(&self) -> bool {
        self.next >= self.total
    }
}

/// Errors that concern the socket rather than one datagram: stop instead of skipping.
fn is_socket_error(errno: c_int) -> bool {
    matches!(errno, libc::EBADF | libc::ENOTSOCK | libc::EFAULT)
}

/// Send the datagrams `batch[start..]` with `sendmmsg` (`MSG_DONTWAIT`), looping over partial
/// sends and retrying on `EINTR`.
///
/// * A datagram the kernel rejects (`EHOSTUNREACH`, `ENETUNREACH`, `EINVAL`, `EAFNOSUPPORT`,
///   `EMSGSIZE`, `EPERM`, `ENOBUFS`, ...) is skipped and counted in [`SendProgress::failed`];
///   the rest of the batch still goes out. A pending asynchronous `ECONNREFUSED` (ICMP) is
///   retried once for the same datagram before it counts as a failure.
/// * If the socket buffer fills up (`EAGAIN`) after some progress, returns `Ok` with
///   [`SendProgress::next`] pointing at the first unsent datagram; if no progress was made at
///   all, returns an error of kind [`io::ErrorKind::WouldBlock`] (so
///   `tokio::net::UdpSocket::try_io(Interest::WRITABLE, ..)` clears readiness and the caller can
///   await writability and call again with `start = next`).
/// * `EBADF`, `ENOTSOCK` and `EFAULT` are returned as errors.
///
/// `start >= batch.len()` is a no-op returning a complete progress.
pub fn send_batch(sock: &impl AsFd, batch: &SendBatch, start: usize) -> io::Result<SendProgress> {
    send_batch_with(sock, batch, start, libc::MSG_DONTWAIT)
}

/// Like [`send_batch`], but for a blocking socket: waits for room in the socket buffer (up to
/// the socket's `SO_SNDTIMEO`, after which it behaves like [`send_batch`] on a full buffer).
pub fn send_batch_wait(
    sock: &impl AsFd,
    batch: &SendBatch,
    start: usize,
) -> io::Result<SendProgress> {
    send_batch_with(sock, batch, start, 0)
}

fn send_batch_with(
    sock: &impl AsFd,
    batch: &SendBatch,
    start: usize,
    flags: c_int,
) -> io::Result<SendProgress> {
    let total = batch.entries.len();
    let mut progress = SendProgress {
        next: start.min(total),
        sent: 0,
        failed: 0,
        last_error: None,
        total,
    };
    let fd = sock.as_fd().as_raw_fd();
    let mut hdrs = [zeroed_mmsghdr(); SEND_CHUNK];
    let mut iovs = [libc::iovec {
        iov_base: ptr::null_mut(),
        iov_len: 0,
    }; SEND_CHUNK];
    let mut retried_refused: Option<usize> = None;

    while progress.next < total {
        let first = progress.next;
        let chunk = batch
            .entries
            .get(first..total.min(first + SEND_CHUNK))
            .unwrap_or_default();
        let n = chunk.len();
        for ((j, e), iov) in chunk.iter().enumerate().zip(iovs.iter_mut()) {
            let start = (first + j) * batch.buf_size;
            let payload = batch.buf.get(start..start + e.len).unwrap_or_default();
            *iov = libc::iovec {
                // The kernel only reads through this pointer (sendmmsg).
                iov_base: payload.as_ptr().cast_mut().cast(),
                iov_len: payload.len(),
            };
        }
        let iovs_ptr = iovs.as_mut_ptr();
        for ((j, e), h) in chunk.iter().enumerate().zip(hdrs.iter_mut()) {
            *h = zeroed_mmsghdr();
            h.msg_hdr.msg_name = (&e.addr as *const RawSockAddr).cast_mut().cast();
            h.msg_hdr.msg_namelen = e.addr_len;
            h.msg_hdr.msg_iov = iovs_ptr.wrapping_add(j);
            h.msg_hdr.msg_iovlen = 1;
            if e.ctrl_len > 0 {
                h.msg_hdr.msg_control = e.ctrl.0.as_ptr().cast_mut().cast();
                h.msg_hdr.msg_controllen = e.ctrl_len as _;
            }
        }

        // SAFETY: `fd` is an open descriptor borrowed for the call. The first `n` (<= SEND_CHUNK)
        // entries of `hdrs` are initialised and point to: the entry's RawSockAddr (namelen = size
        // of the matching sockaddr variant), iovs[j] (covering an in-bounds slice of `batch.buf`)
        // and, if ctrl_len > 0, the entry's CmsgBuf (ctrl_len <= CMSG_BUF_LEN). `batch` is
        // borrowed for the whole call, so all of it stays alive and unmodified; sendmmsg only
        // reads through these pointers (the const-to-mut casts are never written through) and
        // writes only `hdrs[..n].msg_len`.
        let rc = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as c_uint, flags as _) };
        if rc > 0 {
            let k = (rc as usize).min(n);
            progress.next += k;
            progress.sent += k;
            continue;
        }
        let err = if rc == 0 {
            // Not expected with n > 0; treat like a full socket buffer so we never spin.
            io::Error::from(io::ErrorKind::WouldBlock)
        } else {
            io::Error::last_os_error()
        };
        let errno = err.raw_os_error().unwrap_or(0);
        if err.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if err.kind() == io::ErrorKind::WouldBlock {
            if progress.sent == 0 && progress.failed == 0 {
                return Err(err);
            }
            return Ok(progress);
        }
        if is_socket_error(errno) {
            return Err(err);
        }
        if errno == libc::ECONNREFUSED && retried_refused != Some(first) {
            // Most likely a pending ICMP error reported (and cleared) on this send; the datagram
            // itself was not the cause. Retry it once.
            retried_refused = Some(first);
            continue;
        }
        tracing::trace!(index = first, error = %err, "udp_batch: skipping datagram");
        progress.failed += 1;
        progress.last_error = Some(err);
        progress.next += 1;
    }
    Ok(progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Duration;
    use tokio::io::Interest;

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn sa(a: &str) -> SocketAddr {
        a.parse().unwrap()
    }

    fn client(addr: &str) -> UdpSocket {
        let c = UdpSocket::bind(addr).unwrap();
        c.set_read_timeout(Some(TIMEOUT)).unwrap();
        c
    }

    fn recv_from(c: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        let mut buf = [0u8; 70_000];
        let (n, from) = c.recv_from(&mut buf).expect("client receive timed out");
        (buf[..n].to_vec(), from)
    }

    /// Receive exactly `want` datagrams on `sock` (awaiting readability; bounded by TIMEOUT).
    async fn recv_n(
        sock: &tokio::net::UdpSocket,
        batch: &mut RecvBatch,
        want: usize,
    ) -> Vec<(RecvMeta, Vec<u8>)> {
        let fut = async {
            let mut out = Vec::new();
            while out.len() < want {
                sock.readable().await.unwrap();
                match sock.try_io(Interest::READABLE, || recv_batch(sock, batch)) {
                    Ok(n) => {
                        assert_eq!(n, batch.len());
                        out.extend(batch.iter().map(|(m, d)| (*m, d.to_vec())));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("recv_batch: {e}"),
                }
            }
            out
        };
        tokio::time::timeout(TIMEOUT, fut)
            .await
            .expect("server receive timed out")
    }

    async fn send_all(sock: &tokio::net::UdpSocket, batch: &SendBatch) -> (usize, usize) {
        let (mut sent, mut failed, mut start) = (0, 0, 0);
        while start < batch.len() {
            sock.writable().await.unwrap();
            match sock.try_io(Interest::WRITABLE, || send_batch(sock, batch, start)) {
                Ok(p) => {
                    sent += p.sent;
                    failed += p.failed;
                    start = p.next;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("send_batch: {e}"),
            }
        }
        (sent, failed)
    }

    fn payload(i: usize) -> Vec<u8> {
        let len = (i * 97) % 1400;
        (0..len).map(|b| (b as u8) ^ (i as u8)).collect()
    }

    #[test]
    fn batches_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<RecvBatch>();
        check::<SendBatch>();
    }

    async fn round_trip(server_addr: &str, client_addr: &str) {
        let server =
            tokio::net::UdpSocket::from_std(bind_udp(sa(server_addr), false).unwrap()).unwrap();
        let saddr = server.local_addr().unwrap();
        let c = client(client_addr);
        let caddr = c.local_addr().unwrap();
        const N: usize = 40;
        for i in 0..N {
            c.send_to(&payload(i), saddr).unwrap();
        }
        // Capacity smaller than N exercises several recvmmsg calls.
        let mut rb = RecvBatch::new(16, 2048);
        let got = recv_n(&server, &mut rb, N).await;
        assert_eq!(got.len(), N);
        let mut sb = SendBatch::new(64, 2048);
        for (i, (meta, data)) in got.iter().enumerate() {
            assert_eq!(meta.src, caddr);
            assert_eq!(meta.len, payload(i).len());
            assert_eq!(data, &payload(i));
            assert!(!meta.truncated);
            // A socket bound to a specific IP gets no packet info (it knows its address).
            assert_eq!(meta.dst_ip, None);
            // Echo back, with the reversed index so we can check order and content.
            assert!(sb.push(meta.src, meta.dst_ip, &payload(N - 1 - i)));
        }
        assert_eq!(send_all(&server, &sb).await, (N, 0));
        for i in 0..N {
            let (data, from) = recv_from(&c);
            assert_eq!(from, saddr);
            assert_eq!(data, payload(N - 1 - i));
        }
    }

    #[tokio::test]
    async fn round_trip_v4() {
        round_trip("127.0.0.1:0", "127.0.0.1:0").await;
    }

    #[tokio::test]
    async fn round_trip_v6() {
        round_trip("[::1]:0", "[::1]:0").await;
    }

    #[tokio::test]
    async fn wildcard_v4_reports_dst_and_replies_from_it() {
        let server =
            tokio::net::UdpSocket::from_std(bind_udp(sa("0.0.0.0:0"), false).unwrap()).unwrap();
        let port = server.local_addr().unwrap().port();
        let c = client("127.0.0.1:0");
        let caddr = c.local_addr().unwrap();
        c.send_to(b"to-2", (Ipv4Addr::new(127, 0, 0, 2), port))
            .unwrap();
        c.send_to(b"to-1", (Ipv4Addr::new(127, 0, 0, 1), port))
            .unwrap();

        let mut rb = RecvBatch::new(8, 1500);
        let got = recv_n(&server, &mut rb, 2).await;
        let mut sb = SendBatch::new(8, 1500);
        for (meta, data) in &got {
            assert_eq!(meta.src, caddr);
            let want: IpAddr = match data.as_slice() {
                b"to-2" => Ipv4Addr::new(127, 0, 0, 2).into(),
                b"to-1" => Ipv4Addr::new(127, 0, 0, 1).into(),
                other => panic!("unexpected payload {other:?}"),
            };
            assert_eq!(meta.dst_ip, Some(want));
            let mut reply = b"re:".to_vec();
            reply.extend_from_slice(data);
            assert!(sb.push(meta.src, meta.dst_ip, &reply));
        }
        assert_eq!(send_all(&server, &sb).await, (2, 0));
        for _ in 0..2 {
            let (data, from) = recv_from(&c);
            let want = match data.as_slice() {
                b"re:to-2" => Ipv4Addr::new(127, 0, 0, 2),
                b"re:to-1" => Ipv4Addr::new(127, 0, 0, 1),
                other => panic!("unexpected reply {other:?}"),
            };
            assert_eq!(from, SocketAddr::from((want, port)));
        }

        // Explicit source selection, independent of what was received; an IPv4-mapped IPv6
        // source is accepted for an IPv4 destination.
        let mut sb = SendBatch::new(2, 64);
        assert!(sb.push(caddr, Some(Ipv4Addr::new(127, 0, 0, 2).into()), b"a"));
        assert!(sb.push(
            caddr,
            Some(Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().into()),
            b"b"
        ));
        assert_eq!(send_all(&server, &sb).await, (2, 0));
        assert_eq!(
            recv_from(&c),
            (b"a".to_vec(), sa(&format!("127.0.0.2:{port}")))
        );
        assert_eq!(
            recv_from(&c),
            (b"b".to_vec(), sa(&format!("127.0.0.1:{port}")))
        );
    }

    #[tokio::test]
    async fn wildcard_v6_reports_dst_and_replies_from_it() {
        let server =
            tokio::net::UdpSocket::from_std(bind_udp(sa("[::]:0"), false).unwrap()).unwrap();
        let port = server.local_addr().unwrap().port();
        let c = client("[::1]:0");
        let caddr = c.local_addr().unwrap();
        c.send_to(b"hello", (Ipv6Addr::LOCALHOST, port)).unwrap();
        let mut rb = RecvBatch::new(4, 1500);
        let got = recv_n(&server, &mut rb, 1).await;
        let (meta, data) = &got[0];
        assert_eq!(data, b"hello");
        assert_eq!(meta.src, caddr);
        assert_eq!(meta.dst_ip, Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        let mut sb = SendBatch::new(4, 1500);
        assert!(sb.push(meta.src, meta.dst_ip, b"reply"));
        assert_eq!(send_all(&server, &sb).await, (1, 0));
        assert_eq!(
            recv_from(&c),
            (
                b"reply".to_vec(),
                SocketAddr::from((Ipv6Addr::LOCALHOST, port))
            )
        );
        // A non-mapped IPv6 source for an IPv4 destination is refused rather than ignored.
        assert!(!sb.push(sa("127.0.0.1:9"), Some(Ipv6Addr::LOCALHOST.into()), b"x"));
    }

    #[tokio::test]
    async fn truncation_is_flagged() {
        let server =
            tokio::net::UdpSocket::from_std(bind_udp(sa("127.0.0.1:0"), false).unwrap()).unwrap();
        let c = client("127.0.0.1:0");
        let big: Vec<u8> = (0..300u32).map(|b| b as u8).collect();
        c.send_to(&big, server.local_addr().unwrap()).unwrap();
        c.send_to(&big[..50], server.local_addr().unwrap()).unwrap();
        c.send_to(&big[..100], server.local_addr().unwrap())
            .unwrap();
        let mut rb = RecvBatch::new(4, 100);
        let got = recv_n(&server, &mut rb, 3).await;
        assert_eq!(got[0].0.len, 100);
        assert!(got[0].0.truncated);
        assert_eq!(got[0].1, &big[..100]);
        assert_eq!(got[1].0.len, 50);
        assert!(!got[1].0.truncated);
        assert_eq!(got[2].0.len, 100);
        assert!(!got[2].0.truncated);
    }

    #[test]
    fn reuse_port_allows_shared_bind() {
        let a = bind_udp(sa("127.0.0.1:0"), true).unwrap();
        let addr = a.local_addr().unwrap();
        let b = bind_udp(addr, true).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
        let err = bind_udp(addr, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);

        let a6 = bind_udp(sa("[::1]:0"), true).unwrap();
        let addr6 = a6.local_addr().unwrap();
        bind_udp(addr6, true).unwrap();
    }

    #[test]
    fn empty_socket_would_block() {
        let s = bind_udp(sa("127.0.0.1:0"), false).unwrap();
        let mut rb = RecvBatch::new(8, 1500);
        let err = recv_batch(&s, &mut rb).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(rb.is_empty());
        assert!(rb.get(0).is_none());
        assert!(rb.get(usize::MAX).is_none());
    }

    #[test]
    fn send_batch_full_and_clear() {
        let dst = sa("127.0.0.1:9");
        let mut sb = SendBatch::new(3, 10);
        assert!(sb.is_empty());
        assert!(
            !sb.push(dst, None, &[0; 11]),
            "payload larger than buf_size"
        );
        assert!(!sb.push_with(dst, None, |_| None), "writer abandoned");
        assert!(
            !sb.push_with(dst, None, |_| Some(11)),
            "writer over-reported"
        );
        assert!(sb.is_empty());
        assert!(sb.push(dst, None, b"0123456789"));
        assert!(sb.push_with(dst, None, |slot| {
            slot[..2].copy_from_slice(b"hi");
            Some(2)
        }));
        assert!(sb.push(dst, None, b""));
        assert!(sb.is_full());
        assert_eq!(sb.len(), 3);
        assert!(!sb.push(dst, None, b"x"));
        assert!(!sb.push_with(dst, None, |_| unreachable!("not called when full")));
        assert_eq!(sb.payload(1), Some(&b"hi"[..]));
        assert_eq!(sb.payload(2), Some(&b""[..]));
        assert_eq!(sb.payload(3), None);
        sb.clear();
        assert!(sb.is_empty() && !sb.is_full());
        assert!(sb.push(dst, None, b"again"));
        assert_eq!(sb.payload(0), Some(&b"again"[..]));

        // Degenerate sizes are clamped, never panic.
        let mut zero = SendBatch::new(0, 0);
        assert_eq!(zero.capacity(), 1);
        assert!(zero.push(dst, None, b""));
        assert!(!zero.push(dst, None, b""));
        let huge = RecvBatch::new(usize::MAX, usize::MAX);
        assert_eq!(
            (huge.capacity(), huge.buf_size()),
            (MAX_BATCH, MAX_BUF_SIZE)
        );
    }

    #[tokio::test]
    async fn bad_destinations_are_skipped() {
        let server =
            tokio::net::UdpSocket::from_std(bind_udp(sa("127.0.0.1:0"), false).unwrap()).unwrap();
        let c = client("127.0.0.1:0");
        let caddr = c.local_addr().unwrap();
        let v6_dst: SocketAddr = "[::1]:9".parse().unwrap();
        let port0 = sa("127.0.0.1:0");
        let mut sb = SendBatch::new(8, 100);
        assert!(sb.push(v6_dst, None, b"bad0")); // IPv6 destination on an IPv4 socket
        assert!(sb.push(caddr, None, b"good1"));
        assert!(sb.push(port0, None, b"bad2")); // port 0
        assert!(sb.push(caddr, None, b"good3"));
        assert!(sb.push(caddr, Some(Ipv4Addr::new(127, 0, 0, 2).into()), b"good4"));
        assert!(sb.push(port0, None, b"bad5"));

        let p = send_batch(&server, &sb, 0).unwrap();
        assert!(p.is_complete());
        assert_eq!((p.next, p.sent, p.failed), (6, 3, 3));
        assert!(p.last_error.is_some());
        for want in [&b"good1"[..], b"good3", b"good4"] {
            assert_eq!(recv_from(&c).0, want);
        }

        // Resume from an index; out-of-range start is a no-op.
        let p = send_batch(&server, &sb, 3).unwrap();
        assert_eq!((p.next, p.sent, p.failed), (6, 2, 1));
        assert_eq!(recv_from(&c).0, b"good3");
        assert_eq!(recv_from(&c).0, b"good4");
        let p = send_batch(&server, &sb, 100).unwrap();
        assert!(p.is_complete());
        assert_eq!((p.next, p.sent, p.failed), (6, 0, 0));
    }

    #[test]
    fn large_batch_spans_several_send_chunks() {
        let server = bind_udp(sa("127.0.0.1:0"), false).unwrap();
        let c = client("127.0.0.1:0");
        let caddr = c.local_addr().unwrap();
        let n = SEND_CHUNK * 2 + 5;
        let mut sb = SendBatch::new(n, 16);
        for i in 0..n {
            assert!(sb.push(caddr, None, &(i as u32).to_be_bytes()));
        }
        let p = send_batch(&server, &sb, 0).unwrap();
        assert_eq!((p.next, p.sent, p.failed), (n, n, 0));
        for i in 0..n {
            assert_eq!(recv_from(&c).0, (i as u32).to_be_bytes());
        }
    }
}
