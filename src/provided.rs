//! Provided buffers: a pool of equal-sized receive buffers that belongs to a
//! port, from which a receive takes a buffer only when data arrives — so a
//! connection waiting for data holds no receive buffer of its own.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ringport::{CompletionPort, Op};
//! use std::io::Write;
//! use std::time::Duration;
//!
//! let port = CompletionPort::new()?;
//! let pool = port.buffer_pool(64, 4096)?;
//! let (mut a, b) = std::os::unix::net::UnixStream::pair()?;
//! port.associate(&b, 1)?;
//! // One submission, a completion per message received, until EOF.
//! port.submit(Op::recv_multishot(&b, &pool), 7)?;
//! a.write_all(b"hello")?;
//! let mut c = port.get(Some(Duration::from_secs(10)))?;
//! assert_eq!((c.user_data, c.result.as_ref().ok().copied()), (7, Some(5)));
//! assert!(c.more(), "the receive stays armed");
//! let data = c.take_pooled().expect("a buffer from the pool");
//! assert_eq!(&data[..], b"hello");
//! drop(data); // the buffer goes back to the pool
//! drop(a); // EOF: the final completion, Ok(0)
//! let c = port.get(Some(Duration::from_secs(10)))?;
//! assert_eq!(c.result.as_ref().ok(), Some(&0));
//! assert!(!c.more());
//! # Ok(())
//! # }
//! ```
//!
//! # Multishot operations
//!
//! One submission, many completions — all with the same
//! key, `user_data` and [`OpId`](crate::OpId) — until a *final* completion,
//! whose [`Completion::more`](crate::Completion::more) is false, says why it ended.
//!
//! | final result | meaning | what to do |
//! |---|---|---|
//! | `Ok(0)` (receive) | the peer closed its side (EOF); on a datagram socket, an empty datagram | close; on a datagram socket, submit again |
//! | `Err(ECANCELED)` | [`cancel`](crate::CompletionPort::cancel) or port close won | nothing more comes |
//! | `Err(ENOBUFS)` (receive) | the [`BufferPool`] was empty when data came; the data is still in the socket | drop leases, submit again |
//! | `Err(e)` | the error (`ECONNRESET`, `EMFILE` for an accept, …) | as for a one-shot op |
//! | `Ok(n)` with `n > 0` | the kernel stopped it with this last chunk or connection (its completion queue was full) | use it, submit again |
//!
//! A cancel has the outcomes of any cancel: it wins (the final completion is
//! `ECANCELED`; completions queued before it still come first) or loses
//! because the operation had already ended (its own final completion comes, or
//! `cancel` says `NotFound` once that was dequeued).
//!
//! On io_uring these are the kernel's multishot `ACCEPT` (Linux 5.19) and
//! multishot `RECV` with a provided-buffer ring (6.0); where the kernel lacks
//! them the driver resubmits a one-shot request after each completion. On
//! epoll the operation stays queued on its socket and, on every readiness
//! edge, accepts or receives until the call would block, each result its own
//! completion. [`PortStats::op_paths`](crate::PortStats::op_paths) says which.
//!
//! # How it works on each backend
//!
//! * **io_uring (Linux 5.19+)**: the pool is a *provided-buffer ring*
//!   (`IORING_REGISTER_PBUF_RING`). The kernel takes a buffer off the ring when
//!   a receive has data for it and names it in the CQE; the driver turns that
//!   into a [`PooledBuf`] (a *lease*), and dropping the lease puts the buffer
//!   back on the ring.
//! * **epoll, or io_uring without `PBUF_RING`**: the pool is a free list in
//!   user space. On epoll a buffer is taken only once the socket is readable,
//!   so idle connections hold none either; on io_uring without `PBUF_RING` the
//!   emulated receive holds one while it waits (the only configuration where a
//!   waiting receive does).
//!
//! # An empty pool
//!
//! A receive that finds the pool empty ends with `ENOBUFS` (its final
//! completion): nothing is lost, the data stays in the socket. Drop leases and
//! submit the receive again; [`BufferPool::available`] says how many buffers
//! are back. A pool must have room for the bursts it serves: every lease not
//! yet dropped, in every queued completion, holds a buffer.
//!
//! # Memory safety (the invariant)
//!
//! The pool's memory (its buffers, and on io_uring the ring of buffer
//! descriptors the kernel reads) is owned by one shared allocation, `Shared`,
//! held through an `Arc` by: every [`BufferPool`] handle, every lease, every
//! operation in flight that receives into the pool (its record holds the op
//! body, which holds the `Arc`), and the backend while the pool is registered
//! with its ring. The backend unregisters a ring pool, and drops its `Arc`,
//! only when it holds the last reference (no handle, lease or operation
//! left), or when the port's ring is torn down after every operation has been
//! reaped. So the memory is freed only when the kernel can no longer pick a
//! buffer from it and no lease can read one. A buffer is in exactly one place
//! at a time: on the ring (or free list), picked by the kernel for a receive in
//! flight, or held by one lease — so a lease's bytes are never written while
//! it lives.

use std::fmt;
use std::io;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::port::CompletionPort;
use crate::sync::lock;

/// The most buffers one pool may have (the kernel's limit for a buffer ring).
pub const MAX_BUFFERS: usize = 32768;

/// The largest buffer a pool may have (1 GiB).
pub const MAX_BUFFER_SIZE: usize = 1 << 30;

static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

/// A fresh id for a backend instance that owns pools (a pool is used only with
/// the port it was made by).
pub(crate) fn new_owner_id() -> u64 {
    NEXT_OWNER.fetch_add(1, Ordering::Relaxed)
}

impl CompletionPort {
    /// Makes a pool of `count` receive buffers of `size` bytes each, for
    /// [`Op::recv_multishot`](crate::Op::recv_multishot) on this port (see the
    /// [module docs](crate::provided)). `count` is at most [`MAX_BUFFERS`];
    /// `size` at most [`MAX_BUFFER_SIZE`]. The memory is reserved, not
    /// touched: only buffers that have received data become resident.
    ///
    /// On io_uring it is a provided-buffer ring registered with the port's
    /// ring (up to 65,535 pools per port); elsewhere a free list. Which one
    /// [`BufferPool::is_kernel_ring`] says.
    pub fn buffer_pool(&self, count: usize, size: usize) -> Result<BufferPool> {
        if count == 0 || count > MAX_BUFFERS {
            return Err(invalid(format!(
                "a buffer pool holds 1 to {MAX_BUFFERS} buffers, not {count}"
            )));
        }
        if size == 0 || size > MAX_BUFFER_SIZE {
            return Err(invalid(format!(
                "a pool's buffers are 1 to {MAX_BUFFER_SIZE} bytes, not {size}"
            )));
        }
        if count
            .checked_mul(size)
            .is_none_or(|b| b > isize::MAX as usize / 2)
        {
            return Err(invalid(format!(
                "{count} buffers of {size} bytes is too much memory"
            )));
        }
        let shared = self.backend_ref().buffer_pool(count, size)?;
        Ok(BufferPool { shared })
    }
}

fn invalid(msg: String) -> Error {
    Error::Io(io::Error::new(io::ErrorKind::InvalidInput, msg))
}

/// A pool of receive buffers belonging to one port (see the
/// [module docs](crate::provided)). Cloning gives another handle to the same
/// pool; the pool lives while any handle, lease or receive using it does.
#[derive(Clone)]
pub struct BufferPool {
    pub(crate) shared: Arc<Shared>,
}

impl BufferPool {
    /// Buffers per pool.
    pub fn count(&self) -> usize {
        self.shared.count
    }

    /// Bytes per buffer.
    pub fn buffer_size(&self) -> usize {
        self.shared.size
    }

    /// Buffers not held by a lease right now (some of them may be picked by a
    /// receive the kernel is carrying out).
    pub fn available(&self) -> usize {
        self.shared.count - self.shared.leased.load(Ordering::SeqCst)
    }

    /// True if the kernel picks the buffers (an io_uring provided-buffer
    /// ring); false for a free list in user space.
    pub fn is_kernel_ring(&self) -> bool {
        matches!(self.shared.mode, Mode::Ring { .. })
    }
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("count", &self.count())
            .field("buffer_size", &self.buffer_size())
            .field("available", &self.available())
            .field("kernel_ring", &self.is_kernel_ring())
            .finish()
    }
}

/// One buffer of a [`BufferPool`] holding received bytes (a *lease*): it
/// dereferences to exactly those bytes, and goes back to its pool when dropped.
///
/// A lease may outlive its operation, its pool handle and even its port.
pub struct PooledBuf {
    pool: Arc<Shared>,
    bid: u16,
    len: u32,
}

impl PooledBuf {
    /// A lease of buffer `bid`, which holds `len` received bytes. The caller
    /// owns the buffer (the kernel or the receive that filled it is done with
    /// it, and it is on no ring or free list).
    pub(crate) fn new(pool: Arc<Shared>, bid: u16, len: usize) -> PooledBuf {
        debug_assert!((bid as usize) < pool.count && len <= pool.size);
        pool.leased.fetch_add(1, Ordering::SeqCst);
        PooledBuf {
            len: len.min(pool.size) as u32,
            pool,
            bid,
        }
    }

    /// The buffer's capacity (the pool's buffer size).
    pub fn capacity(&self) -> usize {
        self.pool.size
    }

    /// Copies the bytes into a new `Vec` (the lease still goes back when dropped).
    pub fn to_vec(&self) -> Vec<u8> {
        self[..].to_vec()
    }
}

impl Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: buffer `bid` lies inside the pool's mapping, which the `Arc`
        // keeps alive; this lease holds the buffer exclusively (it is on no ring
        // or free list and no receive is filling it: see the module invariant),
        // and its first `len` bytes were written by the receive that filled it.
        unsafe { std::slice::from_raw_parts(self.pool.buf_ptr(self.bid), self.len as usize) }
    }
}

impl DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.pool.buf_ptr(self.bid), self.len as usize) }
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        self.pool.leased.fetch_sub(1, Ordering::SeqCst);
        self.pool.give_back(self.bid);
    }
}

impl fmt::Debug for PooledBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledBuf")
            .field("bid", &self.bid)
            .field("len", &self.len)
            .finish()
    }
}

/// An anonymous private mapping: reserved address space, zero-filled and
/// resident only where touched. Pools (this module) and fixed-buffer sets
/// (`fixed.rs`) keep their buffers in one.
pub(crate) struct Mapping {
    pub(crate) ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    pub(crate) fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: an anonymous private mapping at an address of the kernel's
        // choosing; no existing memory is affected.
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
        Ok(Mapping {
            ptr: NonNull::new(p.cast()).expect("mmap never returns null on success"),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; nothing refers to it
        // any more: its owner (a pool's `Shared`, or a `FixedSet`) is dropped
        // only when no lease and no operation in flight refers to its memory
        // (see the invariants there).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One entry of a provided-buffer ring, as the kernel lays it out
/// (`struct io_uring_buf`). The first entry's `resv` is the ring's tail.
#[repr(C)]
struct RingEntry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

/// Where the free buffers are.
pub(crate) enum Mode {
    /// An io_uring provided-buffer ring, group `bgid`: the kernel consumes
    /// entries at its head, the pool appends returned buffers at `tail`.
    Ring {
        ring: Mapping,
        entries: u16,
        bgid: u16,
        /// The next tail to publish. The mutex serialises the producers (the
        /// ring has one producer side); the kernel reads the published tail.
        tail: Mutex<u16>,
    },
    /// A free list in user space.
    List { free: Mutex<Vec<u16>> },
}

/// A pool's memory and state, shared by its handles, leases and operations.
pub(crate) struct Shared {
    bufs: Mapping,
    pub(crate) size: usize,
    pub(crate) count: usize,
    pub(crate) mode: Mode,
    /// Buffers held by leases.
    leased: AtomicUsize,
    /// The backend instance that made it (a pool serves that port only).
    pub(crate) owner: u64,
}

// SAFETY: the raw mappings are owned outright by `Shared` and only accessed
// through the protocol in the module docs: a buffer's bytes by the one lease
// (or receive) that holds it, the ring's entries under the `tail` mutex, the
// free list under its mutex. Nothing is tied to a thread.
unsafe impl Send for Shared {}
// SAFETY: as above: every shared mutation is under a mutex or atomic.
unsafe impl Sync for Shared {}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("count", &self.count)
            .field("size", &self.size)
            .finish()
    }
}

impl Shared {
    /// A pool with a free list holding every buffer.
    pub(crate) fn list(count: usize, size: usize, owner: u64) -> io::Result<Shared> {
        Ok(Shared {
            bufs: Mapping::new(count * size)?,
            size,
            count,
            mode: Mode::List {
                free: Mutex::new((0..count as u16).rev().collect()),
            },
            leased: AtomicUsize::new(0),
            owner,
        })
    }

    /// A pool whose free buffers are on a ring for buffer group `bgid`, every
    /// buffer already on it. Register it with [`Shared::ring_addr`] and
    /// [`Shared::ring_entries`].
    pub(crate) fn ring(count: usize, size: usize, bgid: u16, owner: u64) -> io::Result<Shared> {
        let entries = count.next_power_of_two();
        debug_assert!(entries <= MAX_BUFFERS);
        let ring = Mapping::new(entries * std::mem::size_of::<RingEntry>())?;
        let s = Shared {
            bufs: Mapping::new(count * size)?,
            size,
            count,
            mode: Mode::Ring {
                ring,
                entries: entries as u16,
                bgid,
                tail: Mutex::new(0),
            },
            leased: AtomicUsize::new(0),
            owner,
        };
        for bid in 0..count as u16 {
            s.give_back(bid);
        }
        Ok(s)
    }

    /// The ring's address and entry count, for `IORING_REGISTER_PBUF_RING`.
    pub(crate) fn ring_addr(&self) -> Option<(u64, u16, u16)> {
        match &self.mode {
            Mode::Ring {
                ring,
                entries,
                bgid,
                ..
            } => Some((ring.ptr.as_ptr() as u64, *entries, *bgid)),
            Mode::List { .. } => None,
        }
    }

    /// The start of buffer `bid`.
    pub(crate) fn buf_ptr(&self, bid: u16) -> *mut u8 {
        debug_assert!((bid as usize) < self.count);
        // SAFETY: `bid < count`, so the offset is inside the mapping of
        // `count * size` bytes.
        unsafe { self.bufs.ptr.as_ptr().add(bid as usize * self.size) }
    }

    /// Takes a free buffer off the free list (`None`: empty, or a ring pool,
    /// whose buffers the kernel takes).
    pub(crate) fn take(&self) -> Option<u16> {
        match &self.mode {
            Mode::List { free } => lock(free).pop(),
            Mode::Ring { .. } => None,
        }
    }

    /// A free-list pool has a buffer to take (a ring pool: always true; the
    /// kernel tells).
    pub(crate) fn has_free(&self) -> bool {
        match &self.mode {
            Mode::List { free } => !lock(free).is_empty(),
            Mode::Ring { .. } => true,
        }
    }

    /// Puts buffer `bid` back: on the free list, or at the ring's tail.
    pub(crate) fn give_back(&self, bid: u16) {
        match &self.mode {
            Mode::List { free } => lock(free).push(bid),
            Mode::Ring {
                ring,
                entries,
                tail,
                ..
            } => {
                let mut t = lock(tail);
                let base = ring.ptr.as_ptr().cast::<RingEntry>();
                let slot = (*t & (*entries - 1)) as usize;
                // SAFETY: `slot < entries`, so the entry is inside the ring's
                // mapping. The kernel reads only entries between its head and
                // the published tail; this one is past the tail, so nobody reads
                // it until the release store below publishes it. Its `resv`
                // field (the tail, in entry 0) is not written here.
                unsafe {
                    let e = base.add(slot);
                    (&raw mut (*e).addr).write(self.buf_ptr(bid) as u64);
                    (&raw mut (*e).len).write(self.size.min(u32::MAX as usize) as u32);
                    (&raw mut (*e).bid).write(bid);
                }
                *t = t.wrapping_add(1);
                // SAFETY: the tail is the `resv` field of entry 0, inside the
                // mapping, 2-byte aligned (the mapping is page aligned and the
                // field is at offset 14); the kernel reads it concurrently, so it
                // is written only atomically, with release ordering so the entry
                // written above is visible first.
                let tail_ref = unsafe { AtomicU16::from_ptr(&raw mut (*base).resv) };
                tail_ref.store(*t, Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_pool_hands_out_each_buffer_once() {
        let s = Arc::new(Shared::list(3, 16, 0).unwrap());
        let ids: Vec<u16> = std::iter::from_fn(|| s.take()).collect();
        assert_eq!(ids.len(), 3);
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 3);
        // SAFETY: buffer 0 is ours (taken above); 4 bytes fit in 16.
        unsafe { std::ptr::copy_nonoverlapping(b"abcd".as_ptr(), s.buf_ptr(ids[0]), 4) };
        let lease = PooledBuf::new(s.clone(), ids[0], 4);
        assert_eq!(&lease[..], b"abcd");
        assert_eq!(s.leased.load(Ordering::SeqCst), 1);
        drop(lease);
        assert_eq!(s.leased.load(Ordering::SeqCst), 0);
        assert_eq!(s.take(), Some(ids[0]));
    }

    #[test]
    fn a_ring_pool_publishes_every_buffer() {
        let s = Shared::ring(5, 64, 3, 0).unwrap();
        let (addr, entries, bgid) = s.ring_addr().unwrap();
        assert_eq!((entries, bgid), (8, 3));
        let base = addr as *const RingEntry;
        // SAFETY: reading the ring this test owns; nothing else touches it.
        let (tail, e4) = unsafe { ((*base).resv, &*base.add(4)) };
        assert_eq!(tail, 5);
        assert_eq!((e4.bid, e4.len), (4, 64));
        assert_eq!(e4.addr, s.buf_ptr(4) as u64);
    }
}
