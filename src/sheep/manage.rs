//! VDI management done the way a careful client must do it on sheep 1.0: create with the
//! client-side size checks, snapshot (tag, then NEW_VDI snapid=1), clone from snapshots
//! only, "writable VDI from a snapshot" by rebase (§10.3, never delete-then-clone), delete
//! that zeroes the entries before DEL_VDI and confirms (§10.4), and list.
//!
//! Contract: every operation validates its input before the first request that changes
//! anything, so a refused command leaves nothing half-made.

use super::client::{Client, NewVdi, VdiInfo};
use super::Error;
use crate::proto::inode::{ec_policy, InodeHeader};
use crate::proto::*;
use crate::vdi::{SnapSel, VdiSpec, Volume};

/// Redundancy of a new VDI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redundancy {
    /// The cluster's default.
    Default,
    /// N full copies.
    Copies(u8),
    /// Erasure coding `data:parity`.
    Erasure { data: u8, parity: u8 },
}

impl std::str::FromStr for Redundancy {
    type Err = String;
    fn from_str(s: &str) -> Result<Redundancy, String> {
        if let Some((d, p)) = s.split_once(':') {
            let data =
                d.parse::<u8>().map_err(|_| format!("bad redundancy {s:?}: expected N or D:P"))?;
            let parity =
                p.parse::<u8>().map_err(|_| format!("bad redundancy {s:?}: expected N or D:P"))?;
            ec_policy(data, parity).map_err(|e| e.to_string())?;
            return Ok(Redundancy::Erasure { data, parity });
        }
        match s.parse::<u8>() {
            Ok(n @ 1..=31) => Ok(Redundancy::Copies(n)),
            _ => Err(format!(
                "bad redundancy {s:?}: copies must be 1..31, or D:P for erasure coding"
            )),
        }
    }
}

impl Redundancy {
    /// (copies, copy_policy) for NEW_VDI.
    pub fn wire(self) -> (u8, u8) {
        match self {
            Redundancy::Default => (0, 0),
            Redundancy::Copies(n) => (n, 0),
            Redundancy::Erasure { data, parity } => {
                (data + parity, ec_policy(data, parity).unwrap_or(0))
            }
        }
    }
}

/// Check a size and object size the way dog does, before anything is sent.
pub fn check_size(size: u64, block_size_shift: u8) -> Result<(), Error> {
    if !(SD_MIN_BLOCK_SIZE_SHIFT..=SD_MAX_BLOCK_SIZE_SHIFT).contains(&block_size_shift) {
        return Err(Error::Invalid(format!(
            "object size 2^{block_size_shift} is out of range: it must be 1M..2G (a power of two)"
        )));
    }
    if size == 0 {
        return Err(Error::Invalid("vdi size must be above 0".into()));
    }
    let max = u64::from(SD_INODE_DATA_INDEX) << block_size_shift;
    if size > max {
        return Err(Error::Invalid(format!(
            "vdi size {size} is above the limit of {} objects of {} bytes ({max} bytes)",
            SD_INODE_DATA_INDEX,
            1u64 << block_size_shift
        )));
    }
    Ok(())
}

/// Grow VDI `vid` (whose inode header is `h`) to `size` bytes the way `dog vdi resize`
/// does: one WRITE_OBJ of the inode's `vdi_size`. Refused before anything is sent: a
/// snapshot, a smaller size (sheep cannot shrink a VDI), a size that is not a multiple of
/// 512 or beyond what the inode can map. The same size is no change (nothing is written).
/// Returns the old size.
pub async fn grow(c: &Client, vid: Vid, h: &InodeHeader, size: u64) -> Result<u64, Error> {
    let name = h.name_lossy();
    if h.is_snapshot() {
        return Err(Error::Invalid(format!(
            "{name} (vid {vid}) is a snapshot: only a working VDI grows"
        )));
    }
    check_size(size, h.block_size_shift)?;
    if size % 512 != 0 {
        return Err(Error::Invalid(format!("size {size} is not a multiple of 512 bytes")));
    }
    if size < h.vdi_size {
        return Err(Error::Invalid(format!(
            "{name} is {} bytes: shrinking it to {size} is refused (sheep cannot shrink a VDI)",
            h.vdi_size
        )));
    }
    if size > h.vdi_size {
        let field = size.to_le_bytes();
        c.write_obj(Oid::inode(vid), crate::proto::inode::OFF_VDI_SIZE as u32, &field).await?;
    }
    Ok(h.vdi_size)
}

/// [`grow`] the working VDI `name`. Returns (its vid, the old size).
pub async fn resize(c: &Client, name: &VdiName, size: u64) -> Result<(Vid, u64), Error> {
    let info = c.vdi_info(name, &SnapSel::Working).await?;
    let h = c.read_inode_header(info.vid).await?;
    h.check_usable().map_err(|e| Error::Invalid(format!("{name}: {e}")))?;
    Ok((info.vid, grow(c, info.vid, &h, size).await?))
}

/// Read the inode of `vid` (header and used entries) into a [`Volume`]; refuses hyper
/// volumes. Snapshots are always read-only.
pub async fn load_volume(
    client: &Client,
    vid: crate::proto::Vid,
    read_only: bool,
) -> Result<Volume, Error> {
    let (h, entries) = client.read_inode(vid).await?;
    h.check_usable().map_err(|e| Error::Invalid(format!("vdi {vid}: {e}")))?;
    let read_only = read_only || h.is_snapshot();
    Ok(Volume::new(h, entries, read_only))
}

/// Create a fresh VDI. `object_size` 0 means the cluster's default.
pub async fn create(
    c: &Client,
    name: &VdiName,
    size: u64,
    redundancy: Redundancy,
    object_size: u64,
) -> Result<VdiInfo, Error> {
    let bss = if object_size == 0 {
        c.cluster_default().await?.2
    } else if object_size.is_power_of_two() {
        object_size.trailing_zeros() as u8
    } else {
        return Err(Error::Invalid(format!("object size {object_size} is not a power of two")));
    };
    check_size(size, bss)?;
    let (copies, copy_policy) = redundancy.wire();
    c.new_vdi(&NewVdi {
        name: name.clone(),
        size,
        base: 0,
        copies,
        copy_policy,
        block_size_shift: bss,
        snapid: 0,
    })
    .await
}

/// Look up a spec and read its inode header; refuses hyper volumes.
pub async fn open(c: &Client, spec: &VdiSpec) -> Result<(VdiInfo, InodeHeader), Error> {
    let info = c.vdi_info(&spec.name, &spec.snap).await?;
    let h = c.read_inode_header(info.vid).await?;
    h.check_usable().map_err(|e| Error::Invalid(format!("{spec}: {e}")))?;
    Ok((info, h))
}

/// Snapshot the working VDI `name` with an optional tag. Returns (snapshot vid, new working vid).
pub async fn snapshot(
    c: &Client,
    name: &VdiName,
    tag: Option<&VdiName>,
) -> Result<(Vid, Vid), Error> {
    let (info, h) = open(c, &VdiSpec::working(name.clone())).await?;
    if let Some(t) = tag {
        if c.vdi_info(name, &SnapSel::Tag(t.clone())).await.is_ok() {
            return Err(Error::Invalid(format!("{name} already has a snapshot tagged {t:?}")));
        }
    }
    c.write_tag(info.vid, tag).await?;
    let new = c
        .new_vdi(&NewVdi {
            name: name.clone(),
            size: h.vdi_size,
            base: info.vid.0,
            copies: h.nr_copies,
            copy_policy: h.copy_policy,
            block_size_shift: h.block_size_shift,
            snapid: 1,
        })
        .await?;
    Ok((info.vid, new.vid))
}

/// Clone snapshot `src` (must name a snapshot) to a new working VDI `new`.
pub async fn clone(c: &Client, src: &VdiSpec, new: &VdiName) -> Result<VdiInfo, Error> {
    if !src.snap.is_snapshot() {
        return Err(Error::Invalid(format!(
            "clone needs a snapshot (NAME:ID or NAME:TAG), not the working vdi {src}"
        )));
    }
    let (info, h) = open(c, src).await?;
    c.new_vdi(&NewVdi {
        name: new.clone(),
        size: h.vdi_size,
        base: info.vid.0,
        copies: h.nr_copies,
        copy_policy: h.copy_policy,
        block_size_shift: h.block_size_shift,
        snapid: 0,
    })
    .await
}

/// Make a new working VDI of `src.name` from snapshot `src` by rebase: the current working
/// VDI is kept as a snapshot. Returns (the old working vid, now a snapshot; the new vid).
pub async fn rebase(c: &Client, src: &VdiSpec) -> Result<(Vid, VdiInfo), Error> {
    if !src.snap.is_snapshot() {
        return Err(Error::Invalid(format!("{src} is not a snapshot")));
    }
    let (snap, h) = open(c, src).await?;
    let working = c.vdi_info(&src.name, &SnapSel::Working).await?;
    let new = c
        .new_vdi(&NewVdi {
            name: src.name.clone(),
            size: h.vdi_size,
            base: snap.vid.0,
            copies: h.nr_copies,
            copy_policy: h.copy_policy,
            block_size_shift: h.block_size_shift,
            snapid: 1,
        })
        .await?;
    Ok((working.vid, new))
}

/// Entries zeroed per WRITE_OBJ, as dog does.
const DELETE_BATCH: usize = 128;

/// Delete a VDI or snapshot for real: zero its entries, DEL_VDI, confirm it is gone.
pub async fn delete(c: &Client, spec: &VdiSpec) -> Result<Vid, Error> {
    let info = c.vdi_info(&spec.name, &spec.snap).await?;
    let (h, entries) = c.read_inode(info.vid).await?;
    if h.store_policy != 0 {
        return Err(Error::Invalid(format!("{spec}: hyper volumes are not supported")));
    }
    let zeros = [0u32; DELETE_BATCH];
    for (i, chunk) in entries.chunks(DELETE_BATCH).enumerate() {
        if chunk.iter().any(|&e| e != 0) {
            c.write_inode_entries(info.vid, (i * DELETE_BATCH) as u32, &zeros[..chunk.len()])
                .await?;
        }
    }
    let deleted = c.del_vdi(&spec.name, &spec.snap).await?;
    if deleted != info.vid {
        return Err(Error::Invalid(format!(
            "{spec}: the server deleted vid {deleted}, expected {}",
            info.vid
        )));
    }
    match c.vdi_info(&spec.name, &spec.snap).await {
        Err(e) if matches!(e.code(), Some(SD_RES_NO_VDI) | Some(SD_RES_NO_TAG)) => Ok(info.vid),
        Ok(still) if still.vid != info.vid => Ok(info.vid),
        Ok(_) => Err(Error::Invalid(format!(
            "{spec}: the server accepted the delete but the vdi is still there"
        ))),
        Err(e) => Err(e),
    }
}

/// One row of `vdi list`.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub vid: u32,
    pub snapshot: bool,
    pub snap_id: u32,
    pub tag: String,
    pub size: u64,
    /// Bytes in objects this VDI owns.
    pub used: u64,
    /// Bytes in objects shared with a parent.
    pub shared: u64,
    pub copies: u8,
    pub copy_policy: u8,
    pub block_size_shift: u8,
    pub parent_vid: u32,
    pub create_time: u64,
    pub snap_time: u64,
}

/// Every live VDI and snapshot, in vid order.
pub async fn list(c: &Client) -> Result<Vec<Listed>, Error> {
    let bitmap = c.read_vdis().await?;
    let vids: Vec<Vid> = (1..SD_NR_VDIS)
        .filter(|&v| bitmap[(v / 8) as usize] & (1 << (v % 8)) != 0)
        .map(Vid)
        .collect();
    let mut out = Vec::with_capacity(vids.len());
    // Read inodes a few at a time: pipelined, bounded.
    for chunk in vids.chunks(16) {
        let done =
            join_all(chunk.iter().map(|&v| async move { (v, c.read_inode(v).await) }).collect())
                .await;
        for (vid, r) in done {
            let (h, entries) = match r {
                Ok(x) => x,
                Err(e) if e.code() == Some(SD_RES_NO_OBJ) => continue,
                Err(e) => return Err(e),
            };
            if h.is_deleted() || h.vdi_id != vid.0 {
                continue;
            }
            let os = h.object_size();
            let used = entries.iter().filter(|&&e| e == vid.0).count() as u64 * os;
            let shared = entries.iter().filter(|&&e| e != 0 && e != vid.0).count() as u64 * os;
            out.push(Listed {
                name: h.name_lossy(),
                vid: vid.0,
                snapshot: h.is_snapshot(),
                snap_id: h.snap_id,
                tag: h.tag_lossy(),
                size: h.vdi_size,
                used,
                shared,
                copies: h.nr_copies,
                copy_policy: h.copy_policy,
                block_size_shift: h.block_size_shift,
                parent_vid: h.parent_vdi_id,
                create_time: h.create_time,
                snap_time: h.snap_ctime,
            });
        }
    }
    Ok(out)
}

/// Run futures concurrently on this thread and collect their outputs in order.
pub async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut outs: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futs.iter_mut().zip(outs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outs.into_iter().flatten().collect()
}
