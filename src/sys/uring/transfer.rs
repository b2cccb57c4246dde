//! `send_file` on io_uring: file → pipe → socket, with two linked `SPLICE`s.
//!
//! # Rounds
//!
//! A transfer is one or more *rounds* of SQEs, each ending in exactly the CQEs
//! it asked for; the record stays in the table (owning the pipe) until the last
//! one is reaped. The user sees one completion, built when the last round ends.
//!
//! * **Fill** — `SPLICE file → pipe` (the *head*, linked with `IOSQE_IO_LINK`)
//!   then `SPLICE pipe → socket` (the *tail*), both of `want` bytes, where `want`
//!   is at most the pipe's capacity: a longer splice into an empty pipe would
//!   come back short anyway. The head's CQE carries the operation's id with
//!   [`LEG_BIT`](super::LEG_BIT) set; the tail's is the id itself.
//!
//!   The kernel severs the link when the head comes back short (`splice` counts a
//!   short result as a failure of the link): the tail then fails with
//!   `ECANCELED` without running, and the pipe holds what the head moved. That
//!   happens at the end of the file (the head moved fewer bytes than asked; `0`
//!   at or past the end), and on error (the pipe is empty).
//! * **Drain** — after a short, non-empty head: one `SPLICE pipe → socket` of the
//!   bytes the pipe holds.
//! * **PollDrain** — after a drain said `EAGAIN` (a socket the caller made
//!   non-blocking: io_uring runs `splice` on a worker thread and does not wait
//!   for writability itself): `POLL_ADD(POLLOUT)` as the head, linked to the
//!   drain.
//!
//! The result is what the last tail moved into the socket. A tail that moved
//! only part of the pipe (a non-blocking socket took part of it; a cancel
//! interrupted it; the peer went away mid-way) ends the transfer with that
//! short count: the caller resubmits from `offset + n`, exactly as after a
//! short `send`.
//!
//! # The pipe
//!
//! Pipes come from a small pool in the driver. A pipe goes back to the pool only
//! if the transfer left it empty (the count of bytes in it is tracked exactly:
//! what heads moved in, minus what tails moved out); otherwise it is closed, so
//! no stale bytes can reach another socket.
//!
//! # Without `SPLICE`
//!
//! A kernel without `IORING_OP_SPLICE` gets the same rounds with a buffer in
//! place of the pipe: `READ file → buffer` linked to `SEND buffer → socket`
//! (`MSG_NOSIGNAL`). One copy through user memory, but still one completion, the
//! same short-count rules, and cancellable like any io_uring request.
//!
//! # Cost
//!
//! io_uring runs every `SPLICE` on an io-wq worker thread, blocking: a transfer
//! to a slow peer holds a kernel worker thread while it waits for room in the
//! socket (and io-wq adds threads as needed, up to `RLIMIT_NPROC`). The file →
//! pipe half only takes page references: no byte is copied in user space, nor
//! between the page cache and the pipe.
//!
//! # Cancel
//!
//! A cancel asks the kernel to cancel both the head and the tail. A request
//! that is not yet running is dropped; one blocked in `splice` on a worker is
//! interrupted (it reports a partial count, or `-ERESTARTSYS`, which
//! `completion.rs` maps to `ECANCELED`). A cancelled transfer starts no further
//! round.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use io_uring::{opcode, squeue, types::Fd};

/// How much a transfer asks of a pipe: `F_SETPIPE_SZ` up to this. The pipe's
/// pages reference the page cache (no copy), but every pipe's size is charged
/// to its user's quota (`fs.pipe-user-pages-soft`, 64 MiB by default) for as
/// long as it is open, and once over the quota new pipes get two pages: 256 KiB
/// lets 256 transfers be in flight at once before that, against 64 for 1 MiB
/// (the most an unprivileged process may ask for), at the price of 4 times as
/// many operations for a large file.
const PIPE_SIZE: i32 = 256 << 10;

/// Pipes kept for reuse by one driver.
pub(super) const PIPE_POOL: usize = 16;

/// The chunk one transfer moves through a user buffer when `SPLICE` is missing.
const BUF_CHUNK: usize = 256 << 10;

/// A pipe used to move file pages to a socket.
#[derive(Debug)]
pub(super) struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    /// Its capacity in bytes.
    cap: usize,
}

impl Pipe {
    /// A new close-on-exec pipe, grown to [`PIPE_SIZE`] where allowed.
    pub(super) fn new() -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array we own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors are new and owned by nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Growing may be refused (the per-user pipe quota); the default size
        // then serves, with smaller chunks.
        // SAFETY: fcntl on a descriptor we own; no memory is passed.
        let mut cap = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        if cap <= 0 {
            // SAFETY: as above.
            cap = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_GETPIPE_SZ) };
        }
        let cap = usize::try_from(cap).unwrap_or(0).max(4096);
        Ok(Pipe { r, w, cap })
    }
}

/// Where the bytes wait between the file and the socket.
#[derive(Debug)]
enum Stage {
    Pipe(Pipe),
    /// The emulation without `SPLICE`: the kernel writes into this buffer (its
    /// heap allocation stays put while the record moves) until the round ends.
    Buf(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    Fill,
    Drain,
    PollDrain,
}

/// What the driver does after a CQE of a transfer.
#[derive(Debug)]
pub(super) enum Step {
    /// The round still waits for a CQE.
    Wait,
    /// Push another round: an optional head (tag it with `LEG_BIT`) and a tail.
    Next(Option<squeue::Entry>, squeue::Entry),
    /// The transfer is over: its raw result.
    Done(i32),
}

/// A `send_file` in flight.
#[derive(Debug)]
pub(super) struct Transfer {
    sock: RawFd,
    stage: Stage,
    round: Round,
    /// What the current round's head and tail were asked to move.
    want: u32,
    /// Bytes in the pipe (or buffer) that no tail has sent.
    held: usize,
    head: Option<i32>,
    tail: Option<i32>,
    /// A cancel was asked for (or the port is closing): no further round.
    cancelled: bool,
}

impl Transfer {
    /// A transfer of `len` bytes of `file` from `offset`, through `pipe` (or a
    /// buffer when `pipe` is `None`: the kernel lacks `SPLICE`). Returns it with
    /// its first round's head and tail.
    pub(super) fn start(
        sock: RawFd,
        file: RawFd,
        offset: u64,
        len: usize,
        pipe: Option<Pipe>,
    ) -> (Transfer, squeue::Entry, squeue::Entry) {
        let (stage, want) = match pipe {
            Some(p) => {
                let want = len.min(p.cap).min(u32::MAX as usize) as u32;
                (Stage::Pipe(p), want)
            }
            None => {
                let want = len.min(BUF_CHUNK);
                // Zeroed: the linked SEND would send whatever the buffer holds
                // if the kernel ran it after a short READ (it fails the link
                // instead; this makes sure no heap bytes could go out).
                (Stage::Buf(vec![0; want]), want as u32)
            }
        };
        let mut t = Transfer {
            sock,
            stage,
            round: Round::Fill,
            want,
            held: 0,
            head: None,
            tail: None,
            cancelled: false,
        };
        let head = match &mut t.stage {
            Stage::Pipe(p) => {
                opcode::Splice::new(Fd(file), offset as i64, Fd(p.w.as_raw_fd()), -1, want).build()
            }
            Stage::Buf(b) => opcode::Read::new(Fd(file), b.as_mut_ptr(), want)
                .offset(offset)
                .build(),
        };
        let tail = t.drain_sqe(want);
        (t, head.flags(squeue::Flags::IO_LINK), tail)
    }

    /// The SQE that moves `n` held bytes into the socket.
    fn drain_sqe(&self, n: u32) -> squeue::Entry {
        match &self.stage {
            Stage::Pipe(p) => {
                opcode::Splice::new(Fd(p.r.as_raw_fd()), -1, Fd(self.sock), -1, n).build()
            }
            // The bytes are at the start of the buffer: a round that sends only
            // part of them ends the transfer, so there is never an offset.
            Stage::Buf(b) => opcode::Send::new(Fd(self.sock), b.as_ptr(), n)
                .flags(libc::MSG_NOSIGNAL)
                .build(),
        }
    }

    /// Marks the transfer cancelled: it starts no further round.
    pub(super) fn cancel(&mut self) {
        self.cancelled = true;
    }

    pub(super) fn is_cancelled(&self) -> bool {
        self.cancelled
    }

    /// Takes one CQE of the current round (`head`: it carried `LEG_BIT`).
    /// `closing`: the port is shutting down, so no further round may start.
    pub(super) fn on_cqe(&mut self, head: bool, res: i32, closing: bool) -> Step {
        if head {
            self.head = Some(res);
        } else {
            self.tail = Some(res);
        }
        let has_head = self.round != Round::Drain;
        let (Some(t), true) = (self.tail, !has_head || self.head.is_some()) else {
            return Step::Wait;
        };
        let h = self.head.take();
        self.tail = None;
        let stop = self.cancelled || closing;
        match self.round {
            Round::Fill => {
                let h = h.expect("a fill round has a head");
                if h < 0 {
                    // The head failed, or a tail that failed to start took the
                    // whole chain down with it: report the tail's own error.
                    return Step::Done(
                        if h == -libc::ECANCELED && t < 0 && t != -libc::ECANCELED {
                            t
                        } else {
                            h
                        },
                    );
                }
                self.held = h as usize;
                if (h as u32) < self.want && t == -libc::ECANCELED {
                    // Short head: the link was severed and the tail never ran.
                    if h == 0 {
                        return Step::Done(0);
                    }
                    if stop {
                        return Step::Done(-libc::ECANCELED);
                    }
                    self.round = Round::Drain;
                    self.want = h as u32;
                    return Step::Next(None, self.drain_sqe(self.want));
                }
                self.drained(t, stop)
            }
            Round::Drain => self.drained(t, stop),
            Round::PollDrain => match h.expect("a poll-drain round has a head") {
                h if h < 0 => Step::Done(if stop { -libc::ECANCELED } else { h }),
                _ => self.drained(t, stop),
            },
        }
    }

    /// The tail of a round that ran: `t` bytes (or an error) into the socket.
    fn drained(&mut self, t: i32, stop: bool) -> Step {
        if t >= 0 {
            let t = (t as usize).min(self.held);
            self.held -= t;
            return Step::Done(t as i32);
        }
        let pipe = matches!(self.stage, Stage::Pipe(_));
        match -t {
            libc::EAGAIN if stop => Step::Done(-libc::ECANCELED),
            libc::EAGAIN if pipe => {
                // A non-blocking socket was full: wait for room, then drain.
                self.round = Round::PollDrain;
                self.want = self.held.min(u32::MAX as usize) as u32;
                let poll = opcode::PollAdd::new(Fd(self.sock), libc::POLLOUT as u32)
                    .build()
                    .flags(squeue::Flags::IO_LINK);
                Step::Next(Some(poll), self.drain_sqe(self.want))
            }
            libc::EINTR if stop => Step::Done(-libc::ECANCELED),
            _ => Step::Done(t),
        }
    }

    /// Ends the transfer: its pipe, if it is empty and may be reused.
    pub(super) fn into_pipe(self) -> Option<Pipe> {
        match self.stage {
            Stage::Pipe(p) if self.held == 0 => Some(p),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(len: usize) -> Transfer {
        let pipe = Pipe::new().expect("a pipe");
        Transfer::start(1, 2, 0, len, Some(pipe)).0
    }

    #[test]
    fn a_full_round_reports_the_tail_in_either_cqe_order() {
        let mut t = fill(1000);
        assert!(matches!(t.on_cqe(false, 1000, false), Step::Wait));
        assert!(matches!(t.on_cqe(true, 1000, false), Step::Done(1000)));
        assert!(t.into_pipe().is_some(), "an emptied pipe is reused");
    }

    #[test]
    fn a_short_head_drains_what_the_pipe_holds() {
        let mut t = fill(1000);
        assert!(matches!(t.on_cqe(true, 300, false), Step::Wait));
        assert!(matches!(
            t.on_cqe(false, -libc::ECANCELED, false),
            Step::Next(None, _)
        ));
        assert!(matches!(t.on_cqe(false, 300, false), Step::Done(300)));
        assert!(t.into_pipe().is_some());
    }

    #[test]
    fn end_of_file_is_zero_and_a_failed_tail_reports_its_own_error() {
        let mut t = fill(1000);
        t.on_cqe(false, -libc::ECANCELED, false);
        assert!(matches!(t.on_cqe(true, 0, false), Step::Done(0)));

        let mut t = fill(1000);
        t.on_cqe(true, -libc::ECANCELED, false);
        assert!(matches!(
            t.on_cqe(false, -libc::ENOTSOCK, false),
            Step::Done(e) if e == -libc::ENOTSOCK
        ));
    }

    #[test]
    fn a_partly_sent_pipe_is_not_reused() {
        let mut t = fill(1000);
        t.on_cqe(true, 1000, false);
        assert!(matches!(t.on_cqe(false, 10, false), Step::Done(10)));
        assert!(t.into_pipe().is_none(), "990 bytes are still in it");

        let mut t = fill(1000);
        t.on_cqe(true, 1000, false);
        assert!(matches!(t.on_cqe(false, -libc::EPIPE, false), Step::Done(e) if e == -libc::EPIPE));
        assert!(t.into_pipe().is_none());
    }

    #[test]
    fn eagain_waits_for_room_unless_cancelled() {
        let mut t = fill(1000);
        t.on_cqe(true, 1000, false);
        assert!(matches!(
            t.on_cqe(false, -libc::EAGAIN, false),
            Step::Next(Some(_), _)
        ));
        t.on_cqe(true, libc::POLLOUT as i32, false);
        assert!(matches!(t.on_cqe(false, 1000, false), Step::Done(1000)));

        let mut t = fill(1000);
        t.cancel();
        t.on_cqe(true, 1000, false);
        assert!(matches!(
            t.on_cqe(false, -libc::EAGAIN, false),
            Step::Done(e) if e == -libc::ECANCELED
        ));
    }

    #[test]
    fn a_short_head_after_a_cancel_ends_the_transfer() {
        let mut t = fill(1000);
        t.cancel();
        t.on_cqe(true, 300, false);
        assert!(matches!(
            t.on_cqe(false, -libc::ECANCELED, false),
            Step::Done(e) if e == -libc::ECANCELED
        ));
        assert!(t.into_pipe().is_none(), "300 bytes are still in it");
    }
}
