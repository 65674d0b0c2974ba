//! Hot-path errors of a shard: small, `Copy`, no heap. Each knows the errno the block
//! request completes with and whether the connection it came from must be replaced.

use crate::proto::{libc_errno as e, ResultCode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("sheep connection failed (errno {0})")]
    Io(i32),
    #[error("sheep connection closed")]
    Closed,
    #[error("sheep sent a response that does not match any request")]
    Protocol,
    #[error("sheep answered {0}")]
    Server(ResultCode),
    #[error("the vdi is read-only")]
    ReadOnly,
    #[error("request beyond the end of the vdi")]
    OutOfRange,
    #[error("unsupported request")]
    Unsupported,
}

const _: () = assert!(std::mem::size_of::<Error>() <= 8);

impl Error {
    pub fn errno(self) -> i32 {
        match self {
            Error::Io(_) | Error::Closed | Error::Protocol => e::EIO,
            Error::Server(code) => code.errno(),
            Error::ReadOnly => e::EROFS,
            Error::OutOfRange => e::EIO,
            Error::Unsupported => e::EOPNOTSUPP,
        }
    }
    pub fn should_reconnect(self) -> bool {
        matches!(self, Error::Io(_) | Error::Closed | Error::Protocol)
    }
}

impl From<crate::vdi::Error> for Error {
    fn from(v: crate::vdi::Error) -> Error {
        match v {
            crate::vdi::Error::ReadOnly => Error::ReadOnly,
            crate::vdi::Error::OutOfRange { .. } => Error::OutOfRange,
        }
    }
}
