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
    a_vdi_grows_online,
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

#[path = "conformance/objects.rs"]
mod objects;
#[path = "conformance/vdis.rs"]
mod vdis;
use objects::*;
use vdis::*;
