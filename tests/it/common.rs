//! Shared helpers: the `backend_test!` macro that runs every test on every backend,
//! port construction with a clear skip for a backend that is not available, real
//! sockets on 127.0.0.1, unlinked temp files, and descriptor counting.

use std::fs::{File, OpenOptions};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use ringport::{BackendChoice, Builder, Completion, CompletionPort, Error, Pool};

/// How long any single wait may take before the test calls it a hang. Generous on
/// purpose: a bug must fail the test, never stall it, and a slow machine must not.
pub const T: Duration = Duration::from_secs(10);

/// Tests that count this process's descriptors run alone: every other test holds a
/// read guard for its whole run, a descriptor-counting test holds the write guard.
static FD_GATE: RwLock<()> = RwLock::new(());

/// Guard held while a test body runs.
#[allow(dead_code)] // the guards are held for their drop, never read
pub enum Gate {
    /// Runs beside other shared tests.
    Shared(RwLockReadGuard<'static, ()>),
    /// Runs alone (it counts descriptors).
    Exclusive(RwLockWriteGuard<'static, ()>),
}

/// Takes the gate.
pub fn gate(exclusive: bool) -> Gate {
    if exclusive {
        Gate::Exclusive(FD_GATE.write().unwrap_or_else(|p| p.into_inner()))
    } else {
        Gate::Shared(FD_GATE.read().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Generates `mod $name { #[test] fn uring() {..} #[test] fn epoll() {..} }`, each
/// running the body with its backend. A backend that cannot be built here
/// (`Error::Unsupported`) makes the test print why it is skipped and return; any
/// other build error fails it.
///
/// `backend_test!(exclusive name, ...)` runs the body with no other test running
/// (for tests that count the process's descriptors).
macro_rules! backend_test {
    (exclusive $name:ident, |$choice:ident : $ty:ty| $body:block) => {
        backend_test!(@gen true, $name, $choice, $ty, $body);
    };
    ($name:ident, |$choice:ident : $ty:ty| $body:block) => {
        backend_test!(@gen false, $name, $choice, $ty, $body);
    };
    (@gen $excl:expr, $name:ident, $choice:ident, $ty:ty, $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn body($choice: $ty) $body

            #[test]
            fn uring() {
                $crate::common::run(
                    ::ringport::BackendChoice::Uring,
                    concat!(module_path!(), "::uring"),
                    $excl,
                    body,
                );
            }

            #[test]
            fn epoll() {
                $crate::common::run(
                    ::ringport::BackendChoice::Epoll,
                    concat!(module_path!(), "::epoll"),
                    $excl,
                    body,
                );
            }
        }
    };
}

/// The `--backend` value of the `ringport` command for `choice`.
pub fn backend_flag(choice: BackendChoice) -> &'static str {
    match choice {
        BackendChoice::Epoll => "epoll",
        _ => "uring",
    }
}

/// Runs `body` on `choice`, or prints why the backend is skipped.
pub fn run(choice: BackendChoice, test: &str, exclusive: bool, body: fn(BackendChoice)) {
    let _gate = gate(exclusive);
    match CompletionPort::builder().backend(choice).build() {
        Ok(port) => {
            assert_eq!(
                port.backend().to_string(),
                match choice {
                    BackendChoice::Epoll => "epoll",
                    _ => "io_uring",
                },
                "{test}: the forced backend was not the one built"
            );
            drop(port);
        }
        Err(Error::Unsupported(why)) => {
            let issue = match choice {
                BackendChoice::Epoll => "epoll backend not built yet (issue 4)",
                _ => "io_uring unavailable on this machine",
            };
            eprintln!("skipped: {issue}: {why} [{test}]");
            return;
        }
        Err(e) => panic!("{test}: building a port on {choice:?} failed: {e:?}"),
    }
    body(choice);
}

/// A builder forced to `choice`.
pub fn builder(choice: BackendChoice) -> Builder {
    CompletionPort::builder().backend(choice)
}

/// Builds a port from `b`; the backend was proven available by `run`.
pub fn build(b: Builder) -> CompletionPort {
    b.build()
        .expect("build a port on a backend that was just built")
}

/// A port on `choice` with the defaults.
pub fn port(choice: BackendChoice) -> CompletionPort {
    build(builder(choice))
}

/// Dequeues one completion, failing (not hanging) after `T`.
pub fn get(port: &CompletionPort) -> Completion {
    match port.get(Some(T)) {
        Ok(c) => c,
        Err(e) => panic!("get failed: {e:?} (stats: {:?})", port.stats()),
    }
}

/// Asserts an I/O result failed with exactly `errno`.
#[track_caller]
pub fn assert_errno(r: &io::Result<usize>, errno: i32) {
    match r {
        Err(e) if e.raw_os_error() == Some(errno) => {}
        other => panic!(
            "expected errno {errno} ({}), got {other:?}",
            io::Error::from_raw_os_error(errno)
        ),
    }
}

/// Polls `cond` until it holds, failing after `T`.
#[track_caller]
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {T:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A connected TCP pair on 127.0.0.1: (client, server side).
pub fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let c = TcpStream::connect(l.local_addr().unwrap()).expect("connect");
    let (s, _) = l.accept().expect("accept");
    (c, s)
}

/// An address on 127.0.0.1 where nothing listens (a port that was just freed).
pub fn closed_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().unwrap()
}

fn temp_path() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "ringport-it-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A fresh, empty, already unlinked file open for reading and writing.
pub fn temp_file() -> File {
    let p = temp_path();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&p)
        .expect("create temp file");
    std::fs::remove_file(&p).expect("unlink temp file");
    f
}

/// A fresh, already unlinked file open for writing only.
pub fn write_only_file() -> File {
    let p = temp_path();
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .expect("create temp file");
    std::fs::remove_file(&p).expect("unlink temp file");
    f
}

/// The number of descriptors this process has open.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

/// This process's open descriptors, each with what it refers to
/// (`3 -> socket:[12345]`), so a number reused for something else differs.
pub fn fd_snapshot() -> std::collections::BTreeSet<String> {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some(format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                target.display()
            ))
        })
        .collect()
}

/// Asserts that no descriptor open now was not open at `before` — waiting (at
/// most `T`) for ones still being closed. Descriptors closed since (a thread of
/// an earlier test finishing its shutdown) are not leaks and do not count.
#[track_caller]
pub fn assert_no_new_fds(before: &std::collections::BTreeSet<String>, what: &str) {
    let new = |now: &std::collections::BTreeSet<String>| -> Vec<String> {
        now.iter()
            .filter(|d| !before.contains(*d) && !d.contains("/proc/"))
            .cloned()
            .collect()
    };
    let deadline = Instant::now() + T;
    loop {
        let left = new(&fd_snapshot());
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: descriptors opened during the test are still open: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// True if descriptor number `fd` is open in this process. Only meaningful in an
/// exclusive test (no other test may open a descriptor meanwhile).
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor flags; on a closed number it fails
    // with EBADF and touches nothing.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Shuts `pool` down, failing (not hanging) if that takes longer than `T`: a
/// worker that never wakes from the port's close would otherwise hang the test.
pub fn shutdown(pool: Pool) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        pool.shutdown();
        let _ = tx.send(());
    });
    if rx.recv_timeout(T).is_err() {
        panic!(
            "Pool::shutdown did not return within {T:?}: a worker never woke from the port's close"
        );
    }
}

/// A fresh directory under the system temp dir, removed (with its contents) on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// `ringport-<tag>-<pid>-<n>` under the temp dir.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "ringport-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&p).expect("create a temp dir");
        TempDir(p)
    }

    /// The directory itself.
    pub fn dir(&self) -> &std::path::Path {
        &self.0
    }

    /// A path inside it.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits for `child` at most `t`.
pub fn wait_timeout(
    child: &mut std::process::Child,
    t: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + t;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A pipe: (read end, write end). (`std::io::pipe` is past the MSRV.)
pub fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into `fds`.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are new and owned by nobody else.
    unsafe {
        use std::os::fd::FromRawFd;
        (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
    }
}

/// Fills a stream socket's send buffer and its peer's receive window with
/// `byte`s, without waiting (`MSG_DONTWAIT` per call: the socket keeps its
/// mode, blocking or not); twice, 20 ms apart, so window updates that came
/// in between are filled too. Returns the bytes written.
pub fn fill_send_buffer(s: &impl std::os::fd::AsRawFd, byte: u8) -> usize {
    let chunk = vec![byte; 64 << 10];
    let mut sent = 0;
    for pass in 0..2 {
        if pass > 0 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        loop {
            // SAFETY: send reads `chunk.len()` bytes of a live buffer.
            let n = unsafe {
                libc::send(
                    s.as_raw_fd(),
                    chunk.as_ptr().cast(),
                    chunk.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "filling: {e}");
                break;
            }
            sent += n as usize;
        }
    }
    sent
}
