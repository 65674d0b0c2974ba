pub mod cli;
pub mod proto;
pub mod shard;
pub mod sheep;
pub mod store;
pub mod vdi;
