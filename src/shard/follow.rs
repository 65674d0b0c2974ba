//! Following a live snapshot (the shard's module contract): a write refused with READONLY
//! means another client snapshotted the VDI; one request of the device looks the new
//! working vid up and brings the new inode in line, the others park until it is done.

use std::time::Instant;

use super::{Error, Shard};
use crate::metrics::Backend;
use crate::proto::inode::entry_offset;
use crate::proto::*;

impl Shard {
    /// A write of an object of `stale` got READONLY: someone snapshotted the VDI. One
    /// request (of any shard of the device) looks the new working vid up and switches the
    /// shared `Volume` to it; the others park until that is done and plan again.
    pub(super) async fn follow_snapshot(
        &self,
        stale: Vid,
        dl: Option<Instant>,
    ) -> Result<(), Error> {
        if !self.vol.begin_follow(stale) {
            return self
                .park_until(|| {
                    if self.aborted() {
                        Err(Error::Closed)
                    } else {
                        Ok((!self.vol.is_following()).then_some(()))
                    }
                })
                .await;
        }
        let r = self.follow_inner(stale, dl).await;
        self.vol.end_follow();
        if let (Ok(_), Some(m)) = (&r, &self.metrics) {
            m.borrow().inode_reloads.inc();
        }
        match r {
            // A warning: another client changed the VDI under the device (the daemon moves
            // its table entry and the VDI lock after it).
            Ok(new) => {
                tracing::warn!("vdi {}: live snapshot of vid {stale} by another client; writes now go to vid {new}", self.vol.header().name_lossy())
            }
            Err(e) => {
                tracing::warn!("vdi {}: vid {stale} became read-only and no new working vdi could be followed: {e}", self.vol.header().name_lossy())
            }
        }
        r.map(|_| ())
    }

    /// GET_VDI_INFO by name, check the new inode, switch, then bring the new inode's entries
    /// that differ from memory in line: objects whose updates landed in the snapshot's inode
    /// after the snapshot was taken are carried over as copies (`carry`), discards as zeros;
    /// equal entries are never rewritten. Not on the I/O path: it allocates.
    async fn follow_inner(&self, stale: Vid, dl: Option<Instant>) -> Result<Vid, Error> {
        // Name + zeroed tag, as every lookup (SD_LOOKUP_LEN): the working VDI.
        let payload = crate::proto::lookup_field(&self.vol.header().name, None);
        let hdr = ReqHeader::vdi(
            Opcode::GetVdiInfo,
            SD_FLAG_CMD_WRITE,
            payload.len() as u32,
            VdiArgs::default(),
        );
        let rsp = self.call(Backend::VdiLookup, hdr, &payload, &mut [], dl).await?;
        let new = match Vid::new(rsp.vdi_id()) {
            Some(v) if v != stale => v,
            // The vid stays a snapshot and no other working VDI took its name (a clone made
            // from a working VDI, reference §10.3): nothing to follow.
            _ => return Err(Error::Server(SD_RES_READONLY)),
        };
        let mut head = vec![0u8; crate::proto::inode::INODE_HEADER_PARSE_LEN];
        let rh = ReqHeader::obj(
            Opcode::ReadObj,
            0,
            head.len() as u32,
            ObjArgs { oid: Oid::inode(new), ..Default::default() },
        );
        self.call(Backend::ReadObj, rh, &[], &mut head, dl).await?;
        let h = InodeHeader::parse(&head).map_err(|_| Error::Protocol)?;
        let old = self.vol.header();
        if h.is_snapshot()
            || h.vdi_id != new.0
            || h.block_size_shift != old.block_size_shift
            || h.vdi_size < self.vol.size()
        {
            return Err(Error::Server(SD_RES_READONLY));
        }
        self.vol.follow(stale, new);
        // Reconcile: the new inode is sheep's copy of the old one at the moment of the
        // snapshot; memory may differ where updates raced it (landed in the snapshot's
        // inode, or not yet written). Only entries that differ are touched — rewriting an
        // unchanged one would reset sheep's reference count of a shared object (`carry`).
        // An entry whose claim is held is left to its holder (`persist` carries it).
        const CHUNK: u32 = 16 << 10;
        let nr = self.vol.nr_objects();
        let mut inode = vec![0u8; 4 * CHUNK.min(nr.max(1)) as usize];
        for _pass in 0..8 {
            let mut differed = false;
            let mut lo = 0;
            while lo < nr {
                let hi = (lo + CHUNK).min(nr);
                let buf = &mut inode[..4 * (hi - lo) as usize];
                let args = ObjArgs {
                    oid: Oid::inode(new),
                    offset: entry_offset(lo),
                    ..Default::default()
                };
                let rh = ReqHeader::obj(Opcode::ReadObj, 0, buf.len() as u32, args);
                self.call(Backend::ReadObj, rh, &[], buf, dl).await?;
                for idx in lo..hi {
                    let k = 4 * (idx - lo) as usize;
                    let there = u32::from_le_bytes([buf[k], buf[k + 1], buf[k + 2], buf[k + 3]]);
                    if self.vol.entry(idx) == Some(there) {
                        continue;
                    }
                    differed = true;
                    let Some(claim) = self.vol.try_claim(idx)? else { continue };
                    match self.vol.entry(idx).unwrap_or(0) {
                        m if m == there || m == new.0 => {}
                        0 => {
                            self.write_inode(new, entry_offset(idx), &0u32.to_le_bytes(), dl)
                                .await?
                        }
                        m => self.carry(idx, Vid(m), new, dl).await?,
                    }
                    drop(claim);
                }
                lo = hi;
            }
            if !differed {
                break;
            }
        }
        Ok(new)
    }
}
