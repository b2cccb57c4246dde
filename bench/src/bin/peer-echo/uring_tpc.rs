//! A hand-written io_uring thread-per-core echo server on the `io-uring` crate:
//! the practical limit for a completion-based server (the "raw io_uring server"
//! of measured.md).
//!
//! One thread per CPU (`available_parallelism`), each with its own `SO_REUSEPORT`
//! listener on the same address and its own ring, built in that thread with
//! `SINGLE_ISSUER | DEFER_TASKRUN` (falling back to `COOP_TASKRUN | TASKRUN_FLAG`,
//! then to neither, if the kernel refuses; stderr says which; `--taskrun` asks
//! for a weaker one, for A/B runs). Each thread loops
//! on one `submit_and_wait(1)`: it submits what the previous batch of completions
//! queued, waits for at least one completion, handles all there are, repeats.
//!
//! - Accepting: one multishot accept per thread. When it ends it is re-armed, at
//!   once after a success and 10 ms later (a timeout request) after an error such
//!   as EMFILE, so that an error does not spin.
//! - Receiving: one multishot recv per connection, taking 4096-byte buffers from
//!   the thread's provided-buffer ring (1024 buffers). A completion without
//!   `IORING_CQE_F_MORE` means the recv ended (ENOBUFS when the ring ran dry, or
//!   the kernel ending it): it is re-armed unless the connection is closing or
//!   paused.
//! - Sending: a received chunk is copied into the connection's `out` Vec and its
//!   buffer goes back to the ring at once, so a peer that reads slowly never
//!   holds ring buffers and the ring runs dry only for a burst (the copy is at
//!   most 4 KiB). A connection has one `Send` in flight at a time (two sends on
//!   one stream could interleave); chunks arriving meanwhile are appended to
//!   `queued`, which is sent when the send in flight is done; a short send is
//!   resubmitted for the rest.
//! - Flow control: a peer that sends but does not read makes `out` and `queued`
//!   grow up to [`MAX_PENDING`] (64 MiB, the largest `ringport bench echo`
//!   message, because that client writes a whole message before reading the
//!   echo); then its recv is cancelled until everything is sent.
//! - Closing: on EOF, a reset or any error, every request on the descriptor is
//!   cancelled with one `AsyncCancel2` by descriptor, and the descriptor is
//!   closed when no request on it is left, so a later connection that gets the
//!   same number never sees a completion of the old one.
//! - Stopping: the main thread waits for SIGINT/SIGTERM and writes an eventfd on
//!   which every ring has a poll request (the wake-up of epoll_tpc).

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::epoll_tpc::{close, cvt, listeners, setsockopt_int};
use crate::{sig, spin, BUF};

/// Buffers in each thread's provided-buffer ring (a power of two).
const NBUF: u16 = 1024;
/// The buffer group id of that ring.
const BGID: u16 = 0;
/// Submission queue entries per ring.
const SQ_ENTRIES: u32 = 1024;
/// Completion queue entries per ring: multishot recvs complete in bursts.
const CQ_ENTRIES: u32 = 16384;
/// Bytes a connection may have waiting to be sent before its recv is paused.
const MAX_PENDING: usize = 64 << 20;
/// A connection's idle Vecs keep at most this much capacity.
const KEEP: usize = 64 << 10;

/// `user_data` is `fd << KIND_BITS | kind`.
const KIND_BITS: u32 = 3;
const ACCEPT: u64 = 0;
const RECV: u64 = 1;
const SEND: u64 = 2;
/// An `AsyncCancel`/`AsyncCancel2` on a connection.
const CANCEL: u64 = 3;
/// The poll on the stop eventfd.
const STOP: u64 = 4;
/// The timeout after which a failed accept is re-armed.
const RETRY: u64 = 5;

fn ud(fd: RawFd, kind: u64) -> u64 {
    ((fd as u64) << KIND_BITS) | kind
}

/// `struct io_uring_buf` of `<linux/io_uring.h>`: one entry of a buffer ring.
/// The `resv` field of entry 0 is the ring's tail, which the kernel reads.
#[repr(C)]
struct BufEntry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

/// An anonymous read-write mapping of `len` bytes (page-aligned, zeroed).
fn map(len: usize) -> io::Result<*mut u8> {
    // SAFETY: an anonymous private mapping with no address hint touches no
    // existing memory; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p.cast())
}

/// A provided-buffer ring and its `NBUF` buffers of `BUF` bytes, each in an
/// anonymous mapping owned by this value.
///
/// Invariant: every buffer id is either in the ring (between the kernel's head
/// and `tail`) or held by this thread (named by a recv completion and not given
/// back yet), never both. So at most `NBUF` entries are in the ring, and the
/// entry at `tail` (mod `NBUF`), which is the one written next, is never one the
/// kernel has yet to take.
struct BufRing {
    entries: *mut BufEntry,
    bufs: *mut u8,
    /// Our copy of the ring's tail; the kernel sees it once stored in entry 0.
    tail: u16,
}

const RING_BYTES: usize = NBUF as usize * std::mem::size_of::<BufEntry>();
const BUFS_BYTES: usize = NBUF as usize * BUF;

impl BufRing {
    fn new() -> io::Result<BufRing> {
        let entries = map(RING_BYTES)?.cast::<BufEntry>();
        let bufs = match map(BUFS_BYTES) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: `entries` is the mapping of RING_BYTES made above,
                // used by nothing yet.
                unsafe { libc::munmap(entries.cast(), RING_BYTES) };
                return Err(e);
            }
        };
        let mut r = BufRing {
            entries,
            bufs,
            tail: 0,
        };
        for bid in 0..NBUF {
            r.give_back(bid);
        }
        Ok(r)
    }

    /// Registers the ring as buffer group `BGID` of `ring`.
    fn register(&self, ring: &IoUring) -> io::Result<()> {
        // SAFETY: the entries' mapping is page-aligned and holds NBUF entries;
        // it and the buffers stay mapped until this BufRing is dropped, which
        // `Worker` does only after dropping `ring` (field order).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(self.entries as u64, NBUF, BGID, 0)
        }
    }

    /// The first `len` bytes of buffer `bid`, which a recv completion has handed to us.
    fn chunk(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < NBUF && len <= BUF, "buffer {bid} of {len} bytes");
        // SAFETY: the range is inside the buffers' mapping (checked above). The
        // kernel filled the buffer before posting the completion that named it
        // and does not write it again until `give_back` puts it in the ring,
        // which needs `&mut self` and so ends this borrow first.
        unsafe { std::slice::from_raw_parts(self.bufs.add(bid as usize * BUF), len) }
    }

    /// Puts buffer `bid` back in the ring and publishes the new tail.
    fn give_back(&mut self, bid: u16) {
        assert!(bid < NBUF);
        let slot = (self.tail & (NBUF - 1)) as usize;
        // SAFETY: `slot` < NBUF is inside the entries' mapping and, by the
        // invariant, not an entry the kernel reads now. The fields are written
        // through raw pointers, without a reference to the entry, so entry 0's
        // `resv` (the tail, read by the kernel) is not touched.
        unsafe {
            let e = self.entries.add(slot);
            std::ptr::addr_of_mut!((*e).addr).write(self.bufs.add(bid as usize * BUF) as u64);
            std::ptr::addr_of_mut!((*e).len).write(BUF as u32);
            std::ptr::addr_of_mut!((*e).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: entry 0's `resv` is a 2-aligned u16 inside the mapping, which
        // outlives this call; the kernel reads it only atomically
        // (smp_load_acquire), and this thread is its only writer.
        let tail = unsafe { AtomicU16::from_ptr(std::ptr::addr_of_mut!((*self.entries).resv)) };
        // Release: the entry written above is visible before the new tail.
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both are this value's own mappings, of these sizes; the ring
        // that used them is gone (see `register`).
        unsafe {
            libc::munmap(self.entries.cast(), RING_BYTES);
            libc::munmap(self.bufs.cast(), BUFS_BYTES);
        }
    }
}

/// The task-run flags to ask for (`peer-echo --taskrun`, for A/B runs; each
/// falls back to the next weaker one if the kernel refuses it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TaskRun {
    /// `SINGLE_ISSUER | DEFER_TASKRUN` (the default).
    Defer,
    /// `COOP_TASKRUN | TASKRUN_FLAG`.
    Coop,
    /// Neither: completion work interrupts the thread (IPIs, task work on any return).
    None,
}

/// Builds a ring with the task-run flags of `want` or, if the kernel refuses,
/// the next weaker ones, and says which it got.
fn build_ring(want: TaskRun) -> io::Result<(IoUring, &'static str)> {
    if want == TaskRun::Defer {
        if let Ok(r) = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(CQ_ENTRIES)
            .build(SQ_ENTRIES)
        {
            return Ok((r, "SINGLE_ISSUER|DEFER_TASKRUN"));
        }
    }
    if want != TaskRun::None {
        if let Ok(r) = IoUring::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(CQ_ENTRIES)
            .build(SQ_ENTRIES)
        {
            return Ok((r, "COOP_TASKRUN|TASKRUN_FLAG"));
        }
    }
    IoUring::builder()
        .setup_cqsize(CQ_ENTRIES)
        .build(SQ_ENTRIES)
        .map(|r| (r, "no task-run flag"))
}

/// The ring, and the first error submitting to it (which ends the thread).
struct Ring {
    ring: IoUring,
    fatal: Option<io::Error>,
}

impl Ring {
    /// Queues `e`; submits first if the submission queue is full.
    fn push(&mut self, e: &squeue::Entry) {
        loop {
            // SAFETY: every pointer in the entries this file builds stays valid
            // until the request's last completion: a send points into its
            // connection's `out`, which is neither changed nor dropped while the
            // send is in flight (`Conn::sending`; a connection is dropped only
            // when none of its requests is left, or after the ring is gone); the
            // retry timespec is boxed in the `Worker`, which outlives the ring;
            // recvs use the buffer ring, which outlives the ring.
            if unsafe { self.ring.submission().push(e) }.is_ok() {
                return;
            }
            if let Err(err) = self.ring.submit() {
                if err.raw_os_error() != Some(libc::EINTR) {
                    // The request is dropped; the thread stops after this batch.
                    self.fatal.get_or_insert(err);
                    return;
                }
            }
        }
    }
}

/// One connection of a thread, at `conns[fd]`.
#[derive(Default)]
struct Conn {
    /// Requests on the descriptor whose last completion has not arrived yet
    /// (recv, send, cancels). The descriptor is closed when this drops to 0
    /// while `closing`.
    inflight: u32,
    /// A send of `out[off..]` is in flight: `out` must not change meanwhile.
    sending: bool,
    out: Vec<u8>,
    off: usize,
    /// Received while a send was in flight; sent next.
    queued: Vec<u8>,
    /// The recv was cancelled because too much waits to be sent.
    paused: bool,
    closing: bool,
    /// The cancel of every request on the descriptor was submitted.
    cancel_sent: bool,
}

impl Conn {
    fn pending(&self) -> usize {
        self.out.len() - self.off + self.queued.len()
    }
}

/// One thread's server. Field order matters: the ring is dropped first, then
/// the memory its requests point to. Closing the ring makes the kernel cancel
/// what is left; socket requests wait on poll rather than run in io-wq
/// threads here (no `IOSQE_ASYNC`), so none is reading a buffer meanwhile.
struct Worker {
    sq: Ring,
    bufs: BufRing,
    conns: Vec<Option<Conn>>,
    retry_ts: Box<types::Timespec>,
    listener: RawFd,
    stop: RawFd,
    spin: Duration,
    accepted: u64,
    /// An unexpected recv error was reported (reported once per thread).
    warned: bool,
}

/// Runs the server until SIGINT/SIGTERM.
pub fn run(listen: SocketAddr, spin_for: Duration, taskrun: TaskRun) -> io::Result<()> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // Bind every listener before saying we listen.
    let (local, listeners) = listeners(listen, threads)?;
    // SAFETY: plain eventfd(2) call; the result is checked.
    let stop = match cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) }) {
        Ok(fd) => fd,
        Err(e) => {
            listeners.into_iter().for_each(close);
            return Err(e);
        }
    };
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut handles = Vec::new();
    let mut failed = None;
    let mut rest = listeners.into_iter().enumerate();
    while let Some((i, l)) = rest.next() {
        let ready = ready_tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("uring-{i}"))
            .spawn(move || thread_main(i, l, stop, spin_for, taskrun, ready));
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                // The closure was dropped without running: `l` and the
                // listeners of the threads not started are still ours.
                close(l);
                rest.for_each(|(_, l)| close(l));
                failed = Some(e);
                break;
            }
        }
    }
    drop(ready_tx);
    // Every thread reports once: its ring's flags, or why it has none.
    let mut modes: Vec<&str> = Vec::new();
    for _ in 0..handles.len() {
        match ready_rx.recv() {
            Ok(Ok(mode)) => {
                if !modes.contains(&mode) {
                    modes.push(mode);
                }
            }
            Ok(Err(e)) => {
                failed.get_or_insert(e);
            }
            Err(_) => {
                failed.get_or_insert(io::Error::other("a worker thread died while starting"));
            }
        }
    }
    let sig = match failed {
        None => {
            eprintln!(
                "peer-echo: uring-tpc: rings with {}, {NBUF} provided buffers of {BUF} B per thread",
                modes.join(", ")
            );
            println!("listening on {local} ({threads} threads)");
            Some(sig::wait()?)
        }
        Some(_) => None,
    };
    let one: u64 = 1;
    // SAFETY: writes the 8 bytes of `one` to the eventfd we own.
    unsafe { libc::write(stop, (&one as *const u64).cast(), 8) };
    let mut accepted = 0;
    for h in handles {
        match h.join() {
            Ok(Ok(n)) => accepted += n,
            Ok(Err(e)) => {
                failed.get_or_insert(e);
            }
            Err(_) => {
                failed.get_or_insert(io::Error::other("a worker thread panicked"));
            }
        }
    }
    close(stop);
    if let Some(e) = failed {
        return Err(e);
    }
    eprintln!(
        "peer-echo: signal {}: stopped; {accepted} connections accepted on {threads} threads",
        sig.unwrap_or(0)
    );
    Ok(())
}

/// A worker thread: builds its ring (a `SINGLE_ISSUER` ring belongs to the
/// thread that creates it), reports on `ready`, serves until stopped.
fn thread_main(
    index: usize,
    listener: RawFd,
    stop: RawFd,
    spin_for: Duration,
    taskrun: TaskRun,
    ready: mpsc::Sender<io::Result<&'static str>>,
) -> io::Result<u64> {
    match Worker::new(listener, stop, spin_for, taskrun) {
        Ok((mut w, mode)) => {
            let _ = ready.send(Ok(mode));
            let r = w.run();
            if let Err(e) = &r {
                eprintln!("peer-echo: uring-{index} stopped: {e}");
            }
            r
        }
        Err(e) => {
            close(listener);
            let _ = ready.send(Err(e));
            Ok(0)
        }
    }
}

impl Worker {
    fn new(
        listener: RawFd,
        stop: RawFd,
        spin: Duration,
        taskrun: TaskRun,
    ) -> io::Result<(Worker, &'static str)> {
        // io_uring waits for a blocking socket's readiness itself; make the
        // listener blocking so that no accept ever completes with EAGAIN.
        // SAFETY: fcntl(2) on a descriptor we own; results are checked.
        let fl = cvt(unsafe { libc::fcntl(listener, libc::F_GETFL) })?;
        // SAFETY: as above.
        cvt(unsafe { libc::fcntl(listener, libc::F_SETFL, fl & !libc::O_NONBLOCK) })?;
        let (ring, mode) = build_ring(taskrun)
            .map_err(|e| io::Error::new(e.kind(), format!("io_uring_setup: {e}")))?;
        let bufs = BufRing::new()?;
        bufs.register(&ring).map_err(|e| {
            io::Error::new(e.kind(), format!("registering a provided-buffer ring: {e}"))
        })?;
        let w = Worker {
            sq: Ring { ring, fatal: None },
            bufs,
            conns: Vec::new(),
            retry_ts: Box::new(types::Timespec::from(Duration::from_millis(10))),
            listener,
            stop,
            spin,
            accepted: 0,
            warned: false,
        };
        Ok((w, mode))
    }

    /// The event loop; returns the number of connections accepted.
    fn run(&mut self) -> io::Result<u64> {
        self.arm_accept();
        let poll = opcode::PollAdd::new(types::Fd(self.stop), libc::POLLIN as u32)
            .build()
            .user_data(ud(0, STOP));
        self.sq.push(&poll);
        let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(CQ_ENTRIES as usize);
        let mut stopped = false;
        while !stopped {
            if let Some(e) = self.sq.fatal.take() {
                self.close_all();
                return Err(e);
            }
            match self.sq.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                Err(e) => {
                    self.close_all();
                    return Err(io::Error::new(e.kind(), format!("io_uring_enter: {e}")));
                }
            }
            cqes.clear();
            cqes.extend(
                self.sq
                    .ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for &(u, res, flags) in &cqes {
                let fd = (u >> KIND_BITS) as RawFd;
                match u & ((1 << KIND_BITS) - 1) {
                    STOP => stopped = true,
                    ACCEPT => self.on_accept(res, flags),
                    RETRY => self.arm_accept(),
                    RECV => self.on_recv(fd, res, flags),
                    SEND => self.on_send(fd, res),
                    CANCEL => self.on_cancel(fd),
                    _ => unreachable!("unknown user_data {u:#x}"),
                }
            }
        }
        self.close_all();
        Ok(self.accepted)
    }

    /// Closes every connection's descriptor and the listener; called once, as
    /// the thread stops. The connections themselves stay: a send still in
    /// flight points into one, and requests end only when the ring is dropped,
    /// before the connections (`Worker` field order).
    fn close_all(&mut self) {
        for (fd, c) in self.conns.iter().enumerate() {
            if c.is_some() {
                close(fd as RawFd);
            }
        }
        if self.listener >= 0 {
            close(self.listener);
            self.listener = -1;
        }
    }

    fn arm_accept(&mut self) {
        let e = opcode::AcceptMulti::new(types::Fd(self.listener))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(ud(0, ACCEPT));
        self.sq.push(&e);
    }

    fn on_accept(&mut self, res: i32, flags: u32) {
        if res >= 0 {
            self.new_conn(res);
        }
        if cqueue::more(flags) {
            return;
        }
        match -res {
            e if e <= 0 => self.arm_accept(),
            libc::ECONNABORTED | libc::EINTR => self.arm_accept(),
            e => {
                eprintln!("peer-echo: accept: {}", io::Error::from_raw_os_error(e));
                let t = opcode::Timeout::new(&*self.retry_ts as *const types::Timespec)
                    .build()
                    .user_data(ud(0, RETRY));
                self.sq.push(&t);
            }
        }
    }

    fn new_conn(&mut self, fd: RawFd) {
        self.accepted += 1;
        let _ = setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
        let i = fd as usize;
        if self.conns.len() <= i {
            self.conns.resize_with(i + 1, || None);
        }
        // A number is reused only after its close, which empties the slot.
        debug_assert!(self.conns[i].is_none());
        let c = self.conns[i].insert(Conn::default());
        arm_recv(&mut self.sq, c, fd);
    }

    fn on_recv(&mut self, fd: RawFd, res: i32, flags: u32) {
        let more = cqueue::more(flags);
        let Some(c) = self.conns.get_mut(fd as usize).and_then(Option::as_mut) else {
            unreachable!("recv completion for fd {fd} without a connection");
        };
        if let Some(bid) = cqueue::buffer_select(flags) {
            if res > 0 && !c.closing {
                let data = self.bufs.chunk(bid, res as usize);
                if !self.spin.is_zero() && data[0] == b'!' {
                    spin(self.spin);
                }
                if c.sending {
                    c.queued.extend_from_slice(data);
                } else {
                    c.out.clear();
                    c.out.extend_from_slice(data);
                    c.off = 0;
                    send_out(&mut self.sq, c, fd);
                }
            }
            self.bufs.give_back(bid);
        }
        if !more {
            c.inflight -= 1;
        }
        if res == 0 {
            // EOF.
            start_closing(&mut self.sq, c, fd);
        } else if res < 0 {
            match -res {
                libc::ENOBUFS if !c.closing && !c.paused => arm_recv(&mut self.sq, c, fd),
                libc::ENOBUFS => {}
                libc::ECANCELED if c.paused || c.closing => {}
                e => {
                    if !matches!(
                        e,
                        libc::ECONNRESET | libc::EPIPE | libc::ETIMEDOUT | libc::ECANCELED
                    ) && !self.warned
                    {
                        self.warned = true;
                        eprintln!(
                            "peer-echo: recv: {} (reported once per thread)",
                            io::Error::from_raw_os_error(e)
                        );
                    }
                    start_closing(&mut self.sq, c, fd);
                }
            }
        } else if !c.closing && !c.paused && c.pending() > MAX_PENDING {
            // The peer sends faster than it reads: stop reading until all is sent.
            c.paused = true;
            if more {
                c.inflight += 1;
                let e = opcode::AsyncCancel::new(ud(fd, RECV))
                    .build()
                    .user_data(ud(fd, CANCEL));
                self.sq.push(&e);
            }
        } else if !more && !c.closing && !c.paused {
            arm_recv(&mut self.sq, c, fd);
        }
        resume(&mut self.sq, c, fd);
        self.settle(fd);
    }

    fn on_send(&mut self, fd: RawFd, res: i32) {
        let Some(c) = self.conns.get_mut(fd as usize).and_then(Option::as_mut) else {
            unreachable!("send completion for fd {fd} without a connection");
        };
        c.inflight -= 1;
        c.sending = false;
        if c.closing {
            return self.settle(fd);
        }
        if res <= 0 {
            // An error, or a stream socket that takes nothing.
            start_closing(&mut self.sq, c, fd);
            return self.settle(fd);
        }
        c.off += res as usize;
        if c.off < c.out.len() {
            send_out(&mut self.sq, c, fd);
            return;
        }
        c.out.clear();
        c.off = 0;
        std::mem::swap(&mut c.out, &mut c.queued);
        if c.queued.capacity() > KEEP {
            c.queued = Vec::new();
        }
        if c.out.is_empty() {
            if c.out.capacity() > KEEP {
                c.out = Vec::new();
            }
            resume(&mut self.sq, c, fd);
        } else {
            send_out(&mut self.sq, c, fd);
        }
    }

    fn on_cancel(&mut self, fd: RawFd) {
        let Some(c) = self.conns.get_mut(fd as usize).and_then(Option::as_mut) else {
            unreachable!("cancel completion for fd {fd} without a connection");
        };
        c.inflight -= 1;
        resume(&mut self.sq, c, fd);
        self.settle(fd);
    }

    /// Closes a closing connection once none of its requests is left.
    fn settle(&mut self, fd: RawFd) {
        let slot = &mut self.conns[fd as usize];
        if slot.as_ref().is_some_and(|c| c.closing && c.inflight == 0) {
            *slot = None;
            close(fd);
        }
    }
}

fn arm_recv(sq: &mut Ring, c: &mut Conn, fd: RawFd) {
    let e = opcode::RecvMulti::new(types::Fd(fd), BGID)
        .build()
        .user_data(ud(fd, RECV));
    sq.push(&e);
    c.inflight += 1;
}

/// Sends `out[off..]` (not empty).
fn send_out(sq: &mut Ring, c: &mut Conn, fd: RawFd) {
    let rest = &c.out[c.off..];
    let len = rest.len().min(u32::MAX as usize) as u32;
    let e = opcode::Send::new(types::Fd(fd), rest.as_ptr(), len)
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(ud(fd, SEND));
    sq.push(&e);
    c.sending = true;
    c.inflight += 1;
}

/// Re-arms a paused connection's recv once all its bytes are sent and none of
/// its requests is left: neither its old recv nor the cancel aimed at it (which
/// would match the new recv's `user_data` too).
fn resume(sq: &mut Ring, c: &mut Conn, fd: RawFd) {
    if c.paused && !c.closing && c.inflight == 0 && c.pending() == 0 {
        c.paused = false;
        arm_recv(sq, c, fd);
    }
}

/// Marks the connection closing and cancels every request on its descriptor.
fn start_closing(sq: &mut Ring, c: &mut Conn, fd: RawFd) {
    c.closing = true;
    if c.inflight > 0 && !c.cancel_sent {
        c.cancel_sent = true;
        c.inflight += 1;
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
            .build()
            .user_data(ud(fd, CANCEL));
        sq.push(&e);
    }
}
