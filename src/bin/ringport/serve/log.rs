//! The access log (`--log`): lines go to one thread that owns stdout.
//!
//! A worker must never wait on stdout: whatever reads it (a pipe into a slow
//! program, a paused terminal, a log shipper that hangs) could otherwise stop
//! every worker in `write(2)`, and with them the whole server (a review found
//! it answering nothing after 850 requests once stdout's pipe was full).
//! So a connection hands its line to a bounded queue and goes on; the
//! logger thread writes them in order, through a buffer it flushes whenever
//! the queue runs dry. When the queue is full, the line is dropped and
//! counted, and the count is said on stderr at the end.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

/// Lines waiting for the logger at most.
const QUEUE: usize = 16 * 1024;

/// How long the end waits for the logger to write what is queued.
const DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct AccessLog {
    /// `None` (in a message): the end.
    tx: SyncSender<Option<String>>,
    /// Told by the logger when it has written everything and ended.
    done: Mutex<Receiver<()>>,
    dropped: AtomicU64,
}

impl AccessLog {
    /// Starts the logger thread.
    pub fn start() -> io::Result<AccessLog> {
        let (tx, rx) = mpsc::sync_channel::<Option<String>>(QUEUE);
        let (done_tx, done) = mpsc::channel();
        thread::Builder::new()
            .name("serve-log".into())
            .spawn(move || {
                // Not `stdout().lock()` for good: the program says things on
                // stdout too (its ready line).
                let mut out = io::BufWriter::with_capacity(64 * 1024, io::stdout());
                loop {
                    let line = match rx.try_recv() {
                        Ok(line) => line,
                        Err(_) => {
                            // Dry: what is written so far goes out now.
                            let _ = out.flush();
                            rx.recv().ok().flatten()
                        }
                    };
                    match line {
                        Some(line) => {
                            let _ = out.write_all(line.as_bytes());
                        }
                        None => break,
                    }
                }
                let _ = out.flush();
                let _ = done_tx.send(());
            })?;
        Ok(AccessLog {
            tx,
            done: Mutex::new(done),
            dropped: AtomicU64::new(0),
        })
    }

    /// Queues one line (with its newline); drops it if the queue is full.
    pub fn line(&self, line: String) {
        match self.tx.try_send(Some(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Lines dropped so far (the queue was full).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Ends the log: waits (at most [`DRAIN`] in all) for the logger to
    /// write what is queued. A logger stuck on stdout is left behind (the
    /// program is exiting). Returns the lines dropped.
    pub fn finish(&self) -> u64 {
        let deadline = std::time::Instant::now() + DRAIN;
        loop {
            match self.tx.try_send(None) {
                Ok(()) => break,
                Err(TrySendError::Full(_)) if std::time::Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return self.dropped(),
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let _ = self
            .done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recv_timeout(left);
        self.dropped()
    }
}
