//! Helpers shared by the integration tests (not a test target: cargo builds `tests/*.rs`
//! only). An embedded store in a temporary directory, on a free loopback port, with one VDI.

use std::net::SocketAddr;

use sheepdev::proto::{VdiName, Vid};
use sheepdev::sheep::manage::{self, Redundancy};
use sheepdev::sheep::{Client, Config};
use sheepdev::store::{Config as StoreConfig, Store};

/// Start a store (no sync) and create VDI `name` of `size` bytes with `object_size` objects.
/// Keep the directory alive as long as the store.
pub fn store_with_vdi(name: &str, size: u64, object_size: u64) -> (Store, tempfile::TempDir, SocketAddr, Vid) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = StoreConfig { dir: dir.path().to_path_buf(), listen: vec!["127.0.0.1:0".parse().expect("addr")], sync: false, ..Default::default() };
    let store = Store::start(cfg).expect("store");
    let addr = store.local_addrs()[0];
    let name = VdiName::new(name).expect("name");
    let vid = sheepdev::runtime::block_on(async move {
        let c = Client::connect(&Config::new(vec![addr])).await.expect("connect");
        manage::create(&c, &name, size, Redundancy::Default, object_size).await.expect("create").vid
    })
    .expect("executor");
    (store, dir, addr, vid)
}
