//! # ringport — the I/O Completion Port model for Linux
//!
//! ringport brings Windows' IOCP to Linux, on io_uring, with an epoll fallback
//! for where io_uring is forbidden. Three layers, each usable alone:
//!
//! 1. **The port** — [`CompletionPort`]: [`submit`](CompletionPort::submit) an
//!    operation (it owns its buffer), later [`get`](CompletionPort::get) its
//!    [`Completion`] on any thread; [`post`](CompletionPort::post) user packets;
//!    [`cancel`](CompletionPort::cancel); [`close`](CompletionPort::close).
//! 2. **The pool** — [`Pool`]: worker threads that drain a port under IOCP's rules:
//!    at most N handlers run at once, completions are handed out FIFO, the most
//!    recently idle thread is woken first, [`blocking`] releases a slot, and a
//!    stall detector catches handlers that block without saying so.
//! 3. **The async face** — [`Runtime`]: `async` Rust on the pool. Tasks are
//!    completion packets ([`spawn`]); [`net`], [`fs`] and [`time`] submit
//!    operations that take and return owned buffers; streams also implement the
//!    `futures-io` traits.
//!
//! | IOCP | ringport |
//! |---|---|
//! | `CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, N)` | `CompletionPort::builder().concurrency(N).build()` |
//! | `CreateIoCompletionPort(handle, port, key, 0)` | `port.associate(&handle, key)` |
//! | `ReadFile`/`WSARecv`/`AcceptEx` (overlapped) | `port.submit(Op::read_at(..), user_data)` |
//! | `GetQueuedCompletionStatus(timeout)` | `port.get(timeout)` |
//! | `GetQueuedCompletionStatusEx` | `port.get_many(&mut out, max, timeout)` |
//! | `PostQueuedCompletionStatus` | `port.post(key, user_data, bytes)` |
//! | `CancelIoEx` | `port.cancel(op_id)` |
//! | `CloseHandle(port)` | `port.close()` |
//!
//! | backend | status |
//! |---|---|
//! | io_uring | one shared ring; see `docs/design.md` |
//! | epoll | completions emulated on readiness; files on worker threads |
//!
//! ```
//! use ringport::{CompletionPort, Op};
//! use std::io::Write;
//! use std::time::Duration;
//!
//! let port = CompletionPort::new()?;
//! let mut file = tempfile_in_tmp()?;
//! file.write_all(b"hello, port")?;
//! port.associate(&file, 1)?;
//! port.submit(Op::read_at(&file, Vec::with_capacity(64), 7), 99)?;
//! let c = port.get(Some(Duration::from_secs(5)))?;
//! assert_eq!((c.key, c.user_data), (1, 99));
//! assert_eq!(c.result?, 4);
//! assert_eq!(c.buf.unwrap(), b"port");
//! # fn tempfile_in_tmp() -> std::io::Result<std::fs::File> {
//! #     let p = std::env::temp_dir().join(format!("ringport-doc-{}", std::process::id()));
//! #     let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&p)?;
//! #     std::fs::remove_file(&p)?;
//! #     Ok(f)
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod completion;
mod error;
mod fixed;
pub mod fs;
pub mod net;
pub mod op;
mod pool;
mod port;
pub mod provided;
pub mod rt;
mod sched;
mod sync;
mod sys;
pub mod time;

pub use completion::{Completion, OpId};
pub use error::{Error, Result};
pub use fixed::{FixedBuf, FixedBuffers, MAX_FIXED_BUFFERS, MAX_FIXED_SIZE};
pub use op::{Op, OpKind};
pub use pool::{Pool, PoolBuilder};
pub use port::{
    batch_submissions, blocking, long_lived_thread, num_cpus, Builder, CompletionPort, PortStats,
    Submitted,
};
pub use provided::{BufferPool, PooledBuf};
pub use rt::{spawn, spawn_blocking, yield_now, Handle, JoinError, JoinHandle, Runtime};
pub use sched::{Priority, SchedStats, AGE_LIMIT};
pub use sys::{BackendChoice, BackendKind};

/// What `ringport info` reports about io_uring on this machine.
pub mod info {
    /// Names with a yes/no each, as `ringport info` prints them.
    pub type Flags = Vec<(&'static str, bool)>;

    /// Setup features and opcodes found by probing io_uring, or why probing failed.
    pub fn uring_probe() -> std::io::Result<(Flags, Flags)> {
        crate::sys::uring::probe().map(|p| (p.features, p.ops))
    }
}
