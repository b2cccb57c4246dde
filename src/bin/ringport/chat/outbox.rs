//! A connection's outgoing bytes: lines the hub appends, one writer task
//! drains. Appends coalesce, so a writer that was busy sends everything that
//! came meanwhile in one `write_all`: a broadcast to a room costs each member
//! one send however many messages it carries.
//!
//! The queue is bounded in bytes. A reader too slow for what its rooms say
//! would otherwise hold unbounded memory in the server; past the bound the
//! append fails (`Pushed::Overflow`) and the hub disconnects the member.

use std::future::poll_fn;
use std::sync::Mutex;
use std::task::{Poll, Waker};

/// What an append did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// The line would pass the bound: not queued, and the outbox is closed.
    Overflow,
    /// The outbox was closed before: not queued.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    /// Bytes not yet taken by the writer.
    buf: Vec<u8>,
    /// The writer, when it waits for bytes.
    waker: Option<Waker>,
    /// No more appends; the writer sends what is queued, then ends.
    closed: bool,
}

/// Invariant: `state.buf.len() <= limit`, except that a single line longer
/// than `limit` is never queued at all.
#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    limit: usize,
}

impl Outbox {
    pub(crate) fn new(limit: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            limit,
        }
    }

    /// The most bytes it queues.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain bytes behind: go on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `line` and a newline. The writer's waker, if it waits, is
    /// returned for the caller to wake (after releasing its own locks).
    pub(crate) fn push(&self, line: &str) -> (Pushed, Option<Waker>) {
        let mut st = self.lock();
        if st.closed {
            return (Pushed::Closed, None);
        }
        if st.buf.len() + line.len() + 1 > self.limit {
            st.closed = true;
            return (Pushed::Overflow, st.waker.take());
        }
        st.buf.extend_from_slice(line.as_bytes());
        st.buf.push(b'\n');
        (Pushed::Queued, st.waker.take())
    }

    /// No more appends; the writer sends what is queued and ends. Its waker,
    /// if it waits, is returned for the caller to wake after its own locks.
    pub(crate) fn close(&self) -> Option<Waker> {
        let mut st = self.lock();
        st.closed = true;
        st.waker.take()
    }

    /// `close`, and wakes the writer at once (for a caller holding no lock).
    pub(crate) fn close_and_wake(&self) {
        if let Some(w) = self.close() {
            w.wake();
        }
    }

    /// Waits for queued bytes and takes them all, leaving `spare` (emptied) in
    /// their place. `None`: closed and nothing left.
    pub(crate) async fn take(&self, mut spare: Vec<u8>) -> Option<Vec<u8>> {
        spare.clear();
        let mut spare = Some(spare);
        poll_fn(|cx| {
            let mut st = self.lock();
            if !st.buf.is_empty() {
                let spare = spare.take().unwrap_or_default();
                return Poll::Ready(Some(std::mem::replace(&mut st.buf, spare)));
            }
            if st.closed {
                return Poll::Ready(None);
            }
            match &mut st.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                w => *w = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_closed() {
        let o = Outbox::new(10);
        assert_eq!(o.push("abcd").0, Pushed::Queued); // 5 bytes
        assert_eq!(o.push("abcd").0, Pushed::Queued); // 10 bytes: at the bound
        assert_eq!(o.push("").0, Pushed::Overflow);
        assert_eq!(o.push("a").0, Pushed::Closed);
        let rt = ringport::Runtime::new().unwrap();
        let got = rt.block_on(o.take(Vec::new()));
        assert_eq!(got.as_deref(), Some(&b"abcd\nabcd\n"[..]));
        assert_eq!(rt.block_on(o.take(Vec::new())), None);
    }
}
