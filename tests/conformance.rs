//! Conformance suite: the same assertions about sheep 1.0's client-visible behaviour
//! (shared/reference/sheep-protocol.md §15 and the traps around it), run
//! - against the embedded store started in-process (`embedded::*`, always), and
//! - against a real sheep at `SHEEP_ADDR=host:port` (`external::*`, reported as ignored
//!   unless run with `--ignored`; set `SHEEP_LOCKING=1` when that cluster was formatted
//!   with `-l`). Names are unique per run and everything created is deleted afterwards.
//!   External cases run one after another; before and after each, every node of
//!   `SHEEP_NODES=h:p,h:p,...` (default: `SHEEP_ADDR` alone) must still answer, so a case
//!   that crashes a sheep fails by name.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use sheepdev::block::Op;
use sheepdev::proto::inode::{entry_offset, OFF_SNAP_CTIME};
use sheepdev::proto::*;
use sheepdev::shard::Remote;
use sheepdev::sheep::manage::{self, Redundancy};
use sheepdev::sheep::{load_volume, Client, Config};
use sheepdev::vdi::{SnapSel, VdiSpec, Volume};

mod common;

struct Ctx {
    client: Rc<Client>,
    addr: SocketAddr,
    locking: bool,
    prefix: String,
}

impl Ctx {
    fn name(&self, s: &str) -> VdiName {
        VdiName::new(&format!("{}-{s}", self.prefix)).expect("test names are valid")
    }
    fn spec(&self, s: &str) -> VdiSpec {
        format!("{}-{s}", self.prefix).parse().expect("test specs are valid")
    }
    async fn create(&self, s: &str, size: u64) -> Result<Vid> {
        Ok(manage::create(&self.client, &self.name(s), size, Redundancy::Default, 0).await?.vid)
    }
    /// The VDI `vid` opened for I/O (through a shard, the one data path).
    async fn vol(&self, vid: Vid) -> Result<Dev> {
        self.open(vid, false).await
    }
    /// The same, read-only (snapshots).
    async fn ro(&self, vid: Vid) -> Result<Dev> {
        self.open(vid, true).await
    }
    async fn open(&self, vid: Vid, read_only: bool) -> Result<Dev> {
        Ok(Dev::start(self.addr, Arc::new(load_volume(&self.client, vid, read_only).await?)))
    }
    async fn code(&self, hdr: ReqHeader, payload: &[u8]) -> Result<ResultCode> {
        Ok(self.client.call(hdr, payload).await?.0.result)
    }
    /// Delete every VDI and snapshot this test made (best effort, newest first).
    async fn cleanup(&self) {
        if let Ok(rows) = manage::list(&self.client).await {
            for r in rows.iter().rev().filter(|r| r.name.starts_with(&self.prefix)) {
                let snap = if r.snapshot { SnapSel::Id(r.snap_id) } else { SnapSel::Working };
                let spec =
                    VdiSpec { name: VdiName::new(&r.name).expect("listed names are valid"), snap };
                let _ = manage::delete(&self.client, &spec).await;
            }
        }
    }
}

fn unique_prefix(case: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("t{}-{nanos:x}-{case}", std::process::id())
}

fn run_at<F, Fut>(addr: SocketAddr, locking: bool, case: &str, f: F)
where
    F: FnOnce(Rc<Ctx>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let r = sheepdev::runtime::block_on(async move {
        let client = Rc::new(Client::connect(&Config::new(vec![addr])).await?);
        let cx = Rc::new(Ctx { client, addr, locking, prefix: unique_prefix(case) });
        let r = f(cx.clone()).await;
        cx.cleanup().await;
        r
    })
    .map_err(anyhow::Error::from)
    .and_then(|r| r);
    if let Err(e) = r {
        panic!("{case}: {e:#}");
    }
}

fn run_embedded<F, Fut>(locking: bool, case: &str, f: F)
where
    F: FnOnce(Rc<Ctx>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = sheepdev::store::Config {
        dir: dir.path().to_path_buf(),
        listen: vec!["127.0.0.1:0".parse().expect("addr")],
        locking,
        sync: false,
        ..Default::default()
    };
    let store = sheepdev::store::Store::start(cfg).expect("store starts");
    let addr = store.local_addrs()[0];
    run_at(addr, locking, case, f);
    store.shutdown();
}

/// The nodes of the cluster under test: `SHEEP_NODES` (every node, comma separated), or the
/// one node of `SHEEP_ADDR`.
fn external_nodes(first: SocketAddr) -> Vec<SocketAddr> {
    match std::env::var("SHEEP_NODES") {
        Ok(list) => list
            .split(',')
            .map(|a| a.trim().parse().unwrap_or_else(|e| panic!("SHEEP_NODES: {a:?}: {e}")))
            .collect(),
        Err(_) => vec![first],
    }
}

/// Every node still answers (GET_CLUSTER_DEFAULT on a fresh connection): a client of ours
/// must never crash a node, so this runs after every external case, passed or failed.
fn nodes_alive(nodes: &[SocketAddr]) -> std::result::Result<(), String> {
    for &n in nodes {
        let ask = || -> std::io::Result<RspHeader> {
            let mut s = TcpStream::connect_timeout(&n, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(
                &ReqHeader::vdi(Opcode::GetClusterDefault, 0, 0, VdiArgs::default()).encode(),
            )?;
            let mut head = [0u8; HEADER_LEN];
            s.read_exact(&mut head)?;
            Ok(RspHeader::decode(&head))
        };
        match ask() {
            Ok(r) if r.result.is_success() => {}
            Ok(r) => {
                return Err(format!("sheep {n} answers GET_CLUSTER_DEFAULT with {:?}", r.result))
            }
            Err(e) => return Err(format!("sheep {n} is gone: {e}")),
        }
    }
    Ok(())
}

fn run_external<F, Fut>(case: &str, f: F)
where
    F: FnOnce(Rc<Ctx>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    // One case after another, so that a node that dies is pinned on the case that killed it.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Ok(a) = std::env::var("SHEEP_ADDR") else {
        panic!("SHEEP_ADDR is not set: set it to host:port of a real sheep to run the external conformance suite");
    };
    let addr = match sheepdev::sheep::parse_gateways(&a).expect("SHEEP_ADDR parses").swap_remove(0)
    {
        sheepdev::sheep::Gateway::Tcp(a) => a,
        g => panic!("SHEEP_ADDR is {g}: the suite speaks raw TCP too, give host:port"),
    };
    let nodes = external_nodes(addr);
    if let Err(e) = nodes_alive(&nodes) {
        panic!("{case}: before the case: {e}");
    }
    let locking = std::env::var("SHEEP_LOCKING").is_ok_and(|v| v == "1");
    let r =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_at(addr, locking, case, f)));
    if let Err(e) = nodes_alive(&nodes) {
        panic!("{case}: a sheep died during the case: {e}");
    }
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

macro_rules! conformance {
    ($($case:ident $(locking=$lk:expr)?),* $(,)?) => {
        mod embedded {
            $(#[test] fn $case() { super::run_embedded(false $(|| $lk)?, stringify!($case), super::$case) })*
        }
        mod external {
            $(#[test]
              #[ignore = "needs SHEEP_ADDR=host:port of a real sheep; run with --ignored"]
              fn $case() { super::run_external(stringify!($case), super::$case) })*
        }
    };
}

conformance! {
    header_version_and_unknown_opcodes,
    responses_come_back_out_of_order,
    reads_are_not_bounds_checked,
    double_create_replaces_the_object,
    clone_writes_copy_on_write,
    created_entries_are_persisted,
    vids_come_from_the_bitmap,
    lookups_by_name_id_and_tag,
    snapshot_freezes_the_old_vid,
    snapshot_chain_keeps_every_version,
    rebase_keeps_the_working_vdi,
    delete_refuses_silently_until_entries_are_zero,
    deleted_working_vdi_leaves_snapshots,
    locks_are_enforced locking=true,
    locks_follow_the_cluster_setting,
    flush_is_obsolete_and_discard_zeroes,
    hyper_volumes_are_refused,
    wrong_payload_lengths_are_invalid,
    an_empty_cow_create_copies_the_whole_object,
    discard_and_write_zeroes_through_the_shard,
    live_snapshot_is_followed_by_the_shard,
    shards_race_to_create_the_same_objects,
}

/// A VDI opened for I/O the one way there is: a shard on its own thread (own io_uring, own
/// connections, as a ublk queue thread), fed block requests from the case and split at the
/// device's `--max-io` as the block layer would ([`common::io`]).
struct Dev {
    vol: Arc<Volume>,
    remote: Remote,
}

impl Dev {
    fn start(addr: SocketAddr, vol: Arc<Volume>) -> Dev {
        Dev { remote: common::remote_on(common::shard_config(addr), vol.clone()), vol }
    }
    fn header(&self) -> InodeHeader {
        self.vol.header().clone()
    }
    async fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.io(Op::Write, offset, data.to_vec()).map(drop)
    }
    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        buf.copy_from_slice(&self.io(Op::Read, offset, vec![0u8; buf.len()])?);
        Ok(())
    }
    /// One block request at `offset` over `buf` (split at the device's max I/O); the buffer back.
    fn io(&self, op: Op, offset: u64, buf: Vec<u8>) -> Result<Vec<u8>> {
        common::io(&self.remote, op, offset, buf)
            .map_err(|e| anyhow::anyhow!("{op:?} at {offset}: {e} (errno {})", e.errno()))
    }
    /// A request with no data (discard, write-zeroes, flush).
    fn op(&self, op: Op, offset: u64, len: u32) -> Result<()> {
        common::op(&self.remote, op, offset, len)
            .map_err(|e| anyhow::anyhow!("{op:?} at {offset}+{len}: {e}"))
    }
}

const MIB: u64 = 1 << 20;

async fn header_version_and_unknown_opcodes(cx: Rc<Ctx>) -> Result<()> {
    let mut h = ReqHeader::vdi(Opcode::GetClusterDefault, 0, 0, VdiArgs::default());
    let (rsp, _) = cx.client.call(h, &[]).await?;
    ensure!(rsp.result == SD_RES_SUCCESS && rsp.opcode == SD_OP_GET_CLUSTER_DEFAULT);
    let (copies, _, bss) = rsp.cluster_default();
    ensure!(copies >= 1 && bss == 22, "cluster default copies {copies} bss {bss}");
    h.proto_ver = 0;
    ensure!(cx.code(h, &[]).await? == SD_RES_SUCCESS, "proto_ver 0 is accepted");
    h.proto_ver = 3;
    ensure!(cx.code(h, &[]).await? == SD_RES_VER_MISMATCH, "proto_ver 3 is refused");
    let mut unknown = ReqHeader::vdi(Opcode::GetClusterDefault, 0, 0, VdiArgs::default());
    unknown.opcode = 0x7e;
    ensure!(cx.code(unknown, &[]).await? == SD_RES_INVALID_PARMS, "unknown opcode");
    Ok(())
}

/// Raw pipelining on one socket: one 4 MiB write then four small reads, sent together.
async fn responses_come_back_out_of_order(cx: Rc<Ctx>) -> Result<()> {
    let vid = cx.create("ooo", 64 * MIB).await?;
    let addr = cx.addr;
    let big = vec![0xabu8; 4 << 20];
    let mut out_of_order = 0;
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_nodelay(true)?;
    for trial in 0..20u32 {
        let mut frame = Vec::new();
        let w = ReqHeader::obj(
            Opcode::CreateAndWriteObj,
            SD_FLAG_CMD_WRITE,
            big.len() as u32,
            ObjArgs { oid: Oid::data(vid, trial), ..Default::default() },
        );
        let mut w = w;
        w.id = 1000 + trial;
        frame.extend_from_slice(&w.encode());
        frame.extend_from_slice(&big);
        for i in 0..4u32 {
            let mut r = ReqHeader::obj(
                Opcode::ReadObj,
                0,
                512,
                ObjArgs { oid: Oid::inode(vid), ..Default::default() },
            );
            r.id = i;
            frame.extend_from_slice(&r.encode());
        }
        s.write_all(&frame)?;
        let mut order = Vec::new();
        for _ in 0..5 {
            let mut hb = [0u8; HEADER_LEN];
            s.read_exact(&mut hb)?;
            let rsp = RspHeader::decode(&hb);
            ensure!(
                rsp.result == SD_RES_SUCCESS,
                "pipelined request {} failed: {}",
                rsp.id,
                rsp.result
            );
            let mut payload = vec![0u8; rsp.data_length as usize];
            s.read_exact(&mut payload)?;
            order.push(rsp.id);
        }
        let mut sorted = order.clone();
        sorted.sort_unstable();
        ensure!(sorted == [0, 1, 2, 3, 1000 + trial], "every id answered once: {order:?}");
        if order[0] != 1000 + trial {
            out_of_order += 1;
        }
    }
    // Remove the objects the raw writes made outside the inode.
    for trial in 0..20 {
        cx.client.remove_obj(Oid::data(vid, trial)).await?;
    }
    ensure!(out_of_order > 0, "20 pipelined trials all answered in submission order");
    Ok(())
}

async fn reads_are_not_bounds_checked(cx: Rc<Ctx>) -> Result<()> {
    let vid = cx.create("bounds", 8 * MIB).await?;
    let v = cx.vol(vid).await?;
    v.write(0, &[7u8; 4096]).await?;
    let os = 1u32 << v.header().block_size_shift;
    let data = cx.client.read_obj(Oid::data(vid, 0), os - 512, 4096).await?;
    ensure!(data.len() == 4096, "read past the object end answers the requested length");
    let r = cx.client.read_obj(Oid::data(vid, 1), 0, 512).await;
    ensure!(
        r.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_NO_OBJ),
        "unwritten object: {r:?}"
    );
    Ok(())
}

async fn double_create_replaces_the_object(cx: Rc<Ctx>) -> Result<()> {
    let vid = cx.create("double", 8 * MIB).await?;
    let oid = Oid::data(vid, 0);
    cx.client.create_obj(oid, None, 0, &[1u8; 4096], 0, 0).await?;
    cx.client.create_obj(oid, None, 8192, &[2u8; 4096], 0, 0).await?;
    let a = cx.client.read_obj(oid, 0, 4096).await?;
    let b = cx.client.read_obj(oid, 8192, 4096).await?;
    ensure!(a.iter().all(|&x| x == 0), "the first create's data is gone");
    ensure!(b.iter().all(|&x| x == 2));
    cx.client.remove_obj(oid).await?;
    Ok(())
}

async fn clone_writes_copy_on_write(cx: Rc<Ctx>) -> Result<()> {
    let vid = cx.create("base", 16 * MIB).await?;
    cx.vol(vid).await?.write(0, &[0xaa; 8192]).await?;
    manage::snapshot(&cx.client, &cx.name("base"), Some(&VdiName::new("gold")?)).await?;
    let clone = manage::clone(&cx.client, &cx.spec("base:gold"), &cx.name("clone")).await?.vid;
    let cv = cx.vol(clone).await?;
    ensure!(cv.header().parent_vdi_id == vid.0, "clone's parent is the snapshot");
    cv.write(4096, &[0xbb; 512]).await?;
    let mut got = vec![0u8; 8192];
    cv.read(0, &mut got).await?;
    ensure!(
        got[..4096].iter().all(|&x| x == 0xaa)
            && got[4096..4608].iter().all(|&x| x == 0xbb)
            && got[4608..].iter().all(|&x| x == 0xaa),
        "clone sees parent data overlaid with its write"
    );
    let (_, entries) = cx.client.read_inode(clone).await?;
    ensure!(entries[0] == clone.0, "the clone owns object 0 after the COW");
    let parent = cx.ro(vid).await?;
    parent.read(0, &mut got).await?;
    ensure!(got.iter().all(|&x| x == 0xaa), "the parent's bytes did not change");
    Ok(())
}

async fn created_entries_are_persisted(cx: Rc<Ctx>) -> Result<()> {
    let vid = cx.create("entries", 64 * MIB).await?;
    let v = cx.vol(vid).await?;
    let bss = v.header().block_size_shift;
    // Three objects in one request, plus concurrent writers to one object.
    v.write((1u64 << bss) - 512, &vec![3u8; (2usize << bss) + 1024]).await?;
    let w: Vec<_> = (0..8u64).map(|i| v.write((5u64 << bss) + i * 4096, &[9u8; 4096])).collect();
    for r in manage::join_all(w).await {
        r?;
    }
    let (_, entries) = cx.client.read_inode(vid).await?;
    ensure!(
        entries[0..4] == [vid.0; 4] && entries[4] == 0 && entries[5] == vid.0,
        "entries {:?}",
        &entries[..6]
    );
    let again = cx.vol(vid).await?;
    let mut got = vec![0u8; 8 * 4096];
    again.read(5u64 << bss, &mut got).await?;
    ensure!(got.iter().all(|&x| x == 9), "every concurrent write to one new object survived");
    Ok(())
}

fn first_clear_at_or_above(bitmap: &[u8], start: u32) -> u32 {
    let set = |v: u32| bitmap[(v / 8) as usize] & (1 << (v % 8)) != 0;
    (start..SD_NR_VDIS).chain(1..start).find(|&v| !set(v)).unwrap_or(0)
}

async fn vids_come_from_the_bitmap(cx: Rc<Ctx>) -> Result<()> {
    let name = cx.name("vid");
    let before = cx.client.read_vdis().await?;
    let expect = first_clear_at_or_above(&before, hash_vid(name.as_str().as_bytes()));
    let vid = cx.create("vid", 4 * MIB).await?;
    ensure!(
        vid.0 == expect,
        "vid {vid} but the first clear bit at or above the hash is {expect:x}"
    );
    let after = cx.client.read_vdis().await?;
    ensure!(after[(vid.0 / 8) as usize] & (1 << (vid.0 % 8)) != 0, "the new vid's bit is set");
    let (old, new) = manage::snapshot(&cx.client, &name, None).await?;
    ensure!(
        old == vid && new.0 == first_clear_at_or_above(&after, hash_vid(name.as_str().as_bytes())),
        "snapshot's working vid {new}"
    );
    let exists = manage::create(&cx.client, &name, 4 * MIB, Redundancy::Default, 0).await;
    ensure!(
        exists.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_VDI_EXIST),
        "second create: {exists:?}"
    );
    Ok(())
}

async fn lookups_by_name_id_and_tag(cx: Rc<Ctx>) -> Result<()> {
    let name = cx.name("look");
    let v1 = cx.create("look", 4 * MIB).await?;
    let (s1, _) = manage::snapshot(&cx.client, &name, Some(&VdiName::new("first")?)).await?;
    let (s2, w) = manage::snapshot(&cx.client, &name, None).await?;
    ensure!(s1 == v1);
    let c = &cx.client;
    ensure!(c.vdi_info(&name, &SnapSel::Working).await?.vid == w);
    ensure!(c.vdi_info(&name, &SnapSel::Id(1)).await?.vid == s1);
    ensure!(c.vdi_info(&name, &SnapSel::Id(2)).await?.vid == s2);
    ensure!(c.vdi_info(&name, &SnapSel::Tag(VdiName::new("first")?)).await?.vid == s1);
    // LOCK_VDI by id, with the tagged snapshot among the candidates (the lookup a by-id
    // `add --read-only` sends; sheep crashes on it when the payload has no tag field).
    ensure!(c.lock_vdi(&name, &SnapSel::Id(2), false).await?.vid == s2);
    c.release_vdi(s2, false).await?;
    ensure!(c.read_inode_header(w).await?.snap_id == 3, "the working vdi has the highest snap_id");
    let no_tag = c.vdi_info(&name, &SnapSel::Tag(VdiName::new("nope")?)).await;
    ensure!(no_tag.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_NO_TAG), "{no_tag:?}");
    let no_id = c.vdi_info(&name, &SnapSel::Id(3)).await;
    ensure!(
        no_id.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_NO_TAG),
        "id 3 is the working vdi, not a snapshot: {no_id:?}"
    );
    let no_vdi = c.vdi_info(&cx.name("missing"), &SnapSel::Working).await;
    ensure!(no_vdi.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_NO_VDI), "{no_vdi:?}");
    let no_vdi_tag = c.vdi_info(&cx.name("missing"), &SnapSel::Tag(VdiName::new("first")?)).await;
    ensure!(
        no_vdi_tag.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_NO_VDI),
        "{no_vdi_tag:?}"
    );
    Ok(())
}

async fn snapshot_freezes_the_old_vid(cx: Rc<Ctx>) -> Result<()> {
    let name = cx.name("snap");
    let vid = cx.create("snap", 16 * MIB).await?;
    cx.vol(vid).await?.write(0, &[1u8; 4096]).await?;
    let (old, new) = manage::snapshot(&cx.client, &name, Some(&VdiName::new("t1")?)).await?;
    ensure!(old == vid && new != vid, "the working vdi gets a new vid");
    let h = cx.client.read_inode_header(old).await?;
    ensure!(h.is_snapshot() && h.tag_lossy() == "t1", "old vid is a tagged snapshot");
    let nh = cx.client.read_inode_header(new).await?;
    ensure!(!nh.is_snapshot() && nh.parent_vdi_id == old.0 && nh.snap_id == h.snap_id + 1);
    // A writer still using the old vid (someone snapshotted under it) gets READONLY.
    let w = cx.client.write_obj(Oid::data(old, 0), 0, &[2u8; 512]).await;
    ensure!(
        w.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_READONLY),
        "write to a snapshot object: {w:?}"
    );
    let c = cx.client.create_obj(Oid::data(old, 1), None, 0, &[2u8; 512], 0, 0).await;
    ensure!(
        c.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_READONLY),
        "create of a snapshot object: {c:?}"
    );
    // The snapshot's inode stays writable (tags are set that way) and its snap_ctime is set.
    let ct = cx.client.read_obj(Oid::inode(old), OFF_SNAP_CTIME as u32, 8).await?;
    ensure!(ct != [0u8; 8]);
    // The new working vdi writes through COW and leaves the snapshot alone.
    let nv = cx.vol(new).await?;
    nv.write(0, &[5u8; 512]).await?;
    let mut got = vec![0u8; 4096];
    cx.ro(old).await?.read(0, &mut got).await?;
    ensure!(got.iter().all(|&x| x == 1));
    Ok(())
}

async fn snapshot_chain_keeps_every_version(cx: Rc<Ctx>) -> Result<()> {
    let name = cx.name("chain");
    let mut vid = cx.create("chain", 8 * MIB).await?;
    for i in 1..=4u8 {
        cx.vol(vid).await?.write(0, &[i; 4096]).await?;
        vid = manage::snapshot(&cx.client, &name, None).await?.1;
    }
    for i in 1..=4u8 {
        let snap = cx.client.vdi_info(&name, &SnapSel::Id(u32::from(i))).await?.vid;
        let mut got = vec![0u8; 4096];
        cx.ro(snap).await?.read(0, &mut got).await?;
        ensure!(got.iter().all(|&x| x == i), "snapshot {i} reads version {i}, got {}", got[0]);
    }
    Ok(())
}

async fn rebase_keeps_the_working_vdi(cx: Rc<Ctx>) -> Result<()> {
    let name = cx.name("rb");
    let vid = cx.create("rb", 8 * MIB).await?;
    cx.vol(vid).await?.write(0, &[0xa; 4096]).await?;
    let (snap, working) = manage::snapshot(&cx.client, &name, Some(&VdiName::new("s")?)).await?;
    cx.vol(working).await?.write(0, &[0xb; 4096]).await?;
    let (old, new) = manage::rebase(&cx.client, &cx.spec("rb:s")).await?;
    ensure!(old == working && new.vid != working && new.vid != snap);
    let h = cx.client.read_inode_header(new.vid).await?;
    ensure!(h.parent_vdi_id == snap.0 && !h.is_snapshot());
    ensure!(cx.client.vdi_info(&name, &SnapSel::Working).await?.vid == new.vid);
    let oh = cx.client.read_inode_header(old).await?;
    ensure!(oh.is_snapshot(), "the previous working vdi is now a snapshot");
    ensure!(
        cx.client.vdi_info(&name, &SnapSel::Id(oh.snap_id)).await?.vid == old,
        "and is found by its snapshot id"
    );
    let mut got = vec![0u8; 4096];
    cx.vol(new.vid).await?.read(0, &mut got).await?;
    ensure!(got.iter().all(|&x| x == 0xa), "the new working vdi reads the snapshot");
    cx.ro(old).await?.read(0, &mut got).await?;
    ensure!(got.iter().all(|&x| x == 0xb), "the kept vdi still reads what was written to it");
    Ok(())
}

async fn delete_refuses_silently_until_entries_are_zero(cx: Rc<Ctx>) -> Result<()> {
    let name = cx.name("del");
    let vid = cx.create("del", 16 * MIB).await?;
    cx.vol(vid).await?.write(0, &[1u8; 8192]).await?;
    // Bare DEL_VDI: SUCCESS, and nothing happens.
    let deleted = cx.client.del_vdi(&name, &SnapSel::Working).await?;
    ensure!(deleted == vid);
    ensure!(
        cx.client.read_obj(Oid::data(vid, 0), 0, 512).await.is_ok(),
        "the data object is still there"
    );
    // The real delete.
    ensure!(manage::delete(&cx.client, &VdiSpec::working(name.clone())).await? == vid);
    let gone = cx.client.vdi_info(&name, &SnapSel::Working).await;
    ensure!(gone.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_NO_VDI), "{gone:?}");
    let obj = cx.client.read_obj(Oid::data(vid, 0), 0, 512).await;
    ensure!(
        obj.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_NO_OBJ),
        "the data object was reclaimed: {obj:?}"
    );
    Ok(())
}

async fn deleted_working_vdi_leaves_snapshots(cx: Rc<Ctx>) -> Result<()> {
    let name = cx.name("keep");
    let vid = cx.create("keep", 8 * MIB).await?;
    cx.vol(vid).await?.write(0, &[4u8; 4096]).await?;
    let (snap, working) = manage::snapshot(&cx.client, &name, Some(&VdiName::new("k")?)).await?;
    cx.vol(working).await?.write(0, &[6u8; 4096]).await?;
    manage::delete(&cx.client, &VdiSpec::working(name.clone())).await?;
    let s = cx.client.vdi_info(&name, &SnapSel::Tag(VdiName::new("k")?)).await?;
    ensure!(s.vid == snap);
    let mut got = vec![0u8; 4096];
    cx.ro(snap).await?.read(0, &mut got).await?;
    ensure!(
        got.iter().all(|&x| x == 4),
        "the snapshot's shared object survived the working vdi's delete"
    );
    Ok(())
}

async fn locks_are_enforced(cx: Rc<Ctx>) -> Result<()> {
    if !cx.locking {
        bail!("this case needs a store or cluster with locking on (SHEEP_LOCKING=1)");
    }
    let name = cx.name("lock");
    let vid = cx.create("lock", 8 * MIB).await?;
    ensure!(cx.client.lock_vdi(&name, &SnapSel::Working, false).await?.vid == vid);
    let again = cx.client.lock_vdi(&name, &SnapSel::Working, false).await;
    ensure!(again.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_VDI_LOCKED), "{again:?}");
    // From another connection too, and after the locker disconnects.
    let other = Client::connect(&Config::new(vec![cx.addr])).await?;
    let r = other.lock_vdi(&name, &SnapSel::Working, false).await;
    ensure!(r.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_VDI_LOCKED), "{r:?}");
    drop(other);
    // Locks do not block I/O.
    cx.vol(vid).await?.write(0, &[1u8; 512]).await?;
    cx.client.release_vdi(vid, false).await?;
    let r = cx
        .client
        .call(
            ReqHeader::vdi(
                Opcode::ReleaseVdi,
                0,
                0,
                VdiArgs { base_vdi_id: vid.0, ..Default::default() },
            ),
            &[],
        )
        .await?;
    // sheep 1.0 answers SUCCESS (and logs "unlocking unlocked VDI"); seen on 1 and 3 nodes.
    ensure!(r.0.result == SD_RES_SUCCESS, "release of an unlocked vdi: {}", r.0.result);
    ensure!(
        cx.client.lock_vdi(&name, &SnapSel::Working, false).await?.vid == vid,
        "lockable again after release"
    );
    // A snapshot leaves the lock on the old vid; the new working vid is free.
    let (_, new) = manage::snapshot(&cx.client, &name, None).await?;
    ensure!(cx.client.lock_vdi(&name, &SnapSel::Working, false).await?.vid == new);
    cx.client.release_vdi(new, false).await?;
    cx.client.release_vdi(vid, false).await?;
    Ok(())
}

async fn locks_follow_the_cluster_setting(cx: Rc<Ctx>) -> Result<()> {
    let name = cx.name("nolock");
    cx.create("nolock", 8 * MIB).await?;
    cx.client.lock_vdi(&name, &SnapSel::Working, false).await?;
    let second = cx.client.lock_vdi(&name, &SnapSel::Working, false).await;
    if cx.locking {
        ensure!(
            second.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_VDI_LOCKED),
            "{second:?}"
        );
        cx.client
            .release_vdi(cx.client.vdi_info(&name, &SnapSel::Working).await?.vid, false)
            .await?;
    } else {
        ensure!(second.is_ok(), "without locking LOCK_VDI is only a lookup: {second:?}");
    }
    Ok(())
}

async fn flush_is_obsolete_and_discard_zeroes(cx: Rc<Ctx>) -> Result<()> {
    let vid = cx.create("discard", 16 * MIB).await?;
    let flush = ReqHeader::obj(
        Opcode::FlushVdi,
        0,
        0,
        ObjArgs { oid: Oid::inode(vid), ..Default::default() },
    );
    ensure!(cx.code(flush, &[]).await? == SD_RES_INVALID_PARMS, "FLUSH_VDI is obsolete");
    let v = cx.vol(vid).await?;
    let os = 1u64 << v.header().block_size_shift;
    v.write(0, &vec![8u8; 2 * os as usize]).await?;
    // QEMU's way: zero the entry in the inode; the object is reclaimed. Real sheep drops
    // the reference when the inode write is acknowledged but removes the object a moment
    // later (on a 3-node cluster a read right after the write still found the data in 3
    // runs of 4); the embedded store removes it at once. Nobody may rely on the moment.
    cx.client.write_obj(Oid::inode(vid), entry_offset(0), &[0u8; 4]).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = cx.client.read_obj(Oid::data(vid, 0), 0, 512).await;
        if r.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_NO_OBJ) {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the object of a zeroed entry is still there after 10 s: {:?}",
            r.map(|d| d.len())
        );
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    // DISCARD_OBJ: the server clears the entry itself.
    cx.client.discard_obj(vid, 1).await?;
    let (_, entries) = cx.client.read_inode(vid).await?;
    ensure!(entries[0] == 0 && entries[1] == 0, "{:?}", &entries[..2]);
    let mut got = vec![1u8; 4096];
    cx.vol(vid).await?.read(os, &mut got).await?;
    ensure!(got.iter().all(|&x| x == 0), "a discarded object reads as zeros");
    Ok(())
}

async fn hyper_volumes_are_refused(cx: Rc<Ctx>) -> Result<()> {
    let name = cx.name("hyper");
    let args =
        VdiArgs { vdi_size: 8 * MIB, store_policy: 1, block_size_shift: 22, ..Default::default() };
    let (rsp, _) = cx
        .client
        .request(ReqHeader::vdi(Opcode::NewVdi, SD_FLAG_CMD_WRITE, 256, args), &name.to_field())
        .await?;
    let vid = Vid(rsp.vdi_id());
    ensure!(cx.client.read_inode_header(vid).await?.store_policy == 1);
    let open = manage::open(&cx.client, &VdiSpec::working(name.clone())).await;
    ensure!(
        open.as_ref()
            .err()
            .is_some_and(|e| e.to_string().contains("hyper volumes are not supported")),
        "{:?}",
        open.err()
    );
    let vol = load_volume(&cx.client, vid, true).await;
    ensure!(vol.is_err(), "a hyper volume cannot be opened for i/o");
    // Its inode is not a flat array: delete it with DEL_VDI alone.
    cx.client.del_vdi(&name, &SnapSel::Working).await?;
    Ok(())
}

async fn wrong_payload_lengths_are_invalid(cx: Rc<Ctx>) -> Result<()> {
    let name = cx.name("len");
    let field = name.to_field();
    let short = ReqHeader::vdi(
        Opcode::NewVdi,
        SD_FLAG_CMD_WRITE,
        255,
        VdiArgs { vdi_size: MIB, ..Default::default() },
    );
    ensure!(cx.code(short, &field[..255]).await? == SD_RES_INVALID_PARMS, "NEW_VDI with 255 bytes");
    let mut long = field.to_vec();
    long.extend_from_slice(&[0u8; 44]);
    let info = ReqHeader::vdi(Opcode::GetVdiInfo, SD_FLAG_CMD_WRITE, 300, VdiArgs::default());
    ensure!(cx.code(info, &long).await? == SD_RES_INVALID_PARMS, "GET_VDI_INFO with 300 bytes");
    let vdis = ReqHeader::vdi(Opcode::ReadVdis, 0, 4096, VdiArgs::default());
    ensure!(cx.code(vdis, &[]).await? == SD_RES_INVALID_PARMS, "READ_VDIS of 4096 bytes");
    let gone = cx.client.vdi_info(&name, &SnapSel::Working).await;
    ensure!(
        gone.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_NO_VDI),
        "nothing was created: {gone:?}"
    );
    Ok(())
}

/// Discard of whole objects (owned, and shared with a snapshot) and write-zeroes (partial
/// and whole objects) through the shard; the snapshot keeps its bytes.
async fn discard_and_write_zeroes_through_the_shard(cx: Rc<Ctx>) -> Result<()> {
    let name = cx.name("dz");
    let vid = cx.create("dz", 32 * MIB).await?;
    let d = cx.vol(vid).await?;
    let os = 1usize << d.header().block_size_shift;
    d.write(0, &vec![5u8; 4 * os]).await?;
    let (snap, working) = manage::snapshot(&cx.client, &name, None).await?;
    let w = cx.vol(working).await?;
    let s = &w;
    // Object 0 rewritten (owned now), object 1 still shared with the snapshot.
    w.write(0, &vec![6u8; os]).await?;
    s.op(Op::Discard, 0, 2 * os as u32)?;
    // Write-zeroes: a partial range inside object 2, and object 3 whole.
    s.op(Op::WriteZeroes, 2 * os as u64 + 4096, 8192)?;
    s.op(Op::WriteZeroes, 3 * os as u64, os as u32)?;
    s.op(Op::Flush, 0, 0)?;
    let mut got = vec![1u8; 4 * os];
    w.read(0, &mut got).await?;
    ensure!(got[..2 * os].iter().all(|&b| b == 0), "discarded objects read as zeros");
    let o2 = &got[2 * os..3 * os];
    ensure!(
        o2[..4096].iter().all(|&b| b == 5)
            && o2[4096..12288].iter().all(|&b| b == 0)
            && o2[12288..].iter().all(|&b| b == 5),
        "partial write-zeroes"
    );
    ensure!(got[3 * os..].iter().all(|&b| b == 0), "a whole-object write-zeroes");
    let (_, entries) = cx.client.read_inode(working).await?;
    ensure!(
        entries[0] == 0 && entries[1] == 0,
        "discard cleared the inode entries: {:?}",
        &entries[..4]
    );
    // Reopened (the entries come from the cluster), and the snapshot untouched.
    let mut again = vec![1u8; 4 * os];
    cx.vol(working).await?.read(0, &mut again).await?;
    ensure!(again == got, "the discards and zeroes were persisted");
    cx.ro(snap).await?.read(0, &mut got).await?;
    ensure!(got.iter().all(|&b| b == 5), "the snapshot kept its bytes");
    Ok(())
}

/// A snapshot taken by another client while the shard has the VDI open: the shard's next
/// write gets READONLY, follows the new working vid and goes out as a COW; the snapshot
/// keeps what was written before it.
async fn live_snapshot_is_followed_by_the_shard(cx: Rc<Ctx>) -> Result<()> {
    let name = cx.name("live");
    let vid = cx.create("live", 16 * MIB).await?;
    let d = cx.vol(vid).await?;
    let os = 1u64 << d.header().block_size_shift;
    d.write(0, &[1u8; 4096]).await?;
    let (old, new) = manage::snapshot(&cx.client, &name, Some(&VdiName::new("live")?)).await?;
    ensure!(old == vid);
    d.write(4096, &[2u8; 4096]).await?;
    d.write(os, &[3u8; 4096]).await?;
    let now = d.vol.vid();
    ensure!(now == new, "the shard now writes vid {:#x}, not the new working {:#x}", now.0, new.0);
    let mut got = vec![0u8; 8192];
    cx.ro(new).await?.read(0, &mut got).await?;
    ensure!(
        got[..4096].iter().all(|&b| b == 1) && got[4096..].iter().all(|&b| b == 2),
        "the new working vdi has both writes"
    );
    let mut o1 = vec![0u8; 4096];
    cx.ro(new).await?.read(os, &mut o1).await?;
    ensure!(o1.iter().all(|&b| b == 3));
    cx.ro(old).await?.read(0, &mut got).await?;
    ensure!(
        got[..4096].iter().all(|&b| b == 1) && got[4096..].iter().all(|&b| b == 0),
        "the snapshot has only the first write"
    );
    let (_, entries) = cx.client.read_inode(new).await?;
    ensure!(
        entries[0] == new.0 && entries[1] == new.0,
        "the new inode owns both objects: {:?}",
        &entries[..2]
    );
    Ok(())
}

/// Four shards (threads, rings, connections of their own, one `Volume`) write different
/// blocks of the same unallocated objects at once: every create is claimed by one of them
/// and the others wait and write, so no create wipes another's data (reference §9).
async fn shards_race_to_create_the_same_objects(cx: Rc<Ctx>) -> Result<()> {
    const SHARDS: usize = 4;
    const OBJECTS: u64 = 12;
    let vid = cx.create("race", OBJECTS * 4 * MIB).await?;
    let vol = Arc::new(load_volume(&cx.client, vid, false).await?);
    let os = 1u64 << vol.header().block_size_shift;
    let barrier = Arc::new(std::sync::Barrier::new(SHARDS));
    let mut workers = Vec::new();
    for k in 0..SHARDS {
        let dev = Dev::start(cx.addr, vol.clone());
        let barrier = barrier.clone();
        workers.push(std::thread::spawn(move || -> Result<()> {
            barrier.wait();
            for obj in 0..OBJECTS {
                dev.io(
                    Op::Write,
                    obj * os + k as u64 * 4096,
                    vec![(obj as u8) << 4 | k as u8; 4096],
                )?;
            }
            Ok(())
        }));
    }
    for w in workers {
        w.join().map_err(|_| anyhow::anyhow!("a racing shard panicked"))??;
    }
    let (_, entries) = cx.client.read_inode(vid).await?;
    ensure!(
        entries[..OBJECTS as usize].iter().all(|&e| e == vid.0),
        "every object is allocated to the vdi"
    );
    let fresh = cx.ro(vid).await?;
    for obj in 0..OBJECTS {
        let mut got = vec![0u8; SHARDS * 4096];
        fresh.read(obj * os, &mut got).await?;
        for k in 0..SHARDS {
            let want = (obj as u8) << 4 | k as u8;
            ensure!(
                got[k * 4096..(k + 1) * 4096].iter().all(|&b| b == want),
                "object {obj}: shard {k}'s write was lost (a second create wiped it?)"
            );
        }
    }
    Ok(())
}

/// A CREATE_AND_WRITE_OBJ with the COW flag and no payload makes the new object a whole copy
/// of `cow_oid` (what a shard does to carry an object a live snapshot raced into the new
/// working vid), and leaves the source alone.
async fn an_empty_cow_create_copies_the_whole_object(cx: Rc<Ctx>) -> Result<()> {
    let name = cx.name("copy");
    let vid = cx.create("copy", 8 * MIB).await?;
    let v = cx.vol(vid).await?;
    let os = 1usize << v.header().block_size_shift;
    let data: Vec<u8> = (0..os).map(|i| (i / 4096 % 251) as u8 + 1).collect();
    v.write(0, &data).await?;
    let (snap, working) = manage::snapshot(&cx.client, &name, None).await?;
    let h = cx.client.read_inode_header(working).await?;
    cx.client
        .create_obj(
            Oid::data(working, 0),
            Some(Oid::data(snap, 0)),
            0,
            &[],
            h.nr_copies,
            h.copy_policy,
        )
        .await?;
    let copy = cx.client.read_obj(Oid::data(working, 0), 0, os as u32).await?;
    ensure!(copy == data, "the empty COW create copied the whole object");
    let src = cx.client.read_obj(Oid::data(snap, 0), 0, os as u32).await?;
    ensure!(src == data, "the source object is untouched");
    // Point the working inode at its copy (a real change: the snapshot's reference stays
    // counted) and the snapshot still reads its bytes.
    cx.client.write_obj(Oid::inode(working), entry_offset(0), &working.0.to_le_bytes()).await?;
    let mut got = vec![0u8; os];
    cx.ro(snap).await?.read(0, &mut got).await?;
    ensure!(got == data, "the snapshot keeps its object");
    Ok(())
}
