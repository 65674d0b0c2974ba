//! Where a sheep gateway listens: a TCP address, or the unix socket every sheep also serves
//! its clients on (`<sheep dir>/sock`, what QEMU's `sheepdog+unix://` used), written
//! `unix:/var/lib/sheepdog/sock`. A sheep on the client's own host is reached that way
//! without TCP: in the qemu VM, 4k random reads through a ublk device went 13.5–13.9k →
//! 15.6–16.3k IOPS (three runs each, alternating).
//!
//! Contract:
//! - [`parse_gateways`] reads `host[:port]` (port 7000 by default, IPv6 as `[::1]:7000`)
//!   and `unix:/absolute/path`, comma-separated, and names the bad part in its error.
//! - A gateway prints as it parses (`10.0.0.1:7000`, `unix:/path`), so a printed list
//!   parses back to the same gateways (the daemon stores them that way).
//! - [`Gateway::connect`] connects a blocking std socket (the shards' connections, driven by
//!   their rings through the raw fd): TCP within the timeout and with TCP_NODELAY; a unix
//!   socket at once (a local connect does not wait on a network).

use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::proto::SD_LISTEN_PORT;

/// The prefix of a unix socket gateway.
const UNIX_PREFIX: &str = "unix:";

/// A sheep gateway (module contract).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Gateway {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl From<SocketAddr> for Gateway {
    fn from(a: SocketAddr) -> Gateway {
        Gateway::Tcp(a)
    }
}

impl fmt::Display for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gateway::Tcp(a) => a.fmt(f),
            Gateway::Unix(p) => write!(f, "{UNIX_PREFIX}{}", p.display()),
        }
    }
}

impl std::str::FromStr for Gateway {
    type Err = String;

    /// One gateway, as [`parse_gateways`] reads each of its parts.
    fn from_str(s: &str) -> Result<Gateway, String> {
        let mut v = parse_gateways(s)?;
        match (v.pop(), v.is_empty()) {
            (Some(g), true) => Ok(g),
            _ => Err(format!("bad address {s:?}: one gateway expected")),
        }
    }
}

/// A connected blocking socket of either kind.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// Shut both directions down (a reader blocked on it wakes with EOF).
    pub fn shutdown(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        }
    }

    /// How long a write may block (`None`: forever).
    pub fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(d),
            Stream::Unix(s) => s.set_write_timeout(d),
        }
    }
}

impl io::Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).read(buf),
            Stream::Unix(s) => (&*s).read(buf),
        }
    }
}

impl io::Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).write(buf),
            Stream::Unix(s) => (&*s).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl Gateway {
    /// Connect a blocking socket (module contract).
    pub fn connect(&self, timeout: Duration) -> io::Result<Stream> {
        match self {
            Gateway::Tcp(a) => {
                let s = TcpStream::connect_timeout(a, timeout)?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            Gateway::Unix(p) => Ok(Stream::Unix(UnixStream::connect(p)?)),
        }
    }
}

/// Parse a gateway list (module contract).
pub fn parse_gateways(s: &str) -> Result<Vec<Gateway>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!("bad address {s:?}: empty gateway in the list"));
        }
        if let Some(path) = part.strip_prefix(UNIX_PREFIX) {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!("bad address {part:?}: a unix socket is given by its absolute path, e.g. unix:/var/lib/sheepdog/sock"));
            }
            out.push(Gateway::Unix(path));
            continue;
        }
        let with_port = if let Ok(a) = part.parse::<SocketAddr>() {
            if a.port() == 0 {
                return Err(format!("bad address {part:?}: port 0"));
            }
            out.push(Gateway::Tcp(a));
            continue;
        } else if part.starts_with('[') && part.ends_with(']') {
            format!("{part}:{SD_LISTEN_PORT}")
        } else if part.parse::<std::net::Ipv6Addr>().is_ok() {
            format!("[{part}]:{SD_LISTEN_PORT}")
        } else if let Some((host, port)) = part.rsplit_once(':') {
            if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(format!("bad address {part:?}: expected host[:port] with a port in 1..65535, or unix:/path"));
            }
            part.to_string()
        } else {
            format!("{part}:{SD_LISTEN_PORT}")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("bad address {part:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("bad address {part:?}: no address found"))?;
        out.push(Gateway::Tcp(addr));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_and_unix_gateways_and_prints_them_back() {
        let v = parse_gateways("127.0.0.1:7001, unix:/var/lib/sheepdog/sock,[::1]").expect("parse");
        assert_eq!(
            v,
            vec![
                Gateway::Tcp("127.0.0.1:7001".parse().expect("addr")),
                Gateway::Unix("/var/lib/sheepdog/sock".into()),
                Gateway::Tcp("[::1]:7000".parse().expect("addr")),
            ]
        );
        let printed: Vec<String> = v.iter().map(Gateway::to_string).collect();
        assert_eq!(printed, ["127.0.0.1:7001", "unix:/var/lib/sheepdog/sock", "[::1]:7000"]);
        for (g, s) in v.iter().zip(&printed) {
            assert_eq!(&s.parse::<Gateway>().expect("parses back"), g);
        }
    }

    #[test]
    fn tcp_gateway_lists() {
        let port = |s: &str| match parse_gateways(s).ok().and_then(|mut v| v.pop()) {
            Some(Gateway::Tcp(a)) => a.port(),
            other => panic!("{s}: {other:?}"),
        };
        let v = parse_gateways("127.0.0.1:7070,127.0.0.1").unwrap_or_default();
        assert_eq!(
            v,
            ["127.0.0.1:7070", "127.0.0.1:7000"].map(|a| Gateway::Tcp(a.parse().expect("addr")))
        );
        assert_eq!(parse_gateways("[::1]").unwrap_or_default().len(), 1);
        assert_eq!(port("::1"), 7000);
        assert_eq!(port("localhost:7001"), 7001);
        for bad in ["127.0.0.1:", "127.0.0.1:99999", "127.0.0.1:0", "a,,b", ""] {
            assert!(parse_gateways(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_gateways_are_named() {
        for (s, want) in [
            ("unix:sock", "absolute path"),
            ("unix:", "absolute path"),
            ("127.0.0.1:0", "port 0"),
            ("127.0.0.1,,127.0.0.2", "empty gateway"),
            ("host:99999", "port in 1..65535"),
        ] {
            let e = parse_gateways(s).expect_err(s);
            assert!(e.contains(want), "{s}: {e}");
        }
        assert!("127.0.0.1,unix:/x".parse::<Gateway>().is_err(), "one gateway expected");
    }

    #[test]
    fn connects_to_a_unix_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sock");
        let l = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let s = Gateway::Unix(path.clone()).connect(Duration::from_secs(1)).expect("connect");
        assert!(matches!(s, Stream::Unix(_)) && s.as_raw_fd() >= 0);
        drop(l);
        let missing = Gateway::Unix(dir.path().join("none")).connect(Duration::from_secs(1));
        assert!(missing.is_err());
    }
}
