//! `sheepdev resize`: grow a mapped device's VDI, then the device, with I/O running.
//!
//! Contract:
//! - The VDI grows first (one WRITE_OBJ of the inode's `vdi_size`, `sheep::manage::grow`),
//!   then the shards accept the new range (`Volume::grow`), then the kernel device
//!   (UPDATE_SIZE, Linux 6.16+). Each step is safe to stop after: a VDI larger than its
//!   device is what `dog vdi resize` of a mapped VDI gives, and reads and writes keep going.
//! - Refused with one line, before anything changes: a null device, a snapshot or
//!   read-only mapping, a device being re-attached, a size smaller than the device (sheep
//!   cannot shrink a VDI) or not a multiple of the device's block size.
//! - Without UPDATE_SIZE the answer carries a warning that the device keeps its size until
//!   it is re-added; the table keeps the device's size, which a re-attach accepts
//!   (`recover.rs` grows the device then, where the kernel can).

use super::state::{mapping_client, Daemon};
use super::{Error, Mapping, Target};
use crate::sheep::manage;
use crate::ublk;

impl Daemon {
    pub(super) async fn resize(
        &self,
        t: Target,
        size: u64,
    ) -> Result<(Mapping, Vec<String>), Error> {
        let (id, m) = self.found(&t)?;
        if m.vid == 0 {
            return Err(Error::Invalid(format!(
                "{} is a null device: nothing to resize",
                m.device
            )));
        }
        if m.snapshot.is_some() || m.read_only {
            return Err(Error::Invalid(format!(
                "{} serves {} read-only: only a writable working VDI grows",
                m.device, m.vdi
            )));
        }
        let vol = match self.live.borrow().get(&id) {
            Some(l) if m.state == "live" => l.vol.clone(),
            _ => None,
        };
        let Some(vol) = vol else {
            return Err(Error::Busy(format!(
                "{} is {}: resize it once `sheepdev list` shows it live",
                m.device, m.state
            )));
        };
        if size % u64::from(m.block_size) != 0 {
            return Err(Error::Invalid(format!(
                "size {size} is not a multiple of {}'s block size ({})",
                m.device, m.block_size
            )));
        }
        if size < m.size {
            return Err(Error::Invalid(format!(
                "{} is {} bytes: shrinking it to {size} is refused (sheep cannot shrink a VDI)",
                m.device, m.size
            )));
        }
        let c = mapping_client(&m).await?;
        let vid = vol.vid();
        let h =
            c.read_inode_header(vid).await.map_err(Error::sheep(format!("reading {}", m.name)))?;
        if h.is_snapshot() {
            return Err(Error::Busy(format!(
                "{} is following a live snapshot of {}: try again in a second",
                m.device, m.name
            )));
        }
        manage::grow(&c, vid, &h, size)
            .await
            .map_err(Error::sheep(format!("growing {}", m.name)))?;
        vol.grow(size).map_err(|e| Error::Invalid(format!("growing {}: {e}", m.name)))?;
        let mut warnings = Vec::new();
        let grown =
            glommio::executor().spawn_blocking(move || ublk::features::resize(id, size)).await?;
        let mut m = m;
        if grown {
            m.size = size;
            if let Some(e) = self.mappings.borrow_mut().get_mut(&id) {
                e.size = size;
            }
            self.persist();
            tracing::info!("{}: {} grown to {size} bytes", m.device, m.name);
        } else {
            warnings.push(format!(
                "{} is now {size} bytes, but this kernel's ublk driver has no UPDATE_SIZE (Linux 6.16+): {} keeps {} bytes until it is re-added (sheepdev del, then add)",
                m.name, m.device, m.size
            ));
        }
        Ok((m, warnings))
    }
}
