//! `recv(2)` and `send(2)` as raw system calls, for the hot socket paths
//! (the epoll backend's attempts, the async layer's inline reads).
//!
//! glibc's `recv` and `send` are cancellation points: each call enables and
//! disables asynchronous thread cancellation around the system call, ~60
//! user instructions a call here (callgrind, epoll echo). ringport never
//! cancels threads (Rust has no `pthread_cancel`), so it calls the kernel
//! directly. Errors come back as with the wrappers: `-1`, and `errno` set.

use std::os::fd::RawFd;

/// `recv(fd, buf, len, flags)`.
///
/// # Safety
///
/// As for `recv(2)`: `buf` must be valid for writes of `len` bytes.
#[inline]
pub(crate) unsafe fn recv(fd: RawFd, buf: *mut libc::c_void, len: usize, flags: i32) -> isize {
    // SAFETY: `recvfrom` with no address is `recv`; the caller vouches for
    // `buf` and `len` (this function's contract).
    unsafe { without_address(libc::SYS_recvfrom, fd, buf, len, flags) }
}

/// `send(fd, buf, len, flags)`.
///
/// # Safety
///
/// As for `send(2)`: `buf` must be valid for reads of `len` bytes.
#[inline]
pub(crate) unsafe fn send(fd: RawFd, buf: *const libc::c_void, len: usize, flags: i32) -> isize {
    // SAFETY: `sendto` with no address is `send`, and only reads `buf`; the
    // caller vouches for `buf` and `len` (this function's contract).
    unsafe { without_address(libc::SYS_sendto, fd, buf.cast_mut(), len, flags) }
}

/// One send of `buf` that never waits (`MSG_DONTWAIT | MSG_NOSIGNAL`, and
/// `flags`): `Some(Ok(n))`, `n` bytes went (possibly fewer than asked);
/// `Some(Err)`, the send's error; `None`, the socket's buffer is full (or a
/// signal came first): go through the port. (The async face's streams,
/// `net/stream.rs`, and io_uring's sends made at once, `Driver::send_now`.)
pub(crate) fn send_now(fd: RawFd, buf: &[u8], flags: i32) -> Option<std::io::Result<usize>> {
    // SAFETY: `buf` is borrowed for the call: valid for reads of its length.
    let n = unsafe {
        send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            flags | libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n >= 0 {
        return Some(Ok(n as usize));
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN | libc::EINTR) => None,
        _ => Some(Err(e)),
    }
}

/// `recvfrom` or `sendto` (`nr`) with a null address and address length.
///
/// # Safety
///
/// As for that call: `buf` valid for `len` bytes (writes for `recvfrom`).
#[inline]
unsafe fn without_address(
    nr: libc::c_long,
    fd: RawFd,
    buf: *mut libc::c_void,
    len: usize,
    flags: i32,
) -> isize {
    // SAFETY: the caller's contract; the last two arguments are a null
    // address and a zero (or null) length, passed as full-width words.
    unsafe {
        libc::syscall(
            nr,
            libc::c_long::from(fd),
            buf,
            len,
            libc::c_long::from(flags),
            0 as libc::c_long,
            0 as libc::c_long,
        ) as isize
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn receive_and_send_with_errors_in_errno() {
        use std::os::fd::AsRawFd;
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let msg = b"ping";
        // SAFETY: reads 4 bytes of a live array.
        let n = unsafe { super::send(a.as_raw_fd(), msg.as_ptr().cast(), 4, libc::MSG_DONTWAIT) };
        assert_eq!(n, 4);
        let mut buf = [0u8; 16];
        let recv = |buf: &mut [u8; 16]| {
            // SAFETY: writes at most 16 bytes into a live array.
            unsafe {
                super::recv(
                    b.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    16,
                    libc::MSG_DONTWAIT,
                )
            }
        };
        let n = recv(&mut buf);
        assert_eq!(&buf[..n as usize], msg);
        let n = recv(&mut buf);
        assert_eq!(n, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EAGAIN)
        );
        // SAFETY: as above; a bad descriptor fails with EBADF.
        let n = unsafe { super::send(-1, msg.as_ptr().cast(), 4, 0) };
        assert_eq!(n, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EBADF)
        );
    }
}
