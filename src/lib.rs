pub mod cli;
pub mod proto;
pub mod sheep;
pub mod store;
pub mod vdi;
