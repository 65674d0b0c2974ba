//! VDI metadata of the embedded store: the in-use bitmap, a cache of every inode (header
//! and `data_vdi_id` entries), sheep's lookup walk, NEW_VDI/DEL_VDI, locks and the
//! reference drop that reclaims data objects.
//!
//! Contract:
//! - One [`Meta`] lives behind one mutex; every inode object I/O goes through it, so the
//!   cache and the inode files never disagree for a reader holding the lock. Data object
//!   I/O does not take the lock beyond asking [`Meta::data_target`].
//! - The cache is rebuilt from the inode files at start ([`Meta::load`]); bits of the
//!   bitmap are set for every inode file and never cleared (no `-R` recycling).
//! - Lookups follow sheep 1.0's `vdi_lookup`: start at `hash_vid(name)`, take the run of
//!   set bits up to the first clear one (wrapping to 1), walk it from the highest vid down
//!   and match names. No tag and snapid 0 → the working VDI (NO_VDI when the newest inode
//!   of that name is a snapshot); a tag or snapid → snapshots only, NO_TAG when a working
//!   VDI of that name was seen on the way, NO_VDI otherwise. Deleted inodes never match.
//! - `readonly` is sheep's in-memory "snapshot" state of a vid: set at load from
//!   `snap_ctime != 0`, and by NEW_VDI on the VDI it freezes (snapshot, rebase) or clones
//!   from. Only this flag decides READONLY for data writes.
//! - Reference drop: an inode write that lies entirely inside `data_vdi_id` and replaces a
//!   non-zero entry X at index i removes object `X << 32 | i` unless a live (not deleted)
//!   inode still has X at i. Inode writes that touch anything else never reclaim.

use std::collections::HashMap;

use super::inode::{
    hyper_own_objects, inode_vid, read_inode_file, Inode, DEFAULT_OBJECT_SIZE, HYPER_EMPTY_ROOT,
};
use super::objects::{failure, Objects};
use crate::proto::inode::{
    field_str, nr_objects, INODE_HEADER_PARSE_LEN, OFF_DATA_VDI_ID, OFF_GREF, OFF_NAME,
    OFF_SNAP_CTIME, OFF_VDI_SIZE,
};
use crate::proto::{
    hash_vid, InodeHeader, Oid, ResultCode, Vid, LOCK_TYPE_NORMAL, LOCK_TYPE_SHARED,
    SD_INODE_DATA_INDEX, SD_INODE_SIZE, SD_MAX_VDI_LEN, SD_NR_VDIS, SD_RES_BASE_VDI_READ,
    SD_RES_BASE_VDI_WRITE, SD_RES_FULL_VDI, SD_RES_INVALID_PARMS, SD_RES_NO_OBJ, SD_RES_NO_TAG,
    SD_RES_NO_VDI, SD_RES_VDI_EXIST, SD_RES_VDI_LOCKED, SD_RES_VDI_WRITE, SD_VDI_BITMAP_LEN,
    VDI_ATTR_BIT, VMSTATE_BIT,
};

/// Size of a VDI attribute object (`struct sheepdog_vdi_attr`).
const SD_ATTR_OBJ_SIZE: u64 = 66_320;

/// A data or vm-state object: the kinds sheep refuses to write for snapshots.
fn is_data_like(oid: Oid) -> bool {
    Oid(oid.0 & !VMSTATE_BIT).is_data()
}

enum Lock {
    Exclusive,
    Shared(u32),
}

/// What a lookup asks: name and tag as sent (up to their first NUL), and snapid @32.
pub(super) struct Query<'a> {
    pub name: &'a [u8],
    pub tag: &'a [u8],
    pub snapid: u32,
}

/// What sheep's `vdi_info` carries out of a lookup besides the result.
#[derive(Default)]
struct Walk {
    /// Last inode noted on the way (a frozen working VDI, or a working VDI when a
    /// snapshot was wanted).
    vid: u32,
    /// snap_id + 1 of the newest inode of that name (no-tag lookups only).
    next_snapid: u32,
    /// Where a new VDI of that name goes.
    free_bit: u32,
}

/// A NEW_VDI request with the cluster defaults already applied.
pub(super) struct NewVdi<'a> {
    pub name: &'a [u8],
    pub size: u64,
    pub base: u32,
    /// snapid @32 was non-zero: snapshot (base = working vid) or rebase.
    pub snapshot: bool,
    pub copies: u8,
    pub copy_policy: u8,
    /// 0 = flat `data_vdi_id`, 1 = hyper volume (B-tree root in `data_vdi_id`).
    pub store_policy: u8,
    pub block_size_shift: u8,
    /// `(sec << 32) | nsec` of now.
    pub time: u64,
}

/// The vid a lookup found, with the fields a VDI response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Found {
    pub vid: u32,
    pub copies: u8,
    pub block_size_shift: u8,
}

/// The store's VDI metadata; see the module contract.
pub(super) struct Meta {
    bitmap: Vec<u8>,
    inodes: HashMap<u32, Inode>,
    locks: HashMap<u32, Lock>,
}

impl Meta {
    /// Rebuild the metadata from the inode files in `objs`.
    pub(super) fn load(objs: &Objects) -> Result<Meta, super::Error> {
        let mut meta = Meta {
            bitmap: vec![0; SD_VDI_BITMAP_LEN as usize],
            inodes: HashMap::new(),
            locks: HashMap::new(),
        };
        let oids = objs.list().map_err(|(path, e)| super::Error::dir(path, e))?;
        let mut buf = Vec::new();
        for oid in oids {
            let Some(vid) = inode_vid(oid) else { continue };
            let ino = read_inode_file(objs, oid, &mut buf, false).map_err(|io| {
                super::Error::Inode { oid, path: objs.path(oid), reason: super::describe(&io), io }
            })?;
            meta.set_bit(vid);
            meta.inodes.insert(vid, ino);
        }
        Ok(meta)
    }

    /// The READ_VDIS bitmap: bit v is byte v/8, bit v%8.
    pub(super) fn bitmap(&self) -> &[u8] {
        &self.bitmap
    }

    /// Number of inodes known (for logs and tests).
    pub(super) fn nr_inodes(&self) -> usize {
        self.inodes.len()
    }

    fn test_bit(&self, v: u32) -> bool {
        self.bitmap.get((v / 8) as usize).is_some_and(|b| b >> (v % 8) & 1 != 0)
    }

    fn set_bit(&mut self, v: u32) {
        if let Some(b) = self.bitmap.get_mut((v / 8) as usize) {
            *b |= 1 << (v % 8);
        }
    }

    /// The first clear bit in `[from, SD_NR_VDIS)`, or `SD_NR_VDIS`.
    fn next_zero(&self, from: u32) -> u32 {
        let mut v = from;
        while v < SD_NR_VDIS {
            if v % 8 == 0 && self.bitmap.get((v / 8) as usize) == Some(&0xff) {
                v += 8;
                continue;
            }
            if !self.test_bit(v) {
                return v;
            }
            v += 1;
        }
        SD_NR_VDIS
    }

    /// sheep's `vdi_lookup`: the vid found or the result code, plus what the walk saw.
    fn walk(&self, q: &Query<'_>) -> (Result<u32, ResultCode>, Walk) {
        let mut w = Walk::default();
        let left = hash_vid(q.name);
        let mut right = self.next_zero(left);
        w.free_bit = right;
        if left == right {
            return (Err(SD_RES_NO_VDI), w);
        }
        if right == SD_NR_VDIS {
            right = self.next_zero(1);
            w.free_bit = right;
            if right == SD_NR_VDIS {
                return (Err(SD_RES_FULL_VDI), w);
            }
        }
        let r = if left < right {
            self.scan(left, right, q, &mut w)
        } else {
            let r = if 1 < right { self.scan(1, right, q, &mut w) } else { Err(SD_RES_NO_VDI) };
            match r {
                Err(c) if c == SD_RES_NO_VDI || c == SD_RES_NO_TAG => {
                    self.scan(left, SD_NR_VDIS, q, &mut w)
                }
                other => other,
            }
        };
        (r, w)
    }

    /// sheep's `fill_vdi_info_range`: vids in `[left, right)`, highest first.
    fn scan(&self, left: u32, right: u32, q: &Query<'_>, w: &mut Walk) -> Result<u32, ResultCode> {
        let has_tag = !q.tag.is_empty() || q.snapid != 0;
        let mut saw_working = false;
        for vid in (left.max(1)..right).rev() {
            if !self.test_bit(vid) {
                continue;
            }
            // A set bit without an inode is a read error in sheep, and ends the lookup.
            let Some(ino) = self.inodes.get(&vid) else { return Err(SD_RES_NO_OBJ) };
            if !ino.live() || ino.hdr.name_bytes() != q.name {
                continue;
            }
            if has_tag {
                if !ino.hdr.is_snapshot() {
                    saw_working = true;
                    w.vid = vid;
                    continue;
                }
                let tag = field_str(&ino.hdr.tag);
                if !((!tag.is_empty() && tag == q.tag) || q.snapid == ino.hdr.snap_id) {
                    continue;
                }
            } else {
                w.next_snapid = ino.hdr.snap_id.wrapping_add(1);
                if ino.hdr.is_snapshot() {
                    // The working VDI of this name was deleted.
                    w.vid = vid;
                    break;
                }
            }
            w.vid = vid;
            return Ok(vid);
        }
        Err(if saw_working { SD_RES_NO_TAG } else { SD_RES_NO_VDI })
    }

    fn found(&self, vid: u32) -> Found {
        let (copies, block_size_shift) =
            self.inodes.get(&vid).map_or((0, 0), |i| (i.hdr.nr_copies, i.hdr.block_size_shift));
        Found { vid, copies, block_size_shift }
    }

    /// GET_VDI_INFO (and the lookup of LOCK_VDI and DEL_VDI).
    pub(super) fn lookup(&self, q: &Query<'_>) -> Result<Found, ResultCode> {
        let vid = self.walk(q).0?;
        Ok(self.found(vid))
    }

    fn mark_readonly(&mut self, vid: u32) {
        if let Some(ino) = self.inodes.get_mut(&vid) {
            ino.readonly = true;
        }
    }

    /// NEW_VDI: create, clone, snapshot or rebase (reference §10). Returns the new vid.
    pub(super) fn new_vdi(&mut self, objs: &Objects, r: &NewVdi<'_>) -> Result<u32, ResultCode> {
        let (res, w) = self.walk(&Query { name: r.name, tag: &[], snapid: 0 });
        if !r.snapshot {
            match res {
                Ok(_) => return Err(SD_RES_VDI_EXIST),
                Err(c) if c == SD_RES_NO_VDI => {}
                Err(c) => return Err(c),
            }
            let snap_id = if w.next_snapid == 0 { 1 } else { w.next_snapid };
            let entries = match r.base {
                0 if r.store_policy != 0 => vec![HYPER_EMPTY_ROOT],
                0 => Vec::new(),
                b => self.inodes.get(&b).ok_or(SD_RES_BASE_VDI_READ)?.entries.clone(),
            };
            self.create_vdi_inode(objs, r, w.free_bit, snap_id, entries)?;
            // A clone freezes its base in memory, even a working VDI (sheep's trap).
            self.mark_readonly(if r.base != 0 { r.base } else { w.vid });
            return Ok(w.free_bit);
        }
        let cur = res?;
        let (entries, fail) = if r.base == cur {
            (
                self.inodes.get(&cur).map(|i| i.entries.clone()).unwrap_or_default(),
                SD_RES_BASE_VDI_WRITE,
            )
        } else {
            (
                self.inodes.get(&r.base).ok_or(SD_RES_BASE_VDI_READ)?.entries.clone(),
                SD_RES_VDI_WRITE,
            )
        };
        self.write_inode(objs, cur, OFF_SNAP_CTIME as u64, &r.time.to_le_bytes())
            .map_err(|_| fail)?;
        self.mark_readonly(cur);
        self.create_vdi_inode(objs, r, w.free_bit, w.next_snapid, entries)?;
        Ok(w.free_bit)
    }

    fn create_vdi_inode(
        &mut self,
        objs: &Objects,
        r: &NewVdi<'_>,
        vid: u32,
        snap_id: u32,
        entries: Vec<u32>,
    ) -> Result<(), ResultCode> {
        let mut hdr = InodeHeader::default();
        let n = r.name.len().min(SD_MAX_VDI_LEN - 1);
        hdr.name[..n].copy_from_slice(&r.name[..n]);
        hdr.create_time = r.time;
        hdr.vdi_size = r.size;
        hdr.copy_policy = r.copy_policy;
        hdr.store_policy = r.store_policy;
        hdr.nr_copies = r.copies;
        hdr.block_size_shift = r.block_size_shift;
        hdr.snap_id = snap_id;
        hdr.vdi_id = vid;
        hdr.parent_vdi_id = r.base;
        let mut buf = vec![0u8; OFF_DATA_VDI_ID as usize + 4 * entries.len()];
        hdr.encode_into(&mut buf);
        for (dst, e) in buf[OFF_DATA_VDI_ID as usize..].chunks_exact_mut(4).zip(&entries) {
            dst.copy_from_slice(&e.to_le_bytes());
        }
        objs.create(Oid::inode(Vid(vid)), u64::from(SD_INODE_SIZE), None, 0, &buf)
            .map_err(|_| SD_RES_VDI_WRITE)?;
        let mut head = [0u8; INODE_HEADER_PARSE_LEN];
        head.copy_from_slice(&buf[..INODE_HEADER_PARSE_LEN]);
        self.inodes.insert(vid, Inode::new(head, entries, false));
        self.set_bit(vid);
        tracing::info!(
            "new vdi {} {:x} (snap_id {snap_id}, parent {:x})",
            String::from_utf8_lossy(&r.name[..n]),
            vid,
            r.base
        );
        Ok(())
    }

    /// DEL_VDI: the looked-up vid. Refuses silently (SUCCESS, nothing deleted) while any
    /// entry below `ceil(vdi_size / object_size)` is set, like sheep 1.0.
    pub(super) fn del_vdi(&mut self, objs: &Objects, q: &Query<'_>) -> Result<u32, ResultCode> {
        let vid = self.walk(q).0?;
        let Some(ino) = self.inodes.get(&vid) else { return Err(SD_RES_NO_OBJ) };
        let nr = nr_objects(ino.hdr.vdi_size, ino.hdr.block_size_shift).min(SD_INODE_DATA_INDEX)
            as usize;
        if ino.flat() && ino.entries.iter().take(nr).any(|&e| e != 0) {
            tracing::info!("vdi {vid:x} still has objects: del_vdi answers success and deletes nothing, as sheep 1.0 does");
            return Ok(vid);
        }
        // A hyper volume is deleted by the server: its own objects go with it.
        let own = if ino.flat() { Vec::new() } else { hyper_own_objects(objs, &ino.entries, vid) };
        let mut head = ino.head;
        head[OFF_NAME..OFF_NAME + SD_MAX_VDI_LEN].fill(0);
        head[OFF_VDI_SIZE..OFF_VDI_SIZE + 8].fill(0);
        let tail = ino.entries.len();
        self.write_inode(objs, vid, 0, &head)?;
        if tail > 0 {
            self.write_inode(objs, vid, u64::from(OFF_DATA_VDI_ID), &vec![0u8; 4 * tail])?;
        }
        for oid in own {
            objs.reclaim(oid);
        }
        self.locks.remove(&vid);
        tracing::info!("deleted vdi {vid:x}");
        Ok(vid)
    }

    /// (read-only for data writes, object size) of the object `oid`.
    pub(super) fn data_target(&self, oid: Oid) -> (bool, u64) {
        let ino = self.inodes.get(&oid.vid().0);
        let size = if oid.0 & VDI_ATTR_BIT != 0 {
            SD_ATTR_OBJ_SIZE
        } else {
            ino.map_or(DEFAULT_OBJECT_SIZE, Inode::object_size)
        };
        (is_data_like(oid) && ino.is_some_and(|i| i.readonly), size)
    }

    /// READ_OBJ of an inode object.
    pub(super) fn read_inode(
        &self,
        objs: &Objects,
        vid: u32,
        off: u64,
        buf: &mut [u8],
    ) -> Result<(), ResultCode> {
        objs.read(Oid::inode(Vid(vid)), off, buf)
    }

    /// WRITE_OBJ of an inode object: always allowed (tags, entries, resize). Updates the
    /// cache and drops references for writes inside `data_vdi_id`.
    pub(super) fn write_inode(
        &mut self,
        objs: &Objects,
        vid: u32,
        off: u64,
        data: &[u8],
    ) -> Result<(), ResultCode> {
        if !self.inodes.contains_key(&vid) {
            return Err(SD_RES_NO_OBJ);
        }
        objs.write(Oid::inode(Vid(vid)), off, data)?;
        let Some(ino) = self.inodes.get_mut(&vid) else { return Ok(()) };
        let end = off + data.len() as u64;
        // sheep counts references only for writes that lie inside data_vdi_id.
        let counted = ino.flat() && off >= u64::from(OFF_DATA_VDI_ID) && end <= u64::from(OFF_GREF);
        let changed = ino.patch(off, data, counted);
        if counted {
            self.drop_refs(objs, vid, &changed);
        }
        Ok(())
    }

    fn referenced(&self, owner: u32, idx: u32) -> bool {
        self.inodes.values().any(|i| i.live() && i.flat() && i.entry(idx) == owner)
    }

    /// Entries of inode `vid` changed away from `old`: reclaim objects nobody references
    /// any more — and, as sheep 1.0 does, an object whose reference in this inode a
    /// client's own inode write had left uncounted ([`Inode::uncounted`]), even when
    /// another inode still points at it.
    fn drop_refs(&self, objs: &Objects, vid: u32, changed: &[(u32, u32, bool)]) {
        for &(idx, old, uncounted) in changed {
            // Garbage that is no vid must never turn into another kind of oid.
            let Some(owner) = Vid::new(old) else { continue };
            if uncounted && self.referenced(old, idx) {
                tracing::warn!(
                    "object {:016x} removed although another inode references it: vid {vid:#x} had rewritten its entry {idx} (a pointer to another vid's object), which resets sheep's reference count",
                    Oid::data(owner, idx).0
                );
                objs.reclaim(Oid::data(owner, idx));
            } else if !self.referenced(old, idx) {
                objs.reclaim(Oid::data(owner, idx));
            }
        }
    }

    /// CREATE_AND_WRITE_OBJ of an inode object (sheep allows it; clients never do it).
    /// The cache is reloaded from the new file; the bitmap is not touched, as in sheep.
    pub(super) fn create_inode(
        &mut self,
        objs: &Objects,
        vid: u32,
        cow: Option<Oid>,
        off: u64,
        data: &[u8],
    ) -> Result<(), ResultCode> {
        let oid = Oid::inode(Vid(vid));
        objs.create(oid, u64::from(SD_INODE_SIZE), cow, off, data)?;
        let readonly = self.inodes.get(&vid).is_some_and(|i| i.readonly);
        let ino = read_inode_file(objs, oid, &mut Vec::new(), readonly)
            .map_err(|e| failure("load", oid, &e))?;
        self.inodes.insert(vid, ino);
        Ok(())
    }

    /// REMOVE_OBJ of an inode object. Its bit stays set, so lookups crossing it fail with
    /// NO_OBJ afterwards, as in sheep.
    pub(super) fn remove_inode(&mut self, objs: &Objects, vid: u32) -> Result<(), ResultCode> {
        objs.remove(Oid::inode(Vid(vid)))?;
        self.inodes.remove(&vid);
        Ok(())
    }

    /// DISCARD_OBJ of `own_vid << 32 | idx`: clear the entry, then reclaim the object if
    /// nobody references it. Anything but a data oid inside the inode is INVALID_PARMS.
    pub(super) fn discard(&mut self, objs: &Objects, oid: Oid) -> Result<(), ResultCode> {
        let (vid, idx) = (oid.vid().0, oid.index());
        if !oid.is_data() || idx >= SD_INODE_DATA_INDEX {
            return Err(SD_RES_INVALID_PARMS);
        }
        let Some(ino) = self.inodes.get(&vid) else { return Err(SD_RES_NO_OBJ) };
        if !ino.flat() {
            return Err(SD_RES_INVALID_PARMS);
        }
        let old = ino.entry(idx);
        if old == 0 {
            return Ok(());
        }
        self.write_inode(objs, vid, u64::from(OFF_DATA_VDI_ID) + 4 * u64::from(idx), &[0; 4])?;
        if old != vid && !self.referenced(vid, idx) {
            objs.reclaim(oid);
        }
        Ok(())
    }

    /// LOCK_VDI's lock, after the lookup, when locking is on.
    pub(super) fn take_lock(&mut self, vid: u32, lock_type: u32) -> Result<(), ResultCode> {
        match (lock_type, self.locks.get_mut(&vid)) {
            (LOCK_TYPE_NORMAL, None) => {
                self.locks.insert(vid, Lock::Exclusive);
            }
            (LOCK_TYPE_SHARED, None) => {
                self.locks.insert(vid, Lock::Shared(1));
            }
            (LOCK_TYPE_SHARED, Some(Lock::Shared(n))) => *n = n.saturating_add(1),
            _ => return Err(SD_RES_VDI_LOCKED),
        }
        Ok(())
    }

    /// RELEASE_VDI when locking is on: exclusive unlocks, shared drops one holder (any
    /// type but 0 is treated as shared, as in sheep). Returns whether a lock was dropped:
    /// like sheep 1.0 (`cluster_release_vdi_main` answers SUCCESS whatever `vdi_unlock`
    /// found, and only logs "unlocking unlocked VDI"), releasing what is not locked, or
    /// with the other lock type, changes nothing and is not an error.
    pub(super) fn release(&mut self, vid: u32, lock_type: u32) -> bool {
        let remove = match (lock_type == LOCK_TYPE_NORMAL, self.locks.get_mut(&vid)) {
            (true, Some(Lock::Exclusive)) => true,
            (false, Some(Lock::Shared(n))) if *n > 1 => {
                *n -= 1;
                return true;
            }
            (false, Some(Lock::Shared(_))) => true,
            _ => false,
        };
        if remove {
            self.locks.remove(&vid);
        }
        remove
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_with(name: &[u8], snap_ctime: u64, snap_id: u32) -> [u8; INODE_HEADER_PARSE_LEN] {
        let mut h = InodeHeader { snap_ctime, snap_id, block_size_shift: 22, ..Default::default() };
        h.name[..name.len()].copy_from_slice(name);
        let mut b = [0u8; INODE_HEADER_PARSE_LEN];
        h.encode_into(&mut b);
        b
    }

    fn meta_with(inodes: &[(u32, &[u8], u64, u32)]) -> Meta {
        let mut m = Meta {
            bitmap: vec![0; SD_VDI_BITMAP_LEN as usize],
            inodes: HashMap::new(),
            locks: HashMap::new(),
        };
        for &(vid, name, ctime, snap_id) in inodes {
            m.set_bit(vid);
            m.inodes
                .insert(vid, Inode::new(head_with(name, ctime, snap_id), Vec::new(), ctime != 0));
        }
        m
    }

    #[test]
    fn lookup_walks_the_run_from_the_top() {
        let h = hash_vid(b"linux");
        let m = meta_with(&[(h, b"linux", 5, 1), (h + 1, b"linux", 0, 2)]);
        let q = |tag: &'static [u8], snapid| Query { name: b"linux", tag, snapid };
        assert_eq!(m.lookup(&q(b"", 0)).map(|f| f.vid), Ok(h + 1));
        assert_eq!(m.lookup(&q(b"", 1)).map(|f| f.vid), Ok(h));
        assert_eq!(m.lookup(&q(b"", 2)), Err(SD_RES_NO_TAG));
        assert_eq!(m.lookup(&Query { name: b"other", tag: b"", snapid: 0 }), Err(SD_RES_NO_VDI));
        let (_, w) = m.walk(&q(b"", 0));
        assert_eq!((w.free_bit, w.next_snapid), (h + 2, 3));
    }

    #[test]
    fn newest_snapshot_hides_the_name_and_bitmap_wraps() {
        let h = hash_vid(b"linux");
        let m = meta_with(&[(h, b"linux", 0, 1), (h + 1, b"linux", 7, 2)]);
        assert_eq!(m.lookup(&Query { name: b"linux", tag: b"", snapid: 0 }), Err(SD_RES_NO_VDI));
        // Snapshot lookups skip working VDIs but remember them: NO_TAG.
        assert_eq!(m.lookup(&Query { name: b"linux", tag: b"x", snapid: 0 }), Err(SD_RES_NO_TAG));

        let mut full = meta_with(&[]);
        for v in (SD_NR_VDIS - 3)..SD_NR_VDIS {
            full.set_bit(v);
        }
        assert_eq!(full.next_zero(SD_NR_VDIS - 3), SD_NR_VDIS);
        assert_eq!(full.next_zero(0), 0);
        assert_eq!(full.next_zero(1), 1);
    }

    #[test]
    fn locks_exclusive_and_shared() {
        let mut m = meta_with(&[]);
        assert_eq!(m.take_lock(5, LOCK_TYPE_NORMAL), Ok(()));
        assert_eq!(m.take_lock(5, LOCK_TYPE_NORMAL), Err(SD_RES_VDI_LOCKED));
        assert_eq!(m.take_lock(5, LOCK_TYPE_SHARED), Err(SD_RES_VDI_LOCKED));
        assert!(!m.release(5, LOCK_TYPE_SHARED), "a shared release leaves an exclusive lock");
        assert_eq!(m.take_lock(5, LOCK_TYPE_NORMAL), Err(SD_RES_VDI_LOCKED));
        assert!(m.release(5, LOCK_TYPE_NORMAL));
        assert!(!m.release(5, LOCK_TYPE_NORMAL));
        assert_eq!(m.take_lock(5, LOCK_TYPE_SHARED), Ok(()));
        assert_eq!(m.take_lock(5, LOCK_TYPE_SHARED), Ok(()));
        assert_eq!(m.take_lock(5, LOCK_TYPE_NORMAL), Err(SD_RES_VDI_LOCKED));
        assert!(m.release(5, LOCK_TYPE_SHARED));
        assert!(m.release(5, LOCK_TYPE_SHARED));
        assert!(!m.release(5, LOCK_TYPE_SHARED));
        assert_eq!(m.take_lock(5, 9), Err(SD_RES_VDI_LOCKED));
    }
}
