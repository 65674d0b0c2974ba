//! Store-side faults for tests, set at run time through [`Faults`] (from
//! [`Store::faults`](super::Store::faults)): a slow disk and error results. A restart is
//! [`Store::restart`](super::Store::restart).
//!
//! Contract:
//! - [`Faults::fail_next`]`(n, only, code)`: the next `n` requests of opcode `only` (or, with
//!   `None`, the next `n` object requests: CREATE_AND_WRITE, READ, WRITE, REMOVE, DISCARD)
//!   are answered `code` without being executed: nothing on disk changes, and a READ_OBJ
//!   answer carries no payload. Requests are counted when a worker takes them, so with
//!   several in flight which ones fail is not defined, only how many. A new call replaces
//!   what is left of the previous one.
//! - [`Faults::set_object_delay`]: every object read, write and create waits that long
//!   before it runs (starts as [`Config::object_delay`](super::Config::object_delay)).
//! - Faults belong to one running store: a restarted store starts with none but the
//!   configured delay.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::proto::{Opcode, ResultCode};

#[derive(Debug, Clone, Copy)]
struct Rule {
    code: ResultCode,
    left: u32,
    only: Option<Opcode>,
}

#[derive(Debug, Default)]
struct State {
    rule: Mutex<Option<Rule>>,
    delay_ns: AtomicU64,
    failed: AtomicU64,
}

/// Run-time fault controls of one store; see the module contract. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    st: Arc<State>,
}

impl Faults {
    pub(super) fn new(object_delay: Duration) -> Faults {
        let f = Faults::default();
        f.set_object_delay(object_delay);
        f
    }

    /// Answer the next `n` requests of opcode `only` (`None`: object requests) with `code`.
    pub fn fail_next(&self, n: u32, only: Option<Opcode>, code: ResultCode) {
        *self.st.rule.lock().unwrap_or_else(PoisonError::into_inner) =
            (n > 0).then_some(Rule { code, left: n, only });
    }

    /// Requests answered with an injected error so far.
    pub fn failed(&self) -> u64 {
        self.st.failed.load(Ordering::SeqCst)
    }

    /// Emulated disk latency of every object read, write and create from now on.
    pub fn set_object_delay(&self, d: Duration) {
        self.st.delay_ns.store(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub(super) fn object_delay(&self) -> Duration {
        Duration::from_nanos(self.st.delay_ns.load(Ordering::Relaxed))
    }

    /// The injected result for a request of `op`, if it is one of those to fail.
    pub(super) fn take(&self, op: Opcode) -> Option<ResultCode> {
        let mut rule = self.st.rule.lock().unwrap_or_else(PoisonError::into_inner);
        let r = rule.as_mut()?;
        let hit = match r.only {
            Some(o) => o == op,
            None => matches!(
                op,
                Opcode::CreateAndWriteObj
                    | Opcode::ReadObj
                    | Opcode::WriteObj
                    | Opcode::RemoveObj
                    | Opcode::DiscardObj
            ),
        };
        if !hit {
            return None;
        }
        let code = r.code;
        r.left -= 1;
        if r.left == 0 {
            *rule = None;
        }
        self.st.failed.fetch_add(1, Ordering::SeqCst);
        Some(code)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};

    use super::super::{Config, Store};
    use crate::proto::*;

    fn call(s: &mut TcpStream, h: ReqHeader, payload: &[u8]) -> (RspHeader, Vec<u8>) {
        let mut b = h.encode().to_vec();
        b.extend_from_slice(payload);
        s.write_all(&b).expect("send");
        let mut head = [0u8; HEADER_LEN];
        s.read_exact(&mut head).expect("header");
        let r = RspHeader::decode(&head);
        let mut d = vec![0u8; r.data_length as usize];
        s.read_exact(&mut d).expect("payload");
        (r, d)
    }

    fn connect(a: SocketAddr) -> TcpStream {
        let s = TcpStream::connect(a).expect("connect");
        s.set_read_timeout(Some(std::time::Duration::from_secs(20))).expect("timeout");
        s
    }

    fn new_vdi(s: &mut TcpStream) -> RspHeader {
        let mut name = [0u8; SD_MAX_VDI_LEN];
        name[..1].copy_from_slice(b"v");
        call(
            s,
            ReqHeader::vdi(
                Opcode::NewVdi,
                SD_FLAG_CMD_WRITE,
                SD_MAX_VDI_LEN as u32,
                VdiArgs { vdi_size: 1 << 22, ..Default::default() },
            ),
            &name,
        )
        .0
    }

    #[test]
    fn error_results_then_a_restart_on_the_same_address() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = Config {
            dir: dir.path().to_path_buf(),
            listen: vec!["127.0.0.1:0".parse().expect("addr")],
            sync: false,
            workers: 2,
            ..Default::default()
        };
        let store = Store::start(cfg).expect("store");
        let addr = store.local_addrs()[0];
        let mut c = connect(addr);
        let vid = new_vdi(&mut c).vdi_id();
        let oid = Oid::data(Vid(vid), 0);
        let write = |len: u32| {
            ReqHeader::obj(
                Opcode::CreateAndWriteObj,
                SD_FLAG_CMD_WRITE,
                len,
                ObjArgs { oid, ..Default::default() },
            )
        };
        let read = ReqHeader::obj(Opcode::ReadObj, 0, 4, ObjArgs { oid, ..Default::default() });
        store.faults().fail_next(2, Some(Opcode::CreateAndWriteObj), SD_RES_EIO);
        // Other opcodes pass; the next two creates fail and change nothing.
        assert_eq!(call(&mut c, read, &[]).0.result, SD_RES_NO_OBJ);
        assert_eq!(call(&mut c, write(4), b"abcd").0.result, SD_RES_EIO);
        assert_eq!(call(&mut c, read, &[]).0.result, SD_RES_NO_OBJ);
        assert_eq!(call(&mut c, write(4), b"abcd").0.result, SD_RES_EIO);
        assert_eq!(call(&mut c, write(4), b"abcd").0.result, SD_RES_SUCCESS);
        assert_eq!(store.faults().failed(), 2);
        // Object requests of any opcode, with a payload-less answer.
        store.faults().fail_next(1, None, SD_RES_NO_SPACE);
        let (r, d) = call(&mut c, read, &[]);
        assert_eq!((r.result, d.len()), (SD_RES_NO_SPACE, 0));
        assert_eq!(call(&mut c, read, &[]).1, b"abcd");
        // A restart while a client holds a connection: the same address at once, same data.
        let store = store.restart().expect("restart binds the same address at once");
        assert_eq!(store.local_addrs(), &[addr]);
        let mut buf = [0u8; 1];
        assert!(c.read(&mut buf).map_or(true, |n| n == 0), "the old connection ended");
        let mut c = connect(addr);
        assert_eq!(call(&mut c, read, &[]).1, b"abcd");
        assert_eq!(store.faults().failed(), 0);
        drop(c);
        // Twice more, with connections closed by the store (TIME_WAIT on its side).
        let store = store.restart().expect("second restart").restart().expect("third restart");
        assert_eq!(call(&mut connect(addr), read, &[]).1, b"abcd");
        store.shutdown();
    }
}
