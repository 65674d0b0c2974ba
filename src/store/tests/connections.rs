//! The store's connections: payload limits, locks, pipelining and reads (plain and
//! fast), restarts, listeners, shutdown, hyper volumes, start errors.

use super::*;

#[test]
fn oversized_payload_closes_only_that_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, addr) = start(config(dir.path()));
    let mut bad = Client::connect(addr);
    bad.send(
        ReqHeader::obj(Opcode::WriteObj, SD_FLAG_CMD_WRITE, MAX_PAYLOAD + 1, ObjArgs::default()),
        &[],
    );
    let mut b = [0u8; 1];
    assert_eq!(bad.s.read(&mut b).ok(), Some(0), "the store closes the connection");
    let mut good = Client::connect(addr);
    assert_eq!(good.vdi_op(Opcode::GetVdiInfo, "x", None, 0, 0).result, SD_RES_NO_VDI);
}

#[test]
fn locking_on_is_exclusive_and_survives_disconnects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, addr) = start(Config { locking: true, ..config(dir.path()) });
    let mut a = Client::connect(addr);
    let v = a.new_vdi("locked", GIB, 0, 0).vdi_id();
    let r = a.vdi_op(Opcode::LockVdi, "locked", None, 0, LOCK_TYPE_NORMAL);
    assert_eq!((r.result, r.vdi_id(), r.vdi_copies()), (SD_RES_SUCCESS, v, 3));
    assert_eq!(
        a.vdi_op(Opcode::LockVdi, "locked", None, 0, LOCK_TYPE_NORMAL).result,
        SD_RES_VDI_LOCKED
    );
    drop(a);
    let mut b = Client::connect(addr);
    assert_eq!(
        b.vdi_op(Opcode::LockVdi, "locked", None, 0, LOCK_TYPE_NORMAL).result,
        SD_RES_VDI_LOCKED
    );
    assert_eq!(
        b.vdi_op(Opcode::LockVdi, "locked", None, 0, LOCK_TYPE_SHARED).result,
        SD_RES_VDI_LOCKED
    );
    assert_eq!(b.release(v, LOCK_TYPE_NORMAL), SD_RES_SUCCESS);
    assert_eq!(
        b.release(v, LOCK_TYPE_NORMAL),
        SD_RES_SUCCESS,
        "an unlocked vid releases with SUCCESS, as in sheep 1.0"
    );
    assert_eq!(
        b.vdi_op(Opcode::LockVdi, "locked", None, 0, LOCK_TYPE_NORMAL).result,
        SD_RES_SUCCESS
    );
    assert_eq!(
        b.vdi_op(Opcode::LockVdi, "missing", None, 0, LOCK_TYPE_NORMAL).result,
        SD_RES_NO_VDI
    );
    // Shared holders stack; an exclusive lock then conflicts.
    let s = b.new_vdi("shared", GIB, 0, 0).vdi_id();
    for _ in 0..2 {
        assert_eq!(
            b.vdi_op(Opcode::LockVdi, "shared", None, 0, LOCK_TYPE_SHARED).result,
            SD_RES_SUCCESS
        );
    }
    assert_eq!(
        b.vdi_op(Opcode::LockVdi, "shared", None, 0, LOCK_TYPE_NORMAL).result,
        SD_RES_VDI_LOCKED
    );
    assert_eq!(b.release(s, LOCK_TYPE_SHARED), SD_RES_SUCCESS);
    assert_eq!(b.release(s, LOCK_TYPE_SHARED), SD_RES_SUCCESS);
    assert_eq!(
        b.vdi_op(Opcode::LockVdi, "shared", None, 0, LOCK_TYPE_NORMAL).result,
        SD_RES_SUCCESS
    );
    // Locks do not prevent deletion, and deletion drops the lock.
    assert_eq!(b.vdi_op(Opcode::DelVdi, "locked", None, 0, 0).result, SD_RES_SUCCESS);
    assert_eq!(b.release(v, LOCK_TYPE_NORMAL), SD_RES_SUCCESS);
    assert_eq!(
        b.vdi_op(Opcode::LockVdi, "locked", None, 0, LOCK_TYPE_NORMAL).result,
        SD_RES_NO_VDI
    );
}

#[test]
fn locking_off_always_succeeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, addr) = start(config(dir.path()));
    let mut c = Client::connect(addr);
    let v = c.new_vdi("free", GIB, 0, 0).vdi_id();
    for _ in 0..2 {
        let r = c.vdi_op(Opcode::LockVdi, "free", None, 0, LOCK_TYPE_NORMAL);
        assert_eq!((r.result, r.vdi_id()), (SD_RES_SUCCESS, v));
    }
    assert_eq!(c.release(v, LOCK_TYPE_NORMAL), SD_RES_SUCCESS);
    assert_eq!(c.release(v, LOCK_TYPE_NORMAL), SD_RES_SUCCESS);
    assert_eq!(
        c.vdi_op(Opcode::LockVdi, "missing", None, 0, LOCK_TYPE_NORMAL).result,
        SD_RES_NO_VDI
    );
}

#[test]
fn pipelined_requests_are_matched_by_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, addr) = start(config(dir.path()));
    let mut c = Client::connect(addr);
    let big = vec![0x5au8; 4 << 20];
    let mut want: HashMap<u32, (u8, ResultCode)> = HashMap::new();
    let id = c.send(
        ReqHeader::obj(
            Opcode::CreateAndWriteObj,
            SD_FLAG_CMD_WRITE,
            big.len() as u32,
            ObjArgs { oid: Oid(0x10_0000_0000), ..Default::default() },
        ),
        &big,
    );
    want.insert(id, (SD_OP_CREATE_AND_WRITE_OBJ, SD_RES_SUCCESS));
    for i in 0..8u64 {
        let id = c.send(
            ReqHeader::obj(
                Opcode::ReadObj,
                0,
                512,
                ObjArgs { oid: Oid(0x20_0000_0000 + i), ..Default::default() },
            ),
            &[],
        );
        want.insert(id, (SD_OP_READ_OBJ, SD_RES_NO_OBJ));
        let id = c.send(ReqHeader::vdi(Opcode::GetClusterDefault, 0, 0, VdiArgs::default()), &[]);
        want.insert(id, (SD_OP_GET_CLUSTER_DEFAULT, SD_RES_SUCCESS));
    }
    let id = c.send(ReqHeader::obj(Opcode::FlushVdi, 0, 0, ObjArgs::default()), &[]);
    want.insert(id, (SD_OP_FLUSH_VDI, SD_RES_INVALID_PARMS));
    while !want.is_empty() {
        let (r, d) = c.recv();
        let (op, result) = want.remove(&r.id).expect("a response for an id in flight, once");
        assert_eq!((r.opcode, r.result, d.len()), (op, result, 0));
    }
    assert_eq!(c.read(Oid(0x10_0000_0000), (4 << 20) - 2, 2), (SD_RES_SUCCESS, vec![0x5a; 2]));
}

/// A burst of reads (some NO_OBJ, some past the end, more answer bytes than the fast
/// path gathers at once) and writes, all in flight together on one connection; every
/// answer carries the bytes asked for. The client sends from its own thread, so neither
/// side waits on a full socket buffer.
fn pipelined_reads_return_their_data(fast_reads: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, addr) = start(Config { fast_reads, ..config(dir.path()) });
    let mut c = Client::connect(addr);
    let oid = |i: u64| Oid::data(Vid(0x77), i as u32);
    let pattern = |i: u64, at: usize| (at as u64 * 7 + i * 13) as u8;
    const OBJ: usize = 256 << 10;
    for i in 0..4 {
        let data: Vec<u8> = (0..OBJ).map(|at| pattern(i, at)).collect();
        assert_eq!(c.create(oid(i), 0, &data), SD_RES_SUCCESS);
    }
    let mut want: HashMap<u32, (u8, ResultCode, Vec<u8>)> = HashMap::new();
    let mut wire = Vec::new();
    let before = store.requests();
    for k in 0..160u32 {
        let id = 1000 + k;
        let i = u64::from(k % 4);
        let (len, off) = if k % 16 == 5 {
            (64usize << 10, (k as usize * 4096) % (OBJ - (64 << 10)))
        } else {
            (4096, (k as usize * 4096) % OBJ)
        };
        let mut h = match k % 10 {
            // Writes land in object 3's upper half, which no read touches.
            9 => ReqHeader::obj(
                Opcode::WriteObj,
                SD_FLAG_CMD_WRITE,
                512,
                ObjArgs { oid: oid(3), offset: (OBJ as u32) + k * 512, ..Default::default() },
            ),
            _ => ReqHeader::obj(
                Opcode::ReadObj,
                0,
                len as u32,
                ObjArgs { oid: oid(i), offset: off as u32, ..Default::default() },
            ),
        };
        h.id = id;
        wire.extend_from_slice(&h.encode());
        if h.opcode == SD_OP_WRITE_OBJ {
            wire.extend_from_slice(&[k as u8; 512]);
            want.insert(id, (SD_OP_WRITE_OBJ, SD_RES_SUCCESS, Vec::new()));
        } else {
            want.insert(
                id,
                (
                    SD_OP_READ_OBJ,
                    SD_RES_SUCCESS,
                    (off..off + len).map(|at| pattern(i, at)).collect(),
                ),
            );
        }
    }
    let mut tail = |id: u32, h: ReqHeader, result, data: Vec<u8>| {
        let mut h = h;
        h.id = id;
        wire.extend_from_slice(&h.encode());
        want.insert(id, (SD_OP_READ_OBJ, result, data));
    };
    tail(
        2000,
        ReqHeader::obj(Opcode::ReadObj, 0, 4096, ObjArgs { oid: oid(9), ..Default::default() }),
        SD_RES_NO_OBJ,
        Vec::new(),
    );
    let mut across = (OBJ - 8..OBJ).map(|at| pattern(2, at)).collect::<Vec<u8>>();
    across.extend_from_slice(&[0; 8]);
    tail(
        2001,
        ReqHeader::obj(
            Opcode::ReadObj,
            0,
            16,
            ObjArgs { oid: oid(2), offset: (OBJ - 8) as u32, ..Default::default() },
        ),
        SD_RES_SUCCESS,
        across,
    );
    let n = want.len() as u64;
    let mut w = c.s.try_clone().expect("clone the socket");
    let sender = std::thread::spawn(move || w.write_all(&wire).expect("send the burst"));
    while !want.is_empty() {
        let (r, d) = c.recv();
        let (op, result, data) = want.remove(&r.id).expect("a response for an id in flight, once");
        assert_eq!(
            (r.opcode, r.result, r.data_length as usize),
            (op, result, data.len()),
            "request {}",
            r.id
        );
        assert!(d == data, "request {}: the bytes asked for", r.id);
    }
    sender.join().expect("sender");
    assert_eq!(store.requests() - before, n);
    assert_eq!(
        c.read(oid(3), OBJ as u32 + 9 * 512, 4),
        (SD_RES_SUCCESS, vec![9; 4]),
        "the pipelined writes landed"
    );
}

#[test]
fn pipelined_reads_and_writes_return_their_data() {
    pipelined_reads_return_their_data(false);
}

/// The opt-in fast path ([`Config::fast_reads`]) answers the same burst the same way.
#[test]
fn fast_reads_return_the_same_data() {
    pipelined_reads_return_their_data(true);
}

/// The fast path's READ_OBJ answers for the traps a test reads: no bounds check, NO_OBJ,
/// INVALID_PARMS for a read above the limit, and inode reads.
#[test]
fn fast_reads_keep_the_read_semantics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, addr) = start(Config { fast_reads: true, ..config(dir.path()) });
    let mut c = Client::connect(addr);
    let oid = Oid::data(Vid(0x1234), 5);
    assert_eq!(c.read(oid, 0, 4).0, SD_RES_NO_OBJ);
    assert_eq!(c.create(oid, 8, b"BB"), SD_RES_SUCCESS);
    assert_eq!(c.read(oid, 6, 6), (SD_RES_SUCCESS, b"\0\0BB\0\0".to_vec()));
    assert_eq!(c.read(oid, 4 << 20, 8), (SD_RES_SUCCESS, vec![0; 8]));
    assert_eq!(c.read(oid, 0, MAX_PAYLOAD + 1).0, SD_RES_INVALID_PARMS);
    let vid = c.new_vdi("f", GIB, 0, 0).vdi_id();
    assert_eq!(c.header(vid).vdi_size, GIB);
}

#[test]
fn restart_keeps_vdis_snapshots_and_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = Config { sync: true, ..config(dir.path()) };
    let (store, addr) = start(cfg.clone());
    let mut c = Client::connect(addr);
    let w = c.new_vdi("keep", GIB, 0, 0).vdi_id();
    c.write_new(w, 2, 100, b"persisted");
    assert_eq!(c.write(Oid::inode(Vid(w)), OFF_TAG as u32, &field("t")), SD_RES_SUCCESS);
    let n = c.new_vdi("keep", GIB, w, 1).vdi_id();
    let (_, bitmap) =
        c.call(ReqHeader::vdi(Opcode::ReadVdis, 0, SD_VDI_BITMAP_LEN, VdiArgs::default()), &[]);
    drop(c);
    store.shutdown();

    let (_store, addr) = start(cfg);
    let mut c = Client::connect(addr);
    assert_eq!(c.info("keep", None, 0), Ok(n));
    assert_eq!(c.info("keep", Some("t"), 0), Ok(w));
    assert_eq!(c.read(Oid::data(Vid(w), 2), 100, 9), (SD_RES_SUCCESS, b"persisted".to_vec()));
    assert_eq!(c.entry(n, 2), w);
    assert_eq!(c.write(Oid::data(Vid(w), 2), 0, b"x"), SD_RES_READONLY);
    let (_, again) =
        c.call(ReqHeader::vdi(Opcode::ReadVdis, 0, SD_VDI_BITMAP_LEN, VdiArgs::default()), &[]);
    assert!(again == bitmap, "the bitmap survives a restart");
    assert_eq!(c.new_vdi("keep", GIB, 0, 0).result, SD_RES_VDI_EXIST);
    assert_eq!(c.new_vdi("keep", GIB, n, 1).vdi_id(), n + 1);
}

#[test]
fn every_listen_address_serves_the_same_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let store = Store::start(Config { listen: vec![any, any], ..config(dir.path()) })
        .expect("store starts");
    let addrs = store.local_addrs().to_vec();
    assert_eq!(addrs.len(), 2);
    assert_ne!(addrs[0], addrs[1]);
    let v = Client::connect(addrs[0]).new_vdi("both", GIB, 0, 0).vdi_id();
    assert_eq!(Client::connect(addrs[1]).info("both", None, 0), Ok(v));
    // An address in use is a clear start-up error.
    let e = Store::start(Config { listen: vec![addrs[1]], ..config(dir.path()) })
        .err()
        .expect("port is taken");
    assert_eq!(e.to_string(), format!("cannot listen on {}: address in use", addrs[1]));
    assert!(!e.should_reconnect());
    store.shutdown();
    assert!(
        TcpStream::connect_timeout(&addrs[0], TIMEOUT).is_err(),
        "nothing listens after shutdown"
    );
}

#[test]
fn shutdown_closes_idle_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, addr) = start(config(dir.path()));
    let mut c = Client::connect(addr);
    assert_eq!(c.info("x", None, 0), Err(SD_RES_NO_VDI));
    store.shutdown();
    let mut b = [0u8; 1];
    assert!(matches!(c.s.read(&mut b), Ok(0) | Err(_)));
}

#[test]
fn hyper_volumes_are_created_and_deleted_by_del_vdi_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, addr) = start(config(dir.path()));
    let mut c = Client::connect(addr);
    let a =
        VdiArgs { vdi_size: 8 << 40, store_policy: 1, block_size_shift: 22, ..Default::default() };
    let r = c.call(ReqHeader::vdi(Opcode::NewVdi, SD_FLAG_CMD_WRITE, 256, a), &field("hyper")).0;
    assert_eq!(r.result, SD_RES_SUCCESS);
    let v = r.vdi_id();
    assert_eq!(c.header(v).store_policy, 1);
    // An empty depth-1 root: magic 0x6274, depth 1, no entries.
    let root = c.read(Oid::inode(Vid(v)), entry_offset(0), 8).1;
    assert_eq!(root, [0x74, 0x62, 1, 0, 0, 0, 0, 0]);
    // A root with two entries, one of them this volume's own object; rewritten from
    // offset 0 like sheep's B-tree updates (no reference counting).
    let mut inode = c.read(Oid::inode(Vid(v)), 0, SD_INODE_HEADER_SIZE).1;
    for w in [0x0001_6274u32, 2, 5, v, 6, 0x42] {
        inode.extend_from_slice(&w.to_le_bytes());
    }
    assert_eq!(c.write(Oid::inode(Vid(v)), 0, &inode), SD_RES_SUCCESS);
    assert_eq!(c.create(Oid::data(Vid(v), 5), 0, b"own"), SD_RES_SUCCESS);
    assert_eq!(c.create(Oid::data(Vid(0x42), 6), 0, b"shared"), SD_RES_SUCCESS);
    assert_eq!(c.drop_obj(Opcode::DiscardObj, Oid::data(Vid(v), 5)), SD_RES_INVALID_PARMS);
    // DEL_VDI deletes it at once, with the objects it owns.
    assert_eq!(c.vdi_op(Opcode::DelVdi, "hyper", None, 0, 0).result, SD_RES_SUCCESS);
    assert_eq!(c.info("hyper", None, 0), Err(SD_RES_NO_VDI));
    assert!(!exists(dir.path(), Oid::data(Vid(v), 5)));
    assert!(exists(dir.path(), Oid::data(Vid(0x42), 6)));
}

#[test]
fn start_errors_are_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").expect("write");
    let e = Store::start(config(&file)).err().expect("a file is no store directory");
    assert!(
        e.to_string()
            .starts_with(&format!("cannot use store directory {}", file.join("obj").display())),
        "{e}"
    );
    assert_ne!(e.errno(), 0);
    let e =
        Store::start(Config { listen: vec![], ..config(dir.path()) }).err().expect("no address");
    assert_eq!(e.to_string(), "no listen address given");
    let e = Store::start(Config { copies: 0, ..config(dir.path()) }).err().expect("copies 0");
    assert_eq!(e.to_string(), "invalid store configuration: copies must be between 1 and 31");
}
