//! The crate's error: one enum wrapping each layer's own (`proto`, `vdi`, `sheep`, `shard`,
//! `store`, `ublk`, `daemon`), so a caller of the library handles one type and still gets
//! the layer's errno and reconnect advice. Each layer keeps its own enum: the hot path's
//! (`shard::Error`) stays `Copy` and allocation-free. anyhow is used only by the CLI.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Proto(#[from] crate::proto::Error),
    #[error(transparent)]
    Vdi(#[from] crate::vdi::Error),
    #[error(transparent)]
    Sheep(#[from] crate::sheep::Error),
    #[error(transparent)]
    Shard(#[from] crate::shard::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error(transparent)]
    Ublk(#[from] crate::ublk::Error),
    #[error(transparent)]
    Daemon(#[from] crate::daemon::Error),
    /// Setting up what the layers run on (threads, rings, executors).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The errno a block request or the CLI reports for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Proto(e) => e.errno(),
            Error::Vdi(e) => e.errno(),
            Error::Sheep(e) => e.errno(),
            Error::Shard(e) => e.errno(),
            Error::Store(e) => e.errno(),
            Error::Ublk(e) => e.errno(),
            Error::Daemon(e) => e.errno(),
            Error::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }

    /// Whether a new connection to sheep could make the same request succeed.
    pub fn should_reconnect(&self) -> bool {
        match self {
            Error::Proto(e) => e.should_reconnect(),
            Error::Vdi(e) => e.should_reconnect(),
            Error::Sheep(e) => e.should_reconnect(),
            Error::Shard(e) => e.should_reconnect(),
            Error::Store(e) => e.should_reconnect(),
            Error::Ublk(e) => e.should_reconnect(),
            Error::Daemon(e) => e.should_reconnect(),
            Error::Io(_) => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_keep_their_errno_and_reconnect_advice() {
        let ro: Error = crate::shard::Error::ReadOnly.into();
        assert_eq!(ro.errno(), libc::EROFS);
        let vro: Error = crate::vdi::Error::ReadOnly.into();
        assert_eq!(vro.errno(), libc::EROFS, "read-only is EROFS from every layer");
        let gone: Error = crate::shard::Error::Closed.into();
        assert!(gone.should_reconnect() && gone.errno() == libc::EIO);
        let bad: Error = crate::daemon::Error::Invalid("x".into()).into();
        assert!(!bad.should_reconnect() && bad.errno() == libc::EINVAL);
        let sheep: Error = crate::daemon::Error::sheep("locking")(crate::sheep::Error::server(
            crate::proto::Opcode::LockVdi,
            crate::proto::SD_RES_VDI_LOCKED,
        ))
        .into();
        assert!(sheep.to_string().starts_with("locking: "), "{sheep}");
    }
}
