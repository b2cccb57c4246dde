//! The port's own error kinds: every outcome of `get`, `submit` and `cancel`
//! that is not the result of an I/O operation.
//!
//! The result of an operation travels inside its [`Completion`](crate::Completion)
//! as an `io::Result` with the real errno; this type is for the port itself.

use std::fmt;
use std::io;
use std::os::fd::RawFd;

/// What the port says when it cannot do what was asked.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// `get` waited for its whole timeout and nothing was queued (IOCP's `WAIT_TIMEOUT`).
    Timeout,
    /// The port was closed (IOCP's `ERROR_ABANDONED_WAIT_0`).
    Closed,
    /// `try_submit` found `max_in_flight` operations already outstanding.
    QueueFull,
    /// `cancel` named an operation that is not in flight (it completed already, or never existed).
    NotFound,
    /// The operation names a file descriptor that was never associated with this port.
    Unassociated(RawFd),
    /// `associate` named a file descriptor that is already associated with this port.
    AlreadyAssociated(RawFd),
    /// The requested backend or operation is not available on this machine, and why.
    Unsupported(String),
    /// A system call the port itself made failed.
    Io(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Timeout => f.write_str("timed out waiting for a completion"),
            Error::Closed => f.write_str("the completion port is closed"),
            Error::QueueFull => f.write_str("max_in_flight operations are already outstanding"),
            Error::NotFound => f.write_str("no such operation in flight"),
            Error::Unassociated(fd) => {
                write!(f, "file descriptor {fd} is not associated with this port")
            }
            Error::AlreadyAssociated(fd) => {
                write!(
                    f,
                    "file descriptor {fd} is already associated with this port"
                )
            }
            Error::Unsupported(why) => write!(f, "unsupported: {why}"),
            Error::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        if let Error::Io(inner) = e {
            return inner;
        }
        let kind = match &e {
            Error::Io(_) => io::ErrorKind::Other,
            Error::Timeout => io::ErrorKind::TimedOut,
            Error::Closed => io::ErrorKind::BrokenPipe,
            Error::QueueFull => io::ErrorKind::WouldBlock,
            Error::NotFound => io::ErrorKind::NotFound,
            Error::Unassociated(_) | Error::AlreadyAssociated(_) => io::ErrorKind::InvalidInput,
            Error::Unsupported(_) => io::ErrorKind::Unsupported,
        };
        io::Error::new(kind, e)
    }
}

/// Shorthand for results whose error is the port's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
