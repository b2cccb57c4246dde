//! Socket operations on the epoll backend: one non-blocking attempt each
//! (`try_op`), made when the operation is submitted and again on every
//! readiness edge until it stops saying `EAGAIN`.
//!
//! `send_file` is `sendfile(2)` from the file into the non-blocking socket: it
//! moves what fits in the socket's buffer now, without a user-space copy, and
//! waits in the socket's write queue like a send when nothing fits.
//! `sendfile` has no `MSG_NOSIGNAL`: a closed peer would raise `SIGPIPE`, so the
//! call runs with `SIGPIPE` blocked in the calling thread and a `SIGPIPE` it
//! raised is taken back before the mask is restored ([`without_sigpipe`]).

use std::cell::Cell;
use std::io;

use socket2::SockAddrStorage;

use crate::completion::raw_addr;
use crate::op::OpBody;

use super::Pending;

/// After a receive on a stream socket that returned fewer bytes than asked, with
/// the queue lock held since before the call: the receive queue was empty when
/// it returned, so the next receive can skip its attempt and wait for an edge —
/// unless the peer's FIN (which brings no further edge) was already announced.
/// Any data or FIN arriving after the call brings an edge, and the poller can
/// only process it (and clear `read_blocked`) after this lock is released.
/// This is tokio's rule too (a partial read clears readiness, a closed one never).
pub(super) fn drained_after(p: &Pending, res: i32, stream: bool, closed: bool) -> bool {
    match &p.body {
        OpBody::Recv { buf, .. } => stream && !closed && res > 0 && (res as usize) < buf.capacity(),
        _ => false,
    }
}

/// Result of one non-blocking attempt: `None` if it would block, else the raw
/// result (`>= 0`, or `-errno`).
pub(super) type Attempt = Option<i32>;

pub(super) fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Turns a syscall's return value into an attempt. `EINTR` is retried by the caller.
pub(super) fn attempt(rc: isize) -> Result<Attempt, ()> {
    if rc >= 0 {
        return Ok(Some(rc.min(i32::MAX as isize) as i32));
    }
    match errno() {
        libc::EINTR => Err(()),
        libc::EAGAIN | libc::EINPROGRESS | libc::EALREADY => Ok(None),
        e => Ok(Some(-e)),
    }
}

/// One non-blocking attempt at a socket operation.
pub(super) fn try_op(p: &mut Pending) -> Attempt {
    loop {
        let r = match &mut p.body {
            OpBody::Recv { fd, buf, flags } => {
                // SAFETY: the kernel writes at most `capacity` bytes into the
                // buffer's allocation, which we own.
                attempt(unsafe {
                    crate::sys::rawcall::recv(
                        *fd,
                        buf.as_mut_ptr().cast(),
                        buf.capacity(),
                        *flags | libc::MSG_DONTWAIT,
                    )
                })
            }
            OpBody::Send {
                fd,
                buf,
                pos,
                flags,
            }
            // Zero-copy send on epoll: a plain, copying send (see `Op::send_zc`).
            | OpBody::SendZc {
                fd,
                buf,
                pos,
                flags,
            } => {
                let rest = &buf[*pos..];
                // SAFETY: reads `rest.len()` initialised bytes we own.
                attempt(unsafe {
                    crate::sys::rawcall::send(
                        *fd,
                        rest.as_ptr().cast(),
                        rest.len(),
                        *flags | libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                })
            }
            OpBody::RecvFrom {
                fd,
                buf,
                flags,
                from,
            } => {
                let mut name = SockAddrStorage::zeroed();
                let mut name_len = name.size_of();
                // SAFETY: the kernel writes at most `capacity` bytes into the
                // buffer's allocation, which we own, and at most `name_len` bytes
                // (the whole storage) into `name`, reporting the length it wrote.
                let r = attempt(unsafe {
                    libc::recvfrom(
                        *fd,
                        buf.as_mut_ptr().cast(),
                        buf.capacity(),
                        *flags | libc::MSG_DONTWAIT,
                        (&mut name as *mut SockAddrStorage).cast(),
                        &mut name_len,
                    )
                });
                if let Ok(Some(n)) = r {
                    if n >= 0 {
                        *from = raw_addr(name, name_len);
                    }
                }
                r
            }
            OpBody::SendTo {
                fd,
                buf,
                addr,
                flags,
            } => {
                // SAFETY: reads `buf.len()` initialised bytes we own, and the
                // address: `addr.len()` valid bytes of a socket address.
                attempt(unsafe {
                    libc::sendto(
                        *fd,
                        buf.as_ptr().cast(),
                        buf.len(),
                        *flags | libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                        addr.as_ptr().cast(),
                        addr.len(),
                    )
                })
            }
            OpBody::Accept { fd } => {
                // SAFETY: accept4 with no address buffers.
                attempt(unsafe {
                    libc::accept4(
                        *fd,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC,
                    )
                } as isize)
            }
            OpBody::Connect { fd, addr } => {
                if p.connecting {
                    let mut err: libc::c_int = 0;
                    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                    // SAFETY: getsockopt writes an int into `err`.
                    let rc = unsafe {
                        libc::getsockopt(
                            *fd,
                            libc::SOL_SOCKET,
                            libc::SO_ERROR,
                            (&mut err as *mut libc::c_int).cast(),
                            &mut len,
                        )
                    };
                    if rc < 0 {
                        return Some(-errno());
                    }
                    if err != 0 {
                        return Some(-err);
                    }
                    // No error yet: connected only if the socket has a peer
                    // (writability can be reported before the handshake ends).
                    // SAFETY: sockaddr_storage is plain data; all zeroes is valid.
                    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
                    let mut sl = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                    // SAFETY: getpeername writes at most `sl` bytes into `ss`.
                    let rc = unsafe {
                        libc::getpeername(
                            *fd,
                            (&mut ss as *mut libc::sockaddr_storage).cast(),
                            &mut sl,
                        )
                    };
                    return if rc == 0 {
                        Some(0)
                    } else if errno() == libc::ENOTCONN {
                        None
                    } else {
                        Some(-errno())
                    };
                }
                // SAFETY: `addr` is a valid socket address of `addr.len()` bytes.
                let rc = unsafe { libc::connect(*fd, addr.as_ptr().cast(), addr.len()) };
                if rc < 0 && matches!(errno(), libc::EINPROGRESS | libc::EALREADY) {
                    p.connecting = true;
                    return None;
                }
                // EAGAIN is not "in progress": a Unix listener's accept queue
                // is full (or TCP has no port left), and no readiness will
                // ever come for this socket. It is the result (WouldBlock),
                // not a wait that never ends.
                if rc < 0 && errno() == libc::EAGAIN {
                    return Some(-libc::EAGAIN);
                }
                attempt(rc as isize)
            }
            OpBody::SendFile {
                sock,
                file,
                offset,
                len,
            } => attempt(send_file_once(*sock, *file, *offset, *len)),
            body @ (OpBody::ReadFixed { .. } | OpBody::WriteFixed { .. }) => {
                super::fixed::try_fixed(body)
            }
            // Queued behind the socket's sends (`Driver::submit`); never
            // `EAGAIN`.
            OpBody::Shutdown { fd, how } => {
                // SAFETY: a plain system call on a descriptor; no memory is passed.
                attempt(unsafe { libc::shutdown(*fd, *how) } as isize)
            }
            OpBody::Writable { fd } => {
                let mut p = libc::pollfd {
                    fd: *fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: poll reads and writes the one pollfd we own; a zero
                // timeout never waits.
                match unsafe { libc::poll(&mut p, 1, 0) } {
                    0 => Ok(None),
                    n if n > 0 => Ok(Some(i32::from(p.revents))),
                    _ => attempt(-1),
                }
            }
            _ => Ok(Some(-libc::EINVAL)),
        };
        if let Ok(a) = r {
            return a;
        }
    }
}

thread_local! {
    /// This thread keeps `SIGPIPE` blocked for good (`block_sigpipe_here`).
    static PIPE_BLOCKED: Cell<bool> = const { Cell::new(false) };
}

/// Blocks `SIGPIPE` in the calling thread from now on, so `sendfile` on it needs
/// no mask changes per call (ringport's own worker threads call this at start; a
/// `SIGPIPE` raised in them stays pending until the EPIPE that raised it takes it
/// back — it could never be delivered to them anyway).
pub(crate) fn block_sigpipe_here() {
    // SAFETY: the set is ours and initialised by sigemptyset; pthread_sigmask
    // changes only this thread's mask.
    let ok = unsafe {
        let mut pipe: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut pipe);
        libc::sigaddset(&mut pipe, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &pipe, std::ptr::null_mut()) == 0
    };
    PIPE_BLOCKED.with(|b| b.set(ok));
}

/// One `sendfile(2)` of up to `len` bytes of `file` from `offset` into
/// `sock`, without `SIGPIPE`: the count, or -1 with `errno` set. A socket as
/// the source says `EINVAL`, as io_uring's splice does (`sendfile` says
/// `ESPIPE`, which stays for a pipe, as on io_uring). It blocks only if
/// `sock` does: the socket path hands it non-blocking sockets, the file
/// workers anything else (`Driver::submit`).
pub(crate) fn send_file_once(sock: i32, file: i32, offset: u64, len: usize) -> isize {
    let Ok(mut off) = libc::off_t::try_from(offset) else {
        // SAFETY: __errno_location returns this thread's errno slot.
        unsafe { *libc::__errno_location() = libc::EINVAL };
        return -1;
    };
    // sendfile moves at most this much per call anyway.
    let count = len.min(0x7fff_f000);
    // SAFETY: sendfile reads from one descriptor and writes to another; the
    // only memory it touches is `off`, which we own.
    let rc = without_sigpipe(|| unsafe { libc::sendfile(sock, file, &mut off, count) });
    if rc < 0 {
        let mut err = errno();
        // (The look at the source's type sets `errno` too.)
        if err == libc::ESPIPE && crate::sys::socket_type(file).is_some() {
            err = libc::EINVAL;
        }
        // SAFETY: __errno_location returns this thread's errno slot.
        unsafe { *libc::__errno_location() = err };
    }
    rc
}

/// Takes a pending `SIGPIPE` (blocked in this thread) off the pending set.
fn take_back_sigpipe() {
    // SAFETY: the set is ours and initialised by sigemptyset.
    let mut pipe: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe {
        libc::sigemptyset(&mut pipe);
        libc::sigaddset(&mut pipe, libc::SIGPIPE);
    }
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    loop {
        // SAFETY: waits (not at all: zero timeout) for SIGPIPE, blocked here;
        // touches only the set and the timespec, both ours.
        let r = unsafe { libc::sigtimedwait(&pipe, std::ptr::null_mut(), &zero) };
        if r >= 0 || errno() != libc::EINTR {
            break;
        }
    }
}

/// Runs `f` (a system call returning `-1` and setting `errno` on failure) with
/// `SIGPIPE` blocked in this thread, and takes back a `SIGPIPE` the call raised,
/// so that writing to a closed peer is `EPIPE` and nothing else — as
/// `MSG_NOSIGNAL` makes it for `send`. A `SIGPIPE` that was already pending
/// before the call is left alone. Three extra system calls, paid only by calls
/// that have no `MSG_NOSIGNAL` (`sendfile`).
fn without_sigpipe(f: impl FnOnce() -> isize) -> isize {
    if PIPE_BLOCKED.with(Cell::get) {
        // SIGPIPE stays blocked in this thread: no mask calls; only an EPIPE can
        // have left one pending, and it is taken back.
        let rc = f();
        let err = errno();
        if rc < 0 && err == libc::EPIPE {
            take_back_sigpipe();
            // SAFETY: __errno_location returns this thread's errno slot.
            unsafe { *libc::__errno_location() = err };
        }
        return rc;
    }
    // SAFETY: sigset_t is plain data that sigemptyset initialises.
    let mut pipe: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut pending: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: the sets are ours and valid for writing; pthread_sigmask changes
    // only this thread's mask, and it is restored below on every path.
    let was_pending = unsafe {
        libc::sigemptyset(&mut pipe);
        libc::sigaddset(&mut pipe, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &pipe, &mut old);
        libc::sigpending(&mut pending) == 0 && libc::sigismember(&pending, libc::SIGPIPE) == 1
    };
    let rc = f();
    let err = errno();
    if rc < 0 && err == libc::EPIPE && !was_pending {
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        loop {
            // SAFETY: waits (not at all: zero timeout) for SIGPIPE, which is
            // blocked here, taking it off the pending set; no memory but the
            // set and the timespec, both ours.
            let r = unsafe { libc::sigtimedwait(&pipe, std::ptr::null_mut(), &zero) };
            if r >= 0 || errno() != libc::EINTR {
                break;
            }
        }
    }
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if rc < 0 {
        // The caller reads errno: give it the call's, not sigtimedwait's.
        // SAFETY: __errno_location returns this thread's errno slot.
        unsafe { *libc::__errno_location() = err };
    }
    rc
}
