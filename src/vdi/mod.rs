//! VDI logic without I/O: byte ranges → object pieces, the COW/create decision per object,
//! per-object create serialisation, and parsing of `name[:snapshot]` specs.
//!
//! Contract: pure (no runtime, no libublk, no sockets), so every rule here is unit- and
//! property-tested on its own, and the CLI client and the ublk shards share one copy.

mod extent;
mod spec;
mod volume;

pub use extent::{split, Piece, Pieces};
pub use spec::{parse_size, SnapSel, VdiSpec};
pub use volume::{Claim, ClaimRun, Error, Parked, ReadPlan, Volume, WritePlan, PARK_SLOTS};
