//! The embedded sheep-compatible store: a single-node store for tests, demos and
//! benchmarks, not a Sheepdog cluster.
//!
//! One process speaks the sheep 1.0 client protocol (shared/reference/sheep-protocol.md
//! §1–§15) over TCP and keeps every object as a file. It reproduces what a client of a
//! real cluster sees, traps included:
//! - a second CREATE_AND_WRITE_OBJ of an oid silently replaces the object with zeros plus
//!   the new data;
//! - DEL_VDI answers SUCCESS and deletes nothing while the inode still has a non-zero
//!   `data_vdi_id` entry below `ceil(vdi_size / object_size)`;
//! - data writes to a snapshot's objects get READONLY, and so do those of a *working* VDI
//!   that was used as the base of a clone (sheep marks the base read-only in memory; the
//!   mark lasts until the store restarts, as in sheep);
//! - READ_OBJ does no bounds check (zeros past the end), WRITE_OBJ past the object end
//!   grows the file, FLUSH_VDI is always INVALID_PARMS;
//! - responses on one connection come back in completion order, not submission order.
//!
//! Contract:
//! - Layout on disk: `DIR/obj/<oid as 16 lower-case hex digits>` per object (inodes are
//!   sparse files of `SD_INODE_SIZE` bytes, data objects sparse files of the owning VDI's
//!   object size), `DIR/tmp/` for creates in progress (emptied at start), and `DIR/sock`,
//!   a unix socket serving the same protocol as the TCP listeners, as sheep's own
//!   `<dir>/sock` (replaced at start, removed at shutdown; a warning, not an error, when
//!   it cannot be bound, e.g. a path too long for a socket). Everything else
//!   (VDI bitmap, inode cache, which vids are snapshots) is rebuilt from the inode files at
//!   [`Store::start`], so a store survives a restart.
//! - Durability: with [`Config::sync`] on, a write is on stable storage when it is
//!   acknowledged (fdatasync of the object, fsync of `obj/` after a create). Creates are
//!   atomic (temp file + rename). `sync = false` is sheep's `-n`.
//! - Locks (LOCK_VDI with [`Config::locking`]) live in memory only: they survive client
//!   disconnects, as in sheep, and are lost when the store restarts.
//! - A request payload above [`MAX_PAYLOAD`] closes the connection; a READ_OBJ asking for
//!   more gets INVALID_PARMS. Nothing a peer sends can panic the store.
//! - Hyper volumes (`store_policy = 1`) are created with an empty depth-1 B-tree root and
//!   deleted by DEL_VDI alone (their own objects are reclaimed from the B-tree, as sheep
//!   does), but the store keeps no index of them: DISCARD_OBJ refuses them and their inode
//!   writes never reclaim objects.
//! - One store per directory: nothing stops two processes from sharing one, and they
//!   would each miss the other's metadata.
//! - Deliberate differences from sheep 1.0's code: a name-only (256-byte) lookup with a
//!   non-zero snapid gets INVALID_PARMS (sheep takes it and segfaults once a candidate
//!   snapshot has a tag, `vdi_tag_match`); a shared lock may be taken many times
//!   (sheep allows one per node); NEW_VDI with an empty name, `store_policy > 1` or
//!   `block_size_shift > 31` and DISCARD_OBJ of anything but a data oid below index 2^20
//!   get INVALID_PARMS; objects are reclaimed by scanning the live inodes, not through
//!   sheep's `gref` generation counts (which the store never writes). One consequence of
//!   those counts is modelled, because it loses data on sheep: an entry that a client's
//!   inode write covers and that points at another vid's object (an unchanged shared entry
//!   rewritten, or a pointer written in) is not counted by sheep, so when it changes later
//!   the object is removed even if a snapshot or a clone's parent still points at it. The
//!   store does the same, with a warning (`meta::Meta::drop_refs`); the marks live in memory
//!   and a restart forgets them, where sheep's counts are on disk.
//! - Out of scope: admin opcodes (≥ 0x80, answered VER_MISMATCH or INVALID_PARMS), VDI
//!   attributes, other store policies (INVALID_PARMS), erasure coding beyond reporting
//!   `nr_copies = data + parity`.
//!
//! - Serving: a reader thread per connection reads requests and hands each one to a
//!   fixed pool of workers; a worker runs it, `pread`s object data into a pooled buffer
//!   and writes the response (header and payload) in one write. [`Config::fast_reads`]
//!   (off by default, and in every conformance test) lets the reader answer READ_OBJ
//!   itself instead, for benchmarks; see `server.rs`.
//! - Faults for tests: a slow disk ([`Config::object_delay`], [`Faults::set_object_delay`]),
//!   error results ([`Faults::fail_next`]) and [`Store::restart`]; see `fault.rs`.
//!
//! Files: `server.rs` (listeners, connections, worker pool), `ops.rs` (one request → one
//! response), `answers.rs` (response buffers and their pool), `meta.rs` (VDI metadata:
//! lookup, bitmap, locks, reference drop), `inode.rs` (one cached inode), `objects.rs`
//! (object files), `fault.rs` (faults).

mod answers;
mod fault;
mod inode;
mod meta;
mod objects;
mod ops;
mod server;
#[cfg(test)]
mod tests;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::proto::libc_errno::{EINVAL, EIO};
use crate::proto::Oid;

pub use fault::Faults;
pub use server::Store;

/// Largest request payload (and READ_OBJ length) the store accepts: 64 MiB. It covers a
/// whole 12 MiB inode and any data object a client splits at object boundaries; anything
/// larger is a client bug or garbage. A bigger payload closes the connection, because the
/// store would have to read it all to answer.
pub const MAX_PAYLOAD: u32 = 64 << 20;

/// Store settings; the CLI is `sheepdev store --dir DIR --listen ADDR [--listen ADDR2]
/// [--locking] [--no-sync] [--copies N] [--workers N] [--fast-reads]`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory holding `obj/` and `tmp/`; created when missing.
    pub dir: PathBuf,
    /// Addresses to listen on (port 0 picks a free port; see [`Store::local_addrs`]).
    pub listen: Vec<SocketAddr>,
    /// Enforce LOCK_VDI like a cluster formatted with `dog cluster format -l`.
    pub locking: bool,
    /// fdatasync before acknowledging writes (off = sheep's `-n`).
    pub sync: bool,
    /// The cluster's default redundancy, reported by GET_CLUSTER_DEFAULT and used by
    /// NEW_VDI with `copies = 0` (1..=31).
    pub copies: u8,
    /// Worker threads executing requests (≥ 1).
    pub workers: usize,
    /// Emulated disk latency: every object read, write and create waits this long before
    /// it runs (a store-side fault for tests; zero in normal use).
    pub object_delay: std::time::Duration,
    /// Benchmark tuning knob, off by default: each connection's reader answers READ_OBJ
    /// itself (no hand-off to a worker) and sends the answers of a burst of reads in one
    /// write. The responses are the same; reads of one connection then complete in
    /// submission order among themselves. Ignored while `object_delay` is set.
    pub fast_reads: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            dir: PathBuf::from("."),
            listen: vec![SocketAddr::from(([127, 0, 0, 1], crate::proto::SD_LISTEN_PORT))],
            locking: false,
            sync: true,
            copies: 3,
            workers: 8,
            object_delay: std::time::Duration::ZERO,
            fast_reads: false,
        }
    }
}

/// Why a store could not start. Requests never produce these: a failing request gets a
/// sheep result code on the wire. Each message is complete (it already says what the
/// underlying I/O error was), so the `io` fields are kept for `errno()`, not as sources.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no listen address given")]
    NoListen,
    #[error("invalid store configuration: {0}")]
    Config(&'static str),
    #[error("cannot use store directory {}: {reason}", path.display())]
    Dir { path: PathBuf, reason: String, io: io::Error },
    #[error("cannot load inode {oid} from {}: {reason}", path.display())]
    Inode { oid: Oid, path: PathBuf, reason: String, io: io::Error },
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String, io: io::Error },
    #[error("cannot start a store thread: {reason}")]
    Thread { reason: String, io: io::Error },
}

impl Error {
    /// The errno a CLI reports for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::NoListen | Error::Config(_) => EINVAL,
            Error::Dir { io, .. }
            | Error::Inode { io, .. }
            | Error::Listen { io, .. }
            | Error::Thread { io, .. } => io.raw_os_error().unwrap_or(EIO),
        }
    }

    /// Always false: these are local start-up failures, and no connection is involved.
    pub fn should_reconnect(&self) -> bool {
        false
    }

    fn dir(path: PathBuf, io: io::Error) -> Error {
        Error::Dir { path, reason: describe(&io), io }
    }
}

/// A lower-case description of an I/O error for messages ("address in use").
fn describe(e: &io::Error) -> String {
    let fixed = match e.kind() {
        io::ErrorKind::AddrInUse => "address in use",
        io::ErrorKind::AddrNotAvailable => "address not available on this host",
        io::ErrorKind::PermissionDenied => "permission denied",
        io::ErrorKind::NotFound => "not found",
        io::ErrorKind::AlreadyExists => "already exists",
        io::ErrorKind::StorageFull => "no space left on device",
        _ => "",
    };
    if !fixed.is_empty() {
        return fixed.to_owned();
    }
    let s = e.to_string();
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_lowercase().chain(c).collect(),
        None => "unknown error".to_owned(),
    }
}
