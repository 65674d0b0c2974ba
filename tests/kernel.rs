//! The kernel scenarios (tests/vm/scenarios.sh: ext4, fio verify, snapshots, clone COW,
//! discard, bad input) run directly on a host that has ublk_drv, as root:
//! `cargo test --release --test kernel -- --ignored`. Everywhere else they are reported as
//! ignored here and run in the qemu VM instead (`bash tests/vm/kernel-tests.sh`, part of
//! `tests/all.sh` and CI).

use std::process::Command;

#[test]
#[ignore = "needs ublk_drv and root; on other hosts the same scenarios run in the qemu VM (tests/vm/kernel-tests.sh)"]
fn scenarios_on_this_host() {
    assert!(
        std::path::Path::new("/dev/ublk-control").exists(),
        "/dev/ublk-control is missing: modprobe ublk_drv (as root)"
    );
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_sheepdev"));
    let dir = bin.parent().expect("the binary has a directory");
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    let status = Command::new("sh")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vm/scenarios.sh"))
        .env("PATH", path)
        .status()
        .expect("sh runs");
    assert!(status.success(), "kernel scenarios failed: {status}");
}
