//! Responses gathered for one write: owned bytes (headers and small payloads) interleaved
//! with ranges of object files' mappings, sent with `writev` so that a data object's bytes
//! go from the page cache into the socket with one copy (no `pread` into a buffer first).
//!
//! Contract:
//! - [`Answers::buf`] is appended to freely; [`Answers::push_mapped`] inserts a mapped
//!   range at the current end of `buf`. The logical content is `buf` with every mapped
//!   range spliced in at its position, in order; [`Answers::len`] is its length.
//! - [`Answers::mark`] and [`Answers::truncate`] drop everything gathered after a mark
//!   (an error response replaces the payload it had begun).
//! - [`Answers::send`] writes the logical content whole to a file descriptor, retrying
//!   partial writes and EINTR, at most [`IOV_MAX`] iovecs per call, then empties itself
//!   (keeping its capacity). The mapped bytes are read by the kernel only, never through a
//!   Rust reference, so a concurrent write to the object (another request) is no data
//!   race; an object file truncated behind the store's back makes the write fail with
//!   EFAULT, which closes that connection, not the process.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use super::objects::Mapping;

/// The most iovecs one `writev` takes (Linux's UIO_MAXIOV).
const IOV_MAX: usize = 1024;

struct Mapped {
    /// Where in `buf` the range goes.
    at: usize,
    map: Arc<Mapping>,
    off: usize,
    len: usize,
}

/// Gathered responses (module contract).
#[derive(Default)]
pub(super) struct Answers {
    pub(super) buf: Vec<u8>,
    mapped: Vec<Mapped>,
    mapped_len: usize,
    iov: Vec<libc::iovec>,
}

/// A position in an [`Answers`].
#[derive(Clone, Copy)]
pub(super) struct Mark {
    buf: usize,
    mapped: usize,
    mapped_len: usize,
}

impl Answers {
    pub(super) fn with_capacity(bytes: usize) -> Answers {
        Answers { buf: Vec::with_capacity(bytes), ..Answers::default() }
    }

    /// Length of the logical content.
    pub(super) fn len(&self) -> usize {
        self.buf.len() + self.mapped_len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the buffer of owned bytes it keeps.
    pub(super) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    pub(super) fn mark(&self) -> Mark {
        Mark { buf: self.buf.len(), mapped: self.mapped.len(), mapped_len: self.mapped_len }
    }

    /// Logical bytes gathered since `m`.
    pub(super) fn since(&self, m: Mark) -> usize {
        self.len() - (m.buf + m.mapped_len)
    }

    pub(super) fn truncate(&mut self, m: Mark) {
        self.buf.truncate(m.buf);
        self.mapped.truncate(m.mapped);
        self.mapped_len = m.mapped_len;
    }

    /// `len` bytes of `map` from `off` (within the mapping: [`Mapping::covers`]) follow.
    pub(super) fn push_mapped(&mut self, map: Arc<Mapping>, off: usize, len: usize) {
        debug_assert!(map.covers(off, len));
        self.mapped_len += len;
        self.mapped.push(Mapped { at: self.buf.len(), map, off, len });
    }

    /// Empty it, keeping at most `keep` bytes of owned-buffer capacity.
    pub(super) fn clear(&mut self, keep: usize) {
        self.buf.clear();
        self.mapped.clear();
        self.mapped_len = 0;
        if self.buf.capacity() > keep {
            self.buf.shrink_to(keep);
        }
    }

    /// Write everything to `fd` (module contract); empties it either way.
    pub(super) fn send(&mut self, fd: RawFd) -> io::Result<()> {
        self.iov.clear();
        let mut from = 0usize;
        for m in &self.mapped {
            if m.at > from {
                self.iov.push(iovec(self.buf[from..m.at].as_ptr(), m.at - from));
            }
            if m.len > 0 {
                self.iov.push(iovec(m.map.ptr_at(m.off), m.len));
            }
            from = m.at;
        }
        if self.buf.len() > from {
            self.iov.push(iovec(self.buf[from..].as_ptr(), self.buf.len() - from));
        }
        let r = write_all(fd, &mut self.iov);
        self.iov.clear();
        self.buf.clear();
        self.mapped.clear();
        self.mapped_len = 0;
        r
    }
}

#[cfg(test)]
impl Answers {
    /// The logical content, sent through a socket pair (small contents only: one socket
    /// buffer), and empty it.
    pub(super) fn take_bytes(&mut self) -> Vec<u8> {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let (mut r, w) = std::os::unix::net::UnixStream::pair().expect("socket pair");
        self.send(w.as_raw_fd()).expect("send");
        drop(w);
        let mut got = Vec::new();
        r.read_to_end(&mut got).expect("read");
        got
    }
}

fn iovec(p: *const u8, len: usize) -> libc::iovec {
    libc::iovec { iov_base: p.cast_mut().cast(), iov_len: len }
}

/// `writev` until every iovec is written.
fn write_all(fd: RawFd, iov: &mut [libc::iovec]) -> io::Result<()> {
    let mut i = 0usize;
    while i < iov.len() {
        let n = (iov.len() - i).min(IOV_MAX);
        // SAFETY: the iovecs describe memory that stays valid and unmodified by us for the
        // call: `buf` (borrowed by the caller's `&mut self`) and mappings held by `mapped`.
        // n ≤ IOV_MAX fits a c_int.
        let w = unsafe { libc::writev(fd, iov[i..].as_ptr(), n as libc::c_int) };
        if w < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if w == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        i = crate::iov::advance(iov, i, w as usize);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    #[test]
    fn splices_mapped_ranges_in_order_and_truncates_to_a_mark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("obj");
        let mut f = std::fs::File::create(&path).expect("create");
        f.write_all(b"0123456789abcdef").expect("write");
        let f = std::fs::File::open(&path).expect("open");
        let map = Arc::new(Mapping::new(&f).expect("map").expect("non-empty"));
        assert!(map.covers(10, 6) && !map.covers(10, 7));

        let mut a = Answers::with_capacity(64);
        a.buf.extend_from_slice(b"<h1>");
        a.push_mapped(map.clone(), 2, 3);
        a.buf.extend_from_slice(b"<h2>");
        let m = a.mark();
        a.push_mapped(map.clone(), 0, 16);
        a.buf.extend_from_slice(b"junk");
        assert_eq!(a.since(m), 20);
        a.truncate(m);
        a.push_mapped(map.clone(), 10, 6);
        a.push_mapped(map, 0, 1);
        a.buf.extend_from_slice(b"<end>");
        assert_eq!(a.len(), 4 + 3 + 4 + 6 + 1 + 5);

        let (mut r, w) = std::os::unix::net::UnixStream::pair().expect("pair");
        a.send(w.as_raw_fd()).expect("send");
        assert!(a.is_empty());
        drop(w);
        let mut got = String::new();
        r.read_to_string(&mut got).expect("read");
        assert_eq!(got, "<h1>234<h2>abcdef0<end>");
    }

    #[test]
    fn a_file_truncated_under_its_mapping_fails_the_write_without_a_signal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("obj");
        std::fs::write(&path, vec![7u8; 64 << 10]).expect("write");
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).expect("open");
        let map = Arc::new(Mapping::new(&f).expect("map").expect("non-empty"));
        f.set_len(0).expect("truncate");
        let mut a = Answers::default();
        a.buf.extend_from_slice(b"hdr");
        a.push_mapped(map, 32 << 10, 4096);
        let (_r, w) = std::os::unix::net::UnixStream::pair().expect("pair");
        let e = a.send(w.as_raw_fd()).expect_err("the mapped pages are gone");
        assert_eq!(e.raw_os_error(), Some(libc::EFAULT), "{e}");
        assert!(a.is_empty());
    }

    #[test]
    fn more_iovecs_than_one_writev_takes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("obj");
        std::fs::write(&path, b"xy").expect("write");
        let map = Arc::new(Mapping::new(&std::fs::File::open(&path).expect("open")).expect("map").expect("non-empty"));
        let mut a = Answers::default();
        let mut want = Vec::new();
        for i in 0..3000u32 {
            a.buf.push(b'a' + (i % 26) as u8);
            want.push(b'a' + (i % 26) as u8);
            a.push_mapped(map.clone(), 1, 1);
            want.push(b'y');
        }
        let (mut r, w) = std::os::unix::net::UnixStream::pair().expect("pair");
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            r.read_to_end(&mut got).expect("read");
            got
        });
        a.send(w.as_raw_fd()).expect("send");
        drop(w);
        assert_eq!(reader.join().expect("reader"), want);
    }
}
