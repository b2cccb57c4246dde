//! Registered ("fixed") buffers: a set of equal-sized buffers that a port
//! registers with the kernel once, so operations on them skip the per-operation
//! work of mapping user memory ([`Op::read_fixed`](crate::Op::read_fixed),
//! [`Op::write_fixed`](crate::Op::write_fixed)).
//!
//! A set is one anonymous memory mapping of `count × size` bytes, cut into
//! `count` buffers. [`FixedBuffers::lease`] hands out a [`FixedBuf`]: exclusive
//! use of one of them until it is dropped, when it goes back to the set. An
//! operation takes the lease and its completion hands it back
//! ([`Completion::take_fixed`](crate::Completion::take_fixed)).
//!
//! # Lifetime
//!
//! The set's memory (and, on io_uring, its slots in the ring's buffer table)
//! lives as long as anything refers to the set: the [`FixedBuffers`] handles
//! and every lease, including those held by operations in flight (which keep
//! them until the kernel is done). Only when the last one is gone are the slots
//! cleared and the memory unmapped — so no operation can still be using it.
//! A set does not keep its port alive: leases stay valid memory after the port
//! is closed or dropped (operations on them then fail with `Closed`).
//!
//! On epoll the same API runs ordinary `pread`/`pwrite` (files) or
//! `recv`/`send` (sockets) on the same memory; nothing is registered.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::port::PortInner;
use crate::provided::Mapping;
use crate::sync::lock;

/// The largest buffer the kernel registers (`io_uring`'s limit is 1 GiB each).
pub const MAX_FIXED_SIZE: usize = 1 << 30;

/// The most buffers one port can have registered at once, over all its sets
/// (the size of the io_uring buffer table each port reserves on first use).
pub const MAX_FIXED_BUFFERS: usize = 4096;

/// A unique id for a backend instance, so a lease from one port's set is never
/// used with another port's registration.
pub(crate) fn next_owner_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The shared state of one set of fixed buffers.
pub(crate) struct FixedSet {
    region: Mapping,
    size: usize,
    count: usize,
    /// Indices of the buffers not leased.
    ///
    /// Invariant: every index in `0..count` is either in this list or held by
    /// exactly one live [`FixedBuf`] (which pushes it back when dropped), never
    /// both — so a lease has its buffer's bytes to itself.
    free: Mutex<Vec<u32>>,
    /// The backend instance this set is registered with (`next_owner_id`).
    owner: u64,
    /// io_uring: the first slot of this set in the ring's buffer table, and
    /// the port to clear those slots on when the set goes. `None` on epoll.
    registered: Option<(u32, Weak<PortInner>)>,
}

// SAFETY: the region is plain memory owned by the set (like a `Box<[u8]>`);
// the free list is behind a mutex; which thread touches which buffer is decided
// by the leases (one owner per index, see `free`).
unsafe impl Send for FixedSet {}
// SAFETY: as above: shared access only reads the immutable fields or goes
// through the mutex; buffer bytes are reached only through a lease.
unsafe impl Sync for FixedSet {}

impl Drop for FixedSet {
    fn drop(&mut self) {
        // Every lease holds an `Arc` of this set, and every operation using a
        // buffer holds its lease until the kernel has finished with it: here no
        // lease exists, so nothing in flight uses these slots. Clear them
        // before the memory is unmapped (the region drops after this).
        if let Some((base, port)) = &self.registered {
            // A port being dropped cannot be upgraded: its ring goes away with
            // its table, after every operation has ended.
            if let Some(port) = port.upgrade() {
                port.backend().unregister_fixed(*base, self.count);
            }
        }
    }
}

impl FixedSet {
    /// The iovecs to register: one per buffer.
    pub(crate) fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.count)
            .map(|i| libc::iovec {
                // SAFETY: i * size < count * size = the region's length.
                iov_base: unsafe { self.region.ptr.as_ptr().add(i * self.size) }.cast(),
                iov_len: self.size,
            })
            .collect()
    }
}

/// Registers a set of `count` buffers of `size` bytes with the port that owns
/// `port` (`CompletionPort::register_buffers`).
pub(crate) fn register(
    port: &Arc<PortInner>,
    count: usize,
    size: usize,
) -> io::Result<FixedBuffers> {
    let bad = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    if count == 0 || size == 0 {
        return Err(bad(format!(
            "fixed buffers: {count} buffers of {size} bytes; both must be at least 1"
        )));
    }
    if count > MAX_FIXED_BUFFERS {
        return Err(bad(format!(
            "fixed buffers: {count} buffers asked, a port holds at most {MAX_FIXED_BUFFERS}"
        )));
    }
    if size > MAX_FIXED_SIZE {
        return Err(bad(format!(
            "fixed buffers: {size} bytes per buffer asked, the kernel registers at most {MAX_FIXED_SIZE}"
        )));
    }
    let total = count
        .checked_mul(size)
        .ok_or_else(|| bad(format!("fixed buffers: {count} × {size} bytes overflows")))?;
    let ram = physical_memory();
    if ram > 0 && total as u64 > ram {
        return Err(io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!(
                "fixed buffers: {count} × {size} bytes is more than this machine's {ram} bytes of memory"
            ),
        ));
    }
    let region = Mapping::new(total).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("fixed buffers: cannot map {total} bytes: {e}"),
        )
    })?;
    let backend = port.backend();
    let owner = backend.fixed_owner();
    let mut set = FixedSet {
        region,
        size,
        count,
        free: Mutex::new((0..count as u32).rev().collect()),
        owner,
        registered: None,
    };
    let registered = backend.register_fixed(&set.iovecs()).map_err(|e| {
        if e.raw_os_error().is_some() {
            registration_error(e, total)
        } else {
            e
        }
    })?;
    if let Some(base) = registered {
        set.registered = Some((base, Arc::downgrade(port)));
    }
    Ok(FixedBuffers { set: Arc::new(set) })
}

/// A set registered nowhere, for backend unit tests: its leases pass the
/// owner check of the driver with id `owner` and run its fallback path.
#[cfg(all(test, not(loom)))]
pub(crate) fn unregistered(owner: u64, count: usize, size: usize) -> FixedBuffers {
    let set = FixedSet {
        region: Mapping::new(count * size).expect("map a test set"),
        size,
        count,
        free: Mutex::new((0..count as u32).rev().collect()),
        owner,
        registered: None,
    };
    FixedBuffers { set: Arc::new(set) }
}

/// The machine's physical memory in bytes (0 if unknown).
fn physical_memory() -> u64 {
    // SAFETY: sysconf only reads system values.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page <= 0 {
        return 0;
    }
    (pages as u64).saturating_mul(page as u64)
}

/// Explains a refused registration: the memory lock limit is the usual cause.
fn registration_error(e: io::Error, total: usize) -> io::Error {
    if e.raw_os_error() != Some(libc::ENOMEM) {
        return io::Error::new(
            e.kind(),
            format!("fixed buffers: the kernel refused to register {total} bytes: {e}"),
        );
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let limit = if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } == 0 {
        if lim.rlim_cur == libc::RLIM_INFINITY {
            "unlimited".to_string()
        } else {
            format!("{} bytes", lim.rlim_cur)
        }
    } else {
        "unknown".to_string()
    };
    io::Error::new(
        io::ErrorKind::OutOfMemory,
        format!(
            "fixed buffers: cannot pin {total} bytes ({e}); pinned memory counts against \
             RLIMIT_MEMLOCK ({limit}): raise it (ulimit -l) or register fewer or smaller buffers"
        ),
    )
}

/// A set of registered (fixed) buffers, from
/// [`CompletionPort::register_buffers`](crate::CompletionPort::register_buffers).
/// Cloning gives another handle to the same set.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use ringport::{CompletionPort, Op};
/// use std::time::Duration;
/// let port = CompletionPort::new()?;
/// let bufs = port.register_buffers(4, 4096)?;
/// let path = std::env::temp_dir().join(format!("ringport-fixed-doc-{}", std::process::id()));
/// let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
/// std::fs::remove_file(&path)?;
/// port.associate(&file, 1)?;
///
/// // Write from one fixed buffer...
/// let mut buf = bufs.lease()?;
/// buf.extend_from_slice(b"registered");
/// port.submit(Op::write_fixed(&file, buf, 0), 0)?;
/// let mut c = port.get(Some(Duration::from_secs(10)))?;
/// assert_eq!(c.result.as_ref().ok(), Some(&10));
/// let mut buf = c.take_fixed().expect("the lease comes back");
///
/// // ...and read into it again: it holds exactly the bytes read.
/// buf.clear();
/// port.submit(Op::read_fixed(&file, buf, 3), 0)?;
/// let mut c = port.get(Some(Duration::from_secs(10)))?;
/// assert_eq!(c.result.as_ref().ok(), Some(&7));
/// assert_eq!(&c.take_fixed().unwrap()[..], b"istered");
/// assert_eq!(bufs.available(), 4, "every lease went back to the set");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct FixedBuffers {
    set: Arc<FixedSet>,
}

impl FixedBuffers {
    /// Takes one buffer of the set, empty (`len() == 0`), for exclusive use
    /// until the lease is dropped. Fails with `WouldBlock` if every buffer is
    /// leased (leases held by operations in flight come back with their
    /// completions).
    pub fn lease(&self) -> io::Result<FixedBuf> {
        let index = lock(&self.set.free).pop().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "all {} fixed buffers of this set are leased",
                    self.set.count
                ),
            )
        })?;
        Ok(FixedBuf {
            set: self.set.clone(),
            index,
            len: 0,
        })
    }

    /// How many buffers the set has.
    pub fn count(&self) -> usize {
        self.set.count
    }

    /// The size of each buffer, in bytes.
    pub fn buf_size(&self) -> usize {
        self.set.size
    }

    /// How many buffers are not leased right now.
    pub fn available(&self) -> usize {
        lock(&self.set.free).len()
    }
}

impl fmt::Debug for FixedBuffers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FixedBuffers")
            .field("count", &self.set.count)
            .field("buf_size", &self.set.size)
            .field("available", &self.available())
            .finish()
    }
}

/// One leased buffer of a [`FixedBuffers`] set: `capacity()` bytes of
/// registered memory, of which the first `len()` hold data. Dereferences to
/// those `len()` bytes. Dropping it returns the buffer to its set.
///
/// Every byte of the buffer is always initialised (the set starts zero-filled),
/// so [`set_len`](FixedBuf::set_len) is safe; after a read the buffer holds
/// exactly the bytes read.
pub struct FixedBuf {
    set: Arc<FixedSet>,
    index: u32,
    /// At most the capacity, which is at most [`MAX_FIXED_SIZE`] (so a
    /// completion carrying a lease stays small).
    len: u32,
}

impl FixedBuf {
    /// The buffer's size: the most a read fills.
    pub fn capacity(&self) -> usize {
        self.set.size
    }

    /// The bytes holding data (what a write sends).
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True if no byte holds data.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Marks the first `n` bytes (at most the capacity) as data. The bytes
    /// past the old length are whatever the buffer held before.
    pub fn set_len(&mut self, n: usize) {
        self.len = n.min(self.capacity()) as u32;
    }

    /// Empties the buffer (`len() == 0`).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends as much of `data` as fits; returns how many bytes were copied.
    pub fn extend_from_slice(&mut self, data: &[u8]) -> usize {
        let start = self.len();
        let n = data.len().min(self.capacity() - start);
        self.len += n as u32;
        self[start..].copy_from_slice(&data[..n]);
        n
    }

    /// The buffer's place in its set (0-based).
    pub fn index(&self) -> usize {
        self.index as usize
    }

    /// The start of the buffer's memory.
    pub(crate) fn as_mut_ptr(&self) -> *mut u8 {
        // SAFETY: index < count, so the offset stays inside the region.
        unsafe {
            self.set
                .region
                .ptr
                .as_ptr()
                .add(self.index as usize * self.set.size)
        }
    }

    /// The buffer's slot in the io_uring buffer table of its port.
    pub(crate) fn slot(&self) -> Option<u16> {
        let (base, _) = self.set.registered.as_ref()?;
        u16::try_from(*base as usize + self.index as usize).ok()
    }

    /// Whether this lease belongs to a set registered with backend `owner`.
    pub(crate) fn belongs_to(&self, owner: u64) -> bool {
        self.set.owner == owner
    }
}

impl std::ops::Deref for FixedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len <= capacity`; the bytes are initialised (zero-filled at
        // mapping, then written only by us or the kernel), and this lease is the
        // only one for this index (see `FixedSet::free`), and the kernel is not
        // writing into it: an operation that uses it owns the lease meanwhile.
        unsafe { std::slice::from_raw_parts(self.as_mut_ptr(), self.len()) }
    }
}

impl std::ops::DerefMut for FixedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.as_mut_ptr(), self.len()) }
    }
}

impl Drop for FixedBuf {
    fn drop(&mut self) {
        lock(&self.set.free).push(self.index);
    }
}

impl fmt::Debug for FixedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FixedBuf")
            .field("index", &self.index)
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .finish()
    }
}
