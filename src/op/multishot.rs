//! Multishot operations (`Op::accept_multishot`, `Op::recv_multishot`); their
//! public documentation is in `provided.rs` (the `ringport::provided` page).

use std::os::fd::AsFd;

use crate::completion::Completion;
use crate::provided::{BufferPool, PooledBuf};

use super::{raw, Op, OpBody};

impl Op {
    /// Accepts connections on a listening socket until cancelled or failed:
    /// one completion per connection, each with the accepted socket
    /// (close-on-exec) in [`Completion::take_fd`], and
    /// [`more`](Completion::more) set while the accept stays armed. See the
    /// [module docs](crate::provided#multishot-operations) for the final completion.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use ringport::{CompletionPort, Op};
    /// use std::time::Duration;
    /// let port = CompletionPort::new()?;
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// port.associate(&listener, 1)?;
    /// let id = port.submit(Op::accept_multishot(&listener), 0)?;
    /// let clients: Vec<_> = (0..3)
    ///     .map(|_| std::net::TcpStream::connect(listener.local_addr().unwrap()))
    ///     .collect::<Result<_, _>>()?;
    /// for _ in 0..3 {
    ///     let mut c = port.get(Some(Duration::from_secs(10)))?;
    ///     assert!(c.more() && c.take_fd().is_some());
    /// }
    /// port.cancel(id)?;
    /// let end = port.get(Some(Duration::from_secs(10)))?;
    /// assert!(end.is_cancelled() && !end.more());
    /// # drop(clients);
    /// # Ok(())
    /// # }
    /// ```
    pub fn accept_multishot(listener: &impl AsFd) -> Op {
        Op::new(OpBody::AcceptMulti { fd: raw(listener) })
    }

    /// Receives from a connected socket into buffers of `pool`, taken only
    /// when data arrives (so a connection waiting for data holds none): one
    /// completion per chunk received, its bytes in
    /// [`Completion::take_pooled`], until EOF (`Ok(0)`), an error, a cancel,
    /// or an empty pool (`ENOBUFS`, nothing lost: submit again once buffers
    /// are back). See the [module docs](crate::provided#multishot-operations) and
    /// [`provided`](crate::provided) for an example.
    ///
    /// On a datagram socket (UDP) each completion is one datagram, cut to
    /// the pool's buffer size if longer (the rest is lost). An empty
    /// datagram *ends* the receive with `Ok(0)`, as end of stream does, on
    /// both backends (io_uring's multishot receive stops at a zero-length
    /// result): it is not an end there, so submit the receive again; the
    /// datagrams behind it wait in the socket.
    ///
    /// `pool` must come from the same port (otherwise the operation fails
    /// with `EINVAL`). Submitted while the pool has no buffer free, it ends
    /// at once with `ENOBUFS` on both backends.
    ///
    /// On a stream socket it keeps its place among the socket's receives,
    /// on both backends: a `recv` (or `recv_from`) submitted before it is
    /// served first, and one submitted after it waits until it has ended.
    pub fn recv_multishot(socket: &impl AsFd, pool: &BufferPool) -> Op {
        Op::new(OpBody::RecvMulti {
            fd: raw(socket),
            pool: pool.shared.clone(),
            flags: 0,
        })
    }
}

impl Completion {
    /// True if more completions of the same operation will follow (a
    /// multishot operation that is still armed). False for every one-shot
    /// operation, and for a multishot operation's final completion.
    pub fn more(&self) -> bool {
        self.more
    }

    /// For a [`recv_multishot`](Op::recv_multishot) completion that received
    /// data: the buffer holding it (`len()` = the result). Dropping it gives
    /// the buffer back to its pool. `None` otherwise, and once taken.
    pub fn take_pooled(&mut self) -> Option<PooledBuf> {
        self.pooled.take()
    }

    /// The received bytes of a [`recv_multishot`](Op::recv_multishot)
    /// completion, without taking the buffer.
    pub fn pooled(&self) -> Option<&[u8]> {
        self.pooled.as_deref()
    }

    /// The place of this completion among its operation's completions: 0,
    /// 1, 2, … for a multishot operation (its final completion included);
    /// always 0 for a one-shot operation.
    ///
    /// Completions are queued in this order, but several threads dequeuing
    /// from one port may *handle* two completions of one operation at once,
    /// and then either may take a lock first. A handler that must process
    /// them in order (a stream's bytes) orders them by `seq`.
    pub fn seq(&self) -> u32 {
        self.seq
    }

    /// Builds a multishot operation's completion: `more` set unless final,
    /// with the buffer a receive filled, and its place `seq`.
    pub(crate) fn multishot(
        mut self,
        more: bool,
        pooled: Option<PooledBuf>,
        seq: u32,
    ) -> Completion {
        self.more = more;
        self.pooled = pooled;
        self.seq = seq;
        self
    }
}
