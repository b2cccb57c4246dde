//! The backend contract. Every backend (io_uring today, epoll next, Windows IOCP
//! some day) is one module under `sys/` and meets this contract exactly; the port
//! calls it through the plain `enum Backend`, one `match` per method, so the
//! choice is made once at start and never per call.
//!
//! # The contract
//!
//! * **`submit(op, key, user_data, flush)`** starts an operation and never blocks.
//!   The backend takes ownership of the op's buffer and auxiliary data (socket
//!   address, timeout) and keeps them alive, at a stable address, until the kernel
//!   has finished with them: until the operation's final completion has been reaped,
//!   even if it was cancelled or the port closed. It returns an [`OpId`] unique among
//!   operations in flight, or `QueueFull` when `max_in_flight` operations are
//!   outstanding (counted from submit to reap, for every op kind), or `Closed`.
//!   With `flush = false` the backend may hold the operation back until the next
//!   `poll` or `flush` from any thread (batching); the port only asks for that on
//!   pool threads, which are certain to come back.
//! * **`poll(timeout, out, poller)`** waits until at least one completion is
//!   available (or the timeout passes, or `notify` is called) and appends every
//!   available completion to `out`. A wake-up from `notify` must never be lost:
//!   a reaper that is not the poller (`poller = false`) and swallows one gives it
//!   back. Completions are produced exactly once each; at most one
//!   thread is sent to `poll` by the scheduler, but a backend must tolerate
//!   `submit` and `cancel` from other threads meanwhile, and a second reaper (a
//!   submitter waiting for room).
//! * **`notify()`** makes a thread blocked in `poll` return soon, even with nothing.
//! * **`cancel(id)`** asks for the operation to stop. The operation's completion
//!   always arrives: with `ECANCELED` if the cancel won, or its real result if it
//!   lost the race. `NotFound` if the id is not in flight.
//! * **`shutdown()`** (port close or drop): refuse new operations, cancel every
//!   operation in flight, and wait until the kernel has released all of them; their
//!   completions (and buffers, and accepted sockets) are dropped.
//! * Results are raw kernel results, converted to `io::Result` in `completion.rs`.

use std::fmt;
use std::io;
use std::time::Duration;

use crate::completion::{Completion, OpId};
use crate::error::{Error, Result};
use crate::op::Op;

pub(crate) mod uring;

/// Which backend drives a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    /// Linux io_uring.
    Uring,
    /// Linux epoll, emulating completions on readiness.
    Epoll,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Uring => "io_uring",
            BackendKind::Epoll => "epoll",
        })
    }
}

/// How to choose a backend: force one, or let the port probe (the default, also
/// settable with `RINGPORT_BACKEND=uring|epoll|auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BackendChoice {
    /// Probe io_uring and use it if it works; otherwise fall back.
    #[default]
    Auto,
    /// io_uring, or an error if it is unavailable.
    Uring,
    /// epoll.
    Epoll,
}

impl std::str::FromStr for BackendChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(BackendChoice::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(BackendChoice::Uring),
            "epoll" => Ok(BackendChoice::Epoll),
            other => Err(Error::Unsupported(format!(
                "unknown backend {other:?}: expected auto, uring or epoll"
            ))),
        }
    }
}

impl BackendChoice {
    /// The choice in `RINGPORT_BACKEND`, or `Auto` when unset. A value that is not
    /// `auto`, `uring` or `epoll` is an error, not a silent default.
    pub fn from_env() -> Result<Self> {
        match std::env::var("RINGPORT_BACKEND") {
            Ok(v) => v.parse(),
            Err(std::env::VarError::NotPresent) => Ok(BackendChoice::Auto),
            Err(e) => Err(Error::Unsupported(format!("RINGPORT_BACKEND: {e}"))),
        }
    }
}

/// The result of `submit`: on `QueueFull` the operation is handed back unchanged.
pub(crate) type SubmitResult = std::result::Result<OpId, (Error, Option<Op>)>;

/// Sizes a backend is built with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) entries: u32,
    pub(crate) max_in_flight: usize,
}

/// The backend a port runs on.
#[derive(Debug)]
pub(crate) enum Backend {
    Uring(uring::Driver),
}

impl Backend {
    /// Builds the backend `choice` asks for. Returns it with the reason it was chosen.
    pub(crate) fn build(choice: BackendChoice, cfg: Config) -> Result<(Backend, String)> {
        match choice {
            BackendChoice::Uring => uring::Driver::new(cfg)
                .map(|d| {
                    (
                        Backend::Uring(d),
                        "forced (builder or RINGPORT_BACKEND=uring)".into(),
                    )
                })
                .map_err(|e| Error::Unsupported(format!("io_uring is unavailable here: {e}"))),
            BackendChoice::Epoll => Err(Error::Unsupported(
                "the epoll backend is not built yet (issue 4)".into(),
            )),
            BackendChoice::Auto => match uring::Driver::new(cfg) {
                Ok(d) => Ok((Backend::Uring(d), "auto: io_uring probe succeeded".into())),
                Err(e) => {
                    tracing::warn!("io_uring unavailable ({e}); no fallback backend is built yet");
                    Err(Error::Unsupported(format!(
                        "io_uring is unavailable ({e}) and the epoll fallback is not built yet"
                    )))
                }
            },
        }
    }

    pub(crate) fn kind(&self) -> BackendKind {
        match self {
            Backend::Uring(_) => BackendKind::Uring,
        }
    }

    pub(crate) fn submit(&self, op: Op, key: u64, user_data: u64, flush: bool) -> SubmitResult {
        match self {
            Backend::Uring(d) => d.submit(op, key, user_data, flush),
        }
    }

    pub(crate) fn poll(
        &self,
        timeout: Option<Duration>,
        out: &mut Vec<Completion>,
        poller: bool,
    ) -> io::Result<()> {
        match self {
            Backend::Uring(d) => d.poll(timeout, out, poller),
        }
    }

    pub(crate) fn flush(&self) {
        match self {
            Backend::Uring(d) => d.flush(),
        }
    }

    pub(crate) fn has_unflushed(&self) -> bool {
        match self {
            Backend::Uring(d) => d.has_unflushed(),
        }
    }

    pub(crate) fn notify(&self) {
        match self {
            Backend::Uring(d) => d.notify(),
        }
    }

    pub(crate) fn cancel(&self, id: OpId) -> Result<()> {
        match self {
            Backend::Uring(d) => d.cancel(id),
        }
    }

    pub(crate) fn shutdown(&self) {
        match self {
            Backend::Uring(d) => d.shutdown(),
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        match self {
            Backend::Uring(d) => d.in_flight(),
        }
    }

    pub(crate) fn max_in_flight(&self) -> usize {
        match self {
            Backend::Uring(d) => d.max_in_flight(),
        }
    }
}
