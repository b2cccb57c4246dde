//! A `ringport` program run as a child process by the tests that start a server
//! (`echo.rs`, `serve.rs`): its output read by two threads, every wait bounded,
//! and no child, thread or pipe left behind by a test that fails.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};

use crate::common::{wait_timeout, T};

/// A running child. Its first stdout line (a server's ready line) is handed to
/// `first_line`; later stdout lines are kept in `stdout`, stderr whole in
/// `stderr`. Dropping it unreaped (a failed test) sends SIGTERM, then SIGKILL if
/// it lingers past `T`, and reaps it.
pub(crate) struct Spawned {
    pub(crate) child: Child,
    first: mpsc::Receiver<String>,
    /// stdout lines after the first (a server's access log).
    pub(crate) stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    /// With `spawn_held`: stdout is not read past its first line until this
    /// is dropped (`release_stdout`, or before any wait).
    hold: Option<mpsc::Sender<()>>,
    /// Set once the child has been waited for: its pid may be reused after that,
    /// so no signal may be sent.
    reaped: bool,
}

impl Spawned {
    /// Spawns `cmd` with stdin closed and stdout and stderr read here.
    pub(crate) fn spawn(cmd: &mut Command) -> Spawned {
        Spawned::start(cmd, false)
    }

    /// As `spawn`, but nothing reads stdout after its first line (the pipe
    /// fills and the child's writes to it block) until `release_stdout`.
    pub(crate) fn spawn_held(cmd: &mut Command) -> Spawned {
        Spawned::start(cmd, true)
    }

    /// Lets the reader go on with stdout (after `spawn_held`).
    pub(crate) fn release_stdout(&mut self) {
        self.hold = None;
    }

    fn start(cmd: &mut Command, held: bool) -> Spawned {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let (tx, first) = mpsc::channel();
        let (hold, held_rx) = mpsc::channel::<()>();
        let hold = held.then_some(hold);
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let sink = stdout.clone();
        let out = BufReader::new(child.stdout.take().unwrap());
        let out_reader = thread::spawn(move || {
            let mut lines = out.lines().map_while(Result::ok);
            if let Some(line) = lines.next() {
                let _ = tx.send(line);
            }
            // Held: wait until the sender is dropped (never sent on).
            let _ = held_rx.recv();
            for line in lines {
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let err = BufReader::new(child.stderr.take().unwrap());
        let err_reader = thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        Spawned {
            child,
            first,
            stdout,
            stderr,
            readers: vec![out_reader, err_reader],
            hold,
            reaped: false,
        }
    }

    /// The first stdout line, waited for at most `T`. `Disconnected`: stdout
    /// closed without one (the child exited).
    pub(crate) fn first_line(&self) -> Result<String, mpsc::RecvTimeoutError> {
        self.first.recv_timeout(T)
    }

    /// Everything the child wrote on stderr so far.
    pub(crate) fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sends `sig` to the child.
    pub(crate) fn signal(&self, sig: libc::c_int) {
        assert!(!self.reaped, "signal to a reaped child");
        // SAFETY: kill only sends a signal; the child is not reaped yet (checked
        // above), so its pid cannot have been reused.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// The child's status if it has exited (then reaped, its output read to the
    /// end); `None` while it runs.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().expect("try_wait")?;
        self.reaped = true;
        self.join_readers();
        Some(status)
    }

    /// Waits at most `T` for the child to exit; kills it if it does not (then
    /// `None`). Either way it is reaped and its output read to the end.
    pub(crate) fn wait(&mut self) -> Option<ExitStatus> {
        self.release_stdout();
        let status = wait_timeout(&mut self.child, T);
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.reaped = true;
        self.join_readers();
        status
    }

    /// The reader threads end at EOF, which comes when the child is gone: join
    /// them so no pipe descriptor outlives the test (descriptor-counting tests
    /// run right after).
    fn join_readers(&mut self) {
        self.release_stdout();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if !self.reaped {
            self.signal(libc::SIGTERM);
            self.wait();
        }
        self.join_readers();
    }
}

/// Runs `cmd` with a stack no address space holds for each thread
/// (`RUST_MIN_STACK` = 2^60), so its worker threads cannot start, and checks
/// it ends with exit code 1 and an error naming `--threads` (what asked for
/// them). Prints a skip if the backend is unsupported here.
pub(crate) fn assert_workers_that_cannot_start_name_threads(cmd: &mut Command, what: &str) {
    cmd.env("RUST_MIN_STACK", (1u64 << 60).to_string());
    let mut proc = Spawned::spawn(cmd);
    if let Ok(line) = proc.first_line() {
        panic!("{what}: started with a 2^60-byte stack per thread: {line:?}");
    }
    let status = proc.wait();
    let err = proc.stderr();
    if err.to_ascii_lowercase().contains("unsupported") {
        eprintln!("skipped: {what}: {}", err.trim());
        return;
    }
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{what}: {err}");
    assert!(err.contains("--threads"), "{what}: {err}");
}
