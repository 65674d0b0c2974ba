//! The kernel boundary: one block request as a ublk queue (or a test, or the no-kernel
//! benchmark, or `vdi read/write`) hands it to a shard. Plain data, no dependencies: the
//! shard, the metrics and the ublk queue all name it from here.

/// What the kernel asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
}

/// One block request; its data is the tag's buffer, handed over beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoDesc {
    pub op: Op,
    /// Byte offset in the device.
    pub offset: u64,
    /// Bytes.
    pub len: u32,
    pub tag: u16,
    pub fua: bool,
}
