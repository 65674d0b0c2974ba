//! Views of the inode object (`struct sd_inode`, §9): the 4664-byte header and the
//! `data_vdi_id` array that maps object index → owning vid.
//!
//! Contract: parsing needs only the first [`INODE_HEADER_PARSE_LEN`] bytes and never
//! panics on short input (it returns an error); names and tags are validated `VdiName`s.
//! Offsets of every field match sheep's layout exactly; `encode` writes them back.

use super::consts::*;
use super::{Error, Vid};

/// Offset of `snap_ctime` (rebase/snapshot freeze the VDI by writing it).
pub const OFF_NAME: usize = 0;
pub const OFF_TAG: usize = 256;
pub const OFF_CREATE_TIME: usize = 512;
pub const OFF_SNAP_CTIME: usize = 520;
pub const OFF_VM_CLOCK_NSEC: usize = 528;
pub const OFF_VDI_SIZE: usize = 536;
pub const OFF_VM_STATE_SIZE: usize = 544;
pub const OFF_COPY_POLICY: usize = 552;
pub const OFF_STORE_POLICY: usize = 553;
pub const OFF_NR_COPIES: usize = 554;
pub const OFF_BLOCK_SIZE_SHIFT: usize = 555;
pub const OFF_SNAP_ID: usize = 556;
pub const OFF_VDI_ID: usize = 560;
pub const OFF_PARENT_VDI_ID: usize = 564;
pub const OFF_BTREE_COUNTER: usize = 568;
/// Bytes a header parse reads (through `btree_counter`).
pub const INODE_HEADER_PARSE_LEN: usize = 572;
/// Offset of `data_vdi_id[0]`.
pub const OFF_DATA_VDI_ID: u32 = SD_INODE_HEADER_SIZE;
/// Offset of `gref[]` (sheep-internal; never written by clients).
pub const OFF_GREF: u32 = SD_INODE_HEADER_SIZE + 4 * SD_INODE_DATA_INDEX;

/// Byte offset of `data_vdi_id[idx]` in the inode object.
pub fn entry_offset(idx: u32) -> u32 {
    OFF_DATA_VDI_ID + 4 * idx
}

/// A validated VDI name or snapshot tag: 1..=255 bytes, no NUL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VdiName(String);

impl VdiName {
    pub fn new(s: &str) -> Result<VdiName, Error> {
        if s.is_empty() {
            return Err(Error::BadName("a vdi name or tag cannot be empty".into()));
        }
        if s.len() >= SD_MAX_VDI_LEN {
            return Err(Error::BadName(format!(
                "vdi name or tag of {} bytes is too long (must be below {SD_MAX_VDI_LEN})",
                s.len()
            )));
        }
        if s.as_bytes().contains(&0) {
            return Err(Error::BadName("a vdi name or tag cannot contain a NUL byte".into()));
        }
        Ok(VdiName(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The NUL-padded 256-byte wire field.
    pub fn to_field(&self) -> [u8; SD_MAX_VDI_LEN] {
        let mut f = [0u8; SD_MAX_VDI_LEN];
        f[..self.0.len()].copy_from_slice(self.0.as_bytes());
        f
    }
}

/// The payload of a name lookup: the 256-byte name field, then the 256-byte tag field
/// (zeros when the lookup is by snapshot id or for the working VDI). Always
/// [`SD_LOOKUP_LEN`] bytes, the only shape every sheep 1.0 survives.
pub fn lookup_field(name: &[u8; SD_MAX_VDI_LEN], tag: Option<&VdiName>) -> [u8; SD_LOOKUP_LEN] {
    let mut f = [0u8; SD_LOOKUP_LEN];
    f[..SD_MAX_VDI_LEN].copy_from_slice(name);
    if let Some(t) = tag {
        f[SD_MAX_VDI_LEN..].copy_from_slice(&t.to_field());
    }
    f
}

impl std::fmt::Display for VdiName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The bytes of a NUL-padded field up to its first NUL.
pub fn field_str(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// The inode header fields a client uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InodeHeader {
    /// Raw NUL-padded name; all zero means deleted.
    pub name: [u8; SD_MAX_VDI_LEN],
    pub tag: [u8; SD_MAX_VDI_TAG_LEN],
    pub create_time: u64,
    /// 0 = working VDI; non-zero = snapshot.
    pub snap_ctime: u64,
    pub vm_clock_nsec: u64,
    pub vdi_size: u64,
    pub vm_state_size: u64,
    pub copy_policy: u8,
    pub store_policy: u8,
    pub nr_copies: u8,
    pub block_size_shift: u8,
    pub snap_id: u32,
    pub vdi_id: u32,
    pub parent_vdi_id: u32,
    pub btree_counter: u32,
}

impl Default for InodeHeader {
    fn default() -> Self {
        InodeHeader {
            name: [0; SD_MAX_VDI_LEN],
            tag: [0; SD_MAX_VDI_TAG_LEN],
            create_time: 0,
            snap_ctime: 0,
            vm_clock_nsec: 0,
            vdi_size: 0,
            vm_state_size: 0,
            copy_policy: 0,
            store_policy: 0,
            nr_copies: 0,
            block_size_shift: 0,
            snap_id: 0,
            vdi_id: 0,
            parent_vdi_id: 0,
            btree_counter: 0,
        }
    }
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

impl InodeHeader {
    /// Parse the first [`INODE_HEADER_PARSE_LEN`] bytes of an inode object.
    pub fn parse(b: &[u8]) -> Result<InodeHeader, Error> {
        if b.len() < INODE_HEADER_PARSE_LEN {
            return Err(Error::ShortInode(b.len()));
        }
        let mut name = [0u8; SD_MAX_VDI_LEN];
        name.copy_from_slice(&b[OFF_NAME..OFF_NAME + SD_MAX_VDI_LEN]);
        let mut tag = [0u8; SD_MAX_VDI_TAG_LEN];
        tag.copy_from_slice(&b[OFF_TAG..OFF_TAG + SD_MAX_VDI_TAG_LEN]);
        Ok(InodeHeader {
            name,
            tag,
            create_time: u64_at(b, OFF_CREATE_TIME),
            snap_ctime: u64_at(b, OFF_SNAP_CTIME),
            vm_clock_nsec: u64_at(b, OFF_VM_CLOCK_NSEC),
            vdi_size: u64_at(b, OFF_VDI_SIZE),
            vm_state_size: u64_at(b, OFF_VM_STATE_SIZE),
            copy_policy: b[OFF_COPY_POLICY],
            store_policy: b[OFF_STORE_POLICY],
            nr_copies: b[OFF_NR_COPIES],
            block_size_shift: b[OFF_BLOCK_SIZE_SHIFT],
            snap_id: u32_at(b, OFF_SNAP_ID),
            vdi_id: u32_at(b, OFF_VDI_ID),
            parent_vdi_id: u32_at(b, OFF_PARENT_VDI_ID),
            btree_counter: u32_at(b, OFF_BTREE_COUNTER),
        })
    }

    /// Write the header into the first [`INODE_HEADER_PARSE_LEN`] bytes of `b`; the rest of
    /// the 4664-byte header (unused space) is left as it is.
    pub fn encode_into(&self, b: &mut [u8]) {
        b[OFF_NAME..OFF_NAME + SD_MAX_VDI_LEN].copy_from_slice(&self.name);
        b[OFF_TAG..OFF_TAG + SD_MAX_VDI_TAG_LEN].copy_from_slice(&self.tag);
        b[OFF_CREATE_TIME..OFF_CREATE_TIME + 8].copy_from_slice(&self.create_time.to_le_bytes());
        b[OFF_SNAP_CTIME..OFF_SNAP_CTIME + 8].copy_from_slice(&self.snap_ctime.to_le_bytes());
        b[OFF_VM_CLOCK_NSEC..OFF_VM_CLOCK_NSEC + 8]
            .copy_from_slice(&self.vm_clock_nsec.to_le_bytes());
        b[OFF_VDI_SIZE..OFF_VDI_SIZE + 8].copy_from_slice(&self.vdi_size.to_le_bytes());
        b[OFF_VM_STATE_SIZE..OFF_VM_STATE_SIZE + 8]
            .copy_from_slice(&self.vm_state_size.to_le_bytes());
        b[OFF_COPY_POLICY] = self.copy_policy;
        b[OFF_STORE_POLICY] = self.store_policy;
        b[OFF_NR_COPIES] = self.nr_copies;
        b[OFF_BLOCK_SIZE_SHIFT] = self.block_size_shift;
        b[OFF_SNAP_ID..OFF_SNAP_ID + 4].copy_from_slice(&self.snap_id.to_le_bytes());
        b[OFF_VDI_ID..OFF_VDI_ID + 4].copy_from_slice(&self.vdi_id.to_le_bytes());
        b[OFF_PARENT_VDI_ID..OFF_PARENT_VDI_ID + 4]
            .copy_from_slice(&self.parent_vdi_id.to_le_bytes());
        b[OFF_BTREE_COUNTER..OFF_BTREE_COUNTER + 4]
            .copy_from_slice(&self.btree_counter.to_le_bytes());
    }

    pub fn name_bytes(&self) -> &[u8] {
        field_str(&self.name)
    }
    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(self.name_bytes()).into_owned()
    }
    pub fn tag_lossy(&self) -> String {
        String::from_utf8_lossy(field_str(&self.tag)).into_owned()
    }
    pub fn is_snapshot(&self) -> bool {
        self.snap_ctime != 0
    }
    pub fn is_deleted(&self) -> bool {
        self.name[0] == 0
    }
    pub fn vid(&self) -> Vid {
        Vid(self.vdi_id)
    }
    /// Object size in bytes.
    pub fn object_size(&self) -> u64 {
        1u64 << self.block_size_shift
    }
    /// Number of data objects that cover `vdi_size`.
    pub fn nr_objects(&self) -> u32 {
        nr_objects(self.vdi_size, self.block_size_shift)
    }
    /// Bytes to read from the inode to get the header and every used entry (capped at the
    /// whole `data_vdi_id` array, so a corrupt size cannot ask for more).
    pub fn read_len(&self) -> u32 {
        OFF_DATA_VDI_ID + 4 * self.nr_objects().min(SD_INODE_DATA_INDEX)
    }
    /// Check the header describes something a block client can serve.
    pub fn check_usable(&self) -> Result<(), Error> {
        if self.store_policy != 0 {
            return Err(Error::HyperVolume);
        }
        if !(SD_MIN_BLOCK_SIZE_SHIFT..=SD_MAX_BLOCK_SIZE_SHIFT).contains(&self.block_size_shift) {
            return Err(Error::BadInode(format!(
                "block_size_shift {} out of range",
                self.block_size_shift
            )));
        }
        if nr_objects_u64(self.vdi_size, self.block_size_shift) > u64::from(SD_INODE_DATA_INDEX) {
            return Err(Error::BadInode(format!(
                "size {} needs more than {SD_INODE_DATA_INDEX} objects",
                self.vdi_size
            )));
        }
        Ok(())
    }
}

fn nr_objects_u64(size: u64, bss: u8) -> u64 {
    let os = 1u64 << bss.min(63);
    size.div_ceil(os)
}

/// Objects needed for `size` bytes at `1 << bss` per object (saturating at u32::MAX).
pub fn nr_objects(size: u64, bss: u8) -> u32 {
    u32::try_from(nr_objects_u64(size, bss)).unwrap_or(u32::MAX)
}

/// Decode `data_vdi_id` entries from the bytes at [`OFF_DATA_VDI_ID`] onward.
pub fn parse_entries(b: &[u8], out: &mut Vec<u32>) {
    out.clear();
    out.extend(b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])));
}

/// Encode `entries` as they sit in the inode.
pub fn encode_entries(entries: &[u32], out: &mut Vec<u8>) {
    out.clear();
    for e in entries {
        out.extend_from_slice(&e.to_le_bytes());
    }
}

/// An erasure-coding policy byte from `data:parity` (§14).
pub fn ec_policy(data: u8, parity: u8) -> Result<u8, Error> {
    if !matches!(data, 2 | 4 | 8 | 16) || !(1..=15).contains(&parity) {
        return Err(Error::BadRedundancy(format!(
            "{data}:{parity}: data must be 2, 4, 8 or 16 and parity 1..15"
        )));
    }
    Ok(((data / 2) << 4) | parity)
}

/// (data, parity) of an EC policy byte.
pub fn ec_split(policy: u8) -> (u8, u8) {
    ((policy >> 4) * 2, policy & 0x0f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_are_bounded() {
        assert!(VdiName::new("linux").is_ok());
        assert!(VdiName::new(&"a".repeat(255)).is_ok());
        assert!(VdiName::new(&"a".repeat(256)).is_err());
        assert!(VdiName::new("").is_err());
        assert!(VdiName::new("a\0b").is_err());
        let f = VdiName::new("linux").map(|n| n.to_field()).unwrap_or([1; 256]);
        assert_eq!(&f[..5], b"linux");
        assert!(f[5..].iter().all(|&b| b == 0));
    }

    #[test]
    fn ec_policy_matches_reference() {
        assert_eq!(ec_policy(2, 1).ok(), Some(0x11));
        assert_eq!(ec_policy(4, 2).ok(), Some(0x22));
        assert_eq!(ec_split(0x22), (4, 2));
        assert!(ec_policy(3, 1).is_err());
        assert!(ec_policy(4, 0).is_err());
    }

    #[test]
    fn entry_offsets() {
        assert_eq!(entry_offset(0), 4664);
        assert_eq!(entry_offset(3), 4676);
        assert_eq!(OFF_GREF, 4_198_968);
    }

    #[test]
    fn short_inode_is_an_error() {
        assert!(InodeHeader::parse(&[0u8; 100]).is_err());
    }

    proptest! {
        #[test]
        fn header_round_trip(size: u64, snap: u32, vid in 1u32..(1<<24), parent: u32, ctime: u64, bss in 20u8..=31, copies: u8) {
            let mut h = InodeHeader { vdi_size: size, snap_id: snap, vdi_id: vid, parent_vdi_id: parent, snap_ctime: ctime, block_size_shift: bss, nr_copies: copies, ..Default::default() };
            h.name[..5].copy_from_slice(b"linux");
            let mut b = vec![0u8; SD_INODE_HEADER_SIZE as usize];
            h.encode_into(&mut b);
            prop_assert_eq!(InodeHeader::parse(&b).ok(), Some(h));
        }

        #[test]
        fn parse_arbitrary_never_panics(b in proptest::collection::vec(any::<u8>(), 0..700)) {
            if let Ok(h) = InodeHeader::parse(&b) {
                let _ = h.check_usable();
                let _ = h.read_len();
                let _ = h.name_lossy();
            }
        }
    }
}
