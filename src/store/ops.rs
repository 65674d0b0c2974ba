//! One request in, one response out: validation and the per-opcode semantics of sheep
//! 1.0 (reference §4, §8–§11), on top of [`Meta`] and [`Objects`].
//!
//! Contract:
//! - [`Handler::handle`] never fails and never panics on peer input: every problem is a
//!   result code in the response. The response echoes opcode, id and proto_ver; its
//!   `data_length` is the length of the payload appended after it.
//! - Version check first: opcodes ≥ 0x80 need proto_ver 0x0a (then INVALID_PARMS: admin
//!   opcodes are out of scope), others accept 0..=2 (VER_MISMATCH above). Unknown opcodes
//!   get INVALID_PARMS.
//! - Inode objects are read, written, created and removed under the metadata lock; data
//!   objects only ask the lock whether their vid is read-only and how big they are, then
//!   do their I/O in parallel with everything else. Like sheep, nothing orders two
//!   requests in flight, not even on one object.
//! - Injected faults (`fault.rs`) come right after the version check: an error result
//!   instead of executing, then the emulated disk latency.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use super::answers::Answer;
use super::fault::Faults;
use super::inode::inode_vid;
use super::meta::{Meta, NewVdi, Query};
use super::objects::Objects;
use super::MAX_PAYLOAD;
use crate::proto::inode::{ec_split, field_str};
use crate::proto::{
    Opcode, ReqHeader, ResultCode, RspHeader, HEADER_LEN, SD_DEFAULT_BLOCK_SIZE_SHIFT,
    SD_FLAG_CMD_COW, SD_LOOKUP_LEN, SD_MAX_VDI_LEN, SD_PROTO_VER, SD_RES_INVALID_PARMS,
    SD_RES_READONLY, SD_RES_SUCCESS, SD_RES_VER_MISMATCH, SD_VDI_BITMAP_LEN,
};

/// proto_ver that admin and internal opcodes (≥ 0x80) must carry.
const SD_SHEEP_PROTO_VER: u8 = 0x0a;
/// First admin/internal opcode.
const FIRST_ADMIN_OPCODE: u8 = 0x80;
/// The epoch every response reports: a freshly formatted single-node cluster's.
const EPOCH: u32 = 1;
/// Largest `block_size_shift` NEW_VDI accepts (sheep's objects are addressed with u32).
const MAX_BLOCK_SIZE_SHIFT: u8 = 31;

/// sheep's time stamp: `(sec << 32) | nsec` (microsecond precision, as sheep); never 0,
/// because a zero `snap_ctime` would not freeze anything.
fn now() -> u64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    ((d.as_secs() << 32) | u64::from(d.subsec_micros() * 1000)).max(1)
}

/// Everything a worker needs to execute requests.
pub(super) struct Handler {
    meta: Mutex<Meta>,
    objs: Objects,
    locking: bool,
    copies: u8,
    faults: Faults,
}

impl Handler {
    pub(super) fn new(
        meta: Meta,
        objs: Objects,
        locking: bool,
        copies: u8,
        faults: Faults,
    ) -> Handler {
        Handler { meta: Mutex::new(meta), objs, locking, copies, faults }
    }

    /// The store's fault controls.
    pub(super) fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The metadata, even after a worker panicked while holding it (the state is then as
    /// good as sheep's after a failed multi-step update).
    pub(super) fn meta(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Execute one request and append its whole response (header, then payload) to `out`,
    /// which a connection sends as it is (with other responses only on the fast path).
    /// `payload` is what followed the header on the wire (empty without
    /// `SD_FLAG_CMD_WRITE`).
    pub(super) fn handle(&self, req: &ReqHeader, payload: &[u8], out: &mut Answer) {
        let start = out.mark();
        out.grow(HEADER_LEN);
        let body = out.mark();
        let mut rsp = RspHeader::reply_to(req, SD_RES_SUCCESS);
        rsp.epoch = EPOCH;
        if let Err(code) = self.dispatch(req, payload, &mut rsp, out) {
            out.truncate(body);
            rsp.result = code;
        }
        rsp.data_length = u32::try_from(out.since(body)).unwrap_or(0);
        out.at(start, HEADER_LEN).copy_from_slice(&rsp.encode());
    }

    /// Execute one request; its response payload, if any, is appended to `out`.
    fn dispatch(
        &self,
        req: &ReqHeader,
        payload: &[u8],
        rsp: &mut RspHeader,
        out: &mut Answer,
    ) -> Result<(), ResultCode> {
        if req.opcode >= FIRST_ADMIN_OPCODE {
            return Err(if req.proto_ver == SD_SHEEP_PROTO_VER {
                SD_RES_INVALID_PARMS
            } else {
                SD_RES_VER_MISMATCH
            });
        }
        if req.proto_ver > SD_PROTO_VER {
            return Err(SD_RES_VER_MISMATCH);
        }
        let op = Opcode::try_from(req.opcode).map_err(|_| SD_RES_INVALID_PARMS)?;
        if let Some(code) = self.faults.take(op) {
            return Err(code);
        }
        let delay = self.faults.object_delay();
        if !delay.is_zero()
            && matches!(op, Opcode::CreateAndWriteObj | Opcode::ReadObj | Opcode::WriteObj)
        {
            std::thread::sleep(delay);
        }
        match op {
            Opcode::CreateAndWriteObj => self.create(req, payload),
            Opcode::ReadObj => self.read(req, out),
            Opcode::WriteObj => self.write(req, payload),
            Opcode::RemoveObj => {
                let oid = req.obj_args().oid;
                match inode_vid(oid) {
                    Some(vid) => self.meta().remove_inode(&self.objs, vid)?,
                    None => self.objs.remove(oid)?,
                }
                Ok(())
            }
            Opcode::DiscardObj => self.meta().discard(&self.objs, req.obj_args().oid),
            Opcode::NewVdi => self.new_vdi(req, payload, rsp),
            Opcode::GetVdiInfo => {
                let f = self.meta().lookup(&query(req, payload)?)?;
                rsp.set_vdi(f.vid, f.copies, f.block_size_shift);
                Ok(())
            }
            Opcode::LockVdi => {
                let q = query(req, payload)?;
                let mut meta = self.meta();
                let f = meta.lookup(&q)?;
                rsp.set_vdi(f.vid, f.copies, f.block_size_shift);
                if self.locking {
                    meta.take_lock(f.vid, req.vdi_args().lock_type)?;
                }
                Ok(())
            }
            Opcode::ReleaseVdi => {
                if self.locking {
                    let a = req.vdi_args();
                    if !self.meta().release(a.base_vdi_id, a.lock_type) {
                        tracing::debug!(
                            "release of vid {:#x}, which holds no such lock (SUCCESS, as sheep)",
                            a.base_vdi_id
                        );
                    }
                }
                Ok(())
            }
            Opcode::DelVdi => {
                let vid = self.meta().del_vdi(&self.objs, &query(req, payload)?)?;
                rsp.set_vdi(vid, 0, 0);
                Ok(())
            }
            Opcode::ReadVdis => {
                if req.data_length != SD_VDI_BITMAP_LEN {
                    return Err(SD_RES_INVALID_PARMS);
                }
                out.push(self.meta().bitmap());
                Ok(())
            }
            // Obsolete in sheep 1.0: clients take INVALID_PARMS as "writes are durable".
            Opcode::FlushVdi => Err(SD_RES_INVALID_PARMS),
            Opcode::GetClusterDefault => {
                rsp.set_cluster_default(self.copies, 0, SD_DEFAULT_BLOCK_SIZE_SHIFT);
                Ok(())
            }
        }
    }

    fn create(&self, req: &ReqHeader, payload: &[u8]) -> Result<(), ResultCode> {
        let a = req.obj_args();
        let cow = (req.flags & SD_FLAG_CMD_COW != 0).then_some(a.cow_oid);
        let off = u64::from(a.offset);
        if let Some(vid) = inode_vid(a.oid) {
            return self.meta().create_inode(&self.objs, vid, cow, off, payload);
        }
        let (readonly, size) = self.meta().data_target(a.oid);
        if readonly {
            return Err(SD_RES_READONLY);
        }
        self.objs.create(a.oid, size, cow, off, payload)
    }

    /// READ_OBJ: `data_length` bytes appended to `out` (pread into the answer's buffer).
    fn read(&self, req: &ReqHeader, out: &mut Answer) -> Result<(), ResultCode> {
        if req.data_length > MAX_PAYLOAD {
            return Err(SD_RES_INVALID_PARMS);
        }
        let a = req.obj_args();
        let dst = out.grow(req.data_length as usize);
        match inode_vid(a.oid) {
            Some(vid) => self.meta().read_inode(&self.objs, vid, u64::from(a.offset), dst),
            None => self.objs.read(a.oid, u64::from(a.offset), dst),
        }
    }

    fn write(&self, req: &ReqHeader, payload: &[u8]) -> Result<(), ResultCode> {
        let a = req.obj_args();
        let off = u64::from(a.offset);
        if let Some(vid) = inode_vid(a.oid) {
            return self.meta().write_inode(&self.objs, vid, off, payload);
        }
        if self.meta().data_target(a.oid).0 {
            return Err(SD_RES_READONLY);
        }
        self.objs.write(a.oid, off, payload)
    }

    fn new_vdi(
        &self,
        req: &ReqHeader,
        payload: &[u8],
        rsp: &mut RspHeader,
    ) -> Result<(), ResultCode> {
        if payload.len() != SD_MAX_VDI_LEN {
            return Err(SD_RES_INVALID_PARMS);
        }
        let a = req.vdi_args();
        let (mut copies, copy_policy) =
            if a.copies == 0 { (self.copies, 0) } else { (a.copies, a.copy_policy) };
        if copy_policy != 0 {
            let (data, parity) = ec_split(copy_policy);
            copies = data.saturating_add(parity);
        }
        let block_size_shift =
            if a.block_size_shift == 0 { SD_DEFAULT_BLOCK_SIZE_SHIFT } else { a.block_size_shift };
        rsp.set_vdi(0, copies, block_size_shift);
        let name = field_str(payload);
        // sheep would create an unnamed (deleted-looking) inode, an unknown kind of inode,
        // or objects it cannot address: refuse those instead.
        if name.is_empty() || a.store_policy > 1 || block_size_shift > MAX_BLOCK_SIZE_SHIFT {
            return Err(SD_RES_INVALID_PARMS);
        }
        let r = NewVdi {
            name,
            size: a.vdi_size,
            base: a.base_vdi_id,
            snapshot: a.snapid != 0,
            copies,
            copy_policy,
            store_policy: a.store_policy,
            block_size_shift,
            time: now(),
        };
        let vid = self.meta().new_vdi(&self.objs, &r)?;
        rsp.set_vdi(vid, copies, block_size_shift);
        Ok(())
    }
}

/// The lookup a GET_VDI_INFO, LOCK_VDI or DEL_VDI asks for: a 256-byte name, optionally
/// followed by a 256-byte tag, and snapid @32. Any other payload length is INVALID_PARMS.
///
/// A name alone (256 bytes) with a non-zero snapid is refused with INVALID_PARMS, although
/// sheep 1.0 takes that length: sheep then has no tag (a NULL pointer) and `vdi_tag_match`
/// (sheep/vdi.c) `strncmp`s it against the tag of every candidate inode, so the gateway
/// dies of a segmentation fault as soon as one snapshot of that name is tagged. This store
/// exists to catch what a real sheep cannot survive; clients send name + tag (512 bytes,
/// the tag zeroed for a lookup by id), as dog and QEMU do.
fn query<'a>(req: &ReqHeader, payload: &'a [u8]) -> Result<Query<'a>, ResultCode> {
    let snapid = req.vdi_args().snapid;
    let (name, tag) = match payload.len() {
        SD_MAX_VDI_LEN if snapid != 0 => {
            tracing::warn!(
                "refused {}: a name-only lookup with snapid {snapid} (no tag field) crashes a real sheep 1.0 gateway; send name + tag",
                Opcode::try_from(req.opcode).map_or("lookup", |o| o.name())
            );
            return Err(SD_RES_INVALID_PARMS);
        }
        SD_MAX_VDI_LEN => (payload, &[][..]),
        SD_LOOKUP_LEN => payload.split_at(SD_MAX_VDI_LEN),
        _ => return Err(SD_RES_INVALID_PARMS),
    };
    Ok(Query { name: field_str(name), tag: field_str(tag), snapid })
}
