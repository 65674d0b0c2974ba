//! The daemon (`sheepdev serve`) and how the CLI talks to it.
//!
//! Contract:
//! - One daemon hosts every mapped device. Its control plane is a glommio executor on the
//!   main thread serving a Unix socket (directory 0700, socket 0600: root only) with one
//!   JSON request and one JSON response per line. Device data paths run on their own
//!   pinned queue threads (see `ublk`), never on this executor.
//! - Mappings are persisted to `STATE_DIR/devices.json` after every change, so a restarted
//!   daemon knows the devices a previous one left.
//! - Devices outlive the daemon (ublk user recovery, see [`crate::ublk::recovery_flags`]).
//!   When the daemon dies (a crash, `kill -9`) or exits on SIGTERM/SIGINT (an upgrade,
//!   `systemctl restart`), the kernel keeps every `/dev/ublkbN`, quiesces it and holds its
//!   I/O. The next `serve` re-attaches every persisted device whose kernel side still
//!   exists (`recovering`, then `live`; `orphaned` if that fails, which `sheepdev recover`
//!   retries and `del` cleans up) and drops from the table, with a log line, every device
//!   the kernel no longer has. SIGTERM/SIGINT first let control requests under way finish
//!   and never unmap: only `del` does.
//! - The daemon never shares its mount namespace with a private copy ([`SYSTEMD_UNIT`] sets
//!   no `PrivateMounts=`/`ProtectSystem=`): a copy would receive mounts of its own devices
//!   by propagation, and a daemon exiting as the last holder of that namespace would
//!   deadlock unmounting them (libublk-rs PR 51).
//! - Every failure is one line in `Response::error`, and a failed `add` leaves no device
//!   and no lock behind.

mod error;
mod recover;
mod resize;
mod server;
mod state;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use error::Error;
pub use server::serve;
pub use state::ServeOptions;

/// The systemd unit for `sheepdev serve` (`sheepdev systemd-unit` prints it with the binary's
/// path in place of `@SHEEPDEV@`).
pub const SYSTEMD_UNIT: &str = include_str!("sheepdev.service");

/// Where the daemon listens unless `SHEEPDEV_CONTROL` says otherwise.
pub const DEFAULT_CONTROL: &str = "/run/sheepdev/control.sock";

/// The control socket path: `SHEEPDEV_CONTROL` or [`DEFAULT_CONTROL`].
pub fn control_path() -> PathBuf {
    std::env::var_os("SHEEPDEV_CONTROL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL))
}

/// `add` as the CLI sends it (already validated by clap; the daemon checks again).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddRequest {
    pub gateways: Vec<String>,
    /// `NAME`, `NAME:ID` or `NAME:TAG`; empty for a null device.
    pub vdi: String,
    pub queues: u16,
    pub depth: u16,
    pub connections: u16,
    pub max_io: u32,
    pub block_size: u32,
    pub read_only: bool,
    pub shared: bool,
    pub id: Option<u32>,
    /// Seconds a block request may wait for the cluster before it fails with EIO (0: forever).
    #[serde(default = "default_io_timeout")]
    pub io_timeout: u64,
    /// A null device of this size instead of a VDI.
    pub null_size: Option<u64>,
    /// Each tag keeps its own buffer instead of borrowing from its core's pool.
    #[serde(default)]
    pub own_buffers: bool,
    /// Serve from the requests' own pages where the kernel can (`auto`), always (`on`:
    /// fail where it cannot), or never.
    #[serde(default)]
    pub zero_copy: crate::ublk::zero_copy::ZeroCopy,
}

fn default_io_timeout() -> u64 {
    30
}

/// Which device `del` means.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Target {
    Id(u32),
    Device(String),
    Vdi(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    Add(AddRequest),
    Del {
        target: Target,
        force: bool,
    },
    /// Re-attach one device a previous daemon left (one whose automatic re-attach failed).
    Recover {
        target: Target,
    },
    /// Grow the VDI of a mapped device to `size` bytes, then the device (UPDATE_SIZE where
    /// the kernel has it).
    Resize {
        target: Target,
        size: u64,
    },
    List,
    Stats,
}

/// Latency percentiles of one device, for `sheepdev stats`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceStats {
    pub device: String,
    pub vdi: String,
    pub ops: Vec<crate::metrics::OpStats>,
}

/// One mapped device, as `list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Mapping {
    pub device: String,
    pub id: u32,
    /// What was asked for (`linux`, `linux:snap`), or `null` for a null device.
    pub vdi: String,
    /// The VDI name.
    pub name: String,
    /// The vid the device serves.
    pub vid: u32,
    /// Set when the device serves a snapshot itself (read-only).
    pub snapshot: Option<String>,
    /// The snapshot a writable VDI was made from by rebase.
    pub rebased_from: Option<String>,
    pub gateways: Vec<String>,
    pub queues: u16,
    pub depth: u16,
    pub connections: u16,
    pub max_io: u32,
    pub block_size: u32,
    pub size: u64,
    pub read_only: bool,
    pub shared: bool,
    /// Whether the daemon holds the VDI lock (released on `del`).
    pub locked: bool,
    /// `live`, `recovering` (being re-attached) or `orphaned` (left by a previous daemon and
    /// not re-attached: `sheepdev recover` retries, `del` removes it).
    pub state: String,
    /// Seconds a block request may wait for the cluster (0: forever).
    #[serde(default = "default_io_timeout")]
    pub io_timeout: u64,
    /// Whether the kernel device has user recovery, so it survives the daemon.
    #[serde(default)]
    pub recoverable: bool,
    /// The ublk features the kernel device has (`sheepdev features` says what each does).
    #[serde(default)]
    pub features: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    pub error: Option<String>,
    pub mapping: Option<Mapping>,
    pub mappings: Vec<Mapping>,
    pub stats: Vec<DeviceStats>,
    /// Things worth telling the user that did not make the request fail.
    pub warnings: Vec<String>,
}

/// Send one request to the daemon at `socket` and wait for its answer (up to `timeout`).
pub fn request(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, Error> {
    let c = |msg: String| Error::Control(msg);
    let mut s = UnixStream::connect(socket).map_err(|e| {
        c(format!(
            "cannot reach the sheepdev daemon at {} ({e}): is `sheepdev serve` running?",
            socket.display()
        ))
    })?;
    s.set_read_timeout(Some(timeout)).map_err(|e| c(e.to_string()))?;
    let mut line = serde_json::to_string(req).map_err(|e| c(e.to_string()))?;
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(|e| c(format!("talking to the daemon: {e}")))?;
    let mut answer = String::new();
    BufReader::new(&s)
        .read_line(&mut answer)
        .map_err(|e| c(format!("waiting for the daemon: {e}")))?;
    if answer.is_empty() {
        return Err(c("the daemon closed the connection without answering (see its log)".into()));
    }
    serde_json::from_str(&answer).map_err(|e| c(format!("bad answer from the daemon: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table written before recovery existed still loads: the new fields take defaults.
    #[test]
    fn an_older_device_table_loads() {
        let old = r#"[{"device":"/dev/ublkb0","id":0,"vdi":"linux","name":"linux","vid":7,"snapshot":null,"rebased_from":null,
            "gateways":["127.0.0.1:7000"],"queues":2,"depth":128,"connections":1,"max_io":524288,"block_size":512,
            "size":1073741824,"read_only":false,"shared":false,"locked":true,"state":"live"}]"#;
        let v: Vec<Mapping> = serde_json::from_str(old).expect("loads");
        assert_eq!((v[0].io_timeout, v[0].recoverable, v[0].locked), (30, false, true));
    }

    #[test]
    fn the_unit_restarts_the_daemon_and_keeps_the_host_mount_namespace() {
        let active: Vec<&str> =
            SYSTEMD_UNIT.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
        for want in [
            "ExecStart=@SHEEPDEV@ serve",
            "Restart=always",
            "KillMode=mixed",
            "KillSignal=SIGTERM",
            "TimeoutStopSec=90",
        ] {
            assert!(active.contains(&want), "the unit lacks {want}");
        }
        for l in &active {
            assert!(
                !l.starts_with("Private")
                    && !l.starts_with("Protect")
                    && !l.starts_with("RuntimeDirectory"),
                "{l}"
            );
        }
    }
}
