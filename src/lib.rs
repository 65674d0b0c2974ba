pub mod cli;
pub mod daemon;
pub mod proto;
pub mod shard;
pub mod sheep;
pub mod store;
pub mod ublk;
pub mod vdi;
