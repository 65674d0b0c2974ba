//! The store driven through real TCP sockets, as a client sees it: every test starts a
//! store on `127.0.0.1:0` in a temporary directory and talks the wire protocol with a
//! tiny blocking client. Socket timeouts bound every test; nothing sleeps.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use super::{Config, Store, MAX_PAYLOAD};
use crate::proto::inode::{entry_offset, OFF_TAG};
use crate::proto::*;

const TIMEOUT: Duration = Duration::from_secs(20);
const GIB: u64 = 1 << 30;

fn config(dir: &Path) -> Config {
    Config {
        dir: dir.to_path_buf(),
        listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        locking: false,
        sync: false,
        copies: 3,
        object_delay: std::time::Duration::ZERO,
        workers: 4,
        fast_reads: false,
    }
}

fn start(cfg: Config) -> (Store, SocketAddr) {
    let store = Store::start(cfg).expect("store starts");
    let addr = store.local_addrs()[0];
    (store, addr)
}

struct Client {
    s: TcpStream,
    next_id: u32,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
        s.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
        s.set_write_timeout(Some(TIMEOUT)).expect("write timeout");
        s.set_nodelay(true).expect("nodelay");
        Client { s, next_id: 0 }
    }

    fn send(&mut self, mut h: ReqHeader, payload: &[u8]) -> u32 {
        self.next_id += 1;
        h.id = self.next_id;
        let mut b = h.encode().to_vec();
        b.extend_from_slice(payload);
        self.s.write_all(&b).expect("send request");
        h.id
    }

    fn recv(&mut self) -> (RspHeader, Vec<u8>) {
        let mut head = [0u8; HEADER_LEN];
        self.s.read_exact(&mut head).expect("response header");
        let r = RspHeader::decode(&head);
        assert!(r.data_length <= MAX_PAYLOAD, "absurd response length {}", r.data_length);
        let mut d = vec![0u8; r.data_length as usize];
        self.s.read_exact(&mut d).expect("response payload");
        (r, d)
    }

    fn call(&mut self, h: ReqHeader, payload: &[u8]) -> (RspHeader, Vec<u8>) {
        let id = self.send(h, payload);
        let (r, d) = self.recv();
        assert_eq!(r.id, id);
        assert_eq!(r.opcode, h.opcode);
        (r, d)
    }

    fn new_vdi(&mut self, name: &str, size: u64, base: u32, snapid: u32) -> RspHeader {
        let a = VdiArgs { vdi_size: size, base_vdi_id: base, snapid, ..Default::default() };
        self.call(ReqHeader::vdi(Opcode::NewVdi, SD_FLAG_CMD_WRITE, 256, a), &field(name)).0
    }

    fn vdi_op(
        &mut self,
        op: Opcode,
        name: &str,
        tag: Option<&str>,
        snapid: u32,
        lock_type: u32,
    ) -> RspHeader {
        let mut p = field(name);
        if let Some(t) = tag {
            p.extend_from_slice(&field(t));
        }
        let a = VdiArgs { snapid, lock_type, ..Default::default() };
        self.call(ReqHeader::vdi(op, SD_FLAG_CMD_WRITE, p.len() as u32, a), &p).0
    }

    /// GET_VDI_INFO: Ok(vid) or the result code.
    fn info(&mut self, name: &str, tag: Option<&str>, snapid: u32) -> Result<u32, ResultCode> {
        let r = self.vdi_op(Opcode::GetVdiInfo, name, tag, snapid, 0);
        if r.result.is_success() {
            Ok(r.vdi_id())
        } else {
            Err(r.result)
        }
    }

    fn release(&mut self, vid: u32, lock_type: u32) -> ResultCode {
        let a = VdiArgs { base_vdi_id: vid, lock_type, ..Default::default() };
        self.call(ReqHeader::vdi(Opcode::ReleaseVdi, 0, 0, a), &[]).0.result
    }

    /// An object request; `len` is `data_length` (the payload's length for writes).
    fn obj(
        &mut self,
        op: Opcode,
        flags: u16,
        a: ObjArgs,
        data: &[u8],
        len: u32,
    ) -> (ResultCode, Vec<u8>) {
        let (r, d) = self.call(ReqHeader::obj(op, flags, len, a), data);
        (r.result, d)
    }

    /// REMOVE_OBJ or DISCARD_OBJ of `oid`.
    fn drop_obj(&mut self, op: Opcode, oid: Oid) -> ResultCode {
        self.obj(op, 0, ObjArgs { oid, ..Default::default() }, &[], 0).0
    }

    fn create(&mut self, oid: Oid, off: u32, data: &[u8]) -> ResultCode {
        self.obj(
            Opcode::CreateAndWriteObj,
            SD_FLAG_CMD_WRITE,
            ObjArgs { oid, offset: off, ..Default::default() },
            data,
            data.len() as u32,
        )
        .0
    }

    fn create_cow(&mut self, oid: Oid, cow: Oid, off: u32, data: &[u8]) -> ResultCode {
        let a = ObjArgs { oid, cow_oid: cow, offset: off, ..Default::default() };
        self.obj(
            Opcode::CreateAndWriteObj,
            SD_FLAG_CMD_WRITE | SD_FLAG_CMD_COW,
            a,
            data,
            data.len() as u32,
        )
        .0
    }

    fn write(&mut self, oid: Oid, off: u32, data: &[u8]) -> ResultCode {
        self.obj(
            Opcode::WriteObj,
            SD_FLAG_CMD_WRITE,
            ObjArgs { oid, offset: off, ..Default::default() },
            data,
            data.len() as u32,
        )
        .0
    }

    fn read(&mut self, oid: Oid, off: u32, len: u32) -> (ResultCode, Vec<u8>) {
        self.obj(Opcode::ReadObj, 0, ObjArgs { oid, offset: off, ..Default::default() }, &[], len)
    }

    fn header(&mut self, vid: u32) -> InodeHeader {
        let (r, d) = self.read(Oid::inode(Vid(vid)), 0, SD_INODE_HEADER_SIZE);
        assert_eq!(r, SD_RES_SUCCESS);
        InodeHeader::parse(&d).expect("inode header")
    }

    fn set_entry(&mut self, vid: u32, idx: u32, owner: u32) -> ResultCode {
        self.write(Oid::inode(Vid(vid)), entry_offset(idx), &owner.to_le_bytes())
    }

    fn entry(&mut self, vid: u32, idx: u32) -> u32 {
        let (r, d) = self.read(Oid::inode(Vid(vid)), entry_offset(idx), 4);
        assert_eq!(r, SD_RES_SUCCESS);
        u32::from_le_bytes([d[0], d[1], d[2], d[3]])
    }

    /// What a client does for a write to a fresh index: create, then persist the entry.
    fn write_new(&mut self, vid: u32, idx: u32, off: u32, data: &[u8]) {
        assert_eq!(self.create(Oid::data(Vid(vid), idx), off, data), SD_RES_SUCCESS);
        assert_eq!(self.set_entry(vid, idx, vid), SD_RES_SUCCESS);
    }
}

fn field(s: &str) -> Vec<u8> {
    let mut f = vec![0u8; 256];
    f[..s.len()].copy_from_slice(s.as_bytes());
    f
}

fn exists(dir: &Path, oid: Oid) -> bool {
    dir.join("obj").join(oid.to_string()).exists()
}

#[test]
fn create_lookup_and_double_create() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, addr) = start(config(dir.path()));
    let mut c = Client::connect(addr);
    let r = c.new_vdi("linux", GIB, 0, 0);
    assert_eq!(r.result, SD_RES_SUCCESS);
    assert_eq!((r.vdi_id(), r.vdi_copies(), r.vdi_block_size_shift()), (0xa5d05d, 3, 22));
    assert_eq!(c.info("linux", None, 0), Ok(0xa5d05d));
    let again = c.new_vdi("linux", GIB, 0, 0);
    assert_eq!(again.result, SD_RES_VDI_EXIST);
    let h = c.header(0xa5d05d);
    assert_eq!(
        (h.name_bytes(), h.vdi_size, h.snap_id, h.nr_copies, h.snap_ctime),
        (&b"linux"[..], GIB, 1, 3, 0)
    );
    assert!(exists(dir.path(), Oid::inode(Vid(0xa5d05d))));
    assert_eq!(c.info("nope", None, 0), Err(SD_RES_NO_VDI));

    let (r, _) = c.call(ReqHeader::vdi(Opcode::GetClusterDefault, 0, 0, VdiArgs::default()), &[]);
    assert_eq!((r.result, r.cluster_default()), (SD_RES_SUCCESS, (3, 0, 22)));
    let (r, bitmap) =
        c.call(ReqHeader::vdi(Opcode::ReadVdis, 0, SD_VDI_BITMAP_LEN, VdiArgs::default()), &[]);
    assert_eq!((r.result, bitmap.len()), (SD_RES_SUCCESS, SD_VDI_BITMAP_LEN as usize));
    assert_eq!(bitmap[0xa5d05d / 8] >> (0xa5d05d % 8) & 1, 1);
    assert_eq!(bitmap.iter().map(|b| b.count_ones()).sum::<u32>(), 1);

    // Explicit copies, EC policy and block size.
    let a = VdiArgs {
        vdi_size: GIB,
        copies: 2,
        copy_policy: 0x22,
        block_size_shift: 20,
        ..Default::default()
    };
    let (r, _) = c.call(ReqHeader::vdi(Opcode::NewVdi, SD_FLAG_CMD_WRITE, 256, a), &field("ec"));
    assert_eq!((r.result, r.vdi_copies(), r.vdi_block_size_shift()), (SD_RES_SUCCESS, 6, 20));
}

#[test]
fn snapshot_freezes_the_old_vid_and_lookups_find_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, addr) = start(config(dir.path()));
    let mut c = Client::connect(addr);
    let w = c.new_vdi("linux", GIB, 0, 0).vdi_id();
    c.write_new(w, 0, 0, b"before");
    assert_eq!(c.write(Oid::inode(Vid(w)), OFF_TAG as u32, &field("snap1")), SD_RES_SUCCESS);
    let r = c.new_vdi("linux", GIB, w, 1);
    assert_eq!(r.result, SD_RES_SUCCESS);
    let n = r.vdi_id();
    assert_eq!(n, w + 1);
    let (old, new) = (c.header(w), c.header(n));
    assert!(old.is_snapshot() && !new.is_snapshot());
    assert_eq!((new.snap_id, new.parent_vdi_id, c.entry(n, 0)), (old.snap_id + 1, w, w));
    // The snapshot's data objects are read-only; its inode is not.
    assert_eq!(c.write(Oid::data(Vid(w), 0), 0, b"x"), SD_RES_READONLY);
    assert_eq!(c.create(Oid::data(Vid(w), 1), 0, b"x"), SD_RES_READONLY);
    assert_eq!(c.write(Oid::inode(Vid(w)), OFF_TAG as u32, &field("snap1")), SD_RES_SUCCESS);
    // Lookups: working, by tag, by id, NO_TAG vs NO_VDI.
    assert_eq!(c.info("linux", None, 0), Ok(n));
    assert_eq!(c.info("linux", Some("snap1"), 0), Ok(w));
    assert_eq!(c.info("linux", Some(""), 1), Ok(w));
    assert_eq!(
        c.info("linux", None, 1),
        Err(SD_RES_INVALID_PARMS),
        "a name-only lookup by id crashes real sheep"
    );
    assert_eq!(c.info("linux", Some(""), 2), Err(SD_RES_NO_TAG));
    assert_eq!(c.info("linux", Some("nope"), 0), Err(SD_RES_NO_TAG));
    assert_eq!(c.info("other", Some("snap1"), 0), Err(SD_RES_NO_VDI));
    // Copy-on-write into the new working VDI, then drop its reference to the snapshot's
    // object: the snapshot still holds it, so it stays.
    assert_eq!(c.create_cow(Oid::data(Vid(n), 0), Oid::data(Vid(w), 0), 1, b"A"), SD_RES_SUCCESS);
    assert_eq!(c.read(Oid::data(Vid(n), 0), 0, 6).1, b"bAfore");
    assert_eq!(c.create_cow(Oid::data(Vid(n), 2), Oid::data(Vid(w), 2), 0, b"A"), SD_RES_NO_OBJ);
    assert_eq!(c.set_entry(n, 0, n), SD_RES_SUCCESS);
    assert_eq!(c.read(Oid::data(Vid(w), 0), 0, 6), (SD_RES_SUCCESS, b"before".to_vec()));
    // A snapshot of a snapshot name continues the numbering.
    let n2 = c.new_vdi("linux", GIB, n, 1).vdi_id();
    assert_eq!(c.header(n2).snap_id, 3);
    assert_eq!(c.info("linux", Some(""), 2), Ok(n));
}

#[test]
fn rebase_freezes_the_working_vdi_and_branches_from_the_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, addr) = start(config(dir.path()));
    let mut c = Client::connect(addr);
    let s = c.new_vdi("linux", GIB, 0, 0).vdi_id();
    c.write_new(s, 0, 0, b"s0");
    let n1 = c.new_vdi("linux", GIB, s, 1).vdi_id();
    c.write_new(n1, 1, 0, b"n1");
    let r = c.new_vdi("linux", GIB, s, 1);
    assert_eq!(r.result, SD_RES_SUCCESS);
    let n2 = r.vdi_id();
    assert_eq!(n2, n1 + 1);
    let (h1, h2) = (c.header(n1), c.header(n2));
    assert!(h1.is_snapshot());
    assert_eq!((h2.snap_id, h2.parent_vdi_id, h2.is_snapshot()), (3, s, false));
    assert_eq!((c.entry(n2, 0), c.entry(n2, 1)), (s, 0));
    assert_eq!(c.write(Oid::data(Vid(n1), 1), 0, b"x"), SD_RES_READONLY);
    assert_eq!(c.info("linux", None, 0), Ok(n2));
    assert_eq!(c.info("linux", Some(""), 2), Ok(n1));
    assert_eq!(c.info("linux", Some(""), 1), Ok(s));
    // Snapshot/rebase of a name without a working VDI, or from a missing base.
    assert_eq!(c.new_vdi("ghost", GIB, s, 1).result, SD_RES_NO_VDI);
    assert_eq!(c.new_vdi("linux", GIB, 0x42, 1).result, SD_RES_BASE_VDI_READ);
}

#[test]
fn clone_copies_entries_and_freezes_its_base_in_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, addr) = start(config(dir.path()));
    let mut c = Client::connect(addr);
    let w = c.new_vdi("base", GIB, 0, 0).vdi_id();
    c.write_new(w, 3, 0, b"b");
    let k = c.new_vdi("copy", GIB, w, 0);
    assert_eq!(k.result, SD_RES_SUCCESS);
    let h = c.header(k.vdi_id());
    assert_eq!((h.parent_vdi_id, h.snap_id, c.entry(k.vdi_id(), 3)), (w, 1, w));
    // sheep's trap: the working base still looks writable but its data is read-only.
    assert!(!c.header(w).is_snapshot());
    assert_eq!(c.info("base", None, 0), Ok(w));
    assert_eq!(c.write(Oid::data(Vid(w), 3), 0, b"x"), SD_RES_READONLY);
    assert_eq!(c.new_vdi("copy2", GIB, 0x77, 0).result, SD_RES_BASE_VDI_READ);
}

#[test]
fn second_create_replaces_the_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, addr) = start(config(dir.path()));
    let mut c = Client::connect(addr);
    let oid = Oid::data(Vid(0x1234), 5);
    assert_eq!(c.read(oid, 0, 4).0, SD_RES_NO_OBJ);
    assert_eq!(c.write(oid, 0, b"x"), SD_RES_NO_OBJ);
    assert_eq!(c.create(oid, 0, b"AAAA"), SD_RES_SUCCESS);
    assert_eq!(c.create(oid, 8, b"BB"), SD_RES_SUCCESS);
    let (r, d) = c.read(oid, 0, 12);
    assert_eq!((r, &d[..]), (SD_RES_SUCCESS, &b"\0\0\0\0\0\0\0\0BB\0\0"[..]));
    // No bounds check on reads; writes past the end grow the object.
    assert_eq!(c.read(oid, 4 << 20, 8), (SD_RES_SUCCESS, vec![0; 8]));
    assert_eq!(c.write(oid, (4 << 20) - 1, b"zz"), SD_RES_SUCCESS);
    let len = std::fs::metadata(dir.path().join("obj").join(oid.to_string())).map(|m| m.len()).ok();
    assert_eq!(len, Some((4 << 20) + 1));
    assert_eq!(c.drop_obj(Opcode::RemoveObj, oid), SD_RES_SUCCESS);
    assert_eq!(c.drop_obj(Opcode::RemoveObj, oid), SD_RES_NO_OBJ);
}

#[test]
fn del_vdi_refuses_silently_until_entries_are_zeroed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, addr) = start(config(dir.path()));
    let mut c = Client::connect(addr);
    let v = c.new_vdi("linux", 8 << 20, 0, 0).vdi_id();
    c.write_new(v, 0, 0, b"zero");
    c.write_new(v, 1, 0, b"one");
    let r = c.vdi_op(Opcode::DelVdi, "linux", None, 0, 0);
    assert_eq!((r.result, r.vdi_id()), (SD_RES_SUCCESS, v));
    assert_eq!(c.info("linux", None, 0), Ok(v));
    assert!(exists(dir.path(), Oid::data(Vid(v), 0)) && exists(dir.path(), Oid::data(Vid(v), 1)));
    // Zero the entries the way dog does: the objects nobody shares are reclaimed.
    assert_eq!(c.write(Oid::inode(Vid(v)), entry_offset(0), &[0; 8]), SD_RES_SUCCESS);
    assert!(!exists(dir.path(), Oid::data(Vid(v), 0)) && !exists(dir.path(), Oid::data(Vid(v), 1)));
    assert_eq!(c.read(Oid::data(Vid(v), 0), 0, 4).0, SD_RES_NO_OBJ);
    let r = c.vdi_op(Opcode::DelVdi, "linux", None, 0, 0);
    assert_eq!((r.result, r.vdi_id()), (SD_RES_SUCCESS, v));
    assert_eq!(c.info("linux", None, 0), Err(SD_RES_NO_VDI));
    assert_eq!(c.vdi_op(Opcode::DelVdi, "linux", None, 0, 0).result, SD_RES_NO_VDI);
    // The inode stays with its name zeroed; the bit stays set, so the name moves on.
    assert!(exists(dir.path(), Oid::inode(Vid(v))));
    assert!(c.header(v).is_deleted());
    assert_eq!(c.new_vdi("linux", GIB, 0, 0).vdi_id(), v + 1);
}

#[test]
fn discard_clears_the_entry_and_reclaims_unshared_objects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, addr) = start(config(dir.path()));
    let mut c = Client::connect(addr);
    let v = c.new_vdi("d", GIB, 0, 0).vdi_id();
    c.write_new(v, 7, 0, b"data");
    let oid = Oid::data(Vid(v), 7);
    assert_eq!(c.drop_obj(Opcode::DiscardObj, oid), SD_RES_SUCCESS);
    assert_eq!((c.entry(v, 7), exists(dir.path(), oid)), (0, false));
    assert_eq!(c.drop_obj(Opcode::DiscardObj, oid), SD_RES_SUCCESS);
    assert_eq!(c.drop_obj(Opcode::DiscardObj, Oid::data(Vid(0x99), 0)), SD_RES_NO_OBJ);
    assert_eq!(c.drop_obj(Opcode::DiscardObj, Oid::inode(Vid(v))), SD_RES_INVALID_PARMS);
}

#[test]
fn bad_requests_get_result_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, addr) = start(config(dir.path()));
    let mut c = Client::connect(addr);
    let obj = |op| ReqHeader::obj(op, 0, 0, ObjArgs::default());
    assert_eq!(c.call(obj(Opcode::FlushVdi), &[]).0.result, SD_RES_INVALID_PARMS);
    let mut h = obj(Opcode::ReadObj);
    h.opcode = 0x30;
    assert_eq!(c.call(h, &[]).0.result, SD_RES_INVALID_PARMS);
    h.opcode = 0x80;
    assert_eq!(c.call(h, &[]).0.result, SD_RES_VER_MISMATCH);
    h.proto_ver = 0x0a;
    assert_eq!(c.call(h, &[]).0.result, SD_RES_INVALID_PARMS);
    let mut h = ReqHeader::vdi(Opcode::GetClusterDefault, 0, 0, VdiArgs::default());
    h.proto_ver = 3;
    assert_eq!(c.call(h, &[]).0.result, SD_RES_VER_MISMATCH);
    h.proto_ver = 0;
    assert_eq!(c.call(h, &[]).0.result, SD_RES_SUCCESS);
    // Wrong payload lengths.
    for len in [0usize, 255, 257, 512] {
        let h = ReqHeader::vdi(
            Opcode::NewVdi,
            if len > 0 { SD_FLAG_CMD_WRITE } else { 0 },
            len as u32,
            VdiArgs::default(),
        );
        let mut p = vec![0u8; len];
        p.iter_mut().take(4).for_each(|b| *b = b'x');
        assert_eq!(c.call(h, &p).0.result, SD_RES_INVALID_PARMS, "new_vdi with {len} bytes");
    }
    for op in [Opcode::GetVdiInfo, Opcode::LockVdi, Opcode::DelVdi] {
        for len in [100u32, 300, 768] {
            let h = ReqHeader::vdi(op, SD_FLAG_CMD_WRITE, len, VdiArgs::default());
            assert_eq!(
                c.call(h, &vec![b'a'; len as usize]).0.result,
                SD_RES_INVALID_PARMS,
                "{} with {len} bytes",
                op.name()
            );
        }
    }
    for len in [0, SD_VDI_BITMAP_LEN - 1, SD_VDI_BITMAP_LEN + 1] {
        let (r, d) = c.call(ReqHeader::vdi(Opcode::ReadVdis, 0, len, VdiArgs::default()), &[]);
        assert_eq!((r.result, d.len()), (SD_RES_INVALID_PARMS, 0));
    }
    assert_eq!(c.read(Oid(1), 0, MAX_PAYLOAD + 1).0, SD_RES_INVALID_PARMS);
    // Refused NEW_VDI variants: unknown store policy, absurd block size.
    let a = VdiArgs { vdi_size: GIB, store_policy: 2, ..Default::default() };
    assert_eq!(
        c.call(ReqHeader::vdi(Opcode::NewVdi, SD_FLAG_CMD_WRITE, 256, a), &field("h")).0.result,
        SD_RES_INVALID_PARMS
    );
    let a = VdiArgs { vdi_size: GIB, block_size_shift: 40, ..Default::default() };
    assert_eq!(
        c.call(ReqHeader::vdi(Opcode::NewVdi, SD_FLAG_CMD_WRITE, 256, a), &field("b")).0.result,
        SD_RES_INVALID_PARMS
    );
}

/// sheep 1.0 takes a 256-byte lookup (name, no tag field) with a snapid and then compares
/// a NULL tag with the tag of every candidate: the gateway segfaults once a snapshot of the
/// name is tagged. The store refuses that shape for every name-keyed request, whatever the
/// snapshots look like, and keeps answering the shapes dog sends.
#[test]
fn name_only_lookup_by_snapshot_id_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, addr) = start(config(dir.path()));
    let mut c = Client::connect(addr);
    let w = c.new_vdi("r", GIB, 0, 0).vdi_id();
    assert_eq!(c.write(Oid::inode(Vid(w)), OFF_TAG as u32, &field("t1")), SD_RES_SUCCESS);
    let n = c.new_vdi("r", GIB, w, 1).vdi_id();
    for op in [Opcode::GetVdiInfo, Opcode::LockVdi, Opcode::DelVdi] {
        assert_eq!(
            c.vdi_op(op, "r", None, 1, 0).result,
            SD_RES_INVALID_PARMS,
            "{} name-only with snapid 1",
            op.name()
        );
        assert_eq!(
            c.vdi_op(op, "missing", None, 7, 0).result,
            SD_RES_INVALID_PARMS,
            "{} refused before the name is looked at",
            op.name()
        );
    }
    // The connection is still good and the shapes dog sends still work.
    assert_eq!(c.info("r", Some(""), 1), Ok(w));
    assert_eq!(c.info("r", Some("t1"), 0), Ok(w));
    assert_eq!(c.info("r", Some(""), 0), Ok(n));
    assert_eq!(
        c.info("r", None, 0),
        Ok(n),
        "a name alone without snapid is the working vdi, as in sheep"
    );
}

mod connections;
