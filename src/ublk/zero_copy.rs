//! Zero copy: whether this kernel can serve a sheep device from the requests' own pages,
//! and which buffer-table entries of a core's ring each attached queue's tags use.
//!
//! Contract:
//! - [`support`] asks once per process: the driver must have UBLK_F_AUTO_BUF_REG and
//!   UBLK_F_USER_COPY (GET_FEATURES; 6.16+), and the kernel's io_uring must send from a
//!   registered buffer with SEND_ZC — tried for real on a loopback TCP pair with a ring of
//!   its own. Whether the ring can also read a socket into a registered buffer (READ_FIXED)
//!   is tried the same way; where it cannot, a read's data is copied into the request's
//!   pages by user copy (`pwrite` on the char device), still without a bounce buffer.
//! - [`decide`] turns `add --zero-copy auto|on|off` into yes or no before ADD_DEV (the
//!   driver offers no copy fallback for a device created without it, and no zero copy for
//!   one created with a copy mode): `auto` takes it where [`support`] says yes, `on` fails
//!   with one line saying why not, `off` never. Null devices and `--own-buffers` devices
//!   never use it.
//! - [`Table`] hands out contiguous runs of entries of a core's buffer table (one entry per
//!   tag of an attached queue, [`TABLE_ENTRIES`] per core) and takes them back when the
//!   queue ends.
//! - [`Registering`] decides, tag by tag, whether the driver should register the pages of
//!   a zero-copy queue's next request at all: registering and unregistering a request's
//!   pages costs the driver work on every request, and gains nothing for one under
//!   [`REG_MIN`] (its bytes are copied either way: see `shard::ZC_SEND_MIN`). A tag that
//!   should not register names [`NO_ENTRY`], an entry past the table: the driver's
//!   registration fails at once and, with the FALLBACK flag, hands the request over
//!   flagged NEED_REG_BUF, to be served by user copy. A queue registers while one of its
//!   last [`Registering::window`] requests was large (and from the start), so a large
//!   request after a run of small ones is copied once and turns registering back on.

use std::sync::OnceLock;

use io_uring::{cqueue, opcode, types, IoUring};
use libublk::sys;
use serde::{Deserialize, Serialize};

/// `add --zero-copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZeroCopy {
    #[default]
    Auto,
    On,
    Off,
}

impl std::str::FromStr for ZeroCopy {
    type Err = String;
    fn from_str(s: &str) -> Result<ZeroCopy, String> {
        match s {
            "auto" => Ok(ZeroCopy::Auto),
            "on" => Ok(ZeroCopy::On),
            "off" => Ok(ZeroCopy::Off),
            _ => Err(format!("zero copy {s:?} must be auto, on or off")),
        }
    }
}

/// What this kernel can do for zero copy (module contract).
#[derive(Debug, Clone)]
pub struct Support {
    /// Devices can be created with AUTO_BUF_REG and sent from; `Err`: why not.
    pub usable: Result<(), String>,
    /// The ring reads sockets into registered buffers (READ_FIXED).
    pub ring_reads: bool,
}

/// Entries of each core ring's buffer table (io_uring's most, IORING_MAX_REG_BUFFERS).
pub const TABLE_ENTRIES: u32 = 1 << 14;

/// This kernel's zero-copy support, asked once (module contract).
pub fn support() -> &'static Support {
    static S: OnceLock<Support> = OnceLock::new();
    S.get_or_init(probe)
}

fn probe() -> Support {
    let need = u64::from(sys::UBLK_F_AUTO_BUF_REG | sys::UBLK_F_USER_COPY);
    let no = |why: String| Support { usable: Err(why), ring_reads: false };
    match super::features::driver() {
        None => {
            return no("the ublk driver cannot say what it has (GET_FEATURES, Linux 6.5+)".into())
        }
        Some(f) if f & need != need => {
            return no("this kernel's ublk driver has no UBLK_F_AUTO_BUF_REG (Linux 6.16+)".into())
        }
        Some(_) => {}
    }
    match try_ring() {
        Ok(ring_reads) => Support { usable: Ok(()), ring_reads },
        Err(e) => no(format!(
            "this kernel's io_uring cannot send from a registered buffer (SEND_ZC): {e}"
        )),
    }
}

/// Send 4 KiB with SEND_ZC from a registered buffer over loopback TCP and read it back
/// with READ_FIXED into another: `Err` when the send fails, else whether the read worked
/// (and read the bytes sent).
fn try_ring() -> std::io::Result<bool> {
    use std::io::Error;
    use std::os::fd::AsRawFd;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let tx = std::net::TcpStream::connect(listener.local_addr()?)?;
    let (rx, _) = listener.accept()?;
    let mut ring = IoUring::new(8)?;
    let mut bufs = vec![0x5au8; 8192];
    bufs[4096..].fill(0);
    let iov = [
        libc::iovec { iov_base: bufs.as_mut_ptr().cast(), iov_len: 4096 },
        // SAFETY: the second half of the same live allocation.
        libc::iovec { iov_base: unsafe { bufs.as_mut_ptr().add(4096) }.cast(), iov_len: 4096 },
    ];
    // SAFETY: both iovecs point into `bufs`, which outlives the ring (dropped first below).
    unsafe { ring.submitter().register_buffers(&iov)? };
    let run = |ring: &mut IoUring, sqe: io_uring::squeue::Entry, notif: bool| {
        // SAFETY: what the entry points to (registered buffers) lives until the ring goes.
        unsafe { ring.submission().push(&sqe).map_err(|_| Error::other("ring full"))? };
        let want = if notif { 2 } else { 1 };
        let mut res = None;
        let mut seen = 0;
        while seen < want {
            ring.submit_and_wait(1)?;
            for cqe in ring.completion() {
                seen += 1;
                if !cqueue::notif(cqe.flags()) {
                    res = Some(cqe.result());
                    if !cqueue::more(cqe.flags()) {
                        seen = want;
                    }
                }
            }
        }
        let r = res.unwrap_or(-libc::EIO);
        if r < 0 {
            Err(Error::from_raw_os_error(-r))
        } else {
            Ok(r as usize)
        }
    };
    let send = opcode::SendZc::new(types::Fd(tx.as_raw_fd()), bufs.as_ptr(), 4096)
        .buf_index(Some(0))
        .flags(libc::MSG_NOSIGNAL)
        .build();
    let sent = run(&mut ring, send, true)?;
    if sent != 4096 {
        return Err(Error::other(format!("sent {sent} of 4096 bytes")));
    }
    // SAFETY: the second registered buffer, 4096 bytes of `bufs`.
    let into = unsafe { bufs.as_mut_ptr().add(4096) };
    let read = opcode::ReadFixed::new(types::Fd(rx.as_raw_fd()), into, 4096, 1).build();
    let reads = match run(&mut ring, read, false) {
        Ok(n) if n == 4096 && bufs[4096..].iter().all(|&b| b == 0x5a) => true,
        Ok(_) | Err(_) => false,
    };
    drop(ring);
    Ok(reads)
}

/// Whether a new device uses zero copy (module contract); `Err`: the one line why `on`
/// cannot be had.
pub fn decide(mode: ZeroCopy, null: bool, own_buffers: bool) -> Result<bool, String> {
    match mode {
        ZeroCopy::Off => Ok(false),
        _ if null => Ok(false),
        ZeroCopy::On if own_buffers => {
            Err("--own-buffers and --zero-copy on exclude each other".into())
        }
        ZeroCopy::Auto if own_buffers => Ok(false),
        ZeroCopy::Auto => Ok(support().usable.is_ok()),
        ZeroCopy::On => {
            support().usable.clone().map(|()| true).map_err(|why| format!("no zero copy: {why}"))
        }
    }
}

/// The ublk flags of a zero-copy device: AUTO_BUF_REG, and USER_COPY for what the ring
/// cannot move (reads it cannot receive into the pages, zeros, the registration fallback).
pub fn flags() -> u64 {
    u64::from(sys::UBLK_F_AUTO_BUF_REG | sys::UBLK_F_USER_COPY)
}

/// Requests of at least this many bytes are worth registering (module contract): a write
/// from here on is sent from its pages (`shard::ZC_SEND_MIN`), a read received into them.
pub const REG_MIN: u32 = crate::shard::ZC_SEND_MIN;

/// The buffer-table entry a tag names when its next request should not be registered: past
/// every table, so the driver's registration fails without touching one.
pub const NO_ENTRY: u16 = u16::MAX;
const _: () = assert!((NO_ENTRY as u32) >= TABLE_ENTRIES);

/// Whether a zero-copy queue registers its next requests' pages (module contract). Owned by
/// the queue's core; its tags share it.
#[derive(Debug)]
pub struct Registering {
    /// Requests the queue was given.
    seen: std::cell::Cell<u64>,
    /// `seen` at the last request of [`REG_MIN`] bytes or more.
    last_large: std::cell::Cell<u64>,
    window: u64,
}

impl Registering {
    /// For a queue of `depth` tags: registering stops after two full queues' worth of small
    /// requests (and at least 64).
    pub fn new(depth: u16) -> Registering {
        let window = (2 * u64::from(depth)).max(64);
        Registering { seen: 0.into(), last_large: 0.into(), window }
    }

    pub fn window(&self) -> u64 {
        self.window
    }

    /// The queue was given a request of `len` bytes (`data`: a read or write).
    pub fn saw(&self, data: bool, len: u32) {
        let n = self.seen.get() + 1;
        self.seen.set(n);
        if data && len >= REG_MIN {
            self.last_large.set(n);
        }
    }

    /// Whether the tag that just served a request should have the next one registered.
    pub fn register_next(&self) -> bool {
        self.seen.get() - self.last_large.get() < self.window
    }

    /// The entry to name for a tag whose own entry is `entry`.
    pub fn entry(&self, entry: u16) -> u16 {
        if self.register_next() {
            entry
        } else {
            NO_ENTRY
        }
    }
}

/// A core's buffer-table entries (module contract).
pub struct Table {
    used: Vec<bool>,
}

impl Table {
    pub fn new(entries: u32) -> Table {
        Table { used: vec![false; entries as usize] }
    }

    /// The first of `n` free contiguous entries, now taken; `None` when there is no such run.
    pub fn take(&mut self, n: u16) -> Option<u16> {
        let n = usize::from(n);
        let mut run = 0;
        for i in 0..self.used.len() {
            run = if self.used[i] { 0 } else { run + 1 };
            if run == n {
                let first = i + 1 - n;
                self.used[first..=i].iter_mut().for_each(|u| *u = true);
                return u16::try_from(first).ok();
            }
        }
        None
    }

    /// Give back `n` entries from `first`.
    pub fn give(&mut self, first: u16, n: u16) {
        let (a, b) = (usize::from(first), usize::from(first) + usize::from(n));
        if let Some(r) = self.used.get_mut(a..b) {
            r.iter_mut().for_each(|u| *u = false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registering_stops_after_a_window_of_small_requests_and_resumes_on_a_large_one() {
        let r = Registering::new(16);
        assert_eq!(r.window(), 64);
        assert!(r.register_next(), "a new queue registers");
        for _ in 0..63 {
            r.saw(true, 4096);
        }
        assert!(r.register_next(), "63 small requests are inside the window");
        r.saw(true, 4096);
        assert!(!r.register_next(), "64 small requests in a row end registering");
        assert_eq!(r.entry(7), NO_ENTRY);
        // Flushes and other requests without data count as small ones.
        r.saw(false, 1 << 20);
        assert!(!r.register_next());
        r.saw(true, REG_MIN);
        assert!(r.register_next(), "a large request turns it back on");
        assert_eq!(r.entry(7), 7);
        for _ in 0..63 {
            r.saw(true, REG_MIN - 1);
        }
        assert!(r.register_next());
        r.saw(true, 512);
        assert!(!r.register_next());
        assert_eq!(Registering::new(128).window(), 256);
    }

    #[test]
    fn table_runs_are_contiguous_disjoint_and_come_back() {
        let mut t = Table::new(10);
        assert_eq!(t.take(4), Some(0));
        assert_eq!(t.take(4), Some(4));
        assert_eq!(t.take(4), None, "only 2 left");
        t.give(0, 4);
        assert_eq!(t.take(3), Some(0));
        assert_eq!(t.take(2), Some(8));
        assert_eq!(t.take(1), Some(3));
        assert_eq!(t.take(1), None);
    }

    #[test]
    fn the_mode_decides_before_the_device_exists() {
        assert_eq!("auto".parse::<ZeroCopy>(), Ok(ZeroCopy::Auto));
        assert!("yes".parse::<ZeroCopy>().unwrap_err().contains("auto, on or off"));
        assert_eq!(decide(ZeroCopy::Off, false, false), Ok(false));
        assert_eq!(decide(ZeroCopy::On, true, false), Ok(false), "null devices copy nothing");
        assert!(decide(ZeroCopy::On, false, true).unwrap_err().contains("exclude"));
        assert_eq!(decide(ZeroCopy::Auto, false, true), Ok(false));
        // Here (no ublk driver, or one without AUTO_BUF_REG) `on` says why, `auto` is off.
        if support().usable.is_err() {
            assert_eq!(decide(ZeroCopy::Auto, false, false), Ok(false));
            assert!(decide(ZeroCopy::On, false, false).unwrap_err().starts_with("no zero copy: "));
        }
    }

    #[test]
    fn the_ring_half_of_the_probe_sends_and_reads_registered_buffers_here() {
        // The io_uring half does not need ublk. SEND_ZC from a registered buffer is Linux
        // 6.0+ and READ_FIXED 5.1+ (user buffers; a request's pages are 6.15+), and every
        // shard test needs io_uring anyway: on any kernel these tests run on, both work,
        // and the bytes read are the bytes sent.
        assert_eq!(try_ring().map_err(|e| e.to_string()), Ok(true));
    }
}
