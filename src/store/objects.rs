//! Object files of the embedded store: one file per object under `DIR/obj`, named by the
//! oid as 16 lower-case hex digits (as in a sheep store's `obj/` folder).
//!
//! Contract:
//! - Files are sparse; bytes never written read as zeros, and so do bytes past the end of
//!   the file (sheep does no bounds check on reads).
//! - [`Objects::create`] is atomic: the new object is built in `DIR/tmp` and renamed over
//!   the object path, so a reader sees the old object or the whole new one. A create of an
//!   existing oid replaces it (sheep 1.0's trap, reproduced on purpose).
//! - With `sync` on, [`Objects::write`] and [`Objects::create`] return only once the data
//!   is on stable storage (fdatasync; fsync of `obj/` after a rename). Removals are not
//!   synced: a removal lost in a crash leaves an unreferenced object, never lost data.
//! - Request-facing methods answer sheep result codes: a missing object is NO_OBJ, a full
//!   disk NO_SPACE, any other I/O error EIO (logged as a warning). No lock is taken here;
//!   callers order inode I/O under the metadata lock.
//! - Open files are kept (at most [`Objects::open`]'s `max_open`, then all are closed at
//!   once): a read or write of a known object costs no open or close. A create or a
//!   removal forgets the oid's file after renaming or unlinking it, and an open that raced
//!   one is not kept (a generation count), so no stale file is served afterwards; a read or
//!   write running concurrently with a create of the same object may see either file, as
//!   two unordered requests may in sheep.
//! - Reads are `pread` into the caller's buffer, which they fill whole: what lies past
//!   the end of the file is zero-filled.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::proto::{Oid, ResultCode, SD_RES_EIO, SD_RES_NO_OBJ, SD_RES_NO_SPACE};

/// Linux ENOSPC and EDQUOT: both mean "no space" to a client.
const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;

/// The object directory of one store.
pub(super) struct Objects {
    obj: PathBuf,
    tmp: PathBuf,
    sync: bool,
    seq: AtomicU64,
    files: Mutex<OpenFiles>,
    max_open: usize,
}

/// The kept open files (module contract).
#[derive(Default)]
struct OpenFiles {
    map: HashMap<Oid, Arc<File>>,
    /// Bumped by every forget: an open that began before it is not kept.
    gen: u64,
}

impl Objects {
    /// Create `dir/obj` and `dir/tmp` when missing and empty `dir/tmp` of creates a crash
    /// interrupted. The error names the path that failed.
    /// At most `max_open` object files are kept open (at least one).
    pub(super) fn open(
        dir: &Path,
        sync: bool,
        max_open: usize,
    ) -> Result<Objects, (PathBuf, io::Error)> {
        let obj = dir.join("obj");
        let tmp = dir.join("tmp");
        for d in [&obj, &tmp] {
            fs::create_dir_all(d).map_err(|e| (d.clone(), e))?;
        }
        let leftovers = fs::read_dir(&tmp).map_err(|e| (tmp.clone(), e))?;
        for entry in leftovers {
            let entry = entry.map_err(|e| (tmp.clone(), e))?;
            let path = entry.path();
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(
                    "cannot remove leftover temporary file {}: {}",
                    path.display(),
                    super::describe(&e)
                );
            }
        }
        Ok(Objects {
            obj,
            tmp,
            sync,
            seq: AtomicU64::new(0),
            files: Mutex::default(),
            max_open: max_open.max(1),
        })
    }

    fn files(&self) -> MutexGuard<'_, OpenFiles> {
        self.files.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The open file of `oid` (read-write), kept for the next request (module contract).
    fn file(&self, oid: Oid) -> io::Result<Arc<File>> {
        let gen = {
            let files = self.files();
            if let Some(f) = files.map.get(&oid) {
                return Ok(Arc::clone(f));
            }
            files.gen
        };
        let f = Arc::new(OpenOptions::new().read(true).write(true).open(self.path(oid))?);
        let mut files = self.files();
        if files.gen == gen {
            if files.map.len() >= self.max_open {
                files.map.clear();
            }
            files.map.insert(oid, Arc::clone(&f));
        }
        Ok(f)
    }

    /// Drop the kept file of `oid` after its path changed (module contract).
    fn forget(&self, oid: Oid) {
        let mut files = self.files();
        files.gen += 1;
        files.map.remove(&oid);
    }

    /// Object files kept open now.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.files().map.len()
    }

    /// The file of `oid`.
    pub(super) fn path(&self, oid: Oid) -> PathBuf {
        self.obj.join(oid.to_string())
    }

    /// Every oid with a file in `obj/` whose name is 16 hex digits; other names are skipped.
    pub(super) fn list(&self) -> Result<Vec<Oid>, (PathBuf, io::Error)> {
        let mut out = Vec::new();
        let rd = fs::read_dir(&self.obj).map_err(|e| (self.obj.clone(), e))?;
        for entry in rd {
            let entry = entry.map_err(|e| (self.obj.clone(), e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.len() != 16 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                tracing::debug!("ignoring {name} in {}", self.obj.display());
                continue;
            }
            if let Ok(v) = u64::from_str_radix(name, 16) {
                out.push(Oid(v));
            }
        }
        Ok(out)
    }

    /// Fill `buf` from `off`; zeros past the end of the file.
    pub(super) fn read_raw(&self, oid: Oid, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let f = self.file(oid)?;
        fill_at(&f, off, buf)
    }

    /// READ_OBJ: NO_OBJ when the object does not exist.
    pub(super) fn read(&self, oid: Oid, off: u64, buf: &mut [u8]) -> Result<(), ResultCode> {
        self.read_raw(oid, off, buf).map_err(|e| failure("read", oid, &e))
    }

    /// WRITE_OBJ: overwrite part of an existing object (NO_OBJ when missing). A write past
    /// the end grows the file, as in sheep.
    pub(super) fn write(&self, oid: Oid, off: u64, data: &[u8]) -> Result<(), ResultCode> {
        let f = self.file(oid).map_err(|e| failure("write", oid, &e))?;
        f.write_all_at(data, off).map_err(|e| failure("write", oid, &e))?;
        if self.sync {
            f.sync_data().map_err(|e| failure("sync", oid, &e))?;
        }
        Ok(())
    }

    /// CREATE_AND_WRITE_OBJ: a new object of at least `size` bytes holding `cow`'s content
    /// (NO_OBJ when `cow` is missing) or zeros, with `data` at `off`, replacing any object
    /// of that oid atomically.
    pub(super) fn create(
        &self,
        oid: Oid,
        size: u64,
        cow: Option<Oid>,
        off: u64,
        data: &[u8],
    ) -> Result<(), ResultCode> {
        let src = match cow {
            Some(c) => Some(
                File::open(self.path(c))
                    .map_err(|e| failure("read copy-on-write source of", c, &e))?,
            ),
            None => None,
        };
        let tmp = self.tmp.join(format!("{oid}.{}", self.seq.fetch_add(1, Ordering::Relaxed)));
        let res = self.build(&tmp, oid, src, size, off, data);
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    fn build(
        &self,
        tmp: &Path,
        oid: Oid,
        src: Option<File>,
        size: u64,
        off: u64,
        data: &[u8],
    ) -> Result<(), ResultCode> {
        let fail = |e: io::Error| failure("create", oid, &e);
        let mut f =
            OpenOptions::new().read(true).write(true).create_new(true).open(tmp).map_err(fail)?;
        if let Some(mut s) = src {
            io::copy(&mut s, &mut f).map_err(fail)?;
        }
        let len = f.metadata().map_err(fail)?.len();
        if len < size {
            f.set_len(size).map_err(fail)?;
        }
        f.write_all_at(data, off).map_err(fail)?;
        if self.sync {
            f.sync_data().map_err(fail)?;
        }
        drop(f);
        fs::rename(tmp, self.path(oid)).map_err(fail)?;
        self.forget(oid);
        if self.sync {
            File::open(&self.obj).and_then(|d| d.sync_all()).map_err(fail)?;
        }
        Ok(())
    }

    /// REMOVE_OBJ: NO_OBJ when the object does not exist.
    pub(super) fn remove(&self, oid: Oid) -> Result<(), ResultCode> {
        let r = fs::remove_file(self.path(oid)).map_err(|e| failure("remove", oid, &e));
        self.forget(oid);
        r
    }

    /// Remove an object nobody references any more; a missing file is fine.
    pub(super) fn reclaim(&self, oid: Oid) {
        let r = fs::remove_file(self.path(oid));
        self.forget(oid);
        match r {
            Ok(()) => tracing::debug!("reclaimed unreferenced object {oid}"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!("cannot remove unreferenced object {oid}: {}", super::describe(&e))
            }
        }
    }
}

/// Read `buf.len()` bytes of `f` from `off` into `buf` (pread until done), zeros past the
/// end of the file; every byte of `buf` is overwritten when it returns `Ok`.
fn fill_at(f: &File, off: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        // An offset the kernel cannot take (above i64::MAX) lies past the end of any file.
        let Some(at) = off.checked_add(done as u64).filter(|&a| i64::try_from(a).is_ok()) else {
            break;
        };
        match f.read_at(&mut buf[done..], at) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[done..].fill(0);
    Ok(())
}

/// The result code for an I/O error on `oid`: NO_OBJ, NO_SPACE or EIO (logged).
pub(super) fn failure(op: &str, oid: Oid, e: &io::Error) -> ResultCode {
    if e.kind() == io::ErrorKind::NotFound {
        return SD_RES_NO_OBJ;
    }
    if e.kind() == io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT)) {
        tracing::warn!("cannot {op} object {oid}: no space left");
        return SD_RES_NO_SPACE;
    }
    tracing::warn!("cannot {op} object {oid}: {}", super::describe(e));
    SD_RES_EIO
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_replace_cow_and_sparse_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let objs = Objects::open(dir.path(), true, 2)
            .map_err(|(p, e)| format!("{}: {e}", p.display()))
            .expect("open");
        let a = Oid(0x00a5_d05d_0000_0001);
        let b = Oid(0x00a5_d05e_0000_0001);
        let mut buf = [1u8; 8];
        assert_eq!(objs.read(a, 0, &mut buf), Err(SD_RES_NO_OBJ));
        assert_eq!(objs.write(a, 0, b"x"), Err(SD_RES_NO_OBJ));
        assert_eq!(objs.create(a, 4096, None, 10, b"hello"), Ok(()));
        assert_eq!(fs::metadata(objs.path(a)).map(|m| m.len()).ok(), Some(4096));
        objs.read(a, 8, &mut buf).expect("read");
        assert_eq!(&buf, b"\0\0hello\0");
        // Past the end: zeros, no error.
        objs.read(a, 1 << 20, &mut buf).expect("read past end");
        assert_eq!(buf, [0; 8]);
        // A reused buffer full of stale bytes: every byte is overwritten, zeros past the end.
        let mut stale = [0xaau8; 16];
        objs.read(a, 4088, &mut stale).expect("read across the end");
        assert_eq!(stale, [0; 16]);
        let mut stale = [0xaau8; 16];
        objs.read(a, 8, &mut stale).expect("read");
        assert_eq!(&stale, b"\0\0hello\0\0\0\0\0\0\0\0\0");
        assert_eq!(objs.read(Oid(7), 0, &mut stale), Err(SD_RES_NO_OBJ));
        objs.read(a, u64::MAX - 4, &mut stale).expect("an offset past what pread takes");
        assert_eq!(stale, [0; 16]);
        // COW copies the source, then overlays.
        assert_eq!(objs.create(b, 4096, Some(a), 0, b"HE"), Ok(()));
        objs.read(b, 10, &mut buf).expect("read");
        assert_eq!(&buf[..5], b"hello");
        objs.read(b, 0, &mut buf[..2]).expect("read");
        assert_eq!(&buf[..2], b"HE");
        assert_eq!(objs.create(b, 4096, Some(Oid(7)), 0, b"x"), Err(SD_RES_NO_OBJ));
        // A second create replaces the object.
        assert_eq!(objs.create(a, 4096, None, 0, b"z"), Ok(()));
        objs.read(a, 10, &mut buf).expect("read");
        assert_eq!(buf, [0; 8]);
        // A write past the end grows the file.
        assert_eq!(objs.write(a, 4095, b"ab"), Ok(()));
        assert_eq!(fs::metadata(objs.path(a)).map(|m| m.len()).ok(), Some(4097));
        assert!(objs.kept() <= 2, "at most max_open files kept");
        assert_eq!(objs.remove(a), Ok(()));
        assert_eq!(
            objs.read(a, 0, &mut buf),
            Err(SD_RES_NO_OBJ),
            "no kept file outlives its removal"
        );
        assert_eq!(objs.remove(a), Err(SD_RES_NO_OBJ));
        let listed = objs.list().map_err(|(_, e)| e.to_string()).expect("list");
        assert_eq!(listed, vec![b]);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).map(|d| d.count()).ok(), Some(0));
    }

    #[test]
    fn kept_files_see_writes_recreates_growth_and_removal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let objs = Objects::open(dir.path(), false, 8)
            .map_err(|(p, e)| format!("{}: {e}", p.display()))
            .expect("open");
        let a = Oid(0x00a5_d05d_0000_0001);
        let read = |off: u64, len: usize| {
            let mut b = vec![0xaa; len];
            objs.read(a, off, &mut b).map(|()| b)
        };
        assert_eq!(read(0, 4), Err(SD_RES_NO_OBJ));
        assert_eq!(objs.create(a, 16, None, 0, b"abcd"), Ok(()));
        assert_eq!(read(0, 6).as_deref(), Ok(&b"abcd\0\0"[..]));
        assert_eq!(objs.kept(), 1, "the open file is kept");
        assert_eq!(objs.write(a, 2, b"XY"), Ok(()));
        assert_eq!(read(0, 4).as_deref(), Ok(&b"abXY"[..]));
        // Grown by a write past the end; zeros past the new end.
        assert_eq!(objs.write(a, 16, b"tail"), Ok(()));
        assert_eq!(read(14, 8).as_deref(), Ok(&b"\0\0tail\0\0"[..]));
        // A re-create replaces the kept file: no stale bytes.
        assert_eq!(objs.create(a, 16, None, 8, b"new"), Ok(()));
        assert_eq!(read(0, 12).as_deref(), Ok(&b"\0\0\0\0\0\0\0\0new\0"[..]));
        assert_eq!(objs.remove(a), Ok(()));
        assert_eq!(objs.kept(), 0, "removal forgets the file");
        assert_eq!(read(0, 4), Err(SD_RES_NO_OBJ));
    }
}
