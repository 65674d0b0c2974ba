//! Errors of the daemon: what a control request answers when it fails. Each names the
//! problem in one line (the CLI prints it), knows its errno and whether a new sheep
//! connection could fix it.

use crate::{sheep, ublk};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is wrong: a flag out of range, a bad address or name.
    #[error("{0}")]
    Invalid(String),
    /// Nothing matches: no such device, gone from the kernel.
    #[error("{0}")]
    NotFound(String),
    /// Busy: in use by another client, being re-attached, changed under the device.
    #[error("{0}")]
    Busy(String),
    /// The cluster refused or failed what we were doing (`context`).
    #[error("{context}: {source}")]
    Sheep { context: String, source: sheep::Error },
    #[error(transparent)]
    Ublk(#[from] ublk::Error),
    /// The control socket, or a thread the daemon could not start.
    #[error("{0}")]
    Control(String),
}

impl Error {
    /// `source` failed while doing `context`.
    pub fn sheep(context: impl Into<String>) -> impl FnOnce(sheep::Error) -> Error {
        let context = context.into();
        move |source| Error::Sheep { context, source }
    }

    pub fn errno(&self) -> i32 {
        match self {
            Error::Invalid(_) => libc::EINVAL,
            Error::NotFound(_) => libc::ENOENT,
            Error::Busy(_) => libc::EBUSY,
            Error::Sheep { source, .. } => source.errno(),
            Error::Ublk(e) => e.errno(),
            Error::Control(_) => libc::EIO,
        }
    }

    pub fn should_reconnect(&self) -> bool {
        match self {
            Error::Sheep { source, .. } => source.should_reconnect(),
            _ => false,
        }
    }
}
