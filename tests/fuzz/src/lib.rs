//! What the fuzz targets share: sheepdev's wire codec compiled from its own source, a global
//! allocator that counts, and a reader that turns fuzz input into numbers.
//!
//! `src/proto/` is pure (no I/O, no runtime, no libublk; its one dependency is thiserror), so
//! it is compiled here straight from the main crate's files: the targets exercise exactly the
//! code the shard runs, and the fuzz build does not instrument glommio, libublk, bindgen and
//! the rest of the main crate's dependencies (which would take minutes on CI).

#[path = "../../../src/proto/mod.rs"]
pub mod proto;

pub mod counting {
    //! A global allocator that counts the allocations made while [`count`] runs its closure
    //! (fuzzing runs one input at a time on one thread).

    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

    static ARMED: AtomicBool = AtomicBool::new(false);
    static COUNT: AtomicUsize = AtomicUsize::new(0);

    pub struct Counting;

    fn note() {
        if ARMED.load(Relaxed) {
            COUNT.fetch_add(1, Relaxed);
        }
    }

    // SAFETY: every call is forwarded unchanged to `System`; counting touches no memory of it.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note();
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note();
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note();
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    /// Run `f`; return what it returned and how many heap allocations it made.
    pub fn count<R>(f: impl FnOnce() -> R) -> (R, usize) {
        COUNT.store(0, Relaxed);
        ARMED.store(true, Relaxed);
        let r = f();
        ARMED.store(false, Relaxed);
        (r, COUNT.load(Relaxed))
    }
}

#[global_allocator]
static ALLOC: counting::Counting = counting::Counting;

/// Fuzz input read as a sequence of numbers and byte strings; zeros once it runs out.
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    pub fn new(b: &'a [u8]) -> Input<'a> {
        Input(b)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Up to `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    /// Exactly `N` bytes, zero-padded at the end of the input.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }
}
