//! The harness every integration test shares (not a test target: cargo builds `tests/*.rs`
//! only): an embedded store in a temporary directory on a free loopback port, the control
//! client, VDIs opened as a [`Volume`], shards started the library's one way
//! ([`shard::spawn`], [`Remote`]), and the data patterns the tests write.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use sheepdev::block::{IoDesc, Op};
use sheepdev::proto::{VdiName, Vid};
use sheepdev::shard::{self, Remote, Shard, Spawned};
use sheepdev::sheep::manage::{self, Redundancy};
use sheepdev::sheep::{load_volume, Client, Config, Gateway};
use sheepdev::store::{Config as StoreConfig, Store};
use sheepdev::vdi::Volume;

pub const MIB: u64 = 1 << 20;

/// The largest request a test hands a shard in one piece (a device's `--max-io`); longer
/// ones are split, as the block layer would.
pub const MAX_IO: usize = 512 << 10;

/// A store (no sync) on a free loopback port. Keep the directory alive as long as the store.
pub fn store() -> (Store, tempfile::TempDir, SocketAddr) {
    store_with(|_| {})
}

/// [`store`] with its configuration adjusted by `f` first.
pub fn store_with(f: impl FnOnce(&mut StoreConfig)) -> (Store, tempfile::TempDir, SocketAddr) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = StoreConfig {
        dir: dir.path().to_path_buf(),
        listen: vec!["127.0.0.1:0".parse().expect("addr")],
        sync: false,
        ..Default::default()
    };
    f(&mut cfg);
    let s = Store::start(cfg).expect("store");
    let a = s.local_addrs()[0];
    (s, dir, a)
}

/// A store with VDI `name` of `size` bytes made of `object_size` objects.
pub fn store_with_vdi(
    name: &str,
    size: u64,
    object_size: u64,
) -> (Store, tempfile::TempDir, SocketAddr, Vid) {
    let (store, dir, addr) = store();
    let vid = create(addr, name, size, object_size);
    (store, dir, addr, vid)
}

/// Run `f` with a control client connected to `addr`, on a control-plane executor.
pub fn control<T>(addr: impl Into<Gateway>, f: impl AsyncFnOnce(Rc<Client>) -> T) -> T {
    let addr = addr.into();
    sheepdev::runtime::block_on(async move {
        let c = Rc::new(Client::connect(&Config::new([addr])).await.expect("connect"));
        f(c).await
    })
    .expect("executor")
}

pub fn create(addr: impl Into<Gateway>, name: &str, size: u64, object_size: u64) -> Vid {
    control(addr, async |c| {
        manage::create(
            &c,
            &VdiName::new(name).expect("name"),
            size,
            Redundancy::Default,
            object_size,
        )
        .await
        .expect("create")
        .vid
    })
}

/// The inode of `vid`, opened for a shard.
pub fn volume(addr: impl Into<Gateway>, vid: Vid, read_only: bool) -> Arc<Volume> {
    Arc::new(control(addr, async |c| load_volume(&c, vid, read_only).await.expect("load")))
}

/// A shard's configuration for tests: two connections of 64 slots to `gateway`, 1 MiB
/// requests, the library's defaults otherwise.
pub fn shard_config(gateway: impl Into<Gateway>) -> shard::Config {
    shard::Config { connections: 2, ..shard::Config::new([gateway.into()]) }
}

/// Run `f` on a new shard thread (own ring, own executor) started from `cfg`.
pub fn on_shard<T: Send + 'static>(
    cfg: shard::Config,
    vol: Arc<Volume>,
    f: impl AsyncFnOnce(Rc<Shard>) -> T + Send + 'static,
) -> Spawned<T> {
    shard::spawn("test-shard", cfg, vol, move |sh, _exe| f(sh)).expect("the shard connects")
}

/// A shard on its own thread for `vid`, fed from this one.
pub fn remote(addr: impl Into<Gateway> + Clone, vid: Vid, read_only: bool) -> Remote {
    remote_on(shard_config(addr.clone()), volume(addr, vid, read_only))
}

pub fn remote_on(cfg: shard::Config, vol: Arc<Volume>) -> Remote {
    Remote::start(shard::Config { max_io: MAX_IO, ..cfg }, vol, 4).expect("the shard connects")
}

/// `op` over `buf.len()` bytes at `offset` through `r`, split at [`MAX_IO`]; the buffer back
/// (read into, for reads).
pub fn io(r: &Remote, op: Op, offset: u64, mut buf: Vec<u8>) -> Result<Vec<u8>, shard::Error> {
    let mut done = 0;
    while done < buf.len() {
        let n = (buf.len() - done).min(MAX_IO);
        let d = IoDesc { op, offset: offset + done as u64, len: n as u32, tag: 0, fua: false };
        let (_, back) = r.call(d, buf[done..done + n].to_vec()).map_err(|(e, _)| e)?;
        buf[done..done + n].copy_from_slice(&back);
        done += n;
    }
    Ok(buf)
}

/// A request with no data (discard, write-zeroes, flush) of `len` bytes at `offset`; the
/// tag's buffer goes with it, as a ublk queue hands it over (discard carries inode entries
/// in it).
pub fn op(r: &Remote, op: Op, offset: u64, len: u32) -> Result<(), shard::Error> {
    r.call(IoDesc { op, offset, len, tag: 0, fua: false }, vec![0u8; MAX_IO])
        .map(drop)
        .map_err(|(e, _)| e)
}

/// `len` bytes of `vid` at `offset`, read through a fresh shard straight from `addr`.
pub fn read_all(addr: impl Into<Gateway> + Clone, vid: Vid, offset: u64, len: usize) -> Vec<u8> {
    io(&remote(addr, vid, true), Op::Read, offset, vec![0u8; len]).expect("read")
}

/// A pattern that differs per seed and does not repeat within an object.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 / 7) % 251) as u8).collect()
}
