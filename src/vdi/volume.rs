//! The in-memory state of one open VDI and every decision its I/O needs: which object a
//! read goes to, whether a write is a WRITE, a CREATE or a COW CREATE, and the per-object
//! create serialisation that keeps two creates of one object from ever being in flight.
//!
//! Contract (reference §9, facts 4–6):
//! - `plan_read` / `plan_write` look only at `data_vdi_id[idx]` as it is *now*.
//! - `plan_write` returns [`WritePlan::Wait`] while a create of that index is in flight;
//!   the caller waits for [`Volume::release`] of that index and plans again. So no two
//!   creates of one object, and no write overtaking its create, can ever be in flight.
//! - After a successful create ([`Volume::created`]) the entry names the own vid in memory;
//!   the caller persists it ([`Volume::entry_bytes`]) and only then releases the index
//!   ([`Volume::release`]) and completes its block request.
//! - Pure: no I/O, no runtime; `plan_*`, `created` and `release` do not allocate.
//! - Lock-free: shared by the shards of a device, decisions are made with atomics.
//! - Live snapshots (reference §12): the own vid can change. When another client snapshots
//!   the VDI, sheep answers READONLY to writes of the old vid's data objects; one caller
//!   wins [`Volume::begin_follow`], looks the new working vid up and calls
//!   [`Volume::follow`]. The entries are kept (the new working VDI's map is a copy of the
//!   snapshot's), so from then on every write to an object the snapshot owns plans a COW,
//!   for every shard at once.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::proto::inode::{entry_offset, InodeHeader};
use crate::proto::{Oid, Vid};

/// Where a read of one object goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPlan {
    /// Never written: the bytes are zeros, no request.
    Zero,
    /// READ_OBJ of this oid (possibly a parent's or snapshot's object).
    Read(Oid),
}

/// How a write to one object must be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePlan {
    /// WRITE_OBJ: the object is ours.
    Write(Oid),
    /// CREATE_AND_WRITE_OBJ, no COW: the object never existed.
    Create(Oid),
    /// CREATE_AND_WRITE_OBJ with COW from `cow`: the object is shared with a parent.
    Cow { oid: Oid, cow: Oid },
    /// A create of this object is in flight: wait for it, then plan again.
    Wait,
}

impl WritePlan {
    /// Whether this plan is a create (which the caller must end with `release`).
    pub fn is_create(self) -> bool {
        matches!(self, WritePlan::Create(_) | WritePlan::Cow { .. })
    }
}

/// Errors of the VDI layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("object index {idx} is beyond the vdi's {nr} objects")]
    OutOfRange { idx: u32, nr: u32 },
    #[error("the vdi is read-only")]
    ReadOnly,
}

impl Error {
    pub fn errno(self) -> i32 {
        match self {
            Error::OutOfRange { .. } => crate::proto::libc_errno::EIO,
            Error::ReadOnly => crate::proto::libc_errno::EROFS,
        }
    }
    pub fn should_reconnect(self) -> bool {
        false
    }
}

/// One open VDI: its header, its `data_vdi_id` entries, and the creates in flight.
///
/// Lock-free and `Sync`: the shards of one device (one per ublk queue, each on its own
/// thread) share one `Volume` through an `Arc` and decide with atomics, so a create claimed
/// by one shard makes every other shard wait for it. A single-threaded user (the CLI) pays
/// only uncontended atomics.
#[derive(Debug)]
pub struct Volume {
    header: InodeHeader,
    entries: Box<[AtomicU32]>,
    /// One bit per object index: a create is in flight (claimed by `plan_write`).
    creating: Box<[AtomicU64]>,
    read_only: bool,
    /// The own (working) vid: the header's, until a live snapshot moves it.
    vid: AtomicU32,
    /// A caller is looking up the new working vid after a live snapshot.
    following: AtomicBool,
}

impl Volume {
    /// A volume from an inode header and its entries (missing entries read as 0).
    /// `read_only` refuses every write plan.
    pub fn new(header: InodeHeader, entries: Vec<u32>, read_only: bool) -> Volume {
        let nr = header.nr_objects() as usize;
        let mut e: Vec<AtomicU32> = entries.into_iter().take(nr).map(AtomicU32::new).collect();
        e.resize_with(nr, || AtomicU32::new(0));
        let creating = (0..nr.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        let vid = AtomicU32::new(header.vdi_id);
        Volume { header, entries: e.into_boxed_slice(), creating, read_only, vid, following: AtomicBool::new(false) }
    }

    /// The header as it was loaded (size, object size, copies; its `vdi_id` is the vid the
    /// device was opened with — [`Volume::vid`] is the current one).
    pub fn header(&self) -> &InodeHeader {
        &self.header
    }
    /// The own (working) vid now.
    pub fn vid(&self) -> Vid {
        Vid(self.vid.load(Ordering::Acquire))
    }

    /// Become the one caller that follows a live snapshot of `stale` (the vid a write was
    /// refused for). `false`: the vid already moved on, or another caller is following it;
    /// wait for [`Volume::is_following`] to clear and plan again.
    pub fn begin_follow(&self, stale: Vid) -> bool {
        self.vid() == stale && self.following.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Whether a caller is between [`Volume::begin_follow`] and [`Volume::end_follow`].
    pub fn is_following(&self) -> bool {
        self.following.load(Ordering::Acquire)
    }

    /// The new working vid of a live snapshot: writes plan against `new` from now on (every
    /// object still owned by `stale` becomes a COW). Only the caller that won
    /// `begin_follow(stale)` calls this.
    pub fn follow(&self, stale: Vid, new: Vid) {
        let _ = self.vid.compare_exchange(stale.0, new.0, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The follow is over (done or failed): waiting writers may plan again.
    pub fn end_follow(&self) {
        self.following.store(false, Ordering::Release);
    }

    /// A copy of every entry (a live snapshot's reconciliation; not on the I/O path).
    pub fn entries_snapshot(&self, out: &mut Vec<u32>) {
        out.clear();
        out.extend(self.entries.iter().map(|e| e.load(Ordering::Acquire)));
    }
    pub fn size(&self) -> u64 {
        self.header.vdi_size
    }
    pub fn block_size_shift(&self) -> u8 {
        self.header.block_size_shift
    }
    pub fn nr_objects(&self) -> u32 {
        self.entries.len() as u32
    }
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }
    pub fn entry(&self, idx: u32) -> Option<u32> {
        self.entries.get(idx as usize).map(|e| e.load(Ordering::Acquire))
    }

    fn check(&self, idx: u32) -> Result<usize, Error> {
        if (idx as usize) < self.entries.len() {
            Ok(idx as usize)
        } else {
            Err(Error::OutOfRange { idx, nr: self.nr_objects() })
        }
    }

    fn bit(idx: usize) -> (usize, u64) {
        (idx / 64, 1u64 << (idx % 64))
    }

    pub fn plan_read(&self, idx: u32) -> Result<ReadPlan, Error> {
        let i = self.check(idx)?;
        Ok(match self.entries[i].load(Ordering::Acquire) {
            0 => ReadPlan::Zero,
            owner => ReadPlan::Read(Oid::data(Vid(owner), idx)),
        })
    }

    /// Decide how to write object `idx`. A create plan claims the index until
    /// [`Volume::release`]; meanwhile every other writer (on any thread) gets `Wait`.
    pub fn plan_write(&self, idx: u32) -> Result<WritePlan, Error> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let i = self.check(idx)?;
        let own = self.vid();
        let oid = Oid::data(own, idx);
        let (w, b) = Self::bit(i);
        // Ours and no create in flight: the entry is persisted (release comes after that).
        if self.entries[i].load(Ordering::Acquire) == own.0 {
            return Ok(if self.creating[w].load(Ordering::Acquire) & b != 0 { WritePlan::Wait } else { WritePlan::Write(oid) });
        }
        if self.creating[w].fetch_or(b, Ordering::AcqRel) & b != 0 {
            return Ok(WritePlan::Wait);
        }
        // Claimed. Someone may have finished a create between our two loads.
        Ok(match self.entries[i].load(Ordering::Acquire) {
            e if e == own.0 => {
                self.creating[w].fetch_and(!b, Ordering::AcqRel);
                WritePlan::Write(oid)
            }
            0 => WritePlan::Create(oid),
            other => WritePlan::Cow { oid, cow: Oid::data(Vid(other), idx) },
        })
    }

    /// Claim `idx` without planning a write (discard): true when this caller now holds the
    /// claim and must [`Volume::release`] it; false while someone else holds it.
    pub fn try_claim(&self, idx: u32) -> Result<bool, Error> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let (w, b) = Self::bit(self.check(idx)?);
        Ok(self.creating[w].fetch_or(b, Ordering::AcqRel) & b == 0)
    }

    /// The create of `idx` as an object of `vid` (the vid its plan named) succeeded: from
    /// now on the in-memory entry names `vid` (so the caller can encode the inode update).
    /// The index stays claimed until [`Volume::release`], so no writer completes on an
    /// object whose entry is not yet persisted. Returns the previous entry, for `release`
    /// to restore on failure.
    pub fn created(&self, idx: u32, vid: Vid) -> u32 {
        self.entries.get(idx as usize).map_or(0, |e| e.swap(vid.0, Ordering::AcqRel))
    }

    /// Release the claim on `idx` after its create (and inode update) finished. `restore`
    /// puts back the previous entry when the create or its inode update failed, so the
    /// next writer creates again. Writers waiting on `idx` may plan again.
    pub fn release(&self, idx: u32, restore: Option<u32>) {
        let i = idx as usize;
        if let (Some(old), Some(e)) = (restore, self.entries.get(i)) {
            e.store(old, Ordering::Release);
        }
        let (w, b) = Self::bit(i);
        if let Some(a) = self.creating.get(w) {
            a.fetch_and(!b, Ordering::AcqRel);
        }
    }

    /// Set an entry (discard: 0). Returns the old value.
    pub fn set_entry(&self, idx: u32, v: u32) -> Result<u32, Error> {
        let i = self.check(idx)?;
        Ok(self.entries[i].swap(v, Ordering::AcqRel))
    }

    /// Where and what to write in the inode to persist entries `lo..=hi`: returns the
    /// offset, and the bytes in `out`.
    pub fn entry_bytes(&self, lo: u32, hi: u32, out: &mut Vec<u8>) -> Result<u32, Error> {
        self.check(hi)?;
        if lo > hi {
            return Err(Error::OutOfRange { idx: lo, nr: self.nr_objects() });
        }
        out.clear();
        for e in &self.entries[lo as usize..=hi as usize] {
            out.extend_from_slice(&e.load(Ordering::Acquire).to_le_bytes());
        }
        Ok(entry_offset(lo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vol(vid: u32, entries: Vec<u32>) -> Volume {
        let h = InodeHeader { vdi_id: vid, vdi_size: 16 << 22, block_size_shift: 22, ..Default::default() };
        Volume::new(h, entries, false)
    }

    #[test]
    fn write_decisions_follow_entries() {
        let v = vol(7, vec![0, 7, 5]);
        assert_eq!(v.plan_write(0), Ok(WritePlan::Create(Oid::data(Vid(7), 0))));
        assert_eq!(v.plan_write(1), Ok(WritePlan::Write(Oid::data(Vid(7), 1))));
        assert_eq!(v.plan_write(2), Ok(WritePlan::Cow { oid: Oid::data(Vid(7), 2), cow: Oid::data(Vid(5), 2) }));
        assert_eq!(v.plan_read(2), Ok(ReadPlan::Read(Oid::data(Vid(5), 2))));
        assert_eq!(v.plan_read(3), Ok(ReadPlan::Zero));
        assert!(v.plan_read(16).is_err());
    }

    #[test]
    fn second_create_waits_then_writes() {
        let v = vol(7, vec![]);
        assert!(v.plan_write(4).is_ok_and(|p| p.is_create()));
        assert_eq!(v.plan_write(4), Ok(WritePlan::Wait));
        assert_eq!(v.created(4, Vid(7)), 0);
        assert_eq!(v.plan_write(4), Ok(WritePlan::Wait), "gated until the inode update is done");
        v.release(4, None);
        assert_eq!(v.plan_write(4), Ok(WritePlan::Write(Oid::data(Vid(7), 4))));
        assert_eq!(v.entry(4), Some(7));
    }

    #[test]
    fn failed_create_lets_the_next_writer_create() {
        let v = vol(7, vec![]);
        assert!(v.plan_write(1).is_ok_and(|p| p.is_create()));
        v.release(1, None);
        assert!(v.plan_write(1).is_ok_and(|p| p.is_create()));
        let old = v.created(1, Vid(7));
        v.release(1, Some(old));
        assert_eq!(v.entry(1), Some(0), "a failed inode update restores the entry");
        assert!(v.plan_write(1).is_ok_and(|p| p.is_create()));
    }

    #[test]
    fn following_a_snapshot_turns_own_objects_into_cows() {
        let v = vol(7, vec![7, 0, 5]);
        assert!(v.begin_follow(Vid(7)));
        assert!(!v.begin_follow(Vid(7)), "one follower at a time");
        assert!(v.is_following());
        v.follow(Vid(7), Vid(8));
        v.end_follow();
        assert!(!v.begin_follow(Vid(7)), "the vid moved on: nothing to follow");
        assert_eq!(v.vid(), Vid(8));
        assert_eq!(v.plan_write(0), Ok(WritePlan::Cow { oid: Oid::data(Vid(8), 0), cow: Oid::data(Vid(7), 0) }));
        assert_eq!(v.plan_write(1), Ok(WritePlan::Create(Oid::data(Vid(8), 1))));
        assert_eq!(v.plan_read(0), Ok(ReadPlan::Read(Oid::data(Vid(7), 0))));
        // A create planned before the switch records the vid it was made with.
        assert_eq!(v.created(0, Vid(7)), 7);
        v.release(0, None);
        assert_eq!(v.plan_write(0), Ok(WritePlan::Cow { oid: Oid::data(Vid(8), 0), cow: Oid::data(Vid(7), 0) }));
        v.release(0, None);
        assert_eq!(v.created(1, Vid(8)), 0);
        v.release(1, None);
        assert_eq!(v.plan_write(1), Ok(WritePlan::Write(Oid::data(Vid(8), 1))));
    }

    #[test]
    fn read_only_refuses_writes() {
        let h = InodeHeader { vdi_id: 7, vdi_size: 1 << 22, block_size_shift: 22, ..Default::default() };
        let v = Volume::new(h, vec![], true);
        assert_eq!(v.plan_write(0), Err(Error::ReadOnly));
    }

    #[test]
    fn entry_bytes_are_inode_offsets() {
        let v = vol(7, vec![0, 7, 7]);
        let mut out = Vec::new();
        assert_eq!(v.entry_bytes(1, 2, &mut out), Ok(4668));
        assert_eq!(out, [7, 0, 0, 0, 7, 0, 0, 0]);
    }

    #[test]
    fn threads_never_have_two_creates_of_one_object() {
        use std::sync::atomic::AtomicU32;
        use std::sync::Arc;
        let v = Arc::new(vol(9, vec![]));
        let active: Arc<Vec<AtomicU32>> = Arc::new((0..4).map(|_| AtomicU32::new(0)).collect());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (v, active) = (v.clone(), active.clone());
                std::thread::spawn(move || {
                    for i in 0..20_000u32 {
                        let idx = (i + t) % 4;
                        match v.plan_write(idx) {
                            Ok(p) if p.is_create() => {
                                assert_eq!(active[idx as usize].fetch_add(1, Ordering::SeqCst), 0, "two creates of {idx}");
                                let old = v.created(idx, Vid(9));
                                active[idx as usize].fetch_sub(1, Ordering::SeqCst);
                                // Fail most creates so that the race keeps happening.
                                v.release(idx, if i % 7 == 0 { None } else { Some(old) });
                            }
                            Ok(WritePlan::Write(_)) => assert_eq!(v.entry(idx), Some(9)),
                            Ok(_) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no thread panicked");
        }
    }

    // Against a reference model: with any interleaving of plans and create completions,
    // at most one create per index is ever outstanding, and a write is only planned
    // once the index has no create in flight.
    proptest! {
        #[test]
        fn never_two_creates_in_flight(ops in proptest::collection::vec((0u32..4, any::<bool>(), any::<bool>()), 1..200)) {
            let v = vol(9, vec![0, 3, 0, 9]);
            let mut outstanding = [false; 4];
            for (idx, finish, ok) in ops {
                if finish {
                    if outstanding[idx as usize] {
                        let old = v.created(idx, Vid(9));
                        v.release(idx, if ok { None } else { Some(old) });
                        outstanding[idx as usize] = false;
                    }
                    continue;
                }
                match v.plan_write(idx) {
                    Ok(WritePlan::Wait) => prop_assert!(outstanding[idx as usize]),
                    Ok(p) if p.is_create() => {
                        prop_assert!(!outstanding[idx as usize]);
                        outstanding[idx as usize] = true;
                    }
                    Ok(WritePlan::Write(_)) => {
                        prop_assert!(!outstanding[idx as usize]);
                        prop_assert_eq!(v.entry(idx), Some(9));
                    }
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
        }
    }
}
