//! The write sequence, once: plan → send → created → one inode update → release, for block
//! WRITEs, WRITE_ZEROES and DISCARD (whole objects: their inode entries), with the claims of
//! `vdi::Volume` as guards (a failure path drops them, which undoes what it must) and the
//! waits for another writer's create parked on the volume's wakers.

use std::future::poll_fn;
use std::task::Poll;
use std::time::Instant;

use super::{ring, Dst, Error, IoDesc, Op, Shard, Src};
use crate::metrics::Backend;
use crate::proto::inode::entry_offset;
use crate::proto::*;
use crate::vdi::{split, Claim, Piece, WritePlan};

/// Entries created by one request whose inode update is coalesced into one write.
const MAX_CREATED: usize = 8;
/// How often a piece refused with READONLY follows a live snapshot before it fails (each
/// follow moves the own vid on; a vid that stays read-only fails at once).
const READONLY_RETRIES: u32 = 4;
/// A waiter that finds every parking slot of the volume taken looks again this often.
const PARK_FALLBACK: std::time::Duration = std::time::Duration::from_micros(50);

/// The claims of the objects one request created, waiting for their inode update.
struct Created<'v> {
    claims: [Option<Claim<'v>>; MAX_CREATED],
    n: usize,
}

impl<'v> Created<'v> {
    fn new() -> Created<'v> {
        Created { claims: std::array::from_fn(|_| None), n: 0 }
    }
    fn push(&mut self, c: Claim<'v>) {
        self.claims[self.n] = Some(c);
        self.n += 1;
    }
    fn is_full(&self) -> bool {
        self.n == MAX_CREATED
    }
    fn iter(&self) -> impl Iterator<Item = &Claim<'v>> {
        self.claims[..self.n].iter().flatten()
    }
    /// Drop every claim: kept entries if `persisted`, restored ones otherwise.
    fn finish(&mut self, persisted: bool) {
        for c in self.claims[..self.n].iter_mut() {
            if let (true, Some(c)) = (persisted, c.as_mut()) {
                c.persisted();
            }
            c.take();
        }
        self.n = 0;
    }
}

impl Shard {
    /// Wait until `ready` answers something, parked on the volume's wakers (a claim
    /// released, a follow ended) between looks.
    pub(super) async fn park_until<T>(
        &self,
        mut ready: impl FnMut() -> Result<Option<T>, Error>,
    ) -> Result<T, Error> {
        if let Some(t) = ready()? {
            return Ok(t);
        }
        let Some(parked) = self.vol.park() else {
            loop {
                ring::sleep(PARK_FALLBACK).await;
                if let Some(t) = ready()? {
                    return Ok(t);
                }
            }
        };
        poll_fn(|cx| {
            parked.register(cx.waker());
            match ready() {
                Ok(Some(t)) => Poll::Ready(Ok(t)),
                Ok(None) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            }
        })
        .await
    }

    /// Plan a write of `idx`, parked while another writer creates that object.
    async fn plan_write(&self, idx: u32) -> Result<WritePlan<'_>, Error> {
        let mut waited = false;
        self.park_until(|| match self.vol.plan_write(idx)? {
            WritePlan::Wait => {
                if !std::mem::replace(&mut waited, true) {
                    if let Some(m) = &self.metrics {
                        m.borrow().create_waits.inc();
                    }
                }
                Ok(None)
            }
            p => Ok(Some(p)),
        })
        .await
    }

    /// Write `data` at `offset`, then persist the entries it created (one inode write per
    /// [`MAX_CREATED`]). The first failed piece ends the request; what was created before
    /// it is still persisted.
    pub(super) async fn write(
        &self,
        offset: u64,
        data: Src<'_>,
        dl: Option<Instant>,
    ) -> Result<(), Error> {
        let mut created = Created::new();
        let mut result = Ok(());
        for p in split(offset, data.len() as u64, self.vol.block_size_shift()) {
            let piece = data.slice(p.buf_off, p.len as usize).ok_or(Error::OutOfRange)?;
            if let Err(e) = self.write_piece(p, piece, &mut created, dl).await {
                result = Err(e);
                break;
            }
            if created.is_full() {
                self.persist(&mut created, dl).await?;
            }
        }
        if created.n > 0 {
            self.persist(&mut created, dl).await?;
        }
        result
    }

    /// One object's piece: WRITE_OBJ, CREATE or COW CREATE as the volume decides. A piece
    /// refused with READONLY (a live snapshot) follows the snapshot and goes again, planned
    /// against the new working vid (so a COW).
    async fn write_piece<'v>(
        &'v self,
        p: Piece,
        piece: Src<'_>,
        created: &mut Created<'v>,
        dl: Option<Instant>,
    ) -> Result<(), Error> {
        let (copies, copy_policy) = (self.vol.header().nr_copies, self.vol.header().copy_policy);
        let args = |oid, cow_oid| ObjArgs {
            oid,
            cow_oid,
            copies,
            copy_policy,
            offset: p.obj_off,
            ..Default::default()
        };
        let flags = SD_FLAG_CMD_WRITE | SD_FLAG_CMD_DIRECT;
        let mut refused = 0;
        loop {
            let (kind, hdr, oid, claim) = match self.plan_write(p.idx).await? {
                WritePlan::Write(oid) => (
                    Backend::WriteObj,
                    ReqHeader::obj(Opcode::WriteObj, flags, p.len, args(oid, Oid(0))),
                    oid,
                    None,
                ),
                WritePlan::Create { oid, claim } => (
                    Backend::CreateAndWrite,
                    ReqHeader::obj(Opcode::CreateAndWriteObj, flags, p.len, args(oid, Oid(0))),
                    oid,
                    Some(claim),
                ),
                WritePlan::Cow { oid, cow, claim } => {
                    if let Some(m) = &self.metrics {
                        m.borrow().cow.inc();
                    }
                    let hdr = ReqHeader::obj(
                        Opcode::CreateAndWriteObj,
                        flags | SD_FLAG_CMD_COW,
                        p.len,
                        args(oid, cow),
                    );
                    (Backend::CowCreate, hdr, oid, Some(claim))
                }
                WritePlan::Wait => unreachable!("plan_write parks until the plan is not Wait"),
            };
            match (self.call_data(kind, hdr, piece, Dst::Mem(&mut []), dl).await, claim) {
                (Ok(_), Some(mut claim)) => {
                    claim.created(oid.vid());
                    created.push(claim);
                    return Ok(());
                }
                (Ok(_), None) => return Ok(()),
                // The claim (if any) is dropped: the next plan sees the new vid.
                (Err(Error::Server(code)), _)
                    if code == SD_RES_READONLY && refused < READONLY_RETRIES =>
                {
                    refused += 1;
                    self.follow_snapshot(oid.vid(), dl).await?;
                }
                (Err(e), _) => return Err(e),
            }
        }
    }

    /// One inode write for the entries of `created` (contiguous indexes of one request),
    /// then drop their claims: kept on success, restored on failure.
    async fn persist(&self, created: &mut Created<'_>, dl: Option<Instant>) -> Result<(), Error> {
        let lo = created.iter().map(Claim::idx).min().unwrap_or(0);
        let hi = created.iter().map(Claim::idx).max().unwrap_or(0);
        let mut bytes = [0u8; 4 * MAX_CREATED];
        let count = (hi - lo + 1) as usize;
        let r = if count <= MAX_CREATED {
            for (k, idx) in (lo..=hi).enumerate() {
                bytes[4 * k..4 * k + 4]
                    .copy_from_slice(&self.vol.entry(idx).unwrap_or(0).to_le_bytes());
            }
            let vid = self.vol.vid();
            match self.write_inode(vid, entry_offset(lo), &bytes[..4 * count], dl).await {
                // The update landed in the inode of a vid that a live snapshot froze
                // meanwhile: that snapshot now references the new objects. The new working
                // inode gets copies of them, not the pointers (see `carry`).
                Ok(()) if self.vol.vid() != vid => self.carry_created(created, dl).await,
                r => r,
            }
        } else {
            Err(Error::OutOfRange)
        };
        created.finish(r.is_ok());
        r
    }

    /// After a live snapshot froze the vid these creates were persisted into: carry each
    /// (its claim is still held) into the working vid by a copy.
    async fn carry_created(&self, created: &Created<'_>, dl: Option<Instant>) -> Result<(), Error> {
        for c in created.iter() {
            let (now, e) = (self.vol.vid(), self.vol.entry(c.idx()).unwrap_or(0));
            if e != 0 && e != now.0 {
                self.carry(c.idx(), Vid(e), now, dl).await?;
            }
        }
        Ok(())
    }

    /// Make object `idx` of the working vid `to` a copy of `from`'s (a COW create with no
    /// payload), point the entry at it, in memory and in `to`'s inode. The caller holds the
    /// claim on `idx`.
    ///
    /// Never point `to`'s inode at `from`'s object instead: sheep keeps generational
    /// reference counts (`gref`) next to the entries and zeroes them for every entry an
    /// inode write covers, so a second inode referencing an object through a client's
    /// write is not counted, and when either drops it later sheep removes the object from
    /// under the other (seen on sheep 1.0: a snapshot lost its object after the working
    /// VDI rewrote an unchanged shared entry and then copied-on-write it).
    pub(super) async fn carry(
        &self,
        idx: u32,
        from: Vid,
        to: Vid,
        dl: Option<Instant>,
    ) -> Result<(), Error> {
        let h = self.vol.header();
        let args = ObjArgs {
            oid: Oid::data(to, idx),
            cow_oid: Oid::data(from, idx),
            copies: h.nr_copies,
            copy_policy: h.copy_policy,
            ..Default::default()
        };
        let hdr = ReqHeader::obj(
            Opcode::CreateAndWriteObj,
            SD_FLAG_CMD_WRITE | SD_FLAG_CMD_DIRECT | SD_FLAG_CMD_COW,
            0,
            args,
        );
        self.call(Backend::CowCreate, hdr, &[], &mut [], dl).await?;
        self.vol.set_entry(idx, to.0)?;
        self.write_inode(to, entry_offset(idx), &to.0.to_le_bytes(), dl).await
    }

    /// Write zeroed inode entries (a discard) into the inode of the own vid. sheep accepts
    /// inode writes to a snapshot, so an update that raced a live snapshot may have landed
    /// in the snapshot's inode: when the own vid moved meanwhile, the zeros go to the new
    /// one too (dropping a reference is always counted right; see `carry` for why entries
    /// that point at objects are never written twice).
    async fn write_zeroed_entries(
        &self,
        offset: u32,
        zeros: &[u8],
        dl: Option<Instant>,
    ) -> Result<(), Error> {
        debug_assert!(zeros.iter().all(|&b| b == 0));
        let mut vid = self.vol.vid();
        loop {
            self.write_inode(vid, offset, zeros, dl).await?;
            let now = self.vol.vid();
            if now == vid {
                return Ok(());
            }
            vid = now;
        }
    }

    pub(super) async fn write_inode(
        &self,
        vid: Vid,
        offset: u32,
        bytes: &[u8],
        dl: Option<Instant>,
    ) -> Result<(), Error> {
        let args = ObjArgs { oid: Oid::inode(vid), offset, ..Default::default() };
        let hdr = ReqHeader::obj(
            Opcode::WriteObj,
            SD_FLAG_CMD_WRITE | SD_FLAG_CMD_DIRECT,
            bytes.len() as u32,
            args,
        );
        self.call(Backend::InodeUpdate, hdr, bytes, &mut [], dl).await.map(|_| ())
    }

    /// DISCARD / WRITE_ZEROES (see the module contract). The zeroed entries go from the
    /// shard's zeros (never written, so every request may send from them at once).
    pub(super) async fn zero_range(&self, d: IoDesc, dl: Option<Instant>) -> Result<(), Error> {
        if self.vol.is_read_only() {
            return Err(Error::ReadOnly);
        }
        let os = 1u64 << self.vol.block_size_shift();
        let end = d.offset + u64::from(d.len);
        let first_whole = d.offset.div_ceil(os);
        let end_whole = end / os;
        if d.op == Op::WriteZeroes {
            // Partial objects at the edges get real zeros.
            if first_whole > end_whole {
                return self.write_zeros(d.offset, end, dl).await;
            }
            self.write_zeros(d.offset, (first_whole * os).min(end), dl).await?;
            self.write_zeros(end_whole * os, end, dl).await?;
        }
        // Whole objects: claim, zero the entries in one inode write per scratch-full, release.
        let per_write = (self.zeros.len() / 4).max(1) as u64;
        let mut lo = first_whole;
        while lo < end_whole {
            let hi = (lo + per_write).min(end_whole);
            let mut run = self.vol.claim_run(lo as u32);
            let mut any = false;
            while u64::from(run.end()) < hi {
                self.park_until(|| Ok(run.try_extend()?.then_some(()))).await?;
                any |= self.vol.set_entry(run.end() - 1, 0)? != 0;
            }
            let bytes = &self.zeros[..4 * (hi - lo) as usize];
            if any {
                self.write_zeroed_entries(entry_offset(lo as u32), bytes, dl).await?;
            }
            drop(run);
            lo = hi;
        }
        Ok(())
    }

    async fn write_zeros(&self, mut from: u64, to: u64, dl: Option<Instant>) -> Result<(), Error> {
        while from < to {
            let n = (to - from).min(self.zeros.len() as u64) as usize;
            self.write(from, Src::Mem(&self.zeros[..n]), dl).await?;
            from += n as u64;
        }
        Ok(())
    }
}
