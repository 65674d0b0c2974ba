//! The coalescer's rule: which sheep request may carry another one, as pure data. The
//! connection (`conn`) applies it to its send queue and keeps the rider chains; this file
//! only decides.
//!
//! Contract:
//! - A request `h` may ride on a queued request `lead` (which already carries `riders`
//!   others, its `data_length` covering all of them) when both are plain WRITE_OBJ with a
//!   payload, of the same object with the same flags, epoch, copies, copy policy and COW
//!   source, `h` starts exactly where `lead` ends (adjacent, never overlapping), the sum
//!   stays within [`MAX_MERGED`] bytes and `lead` carries fewer than [`MAX_RIDERS`].
//! - Never a CREATE_AND_WRITE (a create is never widened, so a resent create carries
//!   exactly its own piece and cannot replay over another request's data), never a read,
//!   never across objects.
//! - Pure: no I/O, no allocation.

use crate::proto::{Opcode, ReqHeader};

/// The most requests that ride on one queued WRITE_OBJ.
pub const MAX_RIDERS: usize = 63;
/// The most bytes one merged WRITE_OBJ carries.
pub const MAX_MERGED: u32 = 1 << 20;
/// How many of the most recently queued requests a new write looks at for one to ride on.
pub const MERGE_SCAN: usize = 8;

/// Whether `h` may be one of the requests merged at all (a plain WRITE_OBJ with a payload).
pub fn may_ride(h: &ReqHeader) -> bool {
    h.opcode == Opcode::WriteObj as u8 && h.has_payload() && h.data_length > 0
}

/// Whether `h` may ride on `lead`, which carries `riders` riders already (module contract).
pub fn rides_on(lead: &ReqHeader, riders: usize, h: &ReqHeader) -> bool {
    let (la, a) = (lead.obj_args(), h.obj_args());
    may_ride(h)
        && may_ride(lead)
        && riders < MAX_RIDERS
        && lead.flags == h.flags
        && lead.epoch == h.epoch
        && lead.proto_ver == h.proto_ver
        && crate::proto::ObjArgs { offset: a.offset, ..la } == a
        && la.offset.checked_add(lead.data_length) == Some(a.offset)
        && lead.data_length.checked_add(h.data_length).is_some_and(|n| n <= MAX_MERGED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ObjArgs, Oid, SD_FLAG_CMD_COW, SD_FLAG_CMD_DIRECT, SD_FLAG_CMD_WRITE};

    const W: u16 = SD_FLAG_CMD_WRITE | SD_FLAG_CMD_DIRECT;

    fn req(op: Opcode, flags: u16, oid: u64, offset: u32, len: u32) -> ReqHeader {
        ReqHeader::obj(op, flags, len, ObjArgs { oid: Oid(oid), offset, ..Default::default() })
    }

    #[test]
    fn only_adjacent_plain_writes_of_one_object_ride() {
        let lead = req(Opcode::WriteObj, W, 7, 4096, 8192);
        assert!(rides_on(&lead, 0, &req(Opcode::WriteObj, W, 7, 12288, 4096)));
        assert!(!rides_on(&lead, 0, &req(Opcode::WriteObj, W, 7, 16384, 4096)), "a gap");
        assert!(!rides_on(&lead, 0, &req(Opcode::WriteObj, W, 7, 8192, 4096)), "an overlap");
        assert!(!rides_on(&lead, 0, &req(Opcode::WriteObj, W, 7, 0, 4096)), "before the lead");
        assert!(!rides_on(&lead, 0, &req(Opcode::WriteObj, W, 8, 12288, 4096)), "another object");
        assert!(!rides_on(&lead, 0, &req(Opcode::CreateAndWriteObj, W, 7, 12288, 4096)), "a create");
        assert!(!rides_on(&req(Opcode::CreateAndWriteObj, W, 7, 4096, 8192), 0, &req(Opcode::WriteObj, W, 7, 12288, 4096)), "onto a create");
        assert!(!rides_on(&lead, 0, &req(Opcode::WriteObj, W | SD_FLAG_CMD_COW, 7, 12288, 4096)), "other flags");
        assert!(!rides_on(&lead, 0, &req(Opcode::ReadObj, 0, 7, 12288, 4096)), "a read");
        assert!(!rides_on(&lead, 0, &req(Opcode::WriteObj, W, 7, 12288, 0)), "no payload");
        assert!(!rides_on(&lead, MAX_RIDERS, &req(Opcode::WriteObj, W, 7, 12288, 4096)), "a full chain");
        let big = req(Opcode::WriteObj, W, 7, 0, MAX_MERGED - 4096);
        assert!(rides_on(&big, 0, &req(Opcode::WriteObj, W, 7, MAX_MERGED - 4096, 4096)));
        assert!(!rides_on(&big, 0, &req(Opcode::WriteObj, W, 7, MAX_MERGED - 4096, 4097)), "past MAX_MERGED");
        let mut copies = req(Opcode::WriteObj, W, 7, 12288, 4096);
        copies.args[16] = 3;
        assert!(!rides_on(&lead, 0, &copies), "other copies");
        let end = req(Opcode::WriteObj, W, 7, u32::MAX - 10, 10);
        assert!(!rides_on(&end, 0, &req(Opcode::WriteObj, W, 7, 0, 1)), "offsets do not wrap");
    }
}
