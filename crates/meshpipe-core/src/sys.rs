//! Raw Linux system calls, each behind a safe function: the one module of
//! the engine allowed to write `unsafe`.
//!
//! Everything else in the crate is `#![deny(unsafe_code)]` and calls these
//! wrappers, so the code a reviewer must check by hand for memory safety is
//! this file alone. Each wrapper takes borrowed descriptors or buffers whose
//! validity the type system already proves (`BorrowedFd`, `&mut [u8]`,
//! `&mut Vec<u8>`), does one call, and turns `-1` into `io::Error`. They do
//! not retry, block or allocate, so callers keep full control of readiness
//! (tokio) and of error handling.
//!
//! Calls std, tokio and socket2 cannot make: `recv` into a caller's buffer
//! with flags and without tokio's readiness, `accept4` with `SOCK_NONBLOCK |
//! SOCK_CLOEXEC` in one call, `splice(2)` and `pipe2`, `F_SETPIPE_SZ`,
//! `SIOCATMARK`, `SO_ORIGINAL_DST`, a zero-timeout `poll`, `RLIMIT_NOFILE`,
//! the interfaces' addresses (`getifaddrs`), `shutdown(2)` by descriptor
//! number (for the idle sweep), registering a listener's descriptor with
//! tokio, and for `meshpipe run`: spawning with a parent-death signal (code
//! between `fork` and `exec`), looking at an exited child without reaping it
//! (`waitid(WNOWAIT)`) and reaping one child (`waitpid`); and memory of its
//! own mapping ([`MappedBuf`]), which is given back to the kernel when freed.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::net::IpAddr;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `SO_ORIGINAL_DST` (linux/netfilter_ipv4.h) and `IP6T_SO_ORIGINAL_DST`
/// (linux/netfilter_ipv6/ip6_tables.h) share the value 80.
const SO_ORIGINAL_DST: libc::c_int = 80;

/// `SIOCATMARK`: the `libc` crate does not define it for Linux, and its value
/// differs by architecture. asm-generic/sockios.h gives 0x8905 (x86, arm,
/// aarch64, riscv, s390, loongarch); alpha, mips, powerpc and sparc define it
/// as `_IOR('s', 7, int)` in their own sockios.h.
#[cfg(any(
    target_arch = "x86",
    target_arch = "x86_64",
    target_arch = "arm",
    target_arch = "aarch64",
    target_arch = "riscv32",
    target_arch = "riscv64",
    target_arch = "s390x",
    target_arch = "loongarch64"
))]
const SIOCATMARK: Option<libc::c_ulong> = Some(0x8905);
#[cfg(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
))]
const SIOCATMARK: Option<libc::c_ulong> = Some(0x4004_7307);
#[cfg(not(any(
    target_arch = "x86",
    target_arch = "x86_64",
    target_arch = "arm",
    target_arch = "aarch64",
    target_arch = "riscv32",
    target_arch = "riscv64",
    target_arch = "s390x",
    target_arch = "loongarch64",
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
)))]
const SIOCATMARK: Option<libc::c_ulong> = None;

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn check_size(n: libc::ssize_t) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One `recv(2)` into `buf`.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` writable bytes, and recv writes
    // at most that many.
    check_size(unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) })
}

/// One `recv(2)` into the spare capacity of `buf`, which grows by the bytes
/// received (none are zero-filled first).
pub fn recv_spare(fd: BorrowedFd<'_>, buf: &mut Vec<u8>) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    // SAFETY: the spare capacity is valid for `spare.len()` writable bytes
    // and recv writes at most that many.
    let n = check_size(unsafe { libc::recv(fd.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), 0) })?;
    // SAFETY: recv initialised exactly `n <= spare.len()` bytes past the end.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Whether the next byte to read from a TCP socket is at the urgent mark
/// (`SIOCATMARK`). Always false where the constant is unknown.
pub fn at_urgent_mark(fd: BorrowedFd<'_>) -> bool {
    let Some(request) = SIOCATMARK else { return false };
    let mut at: libc::c_int = 0;
    // SAFETY: SIOCATMARK writes one int into `at`.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, &mut at) };
    rc == 0 && at != 0
}

/// How many bytes a TCP socket's receive queue holds (`FIONREAD`, alias
/// `SIOCINQ`, tcp(7)): read without copying any of them.
pub fn queued_bytes(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into `n`.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD as _, &mut n) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n.max(0) as usize)
    }
}

/// Whether the peer has shut down its side of a TCP connection (a FIN
/// received: `POLLRDHUP`, a zero-timeout `poll`), even with bytes still
/// queued before it.
pub fn peer_closed(fd: BorrowedFd<'_>) -> bool {
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Reads the TCP urgent byte (`MSG_OOB`), if it has arrived and not been read.
pub fn recv_urgent(fd: BorrowedFd<'_>) -> Option<u8> {
    let mut b = [0u8; 1];
    matches!(recv(fd, &mut b, libc::MSG_OOB), Ok(1)).then_some(b[0])
}

/// Whether a listening socket has a connection queued (a zero-timeout
/// `poll`; for a listening socket `POLLIN` means exactly that).
pub fn connection_queued(fd: BorrowedFd<'_>) -> bool {
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & libc::POLLIN != 0
}

/// One `accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)`: a non-blocking, close-on-exec
/// socket and its peer address.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    // SAFETY: accept4 writes at most `len` bytes of address into the storage
    // socket2 provides and returns a new descriptor (or -1).
    let (fd, addr) = unsafe {
        socket2::SockAddr::try_init(|storage, len| {
            check(libc::accept4(listener.as_raw_fd(), storage.cast(), len, libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC))
        })?
    };
    // SAFETY: `fd` is a fresh, connected socket owned by nobody else.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let peer =
        addr.as_socket().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "accepted a connection without an IP peer address"))?;
    Ok((stream, peer))
}

/// Registers a listening socket with the current tokio runtime, readable
/// interest only (the accept loop does its own `accept4`).
pub fn register_listener(listener: std::net::TcpListener) -> io::Result<tokio::io::unix::AsyncFd<std::net::TcpListener>> {
    // SAFETY: a std TcpListener owns its descriptor and returns the same one
    // from `as_raw_fd` until it is dropped, which the AsyncFd does last.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(listener, tokio::io::Interest::READABLE) }.map_err(|e| e.into_parts().1)
}

/// A non-blocking, close-on-exec pipe: `(read end, write end)`.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills both descriptors on success.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Asks for a pipe capacity of `size` bytes (`F_SETPIPE_SZ`); returns the
/// capacity granted, or `None` if the kernel refused.
pub fn set_pipe_size(fd: BorrowedFd<'_>, size: usize) -> Option<usize> {
    let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    // SAFETY: F_SETPIPE_SZ takes an int argument and touches no memory.
    let granted = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
    (granted > 0).then_some(granted as usize)
}

/// One non-blocking `splice(2)` of up to `len` bytes, at the descriptors'
/// own positions (sockets and pipes have no offsets).
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: null offsets are required for sockets and pipes; no memory is
    // passed.
    check_size(unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    })
}

/// A zeroed buffer in an anonymous private mapping of its own (`mmap`),
/// unmapped when dropped. Unlike a large block from malloc, its memory goes
/// back to the kernel the moment it is freed: glibc raises its mmap
/// threshold past a freed large block and serves later ones from the
/// thread's heap, which freeing does not shrink. The pages are populated
/// when it is made (`MAP_POPULATE`: one call instead of a fault per page
/// during the first `recv` into it).
pub struct MappedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone (no aliases), like a
// Box<[u8]>, so it may move to and be shared with other threads.
unsafe impl Send for MappedBuf {}
unsafe impl Sync for MappedBuf {}

impl MappedBuf {
    /// `len` bytes (rounded up to whole pages by the kernel); `len` must not be 0.
    pub fn new(len: usize) -> io::Result<MappedBuf> {
        if len == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: a fresh anonymous mapping touches no existing memory; the
        // result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(MappedBuf { ptr, len })
    }
}

impl std::ops::Deref for MappedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes (zeroed by the kernel,
        // so initialised), valid until drop, and only reachable through self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for MappedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for deref, and `&mut self` makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for MappedBuf {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `new` with this length and nothing
        // borrows it any more.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The destination a connection had before iptables REDIRECTed it
/// (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`). `ipv4` is the family of the
/// socket's local address.
pub fn original_dst(fd: BorrowedFd<'_>, ipv4: bool) -> io::Result<SocketAddr> {
    if ipv4 {
        // SAFETY: an all-zero sockaddr_in is a valid value.
        let mut addr: libc::sockaddr_in = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `addr`.
        check(unsafe {
            libc::getsockopt(fd.as_raw_fd(), libc::SOL_IP, SO_ORIGINAL_DST, (&mut addr as *mut libc::sockaddr_in).cast(), &mut len)
        })?;
        let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
        Ok(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(addr.sin_port))))
    } else {
        // SAFETY: an all-zero sockaddr_in6 is a valid value.
        let mut addr: libc::sockaddr_in6 = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `addr`.
        check(unsafe {
            libc::getsockopt(fd.as_raw_fd(), libc::SOL_IPV6, SO_ORIGINAL_DST, (&mut addr as *mut libc::sockaddr_in6).cast(), &mut len)
        })?;
        let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
        Ok(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(addr.sin6_port), 0, addr.sin6_scope_id)))
    }
}

/// `shutdown(SHUT_RDWR)` on a socket known by its descriptor number: each
/// peer gets a FIN and pending reads end, which wakes whatever task owns the
/// socket. The caller must know the descriptor is still the socket it means
/// (the idle sweep holds the lock under which its owner withdraws it before
/// closing); a stale number would shut down an unrelated socket, which is an
/// I/O error for that socket's owner but never memory unsafety.
pub fn shutdown_both(fd: RawFd) {
    // SAFETY: shutdown takes a descriptor number and touches no memory.
    let _ = unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// The process's `RLIMIT_NOFILE` as `(soft, hard)`.
pub fn fd_limit() -> io::Result<(u64, u64)> {
    // SAFETY: an all-zero rlimit is a valid value; getrlimit fills it.
    let mut lim: libc::rlimit = unsafe { mem::zeroed() };
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Sets the soft `RLIMIT_NOFILE` (the hard limit is left as it is).
pub fn set_fd_soft_limit(soft: u64) -> io::Result<()> {
    let (_, hard) = fd_limit()?;
    let lim = libc::rlimit { rlim_cur: soft.min(hard), rlim_max: hard };
    // SAFETY: setrlimit reads one rlimit.
    check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    Ok(())
}

/// Spawns `cmd` so that it receives `signal` when the thread that calls this
/// dies (`PR_SET_PDEATHSIG`; the kernel ties it to the forking *thread*, so
/// call it from a thread that lives as long as the process, e.g. the
/// JavaScript main thread). Like libuv's spawn, the child starts with every
/// signal at its default disposition and blocking stdio.
pub fn spawn_with_parent_death_signal(cmd: &mut std::process::Command, signal: libc::c_int) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec and makes
    // only async-signal-safe calls (signal, fcntl, prctl, getppid); it
    // neither allocates nor takes locks.
    unsafe {
        cmd.pre_exec(move || {
            // Ignored dispositions survive exec (a parent started with
            // SIGINT ignored would pass that on); handlers are reset anyway.
            for sig in 1..32 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            // Node marks its stdio close-on-exec and may have made the shared
            // descriptions non-blocking; the app inherits them as libuv's
            // spawn would pass them: kept open across exec, and blocking.
            for fd in 0..3 {
                let fd_flags = libc::fcntl(fd, libc::F_GETFD);
                if fd_flags >= 0 && fd_flags & libc::FD_CLOEXEC != 0 {
                    libc::fcntl(fd, libc::F_SETFD, fd_flags & !libc::FD_CLOEXEC);
                }
                let flags = libc::fcntl(fd, libc::F_GETFL);
                if flags >= 0 && flags & libc::O_NONBLOCK != 0 {
                    libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent died before prctl: nobody would send the signal now.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// One address of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceAddr {
    pub ip: IpAddr,
    /// The interface is a loopback one (`IFF_LOOPBACK`).
    pub loopback: bool,
}

/// Every address of the network namespace's interfaces (`getifaddrs`),
/// whether or not the link is running yet: libuv's `os.networkInterfaces()`
/// leaves out an interface until its carrier is up, which a freshly created
/// veth reaches only after the kernel's link-watch delay.
pub fn interface_addresses() -> io::Result<Vec<InterfaceAddr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list and stores its head in `list`.
    check(unsafe { libc::getifaddrs(&mut list) })?;
    let mut out = Vec::new();
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not freed yet.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        let loopback = ifa.ifa_flags & libc::IFF_LOOPBACK as libc::c_uint != 0;
        // SAFETY: ifa_addr points to a sockaddr whose family says which struct it is.
        let family = unsafe { (*ifa.ifa_addr).sa_family } as libc::c_int;
        let ip = if family == libc::AF_INET {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)))
        } else if family == libc::AF_INET6 {
            // SAFETY: an AF_INET6 address is a sockaddr_in6.
            let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
            IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr))
        } else {
            continue;
        };
        out.push(InterfaceAddr { ip, loopback });
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(out)
}

/// How a reaped child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildExit {
    Exited(i32),
    Signaled(i32),
}

/// The pid of a child that has exited and is not reaped yet, left unreaped
/// (`waitid(P_ALL, WEXITED | WNOHANG | WNOWAIT)`), or `None`.
pub fn peek_exited_child() -> io::Result<Option<libc::pid_t>> {
    // SAFETY: an all-zero siginfo_t is a valid value; waitid fills it.
    let mut info: libc::siginfo_t = unsafe { mem::zeroed() };
    // SAFETY: waitid writes one siginfo_t.
    let rc = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::ECHILD) { Ok(None) } else { Err(err) };
    }
    // SAFETY: after a successful waitid the pid field is set (0 when no
    // child has changed state).
    let pid = unsafe { info.si_pid() };
    Ok((pid != 0).then_some(pid))
}

/// Reaps `pid` if it has exited (`waitpid(pid, WNOHANG)`); `None` while it
/// runs.
pub fn reap_child(pid: libc::pid_t) -> io::Result<Option<ChildExit>> {
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid writes one int.
    let rc = check(unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) })?;
    if rc == 0 {
        return Ok(None);
    }
    Ok(Some(if libc::WIFSIGNALED(status) {
        ChildExit::Signaled(libc::WTERMSIG(status))
    } else {
        ChildExit::Exited(libc::WEXITSTATUS(status))
    }))
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_mapped_buffer_is_zeroed_writable_and_unmapped_on_drop() {
        let mut b = MappedBuf::new(1 << 20).unwrap();
        assert_eq!(b.len(), 1 << 20);
        assert!(b.iter().all(|&x| x == 0));
        b[12345] = 7;
        assert_eq!(b[12345], 7);
        let addr = b.as_ptr() as usize;
        let mapped = || {
            std::fs::read_to_string("/proc/self/maps").unwrap().lines().any(|l| {
                let range = l.split_whitespace().next().unwrap();
                let (lo, hi) = range.split_once('-').unwrap();
                let (lo, hi) = (usize::from_str_radix(lo, 16).unwrap(), usize::from_str_radix(hi, 16).unwrap());
                (lo..hi).contains(&addr)
            })
        };
        assert!(mapped());
        drop(b);
        assert!(!mapped(), "the memory went back to the kernel");
        assert!(MappedBuf::new(0).is_err());
    }
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    #[test]
    fn recv_spare_appends_only_what_arrived() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        c.write_all(b"hello").unwrap();
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(b">");
        let n = recv_spare(s.as_fd(), &mut buf).unwrap();
        assert_eq!(n, 5);
        assert_eq!(buf, b">hello");
        assert!(!at_urgent_mark(s.as_fd()));
    }

    #[test]
    fn queued_bytes_and_peer_closed_read_the_queue_without_taking_from_it() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        assert_eq!(queued_bytes(s.as_fd()).unwrap(), 0);
        assert!(!peer_closed(s.as_fd()));
        c.write_all(b"twelve bytes").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        // Loopback delivers both before the calls return; poll until seen.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !(queued_bytes(s.as_fd()).unwrap() == 12 && peer_closed(s.as_fd())) {
            assert!(std::time::Instant::now() < deadline, "the bytes and the FIN never showed");
            std::thread::yield_now();
        }
        let mut buf = [0u8; 32];
        assert_eq!(recv(s.as_fd(), &mut buf, 0).unwrap(), 12, "nothing was taken from the queue");
        assert_eq!(queued_bytes(s.as_fd()).unwrap(), 0);
    }

    #[test]
    fn pipes_splice_and_resize() {
        let (r, w) = pipe().unwrap();
        let granted = set_pipe_size(w.as_fd(), 1 << 17);
        assert!(granted.is_none_or(|g| g >= 4096), "{granted:?}");
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        c.write_all(b"spliced").unwrap();
        // The bytes are on their way over loopback: wait until readable.
        let mut pfd = [0u8; 1];
        while s.peek(&mut pfd).unwrap() == 0 {}
        assert_eq!(splice(s.as_fd(), w.as_fd(), 64).unwrap(), 7);
        let mut out = [0u8; 16];
        let n = nix_read(r.as_fd(), &mut out);
        assert_eq!(&out[..n], b"spliced");
    }

    fn nix_read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> usize {
        let mut f = std::fs::File::from(fd.try_clone_to_owned().unwrap());
        std::io::Read::read(&mut f, buf).unwrap()
    }

    #[test]
    fn accept_and_queue_check() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        assert!(!connection_queued(l.as_fd()));
        assert_eq!(accept(l.as_fd()).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        while !connection_queued(l.as_fd()) {}
        let (_s, peer) = accept(l.as_fd()).unwrap();
        assert_eq!(peer, c.local_addr().unwrap());
    }

    #[test]
    fn a_socket_that_was_not_redirected_has_no_original_destination_or_its_own() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        // Without conntrack's NAT the kernel either reports the local address
        // or fails (ENOENT when the nat table is not loaded).
        if let Ok(dst) = original_dst(s.as_fd(), true) {
            assert_eq!(dst, s.local_addr().unwrap());
        }
    }

    #[test]
    fn interface_addresses_mark_loopback() {
        let all = interface_addresses().unwrap();
        let lo = all.iter().find(|a| a.ip == IpAddr::V4(Ipv4Addr::LOCALHOST)).expect("127.0.0.1 is listed");
        assert!(lo.loopback, "{all:?}");
        assert!(all.iter().filter(|a| a.ip.is_loopback()).all(|a| a.loopback), "{all:?}");
    }

    #[test]
    fn shutdown_both_ends_the_peer_and_wakes_reads() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        shutdown_both(s.as_raw_fd());
        let mut buf = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut c, &mut buf).unwrap(), 0, "the peer got a FIN");
        assert_eq!(std::io::Read::read(&mut &s, &mut buf).unwrap(), 0, "reads on the socket end");
    }

    #[test]
    fn fd_limits_read_back() {
        let (soft, hard) = fd_limit().unwrap();
        assert!(soft <= hard);
        set_fd_soft_limit(soft).unwrap();
        assert_eq!(fd_limit().unwrap().0, soft);
    }
}
