#[cfg(feature = "tools")]
pub mod bench;
pub mod cli;
pub mod daemon;
#[cfg(feature = "tools")]
pub mod fault;
mod iov;
pub mod metrics;
pub mod proto;
#[cfg(feature = "tools")]
pub mod report;
pub mod shard;
pub mod sheep;
pub mod store;
pub mod ublk;
pub mod vdi;
