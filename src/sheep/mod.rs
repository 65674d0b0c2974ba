//! The client side of the sheep protocol on the glommio control plane: pipelined
//! connections ([`conn`]), typed requests ([`Client`]), VDI management done right
//! ([`manage`]). Byte I/O on a VDI is not here: every byte goes through a shard
//! (`crate::shard`), the device's data path.
//!
//! Contract: single-threaded (`Rc`/`RefCell`, run inside a glommio `LocalExecutor`);
//! errors are [`Error`] with `errno()` and `should_reconnect()`; every server answer other
//! than SUCCESS is surfaced with sheep's own result code.

mod client;
pub mod conn;
mod error;
pub mod manage;

pub use crate::net::{parse_gateways, Gateway};
pub use client::{Client, Config, NewVdi, VdiInfo};
pub use conn::Connection;
pub use error::Error;
pub use manage::load_volume;
