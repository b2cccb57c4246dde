//! Page-aligned buffers for `O_DIRECT`, without a second buffer type: the
//! program's global allocator gives every allocation whose size is a whole
//! number of pages (4 KiB, 8 KiB, …) a page-aligned address. An operation owns
//! a plain `Vec<u8>`; `Vec::with_capacity(4096)` is then a valid direct-I/O
//! buffer, and it is freed the ordinary way.
//!
//! The alignment is decided by the size alone, so `dealloc` (which gets the
//! same layout `alloc` got) always knows how a block was made. Everything else
//! goes to the system allocator unchanged. The cost is a `posix_memalign`
//! instead of a `malloc` for page-sized blocks — a few bytes of slack, no
//! measurable time.

use std::alloc::{GlobalAlloc, Layout, System};

/// The alignment given to page-multiple sizes.
pub const PAGE: usize = 4096;

/// The program's allocator (see the module docs).
pub struct PageAligned;

#[global_allocator]
static GLOBAL: PageAligned = PageAligned;

fn adjust(l: Layout) -> Layout {
    if l.size() >= PAGE && l.size() % PAGE == 0 && l.align() < PAGE {
        // A size that is a multiple of PAGE is valid with alignment PAGE.
        Layout::from_size_align(l.size(), PAGE).unwrap_or(l)
    } else {
        l
    }
}

// SAFETY: every method forwards to `System` with the layout `adjust` gives,
// which is a pure function of the caller's layout and never weakens its
// alignment; so a block is always freed (or grown) with the layout it was
// allocated with, as `System` requires.
unsafe impl GlobalAlloc for PageAligned {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: `adjust(l)` has the same non-zero size as `l` (the caller's
        // promise) and a valid alignment.
        unsafe { System.alloc(adjust(l)) }
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(adjust(l)) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` was allocated by `alloc` with `l`, that is by `System`
        // with `adjust(l)`, the layout passed here.
        unsafe { System.dealloc(p, adjust(l)) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        let new = Layout::from_size_align(new_size, l.align()).unwrap_or(l);
        if adjust(l) == l && adjust(new) == new {
            // Neither size is page-aligned: the system's own realloc.
            // SAFETY: `p` came from `System` with `l` (unadjusted), and
            // `new_size` is valid for `l`'s alignment (the caller's promise).
            return unsafe { System.realloc(p, l, new_size) };
        }
        // SAFETY: `new` has a non-zero size (the caller's promise).
        let q = unsafe { self.alloc(new) };
        if !q.is_null() {
            // SAFETY: both blocks are live and distinct, and each is at least
            // `min(old, new)` bytes long.
            unsafe { std::ptr::copy_nonoverlapping(p, q, l.size().min(new_size)) };
            // SAFETY: `p` was allocated by this allocator with `l`.
            unsafe { self.dealloc(p, l) };
        }
        q
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn page_sized_vectors_are_page_aligned() {
        for n in [4096, 8192, 65536] {
            let v: Vec<u8> = Vec::with_capacity(n);
            assert_eq!(v.as_ptr() as usize % super::PAGE, 0, "{n}");
        }
        let mut v: Vec<u8> = Vec::with_capacity(100);
        v.resize(4096, 1);
        v.shrink_to_fit();
        assert_eq!(v.as_ptr() as usize % super::PAGE, 0);
        assert!(v.iter().all(|&b| b == 1));
    }
}
