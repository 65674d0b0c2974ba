pub mod proto;
pub mod vdi;
pub mod sheep;
pub mod cli;
