//! sheepdev: Sheepdog VDIs as Linux block devices through ublk.
//!
//! # Architecture
//! - **Control plane** (glommio, [`runtime`]): the daemon's control socket and `/metrics`
//!   ([`daemon`], [`metrics`]), VDI management over [`sheep`] (lookups, snapshots, clones,
//!   deletes, locks; its connection frames with [`proto::demux`]), the CLI ([`cli`]).
//! - **Data plane**: one thread pinned per core for the whole daemon (`ublk::Cores`), owning
//!   one io_uring that serves queue q of every device (`ublk/queue.rs`) and the core's
//!   pipelined connections to sheep on the *same* ring, so one `io_uring_enter` serves the
//!   kernel and the network. Each (device, queue) is a [`shard`] on its core, sharing the
//!   core's connections. Every byte of VDI I/O goes through a shard: the device ([`ublk`]),
//!   `vdi read/write` ([`shard::Remote`]), the no-kernel benchmark and the tests
//!   ([`shard::spawn`]).
//! - **Pure layers**: [`proto`] (wire format, framing), [`vdi`] (which object, create or
//!   COW, create claims), [`block`] (the kernel boundary). No runtime, no libublk.
//! - [`store`]: an embedded sheep-compatible store for demos, tests and benchmarks.
//!
//! # The life of one write
//! 1. The kernel posts a request on tag *t*; the core's `serve_tag` (`ublk/cores.rs`) turns
//!    the descriptor into a [`block::IoDesc`], borrows a buffer from the core's pool (a
//!    write's payload fetched into it with NEED_GET_DATA) and calls [`shard::Shard::handle`].
//! 2. `Shard::serve` checks the range; `shard/write.rs` splits it at object boundaries
//!    ([`vdi::split`]).
//! 3. Per piece, [`vdi::Volume::plan_write`] decides WRITE_OBJ, CREATE or COW CREATE from
//!    the in-memory inode; a create takes the object's [`vdi::Claim`], and a writer that
//!    finds the object being created parks on the volume's wakers until the claim drops.
//! 4. `Shard::call` picks a connection and `shard::conn` queues the request; a WRITE_OBJ
//!    adjacent to a queued one rides on it ([`shard`]'s `coalesce`).
//! 5. The connection's sender task sends every queued request (header and payload iovecs,
//!    no copy) in one SENDMSG on the shard's ring.
//! 6. The receiver task reads responses, [`proto::demux`] frames and checks each, and the
//!    waiting request is woken with its result (a rider gets its lead's).
//! 7. Objects the request created get one inode update (their entries, one WRITE_OBJ of
//!    the inode); then their claims drop, which lets parked writers go.
//! 8. `Shard::handle` returns the byte count (or an errno); `serve_tag` commits it to the
//!    kernel on the same ring (a read's commit carries its buffer, which the driver copies
//!    from) and waits for the tag's next request.
//!
//! A read is steps 1–2, [`vdi::Volume::plan_read`] (zeros for unallocated objects, else
//! READ_OBJ of the owner's object), 4–6 with the payload copied into the borrowed buffer, 8.
//!
//! With zero copy (`add --zero-copy`, UBLK_F_AUTO_BUF_REG, Linux 6.16+) nothing is borrowed:
//! the driver registers the request's own pages in the core ring's buffer table before step
//! 1, step 5 sends a payload of 64 KiB or more from them with SEND_ZC (linked after its
//! header's SENDMSG; smaller ones are copied out by user copy and batched as before), a
//! read's data is read into them with READ_FIXED (bytes that came with an earlier receive
//! are copied in by user copy), and step 8's commit unregisters them. A queue that has
//! been given only requests under 64 KiB for a while has them not registered at all (they
//! are copied either way), until a large one comes (`ublk::zero_copy::Registering`).
//! A write refused with READONLY (another client snapshotted the VDI) follows the live
//! snapshot (`shard/follow.rs`) and is sent again as a COW.

#[cfg(feature = "tools")]
pub mod bench;
pub mod block;
pub mod cli;
pub mod daemon;
mod error;
#[cfg(feature = "tools")]
pub mod fault;
mod iov;
pub mod metrics;
pub mod net;
pub mod proto;
#[cfg(feature = "tools")]
pub mod report;
pub mod runtime;
pub mod shard;
pub mod sheep;
pub mod store;
pub mod ublk;
pub mod vdi;

pub use error::{Error, Result};
