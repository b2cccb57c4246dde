//! SIGINT/SIGTERM: blocked in every thread, received by one thread with `sigwait`.

use std::io;

fn set() -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is a valid value to hand to sigemptyset, which
    // initialises it; sigaddset then adds two valid signal numbers to it.
    unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut s);
        libc::sigaddset(&mut s, libc::SIGINT);
        libc::sigaddset(&mut s, libc::SIGTERM);
        s
    }
}

/// Blocks SIGINT and SIGTERM in the calling thread and in every thread it spawns later.
pub fn block() -> io::Result<()> {
    let s = set();
    // SAFETY: pthread_sigmask reads the initialised set `s`; the old mask is not requested.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &s, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits until SIGINT or SIGTERM arrives (they must be blocked, see [`block`]) and
/// returns its number.
pub fn wait() -> io::Result<i32> {
    let s = set();
    let mut sig: libc::c_int = 0;
    // SAFETY: sigwait reads the initialised set `s` and writes one c_int we own.
    let rc = unsafe { libc::sigwait(&s, &mut sig) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(sig)
}
