//! What the running kernel's ublk driver can do, what sheepdev uses of it, and the one
//! feature-dependent control command the daemon sends to a live device (UPDATE_SIZE).
//!
//! Contract:
//! - [`driver`] asks the driver (GET_FEATURES, Linux 6.5+; `None` before, or without
//!   `/dev/ublk-control`). Everything else is decided from it at run time: nothing is
//!   assumed from the kernel version.
//! - [`FEATURES`] names every flag sheepdev knows, with what it does here (`use`) — the rows
//!   of `sheepdev features`; [`names`] turns a device's flags into the names
//!   `sheepdev list --json` shows.
//! - [`resize`] grows a live device with UPDATE_SIZE where the driver has it (6.16+) and
//!   says `false` (nothing sent) where it does not; [`quiesce`] quiesces one created with
//!   UBLK_F_QUIESCE ([`quiesce_flag`], 6.16+) before a daemon exit.

use libublk::ctrl::UblkCtrl;
use libublk::sys;

use super::{ctrl_err, Error};

/// One ublk feature flag: its bit, its name (`UBLK_F_` dropped, lower case) and what
/// sheepdev does with it.
pub struct Feature {
    pub bit: u64,
    pub name: &'static str,
    pub used: &'static str,
}

const fn f(bit: u32, name: &'static str, used: &'static str) -> Feature {
    Feature { bit: bit as u64, name, used }
}

/// Every flag sheepdev knows, in bit order.
pub const FEATURES: &[Feature] = &[
    f(
        sys::UBLK_F_SUPPORT_ZERO_COPY,
        "zero_copy",
        "not used: zero copy goes through auto_buf_reg (no register/unregister command per request)",
    ),
    f(sys::UBLK_F_URING_CMD_COMP_IN_TASK, "uring_cmd_comp_in_task", "not needed"),
    f(
        sys::UBLK_F_NEED_GET_DATA,
        "need_get_data",
        "used by sheep devices (not with add --own-buffers): a request borrows a buffer from its core's pool only while in flight; a write's payload is fetched into it, a read's data goes back with its commit",
    ),
    f(sys::UBLK_F_USER_RECOVERY, "user_recovery", "used: devices survive a daemon restart"),
    f(
        sys::UBLK_F_USER_RECOVERY_REISSUE,
        "user_recovery_reissue",
        "used: requests a dead daemon held are issued again, not failed",
    ),
    f(sys::UBLK_F_UNPRIVILEGED_DEV, "unprivileged_dev", "not used (the daemon runs as root)"),
    f(sys::UBLK_F_CMD_IOCTL_ENCODE, "cmd_ioctl_encode", "used: ioctl-encoded queue commands"),
    f(
        sys::UBLK_F_USER_COPY,
        "user_copy",
        "used by null devices (they copy nothing) and, beside auto_buf_reg, by zero-copy devices (zeros, read data that came with an earlier receive, a failed registration); a sheep device a previous daemon made with it alone moves data by pread/pwrite on the char device",
    ),
    f(sys::UBLK_F_ZONED, "zoned", "not used (VDIs are not zoned)"),
    f(sys::UBLK_F_USER_RECOVERY_FAIL_IO, "user_recovery_fail_io", "not used (reissue instead)"),
    f(sys::UBLK_F_UPDATE_SIZE, "update_size", "used: `sheepdev resize` grows a mapped device live"),
    f(
        sys::UBLK_F_AUTO_BUF_REG,
        "auto_buf_reg",
        "used by sheep devices with add --zero-copy auto (the default) or on: each request's pages are registered in its core ring's buffer table, writes are sent from them with SEND_ZC and reads received into them; user_copy beside it covers what the ring cannot move",
    ),
    f(
        sys::UBLK_F_QUIESCE,
        "quiesce",
        "requested; with `serve --quiesce auto` a SIGTERM exit quiesces each device first",
    ),
    f(sys::UBLK_F_PER_IO_DAEMON, "per_io_daemon", "not used (a queue stays on its core)"),
    f(sys::UBLK_F_BUF_REG_OFF_DAEMON, "buf_reg_off_daemon", "not used"),
    f(sys::UBLK_F_BATCH_IO, "batch_io", "not used"),
    f(sys::UBLK_F_INTEGRITY, "integrity", "not used"),
    f(sys::UBLK_F_SAFE_STOP_DEV, "safe_stop_dev", "not used"),
    f(sys::UBLK_F_NO_AUTO_PART_SCAN, "no_auto_part_scan", "not used"),
    f(sys::UBLK_F_SHMEM_ZC, "shmem_zc", "not used"),
];

/// The driver's features (GET_FEATURES), or `None` where it cannot say.
pub fn driver() -> Option<u64> {
    UblkCtrl::get_features()
}

/// The names of the known flags set in `flags` (unknown bits are left out).
pub fn names(flags: u64) -> Vec<String> {
    FEATURES.iter().filter(|f| flags & f.bit != 0).map(|f| f.name.to_string()).collect()
}

/// Whether the driver has `bit`.
pub fn has(bit: u32) -> bool {
    driver().is_some_and(|f| f & u64::from(bit) != 0)
}

/// `UBLK_F_QUIESCE` for a new device where the driver has it and the device gets user
/// recovery (the driver requires both), else 0.
pub fn quiesce_flag() -> u64 {
    let need = u64::from(sys::UBLK_F_QUIESCE | sys::UBLK_F_USER_RECOVERY);
    match driver() {
        Some(f) if f & need == need => u64::from(sys::UBLK_F_QUIESCE),
        _ => 0,
    }
}

/// Quiesce live device `id` (QUIESCE_DEV): the driver stops handing out new requests
/// (they wait in the kernel), waits at most `timeout` for those in flight to complete,
/// then cancels the queues' fetches, so the device is QUIESCED and the next daemon's
/// re-attach has nothing to issue again. `Ok(false)`: the device was created without
/// UBLK_F_QUIESCE, nothing was sent. On a timeout (EBUSY) the device is left refusing new
/// requests, which the next re-attach (START_USER_RECOVERY) undoes. Blocking.
pub fn quiesce(id: u32, flags: u64, timeout: std::time::Duration) -> Result<bool, Error> {
    if flags & u64::from(sys::UBLK_F_QUIESCE) == 0 {
        return Ok(false);
    }
    let ctrl = UblkCtrl::new_simple(id as i32).map_err(ctrl_err(format!("no ublk device {id}")))?;
    let ms = timeout.as_millis().clamp(1, u128::from(u32::MAX)) as u64;
    ctrl.quiesce_dev(ms).map_err(ctrl_err(format!("cannot quiesce ublk device {id}")))?;
    Ok(true)
}

/// Set live device `id`'s capacity to `size` bytes (a multiple of its block size) with
/// UPDATE_SIZE; the block layer sees the new size at once. `Ok(false)`: the driver has no
/// UPDATE_SIZE, nothing was sent. Blocking (a control command).
pub fn resize(id: u32, size: u64) -> Result<bool, Error> {
    if !has(sys::UBLK_F_UPDATE_SIZE) {
        return Ok(false);
    }
    let ctrl = UblkCtrl::new_simple(id as i32).map_err(ctrl_err(format!("no ublk device {id}")))?;
    ctrl.update_size(size).map_err(ctrl_err(format!("cannot resize ublk device {id}")))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_has_one_name_in_bit_order() {
        for w in FEATURES.windows(2) {
            assert!(w[0].bit < w[1].bit, "{} before {}", w[0].name, w[1].name);
        }
        let flags = u64::from(sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_COPY) | 1 << 40;
        assert_eq!(names(flags), ["user_recovery", "user_copy"]);
    }
}
