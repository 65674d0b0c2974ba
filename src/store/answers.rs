//! Response bytes and the buffers they are built in: an [`Answer`] holds one response
//! (header, then payload) or, on the opt-in fast path ([`super::Config::fast_reads`]),
//! several, and is sent with one write; a [`Pool`] keeps a few buffers for reuse.
//!
//! Contract:
//! - An [`Answer`]'s content is its first [`Answer::len`] bytes. [`Answer::push`] appends
//!   bytes, [`Answer::grow`] appends `n` bytes for the caller to overwrite whole (a read
//!   fills them with pread and zeros). [`Answer::mark`] and [`Answer::truncate`] drop what
//!   was appended after a mark (an error response replaces the payload it had begun).
//! - The buffer behind it keeps the length of the most it ever held: bytes past the
//!   content are initialized, stale and never sent, so growing into them zeroes nothing
//!   and only growth beyond the high-water mark is zeroed. Everything is safe code.
//! - [`Pool`] is bounded: at most [`POOL_KEPT`] buffers of at most [`POOL_KEEP_MAX`] bytes
//!   each; a larger one is dropped when given back. Request payloads and answers share it.

use std::sync::{Mutex, PoisonError};

/// Buffers a [`Pool`] keeps, at most.
pub(super) const POOL_KEPT: usize = 32;
/// A buffer larger than this is not kept (a huge read or write allocates its own).
pub(super) const POOL_KEEP_MAX: usize = 1 << 20;

/// One or more whole responses being built (module contract).
#[derive(Default)]
pub(super) struct Answer {
    buf: Vec<u8>,
    len: usize,
}

/// A position in an [`Answer`].
#[derive(Clone, Copy)]
pub(super) struct Mark(usize);

impl Answer {
    /// An empty answer built in `buf` (a pooled buffer: its bytes are overwritten before
    /// they are sent).
    pub(super) fn from_buf(buf: Vec<u8>) -> Answer {
        Answer { buf, len: 0 }
    }

    /// The buffer, for the pool.
    pub(super) fn into_buf(self) -> Vec<u8> {
        self.buf
    }

    /// The content: what is sent.
    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Append `n` bytes and hand them out to be overwritten whole; they hold stale bytes
    /// (or zeros, where the buffer grew).
    pub(super) fn grow(&mut self, n: usize) -> &mut [u8] {
        let at = self.len;
        let end = at + n;
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        self.len = end;
        &mut self.buf[at..end]
    }

    pub(super) fn push(&mut self, b: &[u8]) {
        self.grow(b.len()).copy_from_slice(b);
    }

    pub(super) fn mark(&self) -> Mark {
        Mark(self.len)
    }

    /// Bytes appended since `m`.
    pub(super) fn since(&self, m: Mark) -> usize {
        self.len - m.0
    }

    /// The `n` bytes at `m`, to overwrite (a header reserved there).
    pub(super) fn at(&mut self, m: Mark, n: usize) -> &mut [u8] {
        &mut self.buf[m.0..m.0 + n]
    }

    pub(super) fn truncate(&mut self, m: Mark) {
        self.len = self.len.min(m.0);
    }

    /// Empty it; with `keep`, give the buffer up when it grew past `keep` bytes.
    pub(super) fn clear(&mut self, keep: usize) {
        self.len = 0;
        if self.buf.len() > keep {
            self.buf = Vec::new();
        }
    }
}

/// Buffers kept for reuse (module contract).
#[derive(Default)]
pub(super) struct Pool(Mutex<Vec<Vec<u8>>>);

impl Pool {
    /// A buffer of at least `len` bytes whose first `len` the caller overwrites: a kept
    /// one when there is one (only growth beyond what it held is zeroed), else a new one.
    pub(super) fn take(&self, len: usize) -> Vec<u8> {
        let mut b = self.0.lock().unwrap_or_else(PoisonError::into_inner).pop().unwrap_or_default();
        if b.len() < len {
            b.resize(len, 0);
        }
        b
    }

    /// Keep `b` for another request when there is room and it is not too large.
    pub(super) fn give(&self, b: Vec<u8>) {
        if b.is_empty() || b.len() > POOL_KEEP_MAX {
            return;
        }
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() < POOL_KEPT {
            kept.push(b);
        }
    }

    #[cfg(test)]
    fn kept(&self) -> Vec<usize> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).iter().map(Vec::len).collect()
    }
}

#[cfg(test)]
impl Answer {
    /// Bytes of the buffer behind it.
    fn capacity(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_what_was_appended_and_stale_bytes_are_never_sent() {
        let mut a = Answer::from_buf(vec![0xaa; 16]);
        assert!(a.bytes().is_empty());
        a.push(b"<h1>");
        let m = a.mark();
        a.grow(3).copy_from_slice(b"abc");
        a.push(b"junk");
        assert_eq!(a.since(m), 7);
        a.truncate(m);
        assert_eq!(a.bytes(), b"<h1>");
        a.grow(2).copy_from_slice(b"xy");
        a.at(m, 2).copy_from_slice(b"XY");
        assert_eq!(a.bytes(), b"<h1>XY");
        // Past the high-water mark: the growth is zeroed.
        let g = a.grow(20);
        assert_eq!(&g[10..], [0; 10]);
        assert_eq!((a.len(), a.capacity()), (26, 26));
        a.clear(16);
        assert!(
            a.bytes().is_empty() && a.capacity() == 0,
            "a buffer grown past `keep` is given up"
        );
    }

    #[test]
    fn pool_buffers_are_reused_and_only_grown() {
        let pool = Pool::default();
        let mut a = pool.take(8);
        assert_eq!(a, [0; 8]);
        a.copy_from_slice(b"abcdefgh");
        let p = a.as_ptr();
        pool.give(a);
        let b = pool.take(4);
        assert_eq!((b.len(), b.as_ptr()), (8, p), "the kept buffer, as long as it was");
        pool.give(b);
        let c = pool.take(12);
        assert_eq!(&c[8..], [0; 4], "growth is zeroed");
        pool.give(c);
        pool.give(vec![0; POOL_KEEP_MAX + 1]);
        for _ in 0..POOL_KEPT + 1 {
            pool.give(vec![0; 1]);
        }
        let kept = pool.kept();
        assert_eq!(kept.len(), POOL_KEPT, "bounded");
        assert!(kept.iter().all(|&l| l <= POOL_KEEP_MAX), "no oversized buffer kept");
    }
}
