//! The in-memory state of one open VDI and every decision its I/O needs: which object a
//! read goes to, whether a write is a WRITE, a CREATE or a COW CREATE, and the per-object
//! create serialisation that keeps two creates of one object from ever being in flight.
//!
//! Contract (reference §9, facts 4–6):
//! - `plan_read` / `plan_write` look only at `data_vdi_id[idx]` as it is *now*.
//! - A create plan holds the object's [`Claim`], a guard: while it lives every other
//!   `plan_write` of that index (on any thread) returns [`WritePlan::Wait`], and the caller
//!   parks ([`Volume::park`]) until a claim is dropped and plans again. So no two creates of
//!   one object, and no write overtaking its create, can ever be in flight.
//! - After a successful create ([`Claim::created`]) the entry names the own vid in memory;
//!   the caller persists it and marks the claim [`Claim::persisted`], then drops it and
//!   completes its block request. A claim dropped unpersisted puts the old entry back, so
//!   the next writer creates again: a failure path cannot forget to undo.
//! - Parking is a waker, not a poll: dropping a claim (or ending a follow) wakes every
//!   parked waiter, on whatever thread it runs. [`PARK_SLOTS`] waiters park at once; more
//!   get `None` from `park` and the caller retries after a short timer.
//! - Pure: no I/O, no runtime; `plan_*`, claims and parking do not allocate.
//! - Lock-free: shared by the shards of a device, decisions are made with atomics.
//! - Live snapshots (reference §12): the own vid can change. When another client snapshots
//!   the VDI, sheep answers READONLY to writes of the old vid's data objects; one caller
//!   wins [`Volume::begin_follow`], looks the new working vid up and calls
//!   [`Volume::follow`]. The entries are kept (the new working VDI's map is a copy of the
//!   snapshot's), so from then on every write to an object the snapshot owns plans a COW,
//!   for every shard at once.
//! - Online growth (`sheepdev resize`): [`Volume::grow`] raises the size; the entry table is
//!   allocated for the largest VDI sheep allows ([`SD_INODE_DATA_INDEX`] objects) as zeroed
//!   pages, so growing never moves it and an entry costs memory only once its page is used.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::Waker;

use atomic_waker::AtomicWaker;

use crate::proto::inode::{nr_objects, InodeHeader};
use crate::proto::{Oid, Vid, SD_INODE_DATA_INDEX};

/// Where a read of one object goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPlan {
    /// Never written: the bytes are zeros, no request.
    Zero,
    /// READ_OBJ of this oid (possibly a parent's or snapshot's object).
    Read(Oid),
}

/// How a write to one object must be sent. A create holds the object's claim.
#[derive(Debug)]
pub enum WritePlan<'v> {
    /// WRITE_OBJ: the object is ours.
    Write(Oid),
    /// CREATE_AND_WRITE_OBJ, no COW: the object never existed.
    Create { oid: Oid, claim: Claim<'v> },
    /// CREATE_AND_WRITE_OBJ with COW from `cow`: the object is shared with a parent.
    Cow { oid: Oid, cow: Oid, claim: Claim<'v> },
    /// A create of this object is in flight: park, then plan again.
    Wait,
}

impl WritePlan<'_> {
    /// Whether this plan is a create (it holds a claim).
    pub fn is_create(&self) -> bool {
        matches!(self, WritePlan::Create { .. } | WritePlan::Cow { .. })
    }
}

/// The exclusive right to change object `idx`'s entry (a create, a discard, a carry);
/// released when dropped. See the module contract.
#[derive(Debug)]
pub struct Claim<'v> {
    vol: &'v Volume,
    idx: u32,
    /// The entry to put back on drop (set by `created`, cleared by `persisted`).
    restore: Option<u32>,
}

impl Claim<'_> {
    pub fn idx(&self) -> u32 {
        self.idx
    }

    /// The create of the object as one of `vid` (the vid its plan named) succeeded: the
    /// in-memory entry names `vid` from now on (so the caller can encode the inode update).
    /// Until [`Claim::persisted`], dropping the claim puts the previous entry back.
    pub fn created(&mut self, vid: Vid) {
        let old =
            self.vol.entries.get(self.idx as usize).map_or(0, |e| e.swap(vid.0, Ordering::AcqRel));
        self.restore.get_or_insert(old);
    }

    /// The entry is in the inode: dropping the claim keeps it.
    pub fn persisted(&mut self) {
        self.restore = None;
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.vol.release(self.idx, self.restore);
    }
}

/// Claims on a run of indexes `lo..end` (a discard's whole objects), taken one after the
/// other with [`ClaimRun::try_extend`] and all released when dropped.
#[derive(Debug)]
pub struct ClaimRun<'v> {
    vol: &'v Volume,
    lo: u32,
    end: u32,
}

impl ClaimRun<'_> {
    /// The index the next `try_extend` claims.
    pub fn end(&self) -> u32 {
        self.end
    }

    /// Claim index `end` too: false while someone else holds it (nothing changes then).
    pub fn try_extend(&mut self) -> Result<bool, Error> {
        match self.vol.try_claim(self.end)? {
            Some(c) => {
                std::mem::forget(c);
                self.end += 1;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

impl Drop for ClaimRun<'_> {
    fn drop(&mut self) {
        for idx in self.lo..self.end {
            self.vol.release(idx, None);
        }
    }
}

/// Waiters that can park on one volume at once (a shard's tags waiting for another's
/// create); more retry after a short timer.
pub const PARK_SLOTS: usize = 64;

/// A parked waiter's slot; freed when dropped. See [`Volume::park`].
#[derive(Debug)]
pub struct Parked<'v> {
    vol: &'v Volume,
    slot: usize,
}

impl Parked<'_> {
    /// Wake `waker` at the next claim release or follow end (replacing the last one given).
    /// Register, then look again at what you wait for: a release between the two is seen.
    pub fn register(&self, waker: &Waker) {
        self.vol.parked[self.slot].register(waker);
        std::sync::atomic::fence(Ordering::SeqCst);
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.vol.parked_mask.fetch_and(!(1u64 << self.slot), Ordering::AcqRel);
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
    /// The size in bytes now: the header's, until [`Volume::grow`].
    size: AtomicU64,
    /// `data_vdi_id`, [`SD_INODE_DATA_INDEX`] long whatever the size (see the contract).
    entries: Box<[AtomicU32]>,
    /// One bit per object index: a create is in flight (claimed by `plan_write`).
    creating: Box<[AtomicU64]>,
    read_only: bool,
    /// The own (working) vid: the header's, until a live snapshot moves it.
    vid: AtomicU32,
    /// A caller is looking up the new working vid after a live snapshot.
    following: AtomicBool,
    /// Parked waiters (one bit per slot of `parked` in use).
    parked_mask: AtomicU64,
    parked: Box<[AtomicWaker]>,
}

impl Volume {
    /// A volume from an inode header and its entries (missing entries read as 0).
    /// `read_only` refuses every write plan.
    pub fn new(header: InodeHeader, entries: Vec<u32>, read_only: bool) -> Volume {
        let cap = SD_INODE_DATA_INDEX as usize;
        let e: Box<[AtomicU32]> = bytemuck::allocation::zeroed_slice_box(cap);
        let nr = (header.nr_objects() as usize).min(cap);
        for (slot, v) in e.iter().zip(entries.into_iter().take(nr)).filter(|(_, v)| *v != 0) {
            slot.store(v, Ordering::Relaxed);
        }
        let creating = bytemuck::allocation::zeroed_slice_box(cap.div_ceil(64));
        let vid = AtomicU32::new(header.vdi_id);
        let parked = (0..PARK_SLOTS).map(|_| AtomicWaker::new()).collect();
        Volume {
            size: AtomicU64::new(header.vdi_size),
            header,
            entries: e,
            creating,
            read_only,
            vid,
            following: AtomicBool::new(false),
            parked_mask: AtomicU64::new(0),
            parked,
        }
    }

    /// A slot to park a waiter in (none free: `None`). See [`Parked::register`].
    pub fn park(&self) -> Option<Parked<'_>> {
        let mut mask = self.parked_mask.load(Ordering::Acquire);
        loop {
            let slot = (!mask).trailing_zeros() as usize;
            if slot >= PARK_SLOTS {
                return None;
            }
            match self.parked_mask.compare_exchange_weak(
                mask,
                mask | 1 << slot,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Parked { vol: self, slot }),
                Err(now) => mask = now,
            }
        }
    }

    /// Wake every parked waiter (a claim was released, a follow ended).
    fn wake_parked(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        let mut mask = self.parked_mask.load(Ordering::Acquire);
        while mask != 0 {
            let slot = mask.trailing_zeros() as usize;
            self.parked[slot].wake();
            mask &= mask - 1;
        }
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
        self.vid() == stale
            && self
                .following
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
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
        self.wake_parked();
    }

    /// The size in bytes now (the header's, or what [`Volume::grow`] made it).
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }
    pub fn block_size_shift(&self) -> u8 {
        self.header.block_size_shift
    }
    /// Objects the size covers now.
    pub fn nr_objects(&self) -> u32 {
        nr_objects(self.size(), self.header.block_size_shift).min(SD_INODE_DATA_INDEX)
    }

    /// The VDI grew to `size` bytes (its inode says so already): indices up to the new end
    /// plan from now on, on every shard. Never shrinks; a size beyond what an inode can map
    /// is refused.
    pub fn grow(&self, size: u64) -> Result<(), Error> {
        let nr = nr_objects(size, self.header.block_size_shift);
        if nr > SD_INODE_DATA_INDEX {
            return Err(Error::OutOfRange { idx: nr - 1, nr: SD_INODE_DATA_INDEX });
        }
        self.size.fetch_max(size, Ordering::AcqRel);
        Ok(())
    }
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }
    pub fn entry(&self, idx: u32) -> Option<u32> {
        let i = self.check(idx).ok()?;
        Some(self.entries[i].load(Ordering::Acquire))
    }

    fn check(&self, idx: u32) -> Result<usize, Error> {
        if idx < self.nr_objects() {
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

    /// Decide how to write object `idx`. A create plan holds the index's [`Claim`];
    /// meanwhile every other writer (on any thread) gets `Wait`.
    pub fn plan_write(&self, idx: u32) -> Result<WritePlan<'_>, Error> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let i = self.check(idx)?;
        let own = self.vid();
        let oid = Oid::data(own, idx);
        let (w, b) = Self::bit(i);
        // Ours and no create in flight: the entry is persisted (release comes after that).
        if self.entries[i].load(Ordering::Acquire) == own.0 {
            return Ok(if self.creating[w].load(Ordering::SeqCst) & b != 0 {
                WritePlan::Wait
            } else {
                WritePlan::Write(oid)
            });
        }
        if self.creating[w].fetch_or(b, Ordering::SeqCst) & b != 0 {
            return Ok(WritePlan::Wait);
        }
        // Claimed. Someone may have finished a create between our two loads.
        let claim = Claim { vol: self, idx, restore: None };
        Ok(match self.entries[i].load(Ordering::Acquire) {
            e if e == own.0 => WritePlan::Write(oid),
            0 => WritePlan::Create { oid, claim },
            other => WritePlan::Cow { oid, cow: Oid::data(Vid(other), idx), claim },
        })
    }

    /// Claim `idx` without planning a write (discard, carry): `None` while someone else
    /// holds it.
    pub fn try_claim(&self, idx: u32) -> Result<Option<Claim<'_>>, Error> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let (w, b) = Self::bit(self.check(idx)?);
        Ok((self.creating[w].fetch_or(b, Ordering::SeqCst) & b == 0).then_some(Claim {
            vol: self,
            idx,
            restore: None,
        }))
    }

    /// An empty run of claims starting at `lo`.
    pub fn claim_run(&self, lo: u32) -> ClaimRun<'_> {
        ClaimRun { vol: self, lo, end: lo }
    }

    /// Drop the claim on `idx` (its create and inode update finished, or failed and
    /// `restore` puts the previous entry back), and wake the parked waiters.
    fn release(&self, idx: u32, restore: Option<u32>) {
        let i = idx as usize;
        if let (Some(old), Some(e)) = (restore, self.entries.get(i)) {
            e.store(old, Ordering::Release);
        }
        let (w, b) = Self::bit(i);
        if let Some(a) = self.creating.get(w) {
            a.fetch_and(!b, Ordering::SeqCst);
        }
        self.wake_parked();
    }

    /// Set an entry (discard: 0). Returns the old value.
    pub fn set_entry(&self, idx: u32, v: u32) -> Result<u32, Error> {
        let i = self.check(idx)?;
        Ok(self.entries[i].swap(v, Ordering::AcqRel))
    }
}

#[cfg(test)]
mod tests;
