//! Shards driven through the same `IoDesc` entry point the ublk queue uses, with no kernel:
//! each shard thread gets its own io_uring (as a ublk queue thread would) and talks to an
//! embedded store started in-process.

use std::rc::Rc;
use std::sync::Arc;

use sheepdev::block::{IoDesc, Op};
use sheepdev::proto::VdiName;
use sheepdev::shard::{self, ring, Error, Shard, Spawned};
use sheepdev::sheep::manage;
use sheepdev::sheep::Gateway;
use sheepdev::vdi::{SnapSel, Volume};

mod common;
use common::{control, create, pattern, read_all, store, volume, MIB};

/// Run `f` on a fresh shard thread (two connections, coalescing on).
fn on_shard<T: Send + 'static>(
    addr: impl Into<Gateway>,
    vol: Arc<Volume>,
    f: impl AsyncFnOnce(Rc<Shard>) -> T + Send + 'static,
) -> Spawned<T> {
    common::on_shard(common::shard_config(addr), vol, f)
}

/// [`on_shard`] with `conns` connections and coalescing on or off.
fn on_shard_with<T: Send + 'static>(
    addr: impl Into<Gateway>,
    vol: Arc<Volume>,
    conns: usize,
    coalesce: bool,
    f: impl AsyncFnOnce(Rc<Shard>) -> T + Send + 'static,
) -> Spawned<T> {
    common::on_shard(
        shard::Config { connections: conns, coalesce, ..common::shard_config(addr) },
        vol,
        f,
    )
}

fn io(op: Op, offset: u64, len: u32, tag: u16) -> IoDesc {
    IoDesc { op, offset, len, tag, fua: false }
}

#[test]
fn writes_read_back_across_object_boundaries() {
    let (_s, _d, addr) = store();
    let vid = create(addr, "a", 64 * MIB, 4 * MIB);
    let vol = volume(addr, vid, false);
    let data = pattern(1, 8192);
    let d2 = data.clone();
    let got = on_shard(addr, vol, async move |sh| {
        let mut buf = d2.clone();
        // Crosses the boundary of objects 0 and 1.
        sh.handle(io(Op::Write, 4 * MIB - 4096, 8192, 0), &mut buf).await.expect("write");
        let mut back = vec![0u8; 8192];
        sh.handle(io(Op::Read, 4 * MIB - 4096, 8192, 0), &mut back).await.expect("read");
        let mut hole = vec![1u8; 4096];
        sh.handle(io(Op::Read, 32 * MIB, 4096, 0), &mut hole).await.expect("read hole");
        assert!(hole.iter().all(|&b| b == 0), "unwritten objects read as zeros");
        let mut past = vec![0u8; 4096];
        assert_eq!(
            sh.handle(io(Op::Read, 64 * MIB - 2048, 4096, 0), &mut past).await,
            Err(Error::OutOfRange)
        );
        sh.handle(io(Op::Flush, 0, 0, 0), &mut past).await.expect("flush");
        back
    })
    .join()
    .expect("shard");
    assert_eq!(got, data);
    assert_eq!(read_all(addr, vid, 4 * MIB - 4096, 8192), data, "the inode entries were persisted");
}

/// The same through the store's unix socket (`DIR/sock`, as sheep's): the control plane
/// (glommio) and the shard's ring connections both speak the protocol over it.
#[test]
fn a_shard_and_the_control_plane_work_over_the_unix_socket() {
    let (s, _d, tcp) = store();
    let sock = s.unix_socket().expect("the store serves DIR/sock").to_path_buf();
    let unix = Gateway::Unix(sock.clone());
    let vid = create(unix.clone(), "u", 16 * MIB, 4 * MIB);
    let vol = volume(unix.clone(), vid, false);
    let data = pattern(9, 3 * 4096);
    let d2 = data.clone();
    let (back, gateway) = on_shard(unix.clone(), vol, async move |sh| {
        let mut buf = d2.clone();
        sh.handle(io(Op::Write, 4 * MIB - 4096, 3 * 4096, 0), &mut buf).await.expect("write");
        let mut back = vec![0u8; 3 * 4096];
        sh.handle(io(Op::Read, 4 * MIB - 4096, 3 * 4096, 0), &mut back).await.expect("read");
        (back, sh.gateway().to_string())
    })
    .join()
    .expect("shard");
    assert_eq!(back, data);
    assert_eq!(gateway, format!("unix:{}", sock.display()));
    assert_eq!(read_all(tcp, vid, 4 * MIB - 4096, 3 * 4096), data, "the same data over TCP");
    drop(s);
    assert!(!sock.exists(), "the store removes its socket when it stops");
}

#[test]
fn two_shards_writing_the_same_new_objects_lose_nothing() {
    let (_s, _d, addr) = store();
    let vid = create(addr, "race", 64 * MIB, MIB);
    let vol = volume(addr, vid, false);
    // Each shard runs 16 tags; every tag writes 32 blocks of 4 KiB into objects 0..4, shard 0 the
    // even blocks and shard 1 the odd ones, so every object is created concurrently.
    let shards: Vec<_> = (0..2u64)
        .map(|s| {
            on_shard(addr, vol.clone(), async move |sh| {
                let tasks: Vec<_> = (0..16u64)
                    .map(|t| {
                        let sh = sh.clone();
                        async move {
                            let mut buf = vec![0u8; 4096];
                            for k in 0..32u64 {
                                let block = (k * 16 + t) * 2 + s; // 1024 blocks of 4 KiB = 4 MiB
                                buf.copy_from_slice(&pattern(block, 4096));
                                sh.handle(io(Op::Write, block * 4096, 4096, t as u16), &mut buf)
                                    .await
                                    .expect("write");
                            }
                        }
                    })
                    .collect();
                for t in tasks {
                    t.await;
                }
            })
        })
        .collect();
    for s in shards {
        s.join().expect("shard");
    }
    let all = read_all(addr, vid, 0, 4 * MIB as usize);
    for block in 0..1024u64 {
        assert!(
            all[block as usize * 4096..][..4096] == pattern(block, 4096)[..],
            "block {block} lost"
        );
    }
    let entries = control(addr, async |c| c.read_inode(vid).await.expect("inode").1);
    assert_eq!(&entries[..4], &[vid.0; 4], "every created object is in the inode");
}

#[test]
fn discard_and_write_zeroes() {
    let (_s, _d, addr) = store();
    let vid = create(addr, "z", 16 * MIB, MIB);
    let vol = volume(addr, vid, false);
    on_shard(addr, vol, async move |sh| {
        let mut buf = vec![7u8; 1 << 20];
        for i in 0..4 {
            sh.handle(io(Op::Write, i * MIB, MIB as u32, 0), &mut buf).await.expect("write");
        }
        // Whole objects 1 and 2 plus half of 0: the half is ignored by DISCARD.
        sh.handle(io(Op::Discard, MIB / 2, (2 * MIB + MIB / 2) as u32, 0), &mut buf)
            .await
            .expect("discard");
        // WRITE_ZEROES over the last quarter of object 3: real zeros.
        sh.handle(io(Op::WriteZeroes, 3 * MIB + 3 * MIB / 4, (MIB / 4) as u32, 0), &mut buf)
            .await
            .expect("write zeroes");
    })
    .join()
    .expect("shard");
    let all = read_all(addr, vid, 0, 4 * MIB as usize);
    let m = MIB as usize;
    assert!(all[..m].iter().all(|&b| b == 7), "a partial discard changes nothing");
    assert!(all[m..3 * m].iter().all(|&b| b == 0), "discarded objects read as zeros");
    assert!(all[3 * m..3 * m + 3 * m / 4].iter().all(|&b| b == 7));
    assert!(all[3 * m + 3 * m / 4..].iter().all(|&b| b == 0), "write zeroes zeroed its range");
    let entries = control(addr, async |c| c.read_inode(vid).await.expect("inode").1);
    assert_eq!(&entries[..4], &[vid.0, 0, 0, vid.0]);
}

#[test]
fn clone_writes_cow_and_snapshots_refuse_writes() {
    let (_s, _d, addr) = store();
    let base = create(addr, "base", 8 * MIB, 4 * MIB);
    on_shard(addr, volume(addr, base, false), async move |sh| {
        let mut buf = vec![0xaau8; 8192];
        sh.handle(io(Op::Write, 0, 8192, 0), &mut buf).await.expect("write");
    })
    .join()
    .expect("shard");
    let (snap, clone) = control(addr, async |c| {
        let name = VdiName::new("base").expect("name");
        let (snap, _) = manage::snapshot(&c, &name, Some(&VdiName::new("s").expect("tag")))
            .await
            .expect("snapshot");
        let clone = manage::clone(
            &c,
            &"base:s".parse().expect("spec"),
            &VdiName::new("child").expect("name"),
        )
        .await
        .expect("clone")
        .vid;
        assert_eq!(
            c.vdi_info(&name, &SnapSel::Tag(VdiName::new("s").expect("tag")))
                .await
                .expect("lookup")
                .vid,
            snap
        );
        (snap, clone)
    });
    on_shard(addr, volume(addr, clone, false), async move |sh| {
        let mut buf = vec![0xbbu8; 512];
        sh.handle(io(Op::Write, 4096, 512, 0), &mut buf).await.expect("cow write");
    })
    .join()
    .expect("shard");
    on_shard(addr, volume(addr, snap, false), async move |sh| {
        let mut buf = vec![1u8; 512];
        assert_eq!(
            sh.handle(io(Op::Write, 0, 512, 0), &mut buf).await,
            Err(Error::ReadOnly),
            "a snapshot volume is read-only"
        );
    })
    .join()
    .expect("shard");
    let c = read_all(addr, clone, 0, 8192);
    assert!(
        c[..4096].iter().all(|&b| b == 0xaa)
            && c[4096..4608].iter().all(|&b| b == 0xbb)
            && c[4608..].iter().all(|&b| b == 0xaa)
    );
    assert!(read_all(addr, snap, 0, 8192).iter().all(|&b| b == 0xaa), "the parent is unchanged");
}

#[test]
fn live_snapshots_are_followed_without_an_error() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let (_s, _d, addr) = store();
    let name = VdiName::new("live").expect("name");
    let vid = create(addr, "live", 32 * MIB, MIB);
    let vol = volume(addr, vid, false);
    // Two shards, 8 tags each; tag `w` owns block `obj * 256 + w` of every object 0..32 and
    // rewrites them round after round, so creates, writes and (after a snapshot) COWs of
    // every object race the snapshots taken meanwhile by another client.
    let snaps = Arc::new(AtomicU32::new(0));
    let shards: Vec<_> = (0..2u64)
        .map(|s| {
            let snaps = snaps.clone();
            on_shard(addr, vol.clone(), async move |sh| {
                let tasks: Vec<_> = (0..8u64)
                    .map(|t| {
                        let (sh, snaps) = (sh.clone(), snaps.clone());
                        async move {
                            let w = s * 8 + t;
                            let mut buf = vec![0u8; 4096];
                            let mut round = 0u64;
                            let mut after = 0;
                            // Until both snapshots are taken, then three more rounds.
                            while after < 3 {
                                round += 1;
                                for obj in 0..32u64 {
                                    let block = obj * 256 + w;
                                    buf.copy_from_slice(&pattern(block * 1000 + round, 4096));
                                    sh.handle(
                                        io(Op::Write, block * 4096, 4096, t as u16),
                                        &mut buf,
                                    )
                                    .await
                                    .expect("a write racing a live snapshot succeeds");
                                }
                                if snaps.load(Ordering::SeqCst) == 2 {
                                    after += 1;
                                }
                            }
                            (w, round)
                        }
                    })
                    .collect();
                let mut last = Vec::new();
                for t in tasks {
                    last.push(t.await);
                }
                last
            })
        })
        .collect();
    let mut taken = Vec::new();
    for k in 0..2 {
        std::thread::sleep(std::time::Duration::from_millis(60));
        let tag = VdiName::new(&format!("s{k}")).expect("tag");
        taken.push(control(addr, async |c| {
            manage::snapshot(&c, &name, Some(&tag)).await.expect("snapshot")
        }));
        snaps.fetch_add(1, Ordering::SeqCst);
    }
    let last: Vec<(u64, u64)> = shards.into_iter().flat_map(|s| s.join().expect("shard")).collect();
    let working =
        control(addr, async |c| c.vdi_info(&name, &SnapSel::Working).await.expect("lookup").vid);
    assert_eq!(working, taken[1].1, "the second snapshot's new working vdi is the working one");
    assert_eq!(vol.vid(), working, "the shards followed both snapshots");
    // Read through the working VDI's inode as stored (a fresh open, as after a restart):
    // every block holds its last round, so every entry the device created reached it.
    let all = read_all(addr, working, 0, 32 * MIB as usize);
    for (w, round) in last {
        for obj in 0..32u64 {
            let block = obj * 256 + w;
            assert!(
                all[block as usize * 4096..][..4096] == pattern(block * 1000 + round, 4096)[..],
                "block {block}: round {round} lost"
            );
        }
    }
    // The snapshots stay readable and frozen: each block holds some round that was written.
    let first = read_all(addr, taken[0].0, 0, 32 * MIB as usize);
    assert!(
        first.chunks(4096).any(|b| b.iter().any(|&x| x != 0)),
        "the first snapshot kept the data written before it"
    );
}

/// The race a live snapshot leaves behind: a request created its objects before the
/// snapshot and its inode update lands after it, in the snapshot's inode (sheep accepts
/// inode writes to snapshots). Following the snapshot must bring those objects into the new
/// working inode (as copies), or the data vanishes from the working VDI at the next open.
#[test]
fn entries_persisted_into_the_snapshot_are_carried_to_the_new_working_vdi() {
    // Every object request takes 300 ms at the store: the 2-object write below creates
    // objects 1 and 2 (0–600 ms) and persists their entries (600–900 ms), while the
    // snapshot, started at 50 ms, reads the inode, writes the tag and creates the new
    // working VDI at about 650 ms.
    let delay = std::time::Duration::from_millis(300);
    let (_s, _dir, addr) = common::store_with(|c| c.object_delay = delay);
    let name = VdiName::new("race").expect("name");
    let vid = create(addr, "race", 8 * MIB, MIB);
    let vol = volume(addr, vid, false);
    let (tx, rx) = std::sync::mpsc::channel();
    let sh = on_shard(addr, vol.clone(), async move |sh| {
        let mut buf = pattern(7, 2 * MIB as usize);
        tx.send(()).expect("signal");
        sh.handle(io(Op::Write, MIB, 2 * MIB as u32, 0), &mut buf)
            .await
            .expect("write racing the snapshot");
        // A new object after the snapshot: READONLY, follow, COW into the new vid.
        let mut b2 = pattern(8, 4096);
        sh.handle(io(Op::Write, 3 * MIB, 4096, 1), &mut b2)
            .await
            .expect("write after the snapshot");
    });
    rx.recv().expect("shard started");
    std::thread::sleep(std::time::Duration::from_millis(50));
    let (old, new) =
        control(addr, async |c| manage::snapshot(&c, &name, None).await.expect("snapshot"));
    sh.join().expect("shard");
    assert_eq!((old, vol.vid()), (vid, new), "the device follows the snapshot");
    let old_entries = control(addr, async |c| c.read_inode(old).await.expect("inode").1);
    let new_entries = control(addr, async |c| c.read_inode(new).await.expect("inode").1);
    assert_eq!(
        &old_entries[1..3],
        &[vid.0, vid.0],
        "the race happened: the update landed in the snapshot's inode"
    );
    // Carried as copies, not as pointers to the snapshot's objects (sheep would not count
    // such a pointer, and the snapshot's objects would go at the next COW of them).
    assert_eq!(
        &new_entries[1..4],
        &[new.0, new.0, new.0],
        "the new working inode owns every entry"
    );
    assert_eq!(read_all(addr, new, MIB, 2 * MIB as usize), pattern(7, 2 * MIB as usize));
    assert_eq!(read_all(addr, new, 3 * MIB, 4096), pattern(8, 4096));
    assert_eq!(
        read_all(addr, old, MIB, 2 * MIB as usize),
        pattern(7, 2 * MIB as usize),
        "the snapshot keeps its objects"
    );
}

/// Poll every future in turn until all are done (so they are in flight together, as the
/// tags of one queue are), and return their outputs in order.
async fn join_all<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
    let mut fs: Vec<_> = fs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = fs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (f, o) in fs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                if let std::task::Poll::Ready(v) = f.as_mut().poll(cx) {
                    *o = Some(v);
                }
            }
        }
        if out.iter().all(Option::is_some) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("every future is done")).collect()
}

/// `tags` tasks writing `count` blocks of `len` bytes from `base` on, sharing one cursor (a
/// sequential stream at depth `tags`); block `k` holds `pattern(seed + k)`.
async fn seq_write(sh: &Rc<Shard>, tags: u16, base: u64, count: u64, len: u32, seed: u64) {
    let next = Rc::new(std::cell::Cell::new(0u64));
    let tasks = (0..tags).map(|tag| {
        let (sh, next) = (sh.clone(), next.clone());
        async move {
            let mut buf = vec![0u8; len as usize];
            loop {
                let k = next.get();
                if k >= count {
                    break;
                }
                next.set(k + 1);
                buf.copy_from_slice(&pattern(seed + k, len as usize));
                sh.handle(io(Op::Write, base + k * u64::from(len), len, tag), &mut buf)
                    .await
                    .expect("write");
            }
        }
    });
    join_all(tasks.collect()).await;
}

/// What [`seq_write`] wrote.
fn seq_model(count: u64, len: u32, seed: u64) -> Vec<u8> {
    (0..count).flat_map(|k| pattern(seed + k, len as usize)).collect()
}

#[test]
fn sequential_writes_are_merged_into_fewer_requests_and_read_back_exact() {
    let (s, _d, addr) = store();
    for coalesce in [true, false] {
        let name = if coalesce { "seq-on" } else { "seq-off" };
        let vid = create(addr, name, 16 * MIB, MIB);
        let vol = volume(addr, vid, false);
        let before = s.requests();
        // 1024 × 4 KiB into 4 new objects (creates, writes waiting behind them), then 1023 ×
        // 4 KiB at a 2 KiB offset over the same objects (every object boundary is crossed).
        let merged = on_shard_with(addr, vol, 1, coalesce, async move |sh| {
            seq_write(&sh, 32, 0, 1024, 4096, 0).await;
            seq_write(&sh, 32, 2048, 1023, 4096, 5000).await;
            let mut back = vec![0u8; 4 * MIB as usize];
            sh.handle(io(Op::Read, 0, 4 * MIB as u32, 0), &mut back).await.expect("read");
            (sh.merged(), back)
        })
        .join()
        .expect("shard");
        let requests = s.requests() - before;
        let mut model = seq_model(1024, 4096, 0);
        model[2048..2048 + 1023 * 4096].copy_from_slice(&seq_model(1023, 4096, 5000));
        assert!(merged.1 == model, "coalesce {coalesce}: the shard reads back what was written");
        assert!(
            read_all(addr, vid, 0, 4 * MIB as usize) == model,
            "coalesce {coalesce}: a fresh client reads the same"
        );
        let entries = control(addr, async |c| c.read_inode(vid).await.expect("inode").1);
        assert_eq!(&entries[..5], &[vid.0, vid.0, vid.0, vid.0, 0]);
        // 2047 block writes (+ 4 creates' inode updates + the read's 4 requests).
        if coalesce {
            assert!(merged.0 > 1000, "most writes rode on another ({} merged)", merged.0);
            assert!(requests < 1024, "{requests} sheep requests for 2047 block writes");
        } else {
            assert_eq!(merged.0, 0);
            assert!(
                requests >= 2047,
                "{requests} sheep requests for 2047 block writes without coalescing"
            );
        }
    }
}

#[test]
fn merged_writes_cow_into_a_clone_with_discards_interleaved() {
    let (_s, _d, addr) = store();
    let base = create(addr, "cbase", 8 * MIB, MIB);
    on_shard_with(addr, volume(addr, base, false), 1, true, async move |sh| {
        let mut buf = vec![0x11u8; MIB as usize];
        for i in 0..8 {
            sh.handle(io(Op::Write, i * MIB, MIB as u32, 0), &mut buf).await.expect("fill");
        }
    })
    .join()
    .expect("shard");
    let clone = control(addr, async |c| {
        manage::snapshot(
            &c,
            &VdiName::new("cbase").expect("name"),
            Some(&VdiName::new("s").expect("tag")),
        )
        .await
        .expect("snapshot");
        manage::clone(&c, &"cbase:s".parse().expect("spec"), &VdiName::new("cchild").expect("name"))
            .await
            .expect("clone")
            .vid
    });
    // Objects 0..3 get 4 KiB writes from 32 tags (COW creates, then merged writes); object 6
    // 64 KiB writes from 8 more; meanwhile objects 4 and 5 are discarded, several times.
    let merged = on_shard_with(addr, volume(addr, clone, false), 1, true, async move |sh| {
        let discards = {
            let sh = sh.clone();
            async move {
                let mut buf = vec![0u8; 4096];
                for _ in 0..8 {
                    sh.handle(io(Op::Discard, 4 * MIB, 2 * MIB as u32, 999), &mut buf)
                        .await
                        .expect("discard");
                    ring::sleep(std::time::Duration::from_micros(200)).await;
                }
            }
        };
        let (a, b) = (
            seq_write(&sh, 32, 0, 1024, 4096, 100),
            seq_write(&sh, 8, 6 * MIB, 12, 64 << 10, 9000),
        );
        futures_lite::future::zip(discards, futures_lite::future::zip(a, b)).await;
        sh.merged()
    })
    .join()
    .expect("shard");
    assert!(merged > 0, "writes were merged");
    let mut model = vec![0x11u8; 8 * MIB as usize];
    model[..4 * MIB as usize].copy_from_slice(&seq_model(1024, 4096, 100));
    model[4 * MIB as usize..6 * MIB as usize].fill(0);
    model[6 * MIB as usize..][..12 << 16].copy_from_slice(&seq_model(12, 64 << 10, 9000));
    assert!(read_all(addr, clone, 0, 8 * MIB as usize) == model, "the clone reads back exact");
    assert!(
        read_all(addr, base, 0, 8 * MIB as usize).iter().all(|&b| b == 0x11),
        "the snapshot is unchanged"
    );
    let entries = control(addr, async |c| c.read_inode(clone).await.expect("inode").1);
    assert_eq!(
        &entries[..8],
        &[clone.0, clone.0, clone.0, clone.0, 0, 0, clone.0, base.0],
        "COW entries and discards persisted"
    );
}

#[test]
fn an_error_on_a_merged_write_fails_every_block_request_it_carries() {
    use sheepdev::proto::{Opcode, SD_RES_EIO};
    let (s, _d, addr) = store();
    let vid = create(addr, "err", 8 * MIB, MIB);
    let faults = s.faults();
    let got = on_shard_with(addr, volume(addr, vid, false), 1, true, async move |sh| {
        let mut buf = vec![0u8; MIB as usize];
        sh.handle(io(Op::Write, 0, MIB as u32, 0), &mut buf).await.expect("create object 0");
        let m0 = sh.merged();
        faults.fail_next(1, Some(Opcode::WriteObj), SD_RES_EIO);
        // Eight adjacent writes queued together, tags 1..=8 of blocks 0..8.
        let eight = || {
            join_all(
                (0..8u64)
                    .map(|k| {
                        let sh = sh.clone();
                        async move {
                            let mut b = pattern(k, 4096);
                            sh.handle(io(Op::Write, k * 4096, 4096, k as u16 + 1), &mut b).await
                        }
                    })
                    .collect(),
            )
        };
        // As one WRITE_OBJ, which fails.
        let failed = eight().await;
        let merged = sh.merged() - m0;
        // The same again succeeds.
        let ok = eight().await;
        (failed, merged, ok)
    })
    .join()
    .expect("shard");
    assert_eq!(got.1, 7, "the eight writes went as one request");
    assert_eq!(
        got.0,
        vec![Err(Error::Server(SD_RES_EIO)); 8],
        "each block request of the failed request failed"
    );
    assert_eq!(s.faults().failed(), 1);
    assert_eq!(got.2, vec![Ok(4096); 8]);
    assert!(read_all(addr, vid, 0, 8 * 4096) == seq_model(8, 4096, 0));
}

#[test]
fn inode_updates_of_concurrent_creates_of_neighbouring_objects_are_merged() {
    let (s, _d, addr) = store();
    let vid = create(addr, "inode", 64 * MIB, MIB);
    // Creates finish in bursts (every object write waits 2 ms), so the inode updates of
    // neighbouring objects wait for the sender together and go as one inode write.
    let vol = volume(addr, vid, false);
    s.faults().set_object_delay(std::time::Duration::from_millis(2));
    let before = s.requests();
    let merged = on_shard_with(addr, vol, 1, true, async move |sh| {
        // 64 tags, each writes the first 4 KiB of its own new object.
        let writes = (0..64u64).map(|k| {
            let sh = sh.clone();
            async move {
                let mut b = pattern(k, 4096);
                sh.handle(io(Op::Write, k * MIB, 4096, k as u16), &mut b).await.expect("write");
            }
        });
        join_all(writes.collect()).await;
        sh.merged()
    })
    .join()
    .expect("shard");
    let requests = s.requests() - before;
    s.faults().set_object_delay(std::time::Duration::ZERO);
    assert!(
        merged > 0 && requests == 128 - merged,
        "{requests} sheep requests for 64 creates and their inode updates, {merged} merged"
    );
    let entries = control(addr, async |c| c.read_inode(vid).await.expect("inode").1);
    assert_eq!(&entries[..64], &[vid.0; 64][..], "every entry persisted");
    for k in 0..64u64 {
        assert!(read_all(addr, vid, k * MIB, 4096) == pattern(k, 4096), "object {k}");
    }
}
