//! Fault injection for tests: a TCP proxy between sheep clients (shards, the control-plane
//! client) and a sheep endpoint (the embedded store or a real sheep) that breaks the path on
//! command. Test tooling, not the data path: std threads, blocking sockets, locks.
//!
//! Contract:
//! - [`Proxy::start`] binds `listen`, and for every accepted client opens one connection to
//!   `target` and relays bytes both ways on one thread per connection pair (non-blocking
//!   sockets, `poll` with a 10 ms tick, so every control below takes effect within a tick).
//!   A client whose target connection cannot be made is closed at once.
//! - Faults are set at run time through a [`Handle`] (cloneable, `Send`):
//!   - [`Handle::drop_all`]: close every connection pair now (both sides see EOF);
//!   - [`Handle::set_accepting`]`(false)`: accept and close every new client at once, until
//!     set back to `true`;
//!   - [`Handle::stall`]: forward nothing either way for a while; the sockets stay open and
//!     connections made during the stall stall too;
//!   - [`Handle::set_delay`]: sleep that long before forwarding each chunk read (either
//!     direction) until set back to zero;
//!   - [`Handle::cut_next`]: cut one server→client response of the next connection to
//!     receive one ([`Which`]): the bytes before the cut point (the middle of its payload, or
//!     of its 48-byte header when it has none; see `frame.rs`) are forwarded and flushed to
//!     the client, then the pair ends — with an RST (SO_LINGER 0: the client reads the part,
//!     then ECONNRESET) for [`Cut::Reset`], with a FIN (the client reads the part, then EOF)
//!     for [`Cut::Truncate`]. Arming again before the cut happened replaces the pending cut.
//! - Every fault injected (a drop, a refused client, a stall, a delay set, a cut performed)
//!   adds one to [`Handle::injected`] and is sent as an [`Event`] to every receiver from
//!   [`Handle::events`] (a CLI prints them; a test waits on them).
//! - Dropping the [`Proxy`] stops accepting, closes every pair and joins every thread.
//!
//! Store-side faults (slow disk, error results, restart) live in [`crate::store`].

mod frame;
mod proxy;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

pub use frame::{CutPoint, Framer};
pub use proxy::Proxy;

/// How a chosen response ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Forward part of it, then reset the connection (the client sees ECONNRESET).
    Reset,
    /// Forward part of it, then close the connection (the client sees EOF).
    Truncate,
}

/// Which response a [`Cut`] applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The next response, with a payload or not.
    Any,
    /// The next response that carries a payload (a READ_OBJ answer, say).
    WithPayload,
}

/// One fault injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Every connection pair was closed.
    Dropped { connections: usize },
    /// A new client was accepted and closed at once.
    Refused { peer: SocketAddr },
    /// Nothing is forwarded for this long.
    Stalled { duration: Duration },
    /// Each forwarded chunk now waits this long (zero: no more delay).
    Delay { delay: Duration },
    /// A response was cut: `sent` of its `48 + data_length` bytes reached the client.
    Cut { how: Cut, connection: u64, id: u32, data_length: u32, sent: u64, in_payload: bool },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Dropped { connections } => write!(f, "dropped {connections} connections"),
            Fault::Refused { peer } => write!(f, "refused a connection from {peer}"),
            Fault::Stalled { duration } => write!(f, "stalled every connection for {duration:?}"),
            Fault::Delay { delay } => write!(f, "delay per forwarded chunk set to {delay:?}"),
            Fault::Cut { how, connection, id, data_length, sent, in_payload } => write!(
                f,
                "{} connection {connection} after {sent} of {} bytes of response {id:#x} ({})",
                match how {
                    Cut::Reset => "reset",
                    Cut::Truncate => "truncated",
                },
                48 + u64::from(*data_length),
                if *in_payload { "mid-payload" } else { "mid-header" }
            ),
        }
    }
}

/// A fault and when it was injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at: SystemTime,
    pub fault: Fault,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The fault settings every relay thread reads.
struct Faults {
    accepting: AtomicBool,
    stop: AtomicBool,
    /// Bumped by `drop_all`: a pair started under an older generation closes.
    generation: AtomicU64,
    stall_until: Mutex<Option<Instant>>,
    delay_ns: AtomicU64,
    armed: Mutex<Option<(Cut, Which)>>,
    injected: AtomicU64,
    subscribers: Mutex<Vec<Sender<Event>>>,
    /// Pairs relaying now.
    live: AtomicU64,
}

impl Faults {
    fn new() -> Faults {
        Faults {
            accepting: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            stall_until: Mutex::new(None),
            delay_ns: AtomicU64::new(0),
            armed: Mutex::new(None),
            injected: AtomicU64::new(0),
            subscribers: Mutex::new(Vec::new()),
            live: AtomicU64::new(0),
        }
    }

    fn record(&self, fault: Fault) {
        self.injected.fetch_add(1, Ordering::SeqCst);
        let ev = Event { at: SystemTime::now(), fault };
        lock(&self.subscribers).retain(|s| s.send(ev.clone()).is_ok());
    }

    /// How much longer the stall lasts, if one is on.
    fn stalled_for(&self) -> Option<Duration> {
        let until = (*lock(&self.stall_until))?;
        until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
    }

    fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_ns.load(Ordering::Relaxed))
    }

    /// Take the armed cut if it applies to a response with `data_length` bytes of payload.
    fn take_cut(&self, data_length: u32) -> Option<Cut> {
        let mut armed = lock(&self.armed);
        match *armed {
            Some((how, which)) if which == Which::Any || data_length > 0 => {
                *armed = None;
                Some(how)
            }
            _ => None,
        }
    }
}

/// Run-time control of a [`Proxy`]'s faults; see the module contract.
#[derive(Clone)]
pub struct Handle {
    faults: Arc<Faults>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle").field("injected", &self.injected()).finish_non_exhaustive()
    }
}

impl Handle {
    /// Close every connection pair now; returns how many there were.
    pub fn drop_all(&self) -> usize {
        self.faults.generation.fetch_add(1, Ordering::SeqCst);
        let n = usize::try_from(self.faults.live.load(Ordering::SeqCst)).unwrap_or(usize::MAX);
        self.faults.record(Fault::Dropped { connections: n });
        n
    }

    /// Accept new clients (`true`, the default), or close each one as soon as it connects.
    pub fn set_accepting(&self, on: bool) {
        self.faults.accepting.store(on, Ordering::SeqCst);
    }

    /// Forward nothing, either way, for `d` from now (replaces a stall in progress).
    pub fn stall(&self, d: Duration) {
        *lock(&self.faults.stall_until) = Some(Instant::now() + d);
        self.faults.record(Fault::Stalled { duration: d });
    }

    /// Sleep `d` before forwarding each chunk (zero: no delay).
    pub fn set_delay(&self, d: Duration) {
        self.faults
            .delay_ns
            .store(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.faults.record(Fault::Delay { delay: d });
    }

    /// Cut the next server→client response chosen by `which`, ending its connection `how`.
    pub fn cut_next(&self, how: Cut, which: Which) {
        *lock(&self.faults.armed) = Some((how, which));
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.faults.injected.load(Ordering::SeqCst)
    }

    /// Connection pairs relaying now.
    pub fn connections(&self) -> u64 {
        self.faults.live.load(Ordering::SeqCst)
    }

    /// Every fault injected from now on, as it happens.
    pub fn events(&self) -> Receiver<Event> {
        let (tx, rx) = mpsc::channel();
        lock(&self.faults.subscribers).push(tx);
        rx
    }
}
