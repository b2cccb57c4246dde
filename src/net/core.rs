//! What every async handle is made of: its descriptor, associated with the
//! runtime's port, plus (for streams) the read and write state shared by the
//! owned-buffer API and the `futures-io` traits.
//!
//! ## Reads lose nothing
//!
//! A read future dropped while its receive is in flight (a `select`, a timeout,
//! an abort) asks the port to cancel the receive, but does not throw it away: the
//! in-flight receive moves to the stream's `pending` list. If the cancel wins, it
//! completes with `ECANCELED` and is forgotten. If the kernel had already received
//! data into it, those bytes are kept (`stash`) and the **next read on the stream
//! returns them first**; an end-of-stream or an error it met is likewise reported
//! by the next read. So dropping a read never loses or reorders stream bytes. A
//! new receive is only submitted once `pending` is empty and the stash is drained.
//!
//! ## Writes
//!
//! A send is first tried right away, on the task's thread: one
//! `send(MSG_DONTWAIT)` (`stream::try_send_now`). When the socket's buffer has
//! room — nearly always for a request-sized reply — the write is done in its
//! first poll: no operation, no completion through the port, no second wake-up
//! of the task. Only `EAGAIN` (or the rest of a short send) goes through the
//! port. On io_uring this trades the ring's batching of sends for a system
//! call each, which measured cheaper for the async face at 1 and 1000
//! connections and dearer at 64 (docs/design.md, "Sends on io_uring"). On
//! epoll the port's submit would try the same send inline, but around it
//! builds an operation, a registry slot and a completion: about 1,000 user
//! instructions per send (docs/design.md, "Sends on io_uring in the async face", its part "On
//! epoll too"). After 16
//! sends in a row finish this way, one goes through the port, so a task that
//! only writes still yields. `RINGPORT_INLINE_SENDS=off` sends through the
//! port (for measurements; on epoll the port's submit still tries each send
//! at once).
//!
//! A dropped write future cancels its send; some of its bytes may already have
//! been sent (a stream cannot take them back), so after dropping a write the
//! caller does not know how much of it went out. The `AsyncWrite` impl writes
//! behind: `poll_write` sends what fits at once (above); otherwise it
//! copies the bytes into the stream's own buffer, starts the send and returns
//! at once; the next `poll_write`/`poll_flush` waits for it (resubmitting the
//! rest of a short send) and reports its error, if any. An owned-buffer `write`
//! or `write_all` first waits the same way for such a send to be all out (and
//! reports its error, if any), so the two keep their order. Flush before
//! dropping to see every error: a send still in flight when the stream is
//! dropped is allowed to finish (not cancelled), the rest of a short one
//! included, by a task of its own, and the descriptor is closed after it.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Wake, Waker};

use super::inline::InlineReads;
use crate::completion::Completion;
use crate::op::Op;
use crate::rt::op::{Hold, OpFuture};
use crate::rt::{Handle, IO_KEY};
use crate::sync::lock;

/// Largest receive `poll_read` asks the kernel for, and largest write-behind copy.
const IO_CHUNK: usize = 64 * 1024;

/// A descriptor associated with a runtime's port. Dropping the last reference
/// (the handle, and every operation still in flight on it) ends the association
/// and closes the descriptor.
pub(crate) struct Core {
    pub(crate) fd: OwnedFd,
    pub(crate) rt: Handle,
    /// False only while `read` holds nothing (no stash, outcome or pending
    /// receive): then a read skips the lock. Set under the lock whenever
    /// something is left there, cleared under it when the last is taken.
    read_dirty: AtomicBool,
    read: Mutex<ReadState>,
    /// Reads tried inline before a receive is submitted (`inline.rs`).
    inline: InlineReads,
    /// Sends tried inline before a send is submitted (`stream.rs`), unless
    /// `RINGPORT_INLINE_SENDS=off`.
    pub(crate) send_inline: bool,
    write: Mutex<WriteState>,
}

/// Everyone waiting on one of the stream's own operations: a receive in
/// `ReadState::pending`, or the write-behind send. An operation's slot keeps
/// one waker; such an operation is polled with this fan's, which wakes every
/// waiter registered since the last wake-up. With the pollers' own wakers
/// the slot kept the last one's alone: when that poller had given up (its
/// future dropped by a timeout, a select, an abort) the wake-up was lost, and
/// every other waiter slept for ever (session 16's review: two readers of a
/// shared stream behind an abandoned `poll_read`; an owned write behind a
/// write-behind send). A waiter that gave up now costs a spurious wake-up.
///
/// A waiter registers *before* it polls the operation: a completion between
/// the two then finds it in the list.
struct Fan {
    wakers: Mutex<Vec<Waker>>,
}

impl Fan {
    fn register(&self, w: &Waker) {
        let mut ws = lock(&self.wakers);
        if !ws.iter().any(|x| x.will_wake(w)) {
            ws.push(w.clone());
        }
    }

    /// Wakes everyone registered but `me` (who is running), and forgets them
    /// all, `me` too.
    fn wake_others(&self, me: &Waker) {
        let ws = std::mem::take(&mut *lock(&self.wakers));
        for w in ws {
            if !w.will_wake(me) {
                w.wake();
            }
        }
    }
}

impl Wake for Fan {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Taken out of the lock first: a waker may run its task at once.
        let ws = std::mem::take(&mut *lock(&self.wakers));
        for w in ws {
            w.wake();
        }
    }
}

/// A [`Fan`] and the waker that wakes it.
struct FanOut {
    fan: Arc<Fan>,
    waker: Waker,
}

impl Default for FanOut {
    fn default() -> Self {
        let fan = Arc::new(Fan {
            wakers: Mutex::new(Vec::new()),
        });
        FanOut {
            waker: Waker::from(fan.clone()),
            fan,
        }
    }
}

#[derive(Default)]
struct ReadState {
    /// Bytes received but not yet returned (from a dropped read or a larger
    /// internal receive); `stash[pos..]` is unread.
    stash: Vec<u8>,
    pos: usize,
    /// An end-of-stream or error a dropped read met, for the next reader.
    outcome: Option<io::Result<()>>,
    /// Receives in flight that no future owns any more, oldest first. Polled
    /// with `fan`'s waker.
    pending: VecDeque<OpFuture>,
    fan: FanOut,
}

#[derive(Default)]
struct WriteState {
    /// The write-behind send in flight, and the position it was sent from.
    op: Option<OpFuture>,
    pos: usize,
    /// A spare buffer for the next write-behind copy.
    spare: Vec<u8>,
    /// Everyone waiting for the send in flight (owned writes of several
    /// tasks, `poll_flush`); the send is polled with its waker.
    fan: FanOut,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core").field("fd", &self.fd).finish()
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        // The last reference: no operation is in flight on the descriptor any
        // more. End the association before the descriptor closes (the field drop
        // after this), so its number, when reused, is not mistaken for it.
        let _ = self.rt.shared.port.disassociate_idle(&self.fd);
    }
}

impl AsFd for Core {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Core {
    /// Associates `fd` with the runtime's port.
    pub(crate) fn new(rt: Handle, fd: OwnedFd) -> io::Result<Arc<Core>> {
        rt.shared.port.associate(&fd, IO_KEY)?;
        let epoll = rt.shared.port.backend() == crate::BackendKind::Epoll;
        Ok(Arc::new(Core {
            fd,
            rt,
            read_dirty: AtomicBool::new(false),
            read: Mutex::new(ReadState::default()),
            inline: InlineReads::new(epoll),
            send_inline: crate::sys::inline_sends_enabled(),
            write: Mutex::new(WriteState::default()),
        }))
    }

    /// An operation on this descriptor, keeping it open until the kernel is done.
    pub(crate) fn op(self: &Arc<Self>, op: Op) -> OpFuture {
        let hold: Hold = self.clone();
        OpFuture::new(self.rt.shared.clone(), op, Some(hold))
    }

    /// Runs `op` and returns its completion.
    pub(crate) async fn run(self: &Arc<Self>, op: Op) -> io::Result<Completion> {
        self.op(op).await
    }

    /// Called when the user's handle is dropped: receives nobody will read are
    /// cancelled; a write-behind send is let finish, with the rest of a short
    /// send: a task of its own flushes it (`poll_flush_writes`), and the
    /// descriptor closes when that task ends. (Forgetting the send instead
    /// lost the rest of a short one: `poll_write` had already reported those
    /// bytes written.)
    pub(crate) fn release(self: &Arc<Self>) {
        let pending = std::mem::take(&mut lock(&self.read).pending);
        drop(pending); // each detaches: cancelled, completion dropped
        if lock(&self.write).op.is_some() {
            let core = self.clone();
            // A runtime already shut down cancels the task, and with it the send.
            drop(self.rt.spawn(async move {
                if let Err(e) = std::future::poll_fn(|cx| core.poll_flush_writes(cx)).await {
                    tracing::debug!("a dropped stream's last write failed: {e}");
                }
            }));
        }
    }

    /// Takes what a dropped read left for the next reader into `buf`'s capacity.
    /// `None`: nothing left, submit a receive.
    fn take_left(st: &mut ReadState, buf: &mut Vec<u8>) -> Option<io::Result<usize>> {
        if st.pos < st.stash.len() {
            let n = buf.capacity().min(st.stash.len() - st.pos);
            buf.clear();
            buf.extend_from_slice(&st.stash[st.pos..st.pos + n]);
            st.pos += n;
            if st.pos == st.stash.len() {
                st.stash.clear();
                st.pos = 0;
            }
            return Some(Ok(n));
        }
        st.outcome.take().map(|r| r.map(|()| 0))
    }

    /// Waits for the orphaned receives, folding their data into the stash.
    fn poll_pending(st: &mut ReadState, cx: &mut Context<'_>) -> Poll<()> {
        if st.pending.is_empty() {
            return Poll::Ready(());
        }
        let waker = st.fan.waker.clone();
        let mut fan_cx = Context::from_waker(&waker);
        while let Some(front) = st.pending.front_mut() {
            st.fan.fan.register(cx.waker());
            let r = ready!(front.poll_op(&mut fan_cx));
            st.pending.pop_front();
            Self::absorb(st, r);
        }
        Poll::Ready(())
    }

    fn absorb(st: &mut ReadState, r: io::Result<Completion>) {
        let c = match r {
            Ok(c) => c,
            Err(e) => {
                st.outcome.get_or_insert(Err(e));
                return;
            }
        };
        match c.result {
            Ok(0) => {
                st.outcome.get_or_insert(Ok(()));
            }
            Ok(_) => {
                let data = c.buf.unwrap_or_default();
                if st.pos == st.stash.len() {
                    st.stash = data;
                    st.pos = 0;
                } else {
                    st.stash.extend_from_slice(&data);
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {}
            Err(e) => {
                st.outcome.get_or_insert(Err(e));
            }
        }
    }

    /// One owned-buffer read step: leftovers first, else start a receive.
    fn poll_read_owned(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
        buf: &mut Option<Vec<u8>>,
        op: &mut Option<OpFuture>,
    ) -> Poll<(io::Result<usize>, Vec<u8>)> {
        if op.is_none() {
            let b = buf.as_mut().expect("read polled after completion");
            if b.capacity() == 0 {
                return Poll::Ready((Ok(0), buf.take().unwrap_or_default()));
            }
            if self.read_dirty.load(Ordering::Acquire) {
                let mut st = lock(&self.read);
                ready!(Self::poll_pending(&mut st, cx));
                let left = Self::take_left(&mut st, b);
                self.update_dirty(&st);
                if let Some(r) = left {
                    return Poll::Ready((r, buf.take().unwrap_or_default()));
                }
            }
            // Nothing a dropped read left is waiting: the bytes may be
            // taken here, in stream order (`inline.rs`).
            let mut b = buf.take().unwrap_or_default();
            if let Some(r) = self.inline.try_recv_vec(self.fd.as_fd(), &mut b) {
                return Poll::Ready((r, b));
            }
            *op = Some(self.op(Op::recv(&self.fd, b)));
        }
        let r = ready!(op.as_mut().expect("set above").poll_op(cx));
        *op = None;
        Poll::Ready(match r {
            Ok(c) => (c.result, c.buf.unwrap_or_default()),
            Err(e) => (Err(e), Vec::new()),
        })
    }

    /// A read future dropped with its receive in flight: cancel it, keep it.
    fn orphan_read(&self, mut op: OpFuture) {
        op.cancel();
        let mut st = lock(&self.read);
        st.pending.push_back(op);
        self.read_dirty.store(true, Ordering::Release);
    }

    /// Records, under the read lock, whether anything is left for a reader.
    fn update_dirty(&self, st: &ReadState) {
        let dirty = st.pos < st.stash.len() || st.outcome.is_some() || !st.pending.is_empty();
        self.read_dirty.store(dirty, Ordering::Release);
    }

    /// `AsyncRead`: leftovers first, else a receive the stream owns.
    pub(crate) fn poll_read_into(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
        dst: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if dst.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut st = lock(&self.read);
        // This path parks its receive in `pending`; the flag says so until the
        // state is empty again.
        self.read_dirty.store(true, Ordering::Release);
        let r = self.poll_read_into_locked(&mut st, cx, dst);
        self.update_dirty(&st);
        r
    }

    fn poll_read_into_locked(
        self: &Arc<Self>,
        st: &mut ReadState,
        cx: &mut Context<'_>,
        dst: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(Self::poll_pending(st, cx));
            if st.pos < st.stash.len() {
                let n = dst.len().min(st.stash.len() - st.pos);
                dst[..n].copy_from_slice(&st.stash[st.pos..st.pos + n]);
                st.pos += n;
                if st.pos == st.stash.len() {
                    st.stash.clear();
                    st.pos = 0;
                }
                return Poll::Ready(Ok(n));
            }
            if let Some(r) = st.outcome.take() {
                return Poll::Ready(r.map(|()| 0));
            }
            // Nothing left over: the bytes may be taken here (`inline.rs`).
            if let Some(r) = self.inline.try_recv(self.fd.as_fd(), dst) {
                return Poll::Ready(r);
            }
            let want = dst.len().clamp(4096, IO_CHUNK);
            let buf = if st.stash.capacity() >= want {
                std::mem::take(&mut st.stash)
            } else {
                Vec::with_capacity(want)
            };
            let op = self.op(Op::recv(&self.fd, buf));
            st.pending.push_back(op);
        }
    }

    /// `AsyncWrite::poll_write`: waits for the previous write-behind send, then
    /// copies `src` and starts the next.
    pub(crate) fn poll_write_from(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
        src: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut st = lock(&self.write);
        ready!(self.poll_write_done(&mut st, cx))?;
        if src.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // A send with room goes at once, from `src` itself.
        if let Some(r) = super::stream::try_send_now(self, src, false) {
            return Poll::Ready(r);
        }
        let n = src.len().min(IO_CHUNK);
        let mut buf = std::mem::take(&mut st.spare);
        buf.clear();
        buf.extend_from_slice(&src[..n]);
        let mut op = self.op(Op::send(&self.fd, buf));
        op.start(&mut Context::from_waker(&st.fan.waker));
        st.op = Some(op);
        st.pos = 0;
        Poll::Ready(Ok(n))
    }

    /// True when no `AsyncWrite` send is in flight, so an owned write may go
    /// inline without overtaking it (`stream::try_send_now`). A write lock
    /// held elsewhere counts as in flight: the owned write then goes through
    /// the port, behind whatever that holder submits.
    pub(crate) fn no_write_behind(&self) -> bool {
        self.write.try_lock().is_ok_and(|st| st.op.is_none())
    }

    /// Waits until no write-behind send is in flight.
    pub(crate) fn poll_flush_writes(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let mut st = lock(&self.write);
        self.poll_write_done(&mut st, cx)
    }

    fn poll_write_done(
        self: &Arc<Self>,
        st: &mut WriteState,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if st.op.is_none() {
            return Poll::Ready(Ok(()));
        }
        let mut fan_cx = Context::from_waker(&st.fan.waker);
        while let Some(op) = st.op.as_mut() {
            // Again for each send: `wake_others` below forgets this waiter
            // too, and a short send's rest is waited for in this same loop.
            st.fan.fan.register(cx.waker());
            let r = ready!(op.poll_op(&mut fan_cx));
            st.op = None;
            // Whoever else waited polls again: the next send, or none. (A
            // send that finished inside its submit woke nobody.)
            st.fan.fan.wake_others(cx.waker());
            let c = r?;
            let buf = c.buf.unwrap_or_default();
            let sent = match c.result {
                Ok(n) => n,
                // Nothing here cancels a write-behind send; the kernel does,
                // when the thread that submitted it exits (io_uring cancels
                // a thread's requests at its exit: a `block_on` thread that
                // returned, the stream living on). A cancelled send sent
                // nothing: it goes again, from this thread. At shutdown the
                // port refuses it, and that error ends the loop.
                Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => 0,
                Err(e) => return Poll::Ready(Err(e)),
            };
            let end = st.pos + sent;
            if end < buf.len() {
                // Short send: the rest goes next, from the same buffer.
                let mut next = self.op(Op::send_from(&self.fd, buf, end));
                next.start(&mut fan_cx);
                st.op = Some(next);
                st.pos = end;
            } else {
                st.spare = buf;
                st.pos = 0;
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// An owned-buffer read on a stream: the future `TcpStream::read` and
/// `UnixStream::read` return.
pub(crate) struct ReadFuture {
    core: Arc<Core>,
    buf: Option<Vec<u8>>,
    op: Option<OpFuture>,
}

impl ReadFuture {
    pub(crate) fn new(core: Arc<Core>, buf: Vec<u8>) -> Self {
        ReadFuture {
            core,
            buf: Some(buf),
            op: None,
        }
    }
}

impl std::future::Future for ReadFuture {
    type Output = (io::Result<usize>, Vec<u8>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.core.poll_read_owned(cx, &mut this.buf, &mut this.op)
    }
}

impl Drop for ReadFuture {
    fn drop(&mut self) {
        if let Some(op) = self.op.take() {
            if op.in_flight() {
                self.core.orphan_read(op);
            }
        }
    }
}

/// A listener's accept (`TcpListener`, `UnixListener`): a connection already
/// waiting is taken on the task's thread (`accept_now`), else the accept goes
/// through the port. Dropping the future cancels the accept; a connection
/// accepted anyway is closed, never leaked.
pub(super) async fn accept(core: &Arc<Core>) -> io::Result<OwnedFd> {
    if let Some(r) = accept_now(&core.fd) {
        return r;
    }
    let mut c = core.run(Op::accept(&core.fd)).await?;
    let fd = c.take_fd();
    c.result?;
    fd.ok_or_else(|| io::Error::other("accept completed without a socket"))
}

/// The error asking an accepted socket for its peer gives when the client
/// reset the connection before it was accepted (`ENOTCONN`; `ECONNABORTED`
/// is what `accept4` itself says when asked for the address).
pub(super) fn gone_before_accept(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED))
}

/// An accept on a listener (made non-blocking by the listener's constructor)
/// tried on the task's thread first: one `accept4`, if the thread's inline
/// budget allows (`rt::op::inline_turn`: 16 in a row, then one through
/// the port). `None` if nobody is waiting (or a signal interrupted it, or the
/// budget is spent): the caller waits through the port. See docs/design.md,
/// "Accepts in the async face".
fn accept_now(fd: &OwnedFd) -> Option<io::Result<OwnedFd>> {
    use std::os::fd::{AsRawFd, FromRawFd};
    if !crate::rt::op::inline_turn() {
        return None;
    }
    // SAFETY: accept4 on a descriptor the caller's listener owns (open for
    // as long as the borrow), with no address buffers to write.
    let r = unsafe {
        libc::accept4(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if r >= 0 {
        // SAFETY: a descriptor accept4 just made: nobody else owns it.
        return Some(Ok(unsafe { OwnedFd::from_raw_fd(r) }));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN | libc::EINTR) => None,
        _ => Some(Err(e)),
    }
}
