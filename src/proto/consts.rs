//! Wire constants of the sheep client protocol: opcodes, flags, result codes and sizes.
//!
//! Names follow sheepdog's own headers (`SD_OP_*`, `SD_FLAG_CMD_*`, `SD_RES_*`) so the code
//! can be read beside `include/sheepdog_proto.h`. Values are those of sheep 1.0 (see
//! shared/reference/sheep-protocol.md §4, §5, §7). Unknown wire values are errors, never
//! silently mapped to a known one.

use super::Error;

/// Default TCP port of a sheep gateway.
pub const SD_LISTEN_PORT: u16 = 7000;
/// Protocol version a client puts in requests with an opcode below 0x80.
pub const SD_PROTO_VER: u8 = 0x02;

/// A payload follows the header.
pub const SD_FLAG_CMD_WRITE: u16 = 0x0001;
/// CREATE_AND_WRITE_OBJ: copy `cow_oid` first.
pub const SD_FLAG_CMD_COW: u16 = 0x0002;
/// Old object-cache writeback mode; ignored by sheep 1.0.
pub const SD_FLAG_CMD_CACHE: u16 = 0x0004;
/// Old "bypass the object cache"; ignored by sheep 1.0, sent by dog and sheepdev.
pub const SD_FLAG_CMD_DIRECT: u16 = 0x0008;

/// Length of a VDI name or tag field in payloads and in the inode.
pub const SD_MAX_VDI_LEN: usize = 256;
/// Length of a VDI tag field.
pub const SD_MAX_VDI_TAG_LEN: usize = 256;
/// Length of the payload of every name lookup (GET_VDI_INFO, LOCK_VDI, DEL_VDI): name and
/// tag, as dog and QEMU send it. sheep also takes a name alone (256 bytes), but then
/// compares candidate tags against a NULL tag when `snapid` is set and crashes
/// (sheep/vdi.c `vdi_tag_match`): never send the short form.
pub const SD_LOOKUP_LEN: usize = SD_MAX_VDI_LEN + SD_MAX_VDI_TAG_LEN;
/// Number of VDI ids (24 bits).
pub const SD_NR_VDIS: u32 = 1 << 24;
/// Size of the READ_VDIS bitmap.
pub const SD_VDI_BITMAP_LEN: u32 = SD_NR_VDIS / 8;
/// Entries of `data_vdi_id` in a normal (non-hyper) inode.
pub const SD_INODE_DATA_INDEX: u32 = 1 << 20;
/// Bytes of the inode before `data_vdi_id`.
pub const SD_INODE_HEADER_SIZE: u32 = 4664;
/// Size of the whole inode object (`struct sd_inode`).
pub const SD_INODE_SIZE: u32 =
    SD_INODE_HEADER_SIZE + 4 * SD_INODE_DATA_INDEX + 8 * SD_INODE_DATA_INDEX;
/// Default `block_size_shift` (4 MiB objects).
pub const SD_DEFAULT_BLOCK_SIZE_SHIFT: u8 = 22;
/// Smallest and largest `block_size_shift` dog accepts.
pub const SD_MIN_BLOCK_SIZE_SHIFT: u8 = 20;
pub const SD_MAX_BLOCK_SIZE_SHIFT: u8 = 31;
/// Largest VDI dog allows at all (hyper volumes included): 16 PiB.
pub const SD_MAX_VDI_SIZE: u64 = 16 << 50;
/// LOCK_VDI/RELEASE_VDI `type`: exclusive.
pub const LOCK_TYPE_NORMAL: u32 = 0;
/// LOCK_VDI/RELEASE_VDI `type`: shared (tgt multipath).
pub const LOCK_TYPE_SHARED: u32 = 1;

macro_rules! opcodes {
    ($($name:ident = $val:expr, $konst:ident, $label:expr;)*) => {
        /// Client opcodes (byte 1 of the request header).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Opcode { $($name = $val,)* }
        $(pub const $konst: u8 = $val;)*
        impl Opcode {
            /// Every opcode a client uses.
            pub const ALL: &'static [Opcode] = &[$(Opcode::$name,)*];
            /// Short lower-case name, used in messages and metric labels.
            pub fn name(self) -> &'static str { match self { $(Opcode::$name => $label,)* } }
        }
        impl TryFrom<u8> for Opcode {
            type Error = Error;
            fn try_from(v: u8) -> Result<Self, Error> {
                match v { $($val => Ok(Opcode::$name),)* other => Err(Error::UnknownOpcode(other)) }
            }
        }
    };
}

opcodes! {
    CreateAndWriteObj = 0x01, SD_OP_CREATE_AND_WRITE_OBJ, "create_and_write_obj";
    ReadObj = 0x02, SD_OP_READ_OBJ, "read_obj";
    WriteObj = 0x03, SD_OP_WRITE_OBJ, "write_obj";
    RemoveObj = 0x04, SD_OP_REMOVE_OBJ, "remove_obj";
    DiscardObj = 0x05, SD_OP_DISCARD_OBJ, "discard_obj";
    NewVdi = 0x11, SD_OP_NEW_VDI, "new_vdi";
    LockVdi = 0x12, SD_OP_LOCK_VDI, "lock_vdi";
    ReleaseVdi = 0x13, SD_OP_RELEASE_VDI, "release_vdi";
    GetVdiInfo = 0x14, SD_OP_GET_VDI_INFO, "get_vdi_info";
    ReadVdis = 0x15, SD_OP_READ_VDIS, "read_vdis";
    FlushVdi = 0x16, SD_OP_FLUSH_VDI, "flush_vdi";
    DelVdi = 0x17, SD_OP_DEL_VDI, "del_vdi";
    GetClusterDefault = 0x18, SD_OP_GET_CLUSTER_DEFAULT, "get_cluster_default";
}

impl Opcode {
    /// Whether requests with this opcode use the object layout of bytes 16..48 (else the VDI one).
    pub fn is_object_op(self) -> bool {
        matches!(
            self,
            Opcode::CreateAndWriteObj
                | Opcode::ReadObj
                | Opcode::WriteObj
                | Opcode::RemoveObj
                | Opcode::DiscardObj
                | Opcode::FlushVdi
        )
    }
}

/// A sheep result code (u32 at offset 16 of the response). Kept open: sheep may answer
/// codes this client has no name for, and those must still reach the caller intact.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResultCode(pub u32);

macro_rules! results {
    ($($konst:ident = $val:expr, $label:expr, $errno:expr;)*) => {
        $(pub const $konst: ResultCode = ResultCode($val);)*
        impl ResultCode {
            /// sheep's name for the code, lower case; `None` for a code this client does not know.
            pub fn name(self) -> Option<&'static str> {
                match self.0 { $($val => Some($label),)* _ => None }
            }
            /// sheep's constant name without `SD_RES_` (`NO_OBJ`, `READONLY`), for metric
            /// labels; `UNKNOWN_CODE` for a code this client does not know.
            pub fn label(self) -> &'static str {
                match self.0 { $($val => { let n: &'static str = stringify!($konst); n.trim_start_matches("SD_RES_") },)* _ => "UNKNOWN_CODE" }
            }
            /// The errno a block request or CLI command reports for this result.
            pub fn errno(self) -> i32 {
                match self.0 { $($val => $errno,)* _ => libc_errno::EIO }
            }
        }
    };
}

/// errno values used by the protocol layers (Linux numbering).
pub mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const ENOMEM: i32 = 12;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const EINVAL: i32 = 22;
    pub const EFBIG: i32 = 27;
    pub const ENOSPC: i32 = 28;
    pub const EROFS: i32 = 30;
    pub const ENAMETOOLONG: i32 = 36;
    pub const EPROTO: i32 = 71;
    pub const EOPNOTSUPP: i32 = 95;
    pub const ECONNREFUSED: i32 = 111;
    pub const ETIMEDOUT: i32 = 110;
    pub const EAGAIN: i32 = 11;
}
use libc_errno as e;

results! {
    SD_RES_SUCCESS = 0x00, "success", 0;
    SD_RES_UNKNOWN = 0x01, "unknown error", e::EIO;
    SD_RES_NO_OBJ = 0x02, "no object found", e::EIO;
    SD_RES_EIO = 0x03, "i/o error", e::EIO;
    SD_RES_VDI_EXIST = 0x04, "vdi exists already", e::EEXIST;
    SD_RES_INVALID_PARMS = 0x05, "invalid parameters", e::EINVAL;
    SD_RES_SYSTEM_ERROR = 0x06, "system error", e::EIO;
    SD_RES_VDI_LOCKED = 0x07, "vdi is locked", e::EBUSY;
    SD_RES_NO_VDI = 0x08, "no vdi found", e::ENOENT;
    SD_RES_NO_BASE_VDI = 0x09, "no base vdi found", e::ENOENT;
    SD_RES_VDI_READ = 0x0a, "failed to read vdi", e::EIO;
    SD_RES_VDI_WRITE = 0x0b, "failed to write vdi", e::EIO;
    SD_RES_BASE_VDI_READ = 0x0c, "failed to read base vdi", e::EIO;
    SD_RES_BASE_VDI_WRITE = 0x0d, "failed to write base vdi", e::EIO;
    SD_RES_NO_TAG = 0x0e, "no such snapshot tag or id", e::ENOENT;
    SD_RES_STARTUP = 0x0f, "sheep is starting up", e::EAGAIN;
    SD_RES_VDI_NOT_LOCKED = 0x10, "vdi is not locked", e::EINVAL;
    SD_RES_SHUTDOWN = 0x11, "sheep is shutting down", e::EIO;
    SD_RES_NO_MEM = 0x12, "out of memory on the server", e::ENOMEM;
    SD_RES_FULL_VDI = 0x13, "all vdi ids are in use", e::ENOSPC;
    SD_RES_VER_MISMATCH = 0x14, "protocol version mismatch", e::EPROTO;
    SD_RES_NO_SPACE = 0x15, "server has no space left", e::ENOSPC;
    SD_RES_WAIT_FOR_FORMAT = 0x16, "cluster is not formatted", e::EIO;
    SD_RES_WAIT_FOR_JOIN = 0x17, "cluster is waiting for nodes to join", e::EAGAIN;
    SD_RES_JOIN_FAILED = 0x18, "node failed to join the cluster", e::EIO;
    SD_RES_HALT = 0x19, "cluster is halted (too few zones)", e::EIO;
    SD_RES_READONLY = 0x1a, "object is read-only (snapshot)", e::EROFS;
    SD_RES_INODE_INVALIDATED = 0x1d, "inode was invalidated", e::EIO;
}

impl ResultCode {
    pub fn is_success(self) -> bool {
        self == SD_RES_SUCCESS
    }
}

impl std::fmt::Debug for ResultCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for ResultCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} (0x{:02x})", self.0),
            None => write!(f, "unknown result 0x{:02x}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcode_round_trip_and_unknown() {
        for op in Opcode::ALL {
            assert_eq!(Opcode::try_from(*op as u8).ok(), Some(*op));
        }
        assert!(Opcode::try_from(0x80).is_err());
        assert!(Opcode::try_from(0x00).is_err());
    }

    #[test]
    fn inode_size_matches_sheep() {
        assert_eq!(SD_INODE_SIZE, 12_587_576);
        assert_eq!(SD_VDI_BITMAP_LEN, 2 * 1024 * 1024);
    }

    #[test]
    fn result_codes_have_errnos() {
        assert_eq!(SD_RES_VDI_LOCKED.errno(), e::EBUSY);
        assert_eq!(SD_RES_NO_VDI.errno(), e::ENOENT);
        assert_eq!(ResultCode(0x99).errno(), e::EIO);
        assert_eq!(SD_RES_READONLY.to_string(), "object is read-only (snapshot) (0x1a)");
    }
}
