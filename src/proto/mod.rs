//! The sheep client wire protocol as pure data: headers, opcodes, flags, result codes,
//! oid/vid layout, inode views and the FNV-1a vid start point.
//!
//! Contract: no I/O, no runtime, no allocation while encoding or decoding a header. Every
//! number here is checked against shared/reference/sheep-protocol.md (verified against
//! sheep 1.0). A response is checked against a bound derived from its own request before
//! its payload is read ([`RspHeader::check_len`], [`response_bound`]).

mod consts;
pub mod demux;
mod header;
pub mod inode;
mod oid;

pub use consts::*;
pub use header::{response_bound, ObjArgs, ReqHeader, RspHeader, VdiArgs, HEADER_LEN};
pub use inode::{lookup_field, InodeHeader, VdiName};
pub use oid::{
    fnv_64a, hash_vid, Oid, Vid, FNV1A_64_INIT, LEDGER_BIT, VDI_ATTR_BIT, VDI_BIT, VDI_BTREE_BIT,
    VMSTATE_BIT,
};

/// Errors of the wire codec. Small and `Copy`-free only where a message is needed; the hot
/// path sees only the variants without `String`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown opcode 0x{0:02x}")]
    UnknownOpcode(u8),
    #[error("response to opcode 0x{opcode:02x} announces {len} bytes, more than the {bound} it may carry")]
    Oversize { opcode: u8, len: u32, bound: u32 },
    #[error("inode header is {0} bytes, too short")]
    ShortInode(usize),
    #[error("{0}")]
    BadName(String),
    #[error("bad redundancy {0}")]
    BadRedundancy(String),
    #[error("hyper volumes are not supported (store_policy 1)")]
    HyperVolume,
    #[error("unusable inode: {0}")]
    BadInode(String),
}

impl Error {
    pub fn errno(&self) -> i32 {
        use libc_errno::*;
        match self {
            Error::UnknownOpcode(_) | Error::Oversize { .. } => EPROTO,
            Error::ShortInode(_) | Error::BadInode(_) => EIO,
            Error::BadName(_) => ENAMETOOLONG,
            Error::BadRedundancy(_) => EINVAL,
            Error::HyperVolume => EOPNOTSUPP,
        }
    }
    /// A codec error on a response means the stream can no longer be trusted.
    pub fn should_reconnect(&self) -> bool {
        matches!(self, Error::UnknownOpcode(_) | Error::Oversize { .. })
    }
}
