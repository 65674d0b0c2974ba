//! One cached inode of the embedded store: the first bytes of its header as on disk, the
//! parsed header, and its `data_vdi_id` entries; plus the walk of a hyper volume's B-tree.
//!
//! Contract:
//! - [`Inode::patch`] applies any write (any offset, any length, misaligned included) to
//!   the cache exactly as it lands in the file: header bytes below
//!   `INODE_HEADER_PARSE_LEN` and entries in `data_vdi_id`; the `gref` area and unused
//!   header space are not cached. It reports every non-zero entry that changed, which is
//!   what the reference drop needs.
//! - Entries are kept with trailing zeros trimmed, so an inode costs memory in proportion
//!   to its highest allocated index, not to the 4 MiB array.
//! - For a hyper volume (`store_policy != 0`) the cached words are the B-tree root's raw
//!   bytes, not entries: [`Inode::flat`] tells the two apart.

use std::collections::BTreeSet;
use std::io;

use super::objects::Objects;
use crate::proto::inode::{INODE_HEADER_PARSE_LEN, OFF_DATA_VDI_ID, OFF_GREF};
use crate::proto::{InodeHeader, Oid, Vid, SD_DEFAULT_BLOCK_SIZE_SHIFT, SD_INODE_DATA_INDEX};

/// Object size of a vid without an inode: sheep's cluster default (4 MiB).
pub(super) const DEFAULT_OBJECT_SIZE: u64 = 1 << SD_DEFAULT_BLOCK_SIZE_SHIFT;
/// Bytes of the `data_vdi_id` area.
const ENTRIES_LEN: usize = 4 * SD_INODE_DATA_INDEX as usize;
/// Hyper volumes: B-tree header magic (u16 at the start of `data_vdi_id` and of nodes).
const BTREE_MAGIC: u32 = 0x6274;
/// First word of a new hyper volume's root: magic 0x6274, depth 1 (0 entries follow).
pub(super) const HYPER_EMPTY_ROOT: u32 = BTREE_MAGIC | 1 << 16;
/// Largest B-tree node object (4 MiB), which bounds its entry count.
const BTREE_NODE_LEN: usize = 4 << 20;

/// The vid of `oid` when it is exactly an inode oid (`VDI_BIT | vid << 32`, vid ≠ 0).
pub(super) fn inode_vid(oid: Oid) -> Option<u32> {
    let vid = oid.vid();
    (oid.is_inode() && vid.0 != 0 && oid == Oid::inode(vid)).then_some(vid.0)
}

/// One inode as the store caches it.
pub(super) struct Inode {
    /// The first bytes of the inode as on disk; `hdr` is parsed from them.
    pub(super) head: [u8; INODE_HEADER_PARSE_LEN],
    pub(super) hdr: InodeHeader,
    /// `data_vdi_id`, trailing zeros trimmed.
    pub(super) entries: Vec<u32>,
    /// sheep's in-memory snapshot state (data writes get READONLY).
    pub(super) readonly: bool,
    /// Entries pointing at another vid's object that a client's inode write covered. sheep
    /// zeroes the generational reference (`gref`) of every entry such a write covers, so
    /// that reference is not counted: when the entry changes later, sheep's ledger of the
    /// object drops to zero and the object goes, whoever else still references it (a
    /// snapshot, a clone's parent). In memory only, like the cache.
    pub(super) uncounted: BTreeSet<u32>,
}

impl Inode {
    pub(super) fn new(
        head: [u8; INODE_HEADER_PARSE_LEN],
        entries: Vec<u32>,
        readonly: bool,
    ) -> Inode {
        let hdr = InodeHeader::parse(&head).unwrap_or_default();
        Inode { head, hdr, entries, readonly, uncounted: BTreeSet::new() }
    }

    pub(super) fn entry(&self, idx: u32) -> u32 {
        self.entries.get(idx as usize).copied().unwrap_or(0)
    }

    pub(super) fn set_entry(&mut self, idx: u32, v: u32) {
        let i = idx as usize;
        if i >= self.entries.len() {
            if v == 0 {
                return;
            }
            self.entries.resize(i + 1, 0);
        }
        if let Some(e) = self.entries.get_mut(i) {
            *e = v;
        }
        while self.entries.last() == Some(&0) {
            self.entries.pop();
        }
    }

    pub(super) fn live(&self) -> bool {
        !self.hdr.is_deleted()
    }

    /// A normal inode, whose `data_vdi_id` is a flat array (not a hyper volume's B-tree).
    pub(super) fn flat(&self) -> bool {
        self.hdr.store_policy == 0
    }

    /// Data object size; a nonsensical `block_size_shift` falls back to 4 MiB.
    pub(super) fn object_size(&self) -> u64 {
        match self.hdr.block_size_shift {
            1..=31 => 1u64 << self.hdr.block_size_shift,
            _ => DEFAULT_OBJECT_SIZE,
        }
    }

    /// Apply a write of `data` at `off` to the cache; return the `(index, old value,
    /// uncounted)` of every entry whose non-zero value changed. `refcounted`: the write
    /// lies inside `data_vdi_id`, where sheep keeps reference counts: every entry it covers
    /// that points at another vid's object becomes uncounted (see [`Inode::uncounted`]).
    pub(super) fn patch(
        &mut self,
        off: u64,
        data: &[u8],
        refcounted: bool,
    ) -> Vec<(u32, u32, bool)> {
        let end = off + data.len() as u64;
        let head_len = INODE_HEADER_PARSE_LEN as u64;
        if off < head_len {
            let (s, e) = (off as usize, end.min(head_len) as usize);
            if let (Some(dst), Some(src)) = (self.head.get_mut(s..e), data.get(..e - s)) {
                dst.copy_from_slice(src);
                if let Ok(h) = InodeHeader::parse(&self.head) {
                    self.hdr = h;
                }
            }
        }
        let mut changed = Vec::new();
        let base = u64::from(OFF_DATA_VDI_ID);
        let (lo, hi) = (off.max(base), end.min(u64::from(OFF_GREF)));
        if lo >= hi {
            return changed;
        }
        for idx in ((lo - base) / 4) as u32..=((hi - 1 - base) / 4) as u32 {
            let at = base + 4 * u64::from(idx);
            let old = self.entry(idx);
            let mut b = old.to_le_bytes();
            for (k, byte) in b.iter_mut().enumerate() {
                let p = at + k as u64;
                if p >= off && p < end {
                    if let Some(&d) = data.get((p - off) as usize) {
                        *byte = d;
                    }
                }
            }
            let new = u32::from_le_bytes(b);
            if new != old {
                self.set_entry(idx, new);
                let uncounted = self.uncounted.remove(&idx);
                if old != 0 {
                    changed.push((idx, old, uncounted));
                }
            }
            if refcounted && new != 0 && new != self.hdr.vdi_id {
                self.uncounted.insert(idx);
            }
        }
        changed
    }
}

/// Read an inode file into a cache entry; `buf` is scratch of [`ENTRIES_LEN`] bytes.
pub(super) fn read_inode_file(
    objs: &Objects,
    oid: Oid,
    buf: &mut Vec<u8>,
    readonly: bool,
) -> io::Result<Inode> {
    let mut head = [0u8; INODE_HEADER_PARSE_LEN];
    objs.read_raw(oid, 0, &mut head)?;
    buf.resize(ENTRIES_LEN, 0);
    objs.read_raw(oid, u64::from(OFF_DATA_VDI_ID), buf)?;
    let used = buf.chunks_exact(4).rposition(|c| c != [0; 4]).map_or(0, |p| p + 1);
    let entries = buf
        .chunks_exact(4)
        .take(used)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let mut ino = Inode::new(head, entries, readonly);
    if !readonly {
        ino.readonly = ino.hdr.is_snapshot();
    }
    Ok(ino)
}

/// The data objects a hyper volume owns, from its B-tree (reference §9): the root sits
/// in `data_vdi_id` (`words` as cached), depth 1 holds `{idx, vid}` pairs, depth 2 holds
/// `{max_idx, pad, node_oid}` pointing to node objects holding such pairs. Anything that
/// does not look like a B-tree yields nothing.
pub(super) fn hyper_own_objects(objs: &Objects, words: &[u32], vid: u32) -> Vec<Oid> {
    let word = |i: usize| words.get(i).copied().unwrap_or(0);
    let (head, n) = (word(0), word(1) as usize);
    let mut own = Vec::new();
    if head & 0xffff != BTREE_MAGIC {
        return own;
    }
    let mut take_pairs = |pairs: &mut dyn Iterator<Item = (u32, u32)>| {
        own.extend(pairs.filter(|&(_, v)| v == vid).map(|(idx, _)| Oid::data(Vid(vid), idx)));
    };
    match head >> 16 {
        1 => take_pairs(
            &mut (0..n.min((ENTRIES_LEN - 8) / 8)).map(|k| (word(2 + 2 * k), word(3 + 2 * k))),
        ),
        2 => {
            for k in 0..n.min((ENTRIES_LEN - 8) / 16) {
                let node = Oid(u64::from(word(4 + 4 * k)) | u64::from(word(5 + 4 * k)) << 32);
                let mut nh = [0u8; 8];
                if objs.read_raw(node, 0, &mut nh).is_err()
                    || u32::from(u16::from_le_bytes([nh[0], nh[1]])) != BTREE_MAGIC
                {
                    continue;
                }
                let m = (u32::from_le_bytes([nh[4], nh[5], nh[6], nh[7]]) as usize)
                    .min((BTREE_NODE_LEN - 8) / 8);
                let mut body = vec![0u8; 8 * m];
                if objs.read_raw(node, 8, &mut body).is_ok() {
                    let le = |c: &[u8]| u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    take_pairs(&mut body.chunks_exact(8).map(|c| (le(&c[..4]), le(&c[4..]))));
                }
            }
        }
        _ => {}
    }
    own
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::inode::OFF_SNAP_CTIME;

    fn head_with(name: &[u8]) -> [u8; INODE_HEADER_PARSE_LEN] {
        let mut h = InodeHeader { snap_id: 1, block_size_shift: 22, ..Default::default() };
        h.name[..name.len()].copy_from_slice(name);
        let mut b = [0u8; INODE_HEADER_PARSE_LEN];
        h.encode_into(&mut b);
        b
    }

    #[test]
    fn patch_tracks_entries_and_header() {
        let mut ino = Inode::new(head_with(b"a"), Vec::new(), false);
        let e0 = u64::from(OFF_DATA_VDI_ID);
        assert!(ino.patch(e0 + 8, &7u32.to_le_bytes(), false).is_empty());
        assert_eq!((ino.entry(2), ino.entries.len()), (7, 3));
        // A misaligned write touching two entries.
        assert_eq!(ino.patch(e0 + 10, &[0, 0, 9, 0], false), vec![]);
        assert_eq!((ino.entry(2), ino.entry(3)), (7, 9));
        assert_eq!(ino.patch(e0 + 8, &[0; 8], false), vec![(2, 7, false), (3, 9, false)]);
        assert!(ino.entries.is_empty());
        ino.patch(OFF_SNAP_CTIME as u64, &1u64.to_le_bytes(), false);
        assert!(ino.hdr.is_snapshot());
        // Writes far past the entries do not touch the cache.
        assert!(ino.patch(u64::from(OFF_GREF), &[1; 16], false).is_empty());
    }

    #[test]
    fn client_written_pointers_to_other_vids_are_uncounted() {
        let mut h = InodeHeader { block_size_shift: 22, vdi_id: 5, ..Default::default() };
        h.name[0] = b'a';
        let mut head = [0u8; INODE_HEADER_PARSE_LEN];
        h.encode_into(&mut head);
        // Entries 0 and 1 shared with vid 4 (as a snapshot leaves them), 2 owned.
        let mut ino = Inode::new(head, vec![4, 4, 5], false);
        let e0 = u64::from(OFF_DATA_VDI_ID);
        // A rewrite of the unchanged entries 0..3: the shared ones lose their count.
        assert!(ino.patch(e0, &[4, 0, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0], true).is_empty());
        assert_eq!(ino.uncounted.iter().copied().collect::<Vec<_>>(), vec![0, 1]);
        // Copy-on-write of 0 and a discard of 2: 0 reports its reference as uncounted.
        assert_eq!(ino.patch(e0, &5u32.to_le_bytes(), true), vec![(0, 4, true)]);
        assert_eq!(ino.patch(e0 + 8, &0u32.to_le_bytes(), true), vec![(2, 5, false)]);
        assert_eq!(ino.uncounted.iter().copied().collect::<Vec<_>>(), vec![1]);
        // Outside data_vdi_id's counted writes (refcounted false) nothing is marked.
        ino.patch(e0 + 12, &4u32.to_le_bytes(), false);
        assert!(!ino.uncounted.contains(&3));
    }

    #[test]
    fn hyper_walk_finds_own_objects_of_a_depth_1_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let objs =
            Objects::open(dir.path(), false, 64).map_err(|(_, e)| e.to_string()).expect("open");
        let words = [HYPER_EMPTY_ROOT, 3, 1, 7, 2, 8, 9, 7];
        assert_eq!(
            hyper_own_objects(&objs, &words, 7),
            vec![Oid::data(Vid(7), 1), Oid::data(Vid(7), 9)]
        );
        assert!(hyper_own_objects(&objs, &[0, 3, 1, 7], 7).is_empty());
        // A count larger than the root is bounded, not trusted.
        assert!(hyper_own_objects(&objs, &[HYPER_EMPTY_ROOT, u32::MAX], 7).is_empty());
    }
}
