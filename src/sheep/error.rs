//! Errors of the sheep client: transport, protocol and server answers.
//!
//! Contract: every variant knows its errno (what a block request or the CLI reports) and
//! whether the connection must be reconnected (the stream is broken or untrusted) versus
//! the request simply failing with the server's answer.

use super::Gateway;
use crate::proto::{self, libc_errno as e, Opcode, ResultCode};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: Gateway, source: std::io::Error },
    #[error("cannot connect to {addr}: no answer within {ms} ms")]
    ConnectTimeout { addr: Gateway, ms: u64 },
    #[error("no gateway reachable: {0}")]
    NoGateway(String),
    #[error("connection to {addr} failed: {source}")]
    Io { addr: Gateway, source: std::io::Error },
    #[error("connection to {0} was closed")]
    Closed(Gateway),
    #[error("{op} request to {addr} got no answer within {ms} ms")]
    Timeout { addr: Gateway, op: &'static str, ms: u64 },
    #[error("protocol error from {addr}: {source}")]
    Protocol { addr: Gateway, source: proto::Error },
    #[error("protocol error from {addr}: {source}")]
    Stream { addr: Gateway, source: proto::demux::Broken },
    #[error("{op}: {code}")]
    Server { op: &'static str, code: ResultCode },
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub fn server(op: Opcode, code: ResultCode) -> Error {
        Error::Server { op: op.name(), code }
    }

    /// The sheep result code when the server answered with an error.
    pub fn code(&self) -> Option<ResultCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn errno(&self) -> i32 {
        match self {
            Error::Connect { .. } | Error::NoGateway(_) => e::ECONNREFUSED,
            Error::ConnectTimeout { .. } | Error::Timeout { .. } => e::ETIMEDOUT,
            Error::Io { .. } | Error::Closed(_) => e::EIO,
            Error::Protocol { .. } | Error::Stream { .. } => e::EPROTO,
            Error::Server { code, .. } => code.errno(),
            Error::Invalid(_) => e::EINVAL,
        }
    }

    /// Whether the connection is broken or untrusted and in-flight requests must be resent
    /// on a new one.
    pub fn should_reconnect(&self) -> bool {
        matches!(
            self,
            Error::Io { .. }
                | Error::Closed(_)
                | Error::Timeout { .. }
                | Error::Protocol { .. }
                | Error::Stream { .. }
        )
    }
}
