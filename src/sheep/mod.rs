//! The client side of the sheep protocol on the glommio control plane: pipelined
//! connections ([`conn`]), typed requests ([`Client`]), VDI management done right
//! ([`manage`]) and byte I/O on a VDI ([`VolumeIo`]).
//!
//! Contract: single-threaded (`Rc`/`RefCell`, run inside a glommio `LocalExecutor`);
//! errors are [`Error`] with `errno()` and `should_reconnect()`; every server answer other
//! than SUCCESS is surfaced with sheep's own result code.

mod client;
pub mod conn;
mod error;
pub mod manage;
mod volume;

pub use client::{Client, Config, NewVdi, VdiInfo};
pub use conn::Connection;
pub use error::Error;
pub use crate::net::{parse_gateways, Gateway};
pub use volume::{load_volume, VolumeIo};
