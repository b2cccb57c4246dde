//! SIGINT/SIGTERM → a clean shutdown. The signals are blocked in every thread
//! (call `block` before spawning any) and one thread waits for them with
//! `sigwait`, then runs the shutdown closure.

use std::io;
use std::thread;

fn set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a sigset_t we own.
    unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut s);
        libc::sigaddset(&mut s, libc::SIGINT);
        libc::sigaddset(&mut s, libc::SIGTERM);
        s
    }
}

/// Blocks SIGINT and SIGTERM in the calling thread and every thread it spawns later.
pub fn block() -> io::Result<()> {
    let s = set();
    // SAFETY: pthread_sigmask reads a valid sigset and writes nothing else.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &s, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Spawns a thread that waits for SIGINT or SIGTERM and then calls `on_signal`.
pub fn on_shutdown(on_signal: impl FnOnce(i32) + Send + 'static) -> io::Result<()> {
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let s = set();
            let mut sig: libc::c_int = 0;
            // SAFETY: sigwait reads a valid sigset and writes the signal number.
            let rc = unsafe { libc::sigwait(&s, &mut sig) };
            if rc == 0 {
                on_signal(sig);
            }
        })?;
    Ok(())
}

/// A receiver that gets the number of the first SIGINT or SIGTERM
/// (`on_shutdown` sending it on).
pub fn waiter() -> io::Result<std::sync::mpsc::Receiver<i32>> {
    let (tx, rx) = std::sync::mpsc::channel();
    on_shutdown(move |sig| {
        let _ = tx.send(sig);
    })?;
    Ok(rx)
}
