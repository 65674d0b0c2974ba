//! Shards outliving their connections, without a kernel: the fault proxy (`sheepdev::fault`)
//! between the shard and the embedded store drops every connection again and again while
//! writers run, and the bytes read back afterwards are exactly what was written; a cluster
//! gone for longer than the I/O timeout fails requests with an error, and the shard recovers
//! when it returns. More faults (stalls, delays, cut responses, store errors and restarts)
//! are in tests/faults.rs.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sheepdev::block::{IoDesc, Op};
use sheepdev::fault::Proxy;
use sheepdev::shard::{self, Shard};
use sheepdev::store::Store;

mod common;
use common::{read_all, volume, MIB};

fn setup(size: u64) -> (Store, tempfile::TempDir, SocketAddr, sheepdev::proto::Vid) {
    common::store_with_vdi("r", size, MIB)
}

fn block(i: u64) -> Vec<u8> {
    (0..65536u64).map(|k| (i.wrapping_mul(131).wrapping_add(k / 61) % 253) as u8).collect()
}

#[test]
fn writes_survive_connections_cut_again_and_again() {
    let (_store, _dir, addr, vid) = setup(64 * MIB);
    let proxy = Proxy::start("127.0.0.1:0".parse().expect("addr"), addr).expect("proxy");
    let vol = volume(addr, vid, false);
    let stop = Arc::new(AtomicBool::new(false));
    let (stop2, paddr) = (stop.clone(), proxy.addr());
    let cfg = shard::Config { io_timeout: Duration::from_secs(20), ..common::shard_config(paddr) };
    let shard = shard::spawn("test-shard", cfg, vol, move |sh, exe| {
        // 16 tags running at once (spawned, not awaited one after the other), each
        // rewriting its own 16 blocks of 64 KiB (creates first, then writes) until told to
        // stop, always ending a full round.
        let tasks: Vec<_> = (0..16u64)
            .map(|t| {
                let (sh, stop) = (sh.clone(), stop2.clone());
                exe.spawn(async move {
                    let mut rounds = 0u64;
                    let mut buf = vec![0u8; 65536];
                    loop {
                        for k in 0..16u64 {
                            let i = t * 16 + k;
                            buf.copy_from_slice(&block(i + rounds));
                            sh.handle(
                                IoDesc {
                                    op: Op::Write,
                                    offset: i * 65536,
                                    len: 65536,
                                    tag: t as u16,
                                    fua: false,
                                },
                                &mut buf,
                            )
                            .await
                            .expect("writes succeed across reconnects");
                        }
                        rounds += 1;
                        if stop.load(Ordering::SeqCst) {
                            return rounds;
                        }
                    }
                })
            })
            .collect();
        async move {
            let mut rounds = Vec::new();
            for t in tasks {
                rounds.push(t.await);
            }
            (rounds, sh.reconnects())
        }
    })
    .expect("the shard connects");
    // Cut every connection every 40 ms for 1.2 s.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1200) {
        std::thread::sleep(Duration::from_millis(40));
        proxy.handle().drop_all();
    }
    stop.store(true, Ordering::SeqCst);
    let (rounds, reconnects) = shard.join().expect("shard thread");
    assert!(reconnects >= 5, "the connections were re-established ({reconnects} times)");
    // Read everything back through a fresh shard: the last round of every tag.
    let all = read_all(addr, vid, 0, 256 * 65536);
    for t in 0..16u64 {
        for k in 0..16u64 {
            let i = t * 16 + k;
            let got = &all[i as usize * 65536..(i as usize + 1) * 65536];
            assert!(
                got == block(i + rounds[t as usize] - 1),
                "block {i} (tag {t}, round {}) differs",
                rounds[t as usize] - 1
            );
        }
    }
}

#[test]
fn a_cluster_gone_past_the_io_timeout_fails_requests_then_recovers() {
    let (_store, _dir, addr, vid) = setup(16 * MIB);
    let proxy = Proxy::start("127.0.0.1:0".parse().expect("addr"), addr).expect("proxy");
    let vol = volume(addr, vid, false);
    let (p2, paddr) = (proxy.handle(), proxy.addr());
    let cfg = shard::Config {
        connections: 1,
        slots: 16,
        io_timeout: Duration::from_millis(400),
        ..common::shard_config(paddr)
    };
    common::on_shard(cfg, vol, async move |sh| {
        let mut buf = vec![7u8; 4096];
        let w = |sh: Rc<Shard>, mut b: Vec<u8>| async move {
            let r = sh
                .handle(IoDesc { op: Op::Write, offset: 0, len: 4096, tag: 0, fua: false }, &mut b)
                .await;
            (r, b)
        };
        let (r, b) = w(sh.clone(), buf).await;
        r.expect("first write");
        // The cluster goes away.
        p2.set_accepting(false);
        p2.drop_all();
        let t0 = Instant::now();
        let (r, b) = w(sh.clone(), b).await;
        let waited = t0.elapsed();
        assert!(r.is_err(), "a write with the cluster gone fails");
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
            "failed after {waited:?}"
        );
        // It comes back: the same shard serves again.
        p2.set_accepting(true);
        let t0 = Instant::now();
        let mut b = b;
        loop {
            let (r, nb) = w(sh.clone(), b).await;
            b = nb;
            if r.is_ok() {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "the shard did not recover");
        }
        buf = b;
        let mut back = vec![0u8; 4096];
        sh.handle(IoDesc { op: Op::Read, offset: 0, len: 4096, tag: 0, fua: false }, &mut back)
            .await
            .expect("read after recovery");
        assert_eq!(back, buf);
    })
    .join()
    .expect("shard thread");
}
