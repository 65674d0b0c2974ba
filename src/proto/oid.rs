//! Object and VDI ids (§6, §8): the bit layout of an oid, the 24-bit vid, and the FNV-1a
//! start point sheep uses to place a name in the VDI bitmap.
//!
//! A vid is never computed from a name to address a VDI: [`hash_vid`] is only where the
//! server *starts* looking. Always resolve names through GET_VDI_INFO or LOCK_VDI.

use super::consts::SD_NR_VDIS;

/// Inode object bit.
pub const VDI_BIT: u64 = 1 << 63;
/// QEMU vm-state object bit.
pub const VMSTATE_BIT: u64 = 1 << 62;
/// VDI attribute object bit.
pub const VDI_ATTR_BIT: u64 = 1 << 61;
/// Hyper-volume B-tree node bit.
pub const VDI_BTREE_BIT: u64 = 1 << 60;
/// Internal ledger bit.
pub const LEDGER_BIT: u64 = 1 << 59;
const VDI_SPACE_SHIFT: u32 = 32;

/// A 24-bit VDI id. 0 means "none".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Vid(pub u32);

impl Vid {
    /// A vid from a u32, `None` when it does not fit in 24 bits or is 0.
    pub fn new(v: u32) -> Option<Vid> {
        (v != 0 && v < SD_NR_VDIS).then_some(Vid(v))
    }
}

impl std::fmt::Display for Vid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// A 64-bit object id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Oid(pub u64);

impl Oid {
    /// The inode object of `vid`.
    pub fn inode(vid: Vid) -> Oid {
        Oid(VDI_BIT | (u64::from(vid.0) << VDI_SPACE_SHIFT))
    }
    /// Data object `idx` owned by `vid`.
    pub fn data(vid: Vid, idx: u32) -> Oid {
        Oid((u64::from(vid.0) << VDI_SPACE_SHIFT) | u64::from(idx))
    }
    /// The vid bits (32..56).
    pub fn vid(self) -> Vid {
        Vid(((self.0 >> VDI_SPACE_SHIFT) & u64::from(SD_NR_VDIS - 1)) as u32)
    }
    /// The index bits (0..32).
    pub fn index(self) -> u32 {
        self.0 as u32
    }
    pub fn is_inode(self) -> bool {
        self.0 & VDI_BIT != 0
    }
    /// A plain data object: none of the type bits set.
    pub fn is_data(self) -> bool {
        self.0 & (VDI_BIT | VMSTATE_BIT | VDI_ATTR_BIT | VDI_BTREE_BIT | LEDGER_BIT) == 0
    }
}

impl std::fmt::Display for Oid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// FNV-1a 64 offset basis.
pub const FNV1A_64_INIT: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_64_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a over `bytes`, continuing from `hval`.
pub fn fnv_64a(bytes: &[u8], mut hval: u64) -> u64 {
    for &b in bytes {
        hval ^= u64::from(b);
        hval = hval.wrapping_mul(FNV_64_PRIME);
    }
    hval
}

/// Where sheep starts looking for `name` in the VDI bitmap: low 24 bits of FNV-1a, 0 → 1.
pub fn hash_vid(name: &[u8]) -> u32 {
    let v = (fnv_64a(name, FNV1A_64_INIT) & u64::from(SD_NR_VDIS - 1)) as u32;
    if v == 0 {
        1
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn linux_hashes_like_sheep() {
        assert_eq!(fnv_64a(b"linux", FNV1A_64_INIT), 0x5cad_04a9_f1a5_d05d);
        assert_eq!(hash_vid(b"linux"), 0xa5d05d);
        assert_eq!(Oid::inode(Vid(0xa5d05d)).to_string(), "80a5d05d00000000");
    }

    proptest! {
        #[test]
        fn oid_layout_round_trips(vid in 1u32..(1 << 24), idx: u32) {
            let d = Oid::data(Vid(vid), idx);
            prop_assert_eq!(d.vid(), Vid(vid));
            prop_assert_eq!(d.index(), idx);
            prop_assert!(d.is_data() && !d.is_inode());
            let i = Oid::inode(Vid(vid));
            prop_assert!(i.is_inode() && !i.is_data());
            prop_assert_eq!(i.vid(), Vid(vid));
        }

        #[test]
        fn hash_is_in_range(name in proptest::collection::vec(any::<u8>(), 0..300)) {
            let v = hash_vid(&name);
            prop_assert!((1..(1 << 24)).contains(&v));
        }
    }
}
