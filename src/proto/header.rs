//! The 48-byte request and response headers, encoded and decoded by hand at the exact
//! offsets of shared/reference/sheep-protocol.md §2–§3 (little-endian, no padding games).
//!
//! Contract:
//! - `encode` writes every one of the 48 bytes; fields a caller does not set are zero.
//! - `decode` of any 48 bytes succeeds (a header is plain bytes); meaning is checked later:
//!   [`RspHeader::check_len`] refuses a response whose `data_length` exceeds the bound the
//!   caller derived from its own request ([`response_bound`]) *before* anything is allocated.
//! - Opcode-specific bytes 16..48 are kept raw and read through typed views
//!   ([`ObjArgs`], [`VdiArgs`]), because their layout depends on the opcode.

use super::consts::*;
use super::{Error, Oid};

/// Size of both headers on the wire.
pub const HEADER_LEN: usize = 48;

#[inline]
fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
#[inline]
fn get_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}
#[inline]
fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
#[inline]
fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Object layout of request bytes 16..48 (§2a). Offsets below are from the header start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObjArgs {
    /// @16
    pub oid: Oid,
    /// @24, read only with `SD_FLAG_CMD_COW`
    pub cow_oid: Oid,
    /// @32, 0 = the VDI's
    pub copies: u8,
    /// @33, 0 = the VDI's
    pub copy_policy: u8,
    /// @34, internal
    pub ec_index: u8,
    /// @36, internal
    pub tgt_epoch: u32,
    /// @40, byte offset inside the object (u32 in sheep)
    pub offset: u32,
}

/// VDI layout of request bytes 16..48 (§2b).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VdiArgs {
    /// @16
    pub vdi_size: u64,
    /// @24: parent vid for NEW_VDI, the vid to unlock for RELEASE_VDI
    pub base_vdi_id: u32,
    /// @28
    pub copies: u8,
    /// @29
    pub copy_policy: u8,
    /// @30: 0 normal, 1 hyper volume
    pub store_policy: u8,
    /// @31: 0 = cluster default
    pub block_size_shift: u8,
    /// @32: NEW_VDI snapshot/rebase flag; which snapshot for lookups
    pub snapid: u32,
    /// @36: lock type for LOCK_VDI/RELEASE_VDI
    pub lock_type: u32,
}

/// A request header. `args` holds bytes 16..48 verbatim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReqHeader {
    pub proto_ver: u8,
    pub opcode: u8,
    pub flags: u16,
    pub epoch: u32,
    pub id: u32,
    pub data_length: u32,
    pub args: [u8; 32],
}

impl ReqHeader {
    fn base(op: Opcode, flags: u16, data_length: u32) -> Self {
        ReqHeader {
            proto_ver: SD_PROTO_VER,
            opcode: op as u8,
            flags,
            epoch: 0,
            id: 0,
            data_length,
            args: [0; 32],
        }
    }

    /// A request with the object layout.
    pub fn obj(op: Opcode, flags: u16, data_length: u32, a: ObjArgs) -> Self {
        let mut h = Self::base(op, flags, data_length);
        let b = &mut h.args;
        put_u64(b, 0, a.oid.0);
        put_u64(b, 8, a.cow_oid.0);
        b[16] = a.copies;
        b[17] = a.copy_policy;
        b[18] = a.ec_index;
        put_u32(b, 20, a.tgt_epoch);
        put_u32(b, 24, a.offset);
        h
    }

    /// A request with the VDI layout.
    pub fn vdi(op: Opcode, flags: u16, data_length: u32, a: VdiArgs) -> Self {
        let mut h = Self::base(op, flags, data_length);
        let b = &mut h.args;
        put_u64(b, 0, a.vdi_size);
        put_u32(b, 8, a.base_vdi_id);
        b[12] = a.copies;
        b[13] = a.copy_policy;
        b[14] = a.store_policy;
        b[15] = a.block_size_shift;
        put_u32(b, 16, a.snapid);
        put_u32(b, 20, a.lock_type);
        h
    }

    /// Bytes 16..48 read with the object layout.
    pub fn obj_args(&self) -> ObjArgs {
        let b = &self.args;
        ObjArgs {
            oid: Oid(get_u64(b, 0)),
            cow_oid: Oid(get_u64(b, 8)),
            copies: b[16],
            copy_policy: b[17],
            ec_index: b[18],
            tgt_epoch: get_u32(b, 20),
            offset: get_u32(b, 24),
        }
    }

    /// Bytes 16..48 read with the VDI layout.
    pub fn vdi_args(&self) -> VdiArgs {
        let b = &self.args;
        VdiArgs {
            vdi_size: get_u64(b, 0),
            base_vdi_id: get_u32(b, 8),
            copies: b[12],
            copy_policy: b[13],
            store_policy: b[14],
            block_size_shift: b[15],
            snapid: get_u32(b, 16),
            lock_type: get_u32(b, 20),
        }
    }

    /// Whether a payload of `data_length` bytes follows this header on the wire.
    pub fn has_payload(&self) -> bool {
        self.flags & SD_FLAG_CMD_WRITE != 0
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.proto_ver;
        b[1] = self.opcode;
        b[2..4].copy_from_slice(&self.flags.to_le_bytes());
        put_u32(&mut b, 4, self.epoch);
        put_u32(&mut b, 8, self.id);
        put_u32(&mut b, 12, self.data_length);
        b[16..48].copy_from_slice(&self.args);
        b
    }

    pub fn decode(b: &[u8; HEADER_LEN]) -> Self {
        let mut args = [0u8; 32];
        args.copy_from_slice(&b[16..48]);
        ReqHeader {
            proto_ver: b[0],
            opcode: b[1],
            flags: u16::from_le_bytes([b[2], b[3]]),
            epoch: get_u32(b, 4),
            id: get_u32(b, 8),
            data_length: get_u32(b, 12),
            args,
        }
    }
}

/// A response header. `result` is bytes 16..20; `args` holds bytes 20..48 verbatim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RspHeader {
    pub proto_ver: u8,
    pub opcode: u8,
    pub flags: u16,
    pub epoch: u32,
    pub id: u32,
    pub data_length: u32,
    pub result: ResultCode,
    pub args: [u8; 28],
}

impl RspHeader {
    /// A response to `req` with `result`, no payload and zeroed specifics.
    pub fn reply_to(req: &ReqHeader, result: ResultCode) -> Self {
        RspHeader {
            proto_ver: req.proto_ver,
            opcode: req.opcode,
            flags: 0,
            epoch: 0,
            id: req.id,
            data_length: 0,
            result,
            args: [0; 28],
        }
    }

    /// VDI responses: vid @24.
    pub fn vdi_id(&self) -> u32 {
        get_u32(&self.args, 4)
    }
    /// VDI responses: copies @32.
    pub fn vdi_copies(&self) -> u8 {
        self.args[12]
    }
    /// VDI responses: block_size_shift @33.
    pub fn vdi_block_size_shift(&self) -> u8 {
        self.args[13]
    }
    pub fn set_vdi(&mut self, vid: u32, copies: u8, block_size_shift: u8) {
        put_u32(&mut self.args, 4, vid);
        self.args[12] = copies;
        self.args[13] = block_size_shift;
    }
    /// GET_CLUSTER_DEFAULT: (nr_copies @20, copy_policy @21, block_size_shift @22).
    pub fn cluster_default(&self) -> (u8, u8, u8) {
        (self.args[0], self.args[1], self.args[2])
    }
    pub fn set_cluster_default(&mut self, copies: u8, policy: u8, bss: u8) {
        self.args[0] = copies;
        self.args[1] = policy;
        self.args[2] = bss;
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.proto_ver;
        b[1] = self.opcode;
        b[2..4].copy_from_slice(&self.flags.to_le_bytes());
        put_u32(&mut b, 4, self.epoch);
        put_u32(&mut b, 8, self.id);
        put_u32(&mut b, 12, self.data_length);
        put_u32(&mut b, 16, self.result.0);
        b[20..48].copy_from_slice(&self.args);
        b
    }

    pub fn decode(b: &[u8; HEADER_LEN]) -> Self {
        let mut args = [0u8; 28];
        args.copy_from_slice(&b[20..48]);
        RspHeader {
            proto_ver: b[0],
            opcode: b[1],
            flags: u16::from_le_bytes([b[2], b[3]]),
            epoch: get_u32(b, 4),
            id: get_u32(b, 8),
            data_length: get_u32(b, 12),
            result: ResultCode(get_u32(b, 16)),
            args,
        }
    }

    /// Refuse a response that announces more payload than `bound` (from [`response_bound`]).
    /// Call this before reading or allocating anything for the payload.
    pub fn check_len(&self, bound: u32) -> Result<(), Error> {
        if self.data_length > bound {
            return Err(Error::Oversize { opcode: self.opcode, len: self.data_length, bound });
        }
        Ok(())
    }
}

/// The largest payload a response to `req` may carry. READ_OBJ: what was asked for;
/// READ_VDIS: the bitmap; everything else: nothing.
pub fn response_bound(req: &ReqHeader) -> u32 {
    match Opcode::try_from(req.opcode) {
        Ok(Opcode::ReadObj) => req.data_length,
        Ok(Opcode::ReadVdis) => SD_VDI_BITMAP_LEN,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_offsets_match_reference() {
        let h = ReqHeader::obj(
            Opcode::CreateAndWriteObj,
            SD_FLAG_CMD_WRITE | SD_FLAG_CMD_COW,
            4096,
            ObjArgs {
                oid: Oid(0x00a5_d05d_0000_0007),
                cow_oid: Oid(0x00a5_d05c_0000_0007),
                copies: 3,
                copy_policy: 0x11,
                offset: 0x1000,
                ..Default::default()
            },
        );
        let b = h.encode();
        assert_eq!(b[0], SD_PROTO_VER);
        assert_eq!(b[1], 0x01);
        assert_eq!(&b[2..4], &[0x03, 0x00]);
        assert_eq!(&b[12..16], &4096u32.to_le_bytes());
        assert_eq!(&b[16..24], &0x00a5_d05d_0000_0007u64.to_le_bytes());
        assert_eq!(&b[24..32], &0x00a5_d05c_0000_0007u64.to_le_bytes());
        assert_eq!(b[32], 3);
        assert_eq!(b[33], 0x11);
        assert_eq!(&b[40..44], &0x1000u32.to_le_bytes());
        assert_eq!(&b[44..48], &[0; 4]);

        let v = ReqHeader::vdi(
            Opcode::NewVdi,
            SD_FLAG_CMD_WRITE,
            256,
            VdiArgs {
                vdi_size: 1 << 30,
                base_vdi_id: 0xa5d05d,
                copies: 2,
                block_size_shift: 22,
                snapid: 1,
                lock_type: 1,
                ..Default::default()
            },
        );
        let b = v.encode();
        assert_eq!(&b[16..24], &(1u64 << 30).to_le_bytes());
        assert_eq!(&b[24..28], &0xa5d05du32.to_le_bytes());
        assert_eq!(b[28], 2);
        assert_eq!(b[31], 22);
        assert_eq!(&b[32..36], &1u32.to_le_bytes());
        assert_eq!(&b[36..40], &1u32.to_le_bytes());
    }

    #[test]
    fn response_offsets_match_reference() {
        let mut b = [0u8; 48];
        b[1] = 0x14;
        b[8..12].copy_from_slice(&7u32.to_le_bytes());
        b[16..20].copy_from_slice(&0x1au32.to_le_bytes());
        b[24..28].copy_from_slice(&0xa5d05du32.to_le_bytes());
        b[32] = 3;
        b[33] = 22;
        let r = RspHeader::decode(&b);
        assert_eq!(r.id, 7);
        assert_eq!(r.result, SD_RES_READONLY);
        assert_eq!(r.vdi_id(), 0xa5d05d);
        assert_eq!(r.vdi_copies(), 3);
        assert_eq!(r.vdi_block_size_shift(), 22);
        b[20] = 2;
        b[22] = 22;
        assert_eq!(RspHeader::decode(&b).cluster_default(), (2, 0, 22));
    }

    #[test]
    fn oversize_response_is_refused() {
        let req = ReqHeader::obj(Opcode::ReadObj, 0, 4096, ObjArgs::default());
        let mut rsp = RspHeader::reply_to(&req, SD_RES_SUCCESS);
        rsp.data_length = 4096;
        assert!(rsp.check_len(response_bound(&req)).is_ok());
        rsp.data_length = 4097;
        assert!(matches!(
            rsp.check_len(response_bound(&req)),
            Err(Error::Oversize { len: 4097, bound: 4096, .. })
        ));
        let w = ReqHeader::obj(Opcode::WriteObj, SD_FLAG_CMD_WRITE, 4096, ObjArgs::default());
        rsp.data_length = 1;
        assert!(rsp.check_len(response_bound(&w)).is_err());
        let vdis = ReqHeader::vdi(Opcode::ReadVdis, 0, SD_VDI_BITMAP_LEN, VdiArgs::default());
        rsp.data_length = u32::MAX;
        assert!(rsp.check_len(response_bound(&vdis)).is_err());
    }

    proptest! {
        #[test]
        fn req_round_trip(b in proptest::array::uniform32(any::<u8>()), ver: u8, op: u8, flags: u16, epoch: u32, id: u32, len: u32) {
            let h = ReqHeader { proto_ver: ver, opcode: op, flags, epoch, id, data_length: len, args: b };
            prop_assert_eq!(ReqHeader::decode(&h.encode()), h);
        }

        #[test]
        fn obj_args_round_trip(oid: u64, cow: u64, copies: u8, pol: u8, off: u32) {
            let a = ObjArgs { oid: Oid(oid), cow_oid: Oid(cow), copies, copy_policy: pol, offset: off, ..Default::default() };
            let h = ReqHeader::decode(&ReqHeader::obj(Opcode::WriteObj, SD_FLAG_CMD_WRITE, 1, a).encode());
            prop_assert_eq!(h.obj_args(), a);
        }

        #[test]
        fn vdi_args_round_trip(size: u64, base: u32, copies: u8, pol: u8, sp: u8, bss: u8, snap: u32, ty: u32) {
            let a = VdiArgs { vdi_size: size, base_vdi_id: base, copies, copy_policy: pol, store_policy: sp, block_size_shift: bss, snapid: snap, lock_type: ty };
            let h = ReqHeader::decode(&ReqHeader::vdi(Opcode::NewVdi, SD_FLAG_CMD_WRITE, 256, a).encode());
            prop_assert_eq!(h.vdi_args(), a);
        }

        #[test]
        fn rsp_round_trip(bytes in proptest::collection::vec(any::<u8>(), 48)) {
            let mut b = [0u8; 48];
            b.copy_from_slice(&bytes);
            let r = RspHeader::decode(&b);
            prop_assert_eq!(r.encode(), b);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 48), bound: u32) {
            let mut b = [0u8; 48];
            b.copy_from_slice(&bytes);
            let req = ReqHeader::decode(&b);
            let _ = Opcode::try_from(req.opcode);
            let _ = req.obj_args();
            let _ = req.vdi_args();
            let _ = response_bound(&req);
            let rsp = RspHeader::decode(&b);
            let _ = rsp.result.name();
            let _ = rsp.result.to_string();
            let ok = rsp.check_len(bound).is_ok();
            prop_assert_eq!(ok, rsp.data_length <= bound);
        }
    }
}
