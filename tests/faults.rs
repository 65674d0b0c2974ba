//! Shards under injected faults, without a kernel. Each test runs 8 tags on one shard (own
//! ring thread, `Shard::handle`), each writing its own 8 blocks of 64 KiB round after round
//! and reading each block back at once, while one fault happens: through the fault proxy
//! (`sheepdev::fault`) a drop of every connection, a stall longer than the shard's 5 s
//! watchdog, a delay, resets and truncations in the middle of responses; on the store
//! (`sheepdev::store::Faults`, `Store::restart`) error results and restarts. Afterwards
//! every block read through a fresh client equals the last round written, and the longest
//! time without any I/O completing is printed (`cargo test --test faults -- --nocapture`).
//! Time bounds are generous upper limits against hangs, plus lower limits that prove a
//! stall or delay really happened.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sheepdev::block::{IoDesc, Op};
use sheepdev::fault::{Cut, Event, Fault, Proxy, Which};
use sheepdev::proto::libc_errno::{EIO, ENOSPC};
use sheepdev::proto::{Opcode, Vid, SD_RES_EIO, SD_RES_NO_SPACE};
use sheepdev::shard::{self, ring, Error, Shard};
use sheepdev::store::Store;
use sheepdev::vdi::Volume;

mod common;
use common::MIB;
const BLOCK: usize = 64 << 10;
const TAGS: u64 = 8;
const PER_TAG: u64 = 8;
/// I/Os (a write and its read-back per block) in one round of every tag.
const ROUND: u64 = TAGS * PER_TAG * 2;
/// Upper bound on anything a test waits for.
const PATIENCE: Duration = Duration::from_secs(60);

/// Block `i`'s contents in round `r`.
fn block(i: u64, r: u64) -> Vec<u8> {
    (0..BLOCK as u64)
        .map(|k| {
            (i.wrapping_mul(131).wrapping_add(r.wrapping_mul(7919)).wrapping_add(k / 61) % 251)
                as u8
        })
        .collect()
}

struct Rig {
    store: Option<Store>,
    _dir: tempfile::TempDir,
    store_addr: SocketAddr,
    vid: Vid,
    proxy: Proxy,
}

fn rig() -> Rig {
    let (store, dir, addr, vid) = common::store_with_vdi("f", 16 * MIB, MIB);
    let proxy = Proxy::start("127.0.0.1:0".parse().expect("addr"), addr).expect("proxy");
    Rig { store: Some(store), _dir: dir, store_addr: addr, vid, proxy }
}

impl Rig {
    fn volume(&self) -> Arc<Volume> {
        common::volume(self.store_addr, self.vid, false)
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("the store runs")
    }

    /// Every block, read through a fresh shard straight from the store, is its last round.
    fn verify(&self, rounds: &[u64]) {
        let all = common::read_all(self.store_addr, self.vid, 0, (TAGS * PER_TAG) as usize * BLOCK);
        for t in 0..TAGS {
            let last = rounds[t as usize] - 1;
            for k in 0..PER_TAG {
                let i = t * PER_TAG + k;
                let got = &all[i as usize * BLOCK..(i as usize + 1) * BLOCK];
                assert!(got == block(i, last), "block {i} (tag {t}) is not round {last}");
            }
        }
    }
}

/// What the tags saw.
#[derive(Debug)]
struct Run {
    /// Rounds completed per tag.
    rounds: Vec<u64>,
    /// Failed block requests.
    errors: Vec<Error>,
    /// Longest time with no I/O completing.
    longest_gap: Duration,
    /// Slowest single block request.
    slowest: Duration,
    reconnects: u64,
}

#[derive(Default)]
struct Stats {
    last: Cell<Option<Instant>>,
    gap: Cell<Duration>,
    slowest: Cell<Duration>,
    errors: RefCell<Vec<Error>>,
}

impl Stats {
    fn completed(&self, started: Instant) {
        let now = Instant::now();
        self.slowest.set(self.slowest.get().max(now - started));
        if let Some(last) = self.last.get() {
            self.gap.set(self.gap.get().max(now - last));
        }
        self.last.set(Some(now));
    }
}

struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    thread: shard::Spawned<Run>,
}

impl Load {
    /// Wait until `n` more I/Os completed than `from`.
    fn wait_past(&self, from: u64, n: u64, what: &str) {
        let t0 = Instant::now();
        while self.done.load(Ordering::SeqCst) < from + n {
            assert!(!self.thread.is_finished(), "the load ended early ({what})");
            assert!(t0.elapsed() < PATIENCE, "I/O made no progress for {PATIENCE:?} ({what})");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn done(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    fn finish(self) -> Run {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("shard thread")
    }
}

/// One request, retried after an error (recorded) until it succeeds.
async fn until_ok(sh: &Shard, st: &Stats, d: IoDesc, buf: &mut [u8]) {
    for _ in 0..100 {
        let t0 = Instant::now();
        match sh.handle(d, buf).await {
            Ok(_) => return st.completed(t0),
            Err(e) => st.errors.borrow_mut().push(e),
        }
    }
    panic!("{:?} at {} failed 100 times: {:?}", d.op, d.offset, st.errors.borrow().last());
}

/// Tag `t`: write each of its blocks and read it back, round after round, until `stop`
/// (always ending a whole round); returns the rounds done.
async fn tag(
    sh: Rc<Shard>,
    st: Rc<Stats>,
    t: u64,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> u64 {
    let mut buf = vec![0u8; BLOCK];
    let mut round = 0;
    loop {
        for k in 0..PER_TAG {
            let i = t * PER_TAG + k;
            let want = block(i, round);
            buf.copy_from_slice(&want);
            let d = IoDesc {
                op: Op::Write,
                offset: i * BLOCK as u64,
                len: BLOCK as u32,
                tag: t as u16,
                fua: false,
            };
            until_ok(&sh, &st, d, &mut buf).await;
            done.fetch_add(1, Ordering::SeqCst);
            buf.fill(0);
            until_ok(&sh, &st, IoDesc { op: Op::Read, ..d }, &mut buf).await;
            assert!(
                buf == want,
                "block {i} read back in round {round} differs from what was just written"
            );
            done.fetch_add(1, Ordering::SeqCst);
        }
        round += 1;
        if stop.load(Ordering::SeqCst) {
            return round;
        }
    }
}

/// Start the tags on a shard of two connections to `gateway`.
fn start_load(vol: Arc<Volume>, gateway: SocketAddr) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let (stop2, done2) = (stop.clone(), done.clone());
    let cfg = shard::Config { io_timeout: PATIENCE, ..common::shard_config(gateway) };
    let thread = shard::spawn("test-shard", cfg, vol, move |sh, exe| {
        let st = Rc::new(Stats::default());
        let tasks: Vec<_> = (0..TAGS)
            .map(|t| exe.spawn(tag(sh.clone(), st.clone(), t, stop2.clone(), done2.clone())))
            .collect();
        async move {
            let mut rounds = Vec::new();
            for t in tasks {
                rounds.push(t.await);
            }
            // A connection cut at the end may still be reconnecting: count it once it is back.
            let t0 = Instant::now();
            while !sh.is_connected() && t0.elapsed() < PATIENCE {
                ring::sleep(Duration::from_millis(5)).await;
            }
            let reconnects = sh.reconnects();
            Run {
                rounds,
                errors: st.errors.take(),
                longest_gap: st.gap.get(),
                slowest: st.slowest.get(),
                reconnects,
            }
        }
    })
    .expect("the shard connects");
    Load { stop, done, thread }
}

/// Run the load through the proxy (or straight to the store), inject `fault` once two
/// rounds are done, let two more rounds complete, then check every block and report.
fn under(name: &str, via_proxy: bool, fault: impl FnOnce(&mut Rig, &Load)) -> Run {
    let mut rig = rig();
    let gateway = if via_proxy { rig.proxy.addr() } else { rig.store_addr };
    let load = start_load(rig.volume(), gateway);
    load.wait_past(0, 2 * ROUND, "before the fault");
    let t0 = Instant::now();
    fault(&mut rig, &load);
    let injected = t0.elapsed();
    load.wait_past(load.done(), 2 * ROUND, "after the fault");
    let run = load.finish();
    rig.verify(&run.rounds);
    println!(
        "{name}: I/O stalled at most {:?} (slowest request {:?}); fault injection took {injected:?}; {} reconnects, {} failed requests, rounds {:?}",
        run.longest_gap,
        run.slowest,
        run.reconnects,
        run.errors.len(),
        run.rounds
    );
    run
}

fn next_cut(rx: &Receiver<Event>) -> Fault {
    loop {
        let ev = rx.recv_timeout(PATIENCE).expect("the armed cut happens");
        if matches!(ev.fault, Fault::Cut { .. }) {
            return ev.fault;
        }
    }
}

#[test]
fn dropped_connections() {
    let run = under("drop", true, |rig, _| {
        let h = rig.proxy.handle();
        for _ in 0..5 {
            // Both connections are back (the shard waits 100 ms before reconnecting).
            let t0 = Instant::now();
            while h.connections() < 2 {
                assert!(t0.elapsed() < PATIENCE, "the shard did not reconnect");
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(h.drop_all(), 2);
            // The relays notice within their 10 ms tick.
            std::thread::sleep(Duration::from_millis(30));
        }
        assert_eq!(h.injected(), 5);
    });
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    assert!(run.reconnects >= 10, "{} reconnects", run.reconnects);
}

#[test]
fn a_stall_longer_than_the_watchdog() {
    let stall = Duration::from_secs(6);
    let run = under("stall 6 s", true, |rig, load| {
        rig.proxy.handle().stall(stall);
        // Nothing completes during the stall, apart from what was already on its way.
        let before = load.done();
        std::thread::sleep(stall - Duration::from_millis(500));
        assert!(
            load.done() <= before + 2 * TAGS,
            "I/O went on during the stall: {} -> {}",
            before,
            load.done()
        );
    });
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    assert!(
        run.longest_gap >= Duration::from_secs(5) && run.longest_gap < PATIENCE,
        "stalled {:?}",
        run.longest_gap
    );
    assert!(run.reconnects >= 1, "the shard's 5 s watchdog broke the stalled connections");
}

#[test]
fn delayed_chunks() {
    let delay = Duration::from_millis(30);
    let run = under("delay 30 ms", true, |rig, load| {
        let h = rig.proxy.handle();
        h.set_delay(delay);
        load.wait_past(load.done(), ROUND / 2, "under delay");
        h.set_delay(Duration::ZERO);
    });
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    assert!(run.slowest >= delay, "no request was delayed: slowest {:?}", run.slowest);
}

fn cuts(name: &str, how: Cut) -> Run {
    under(name, true, |rig, _| {
        let h = rig.proxy.handle();
        let rx = h.events();
        for n in 0..6 {
            let which = if n % 2 == 0 { Which::WithPayload } else { Which::Any };
            h.cut_next(how, which);
            match next_cut(&rx) {
                Fault::Cut { how: got, in_payload, sent, data_length, .. } => {
                    assert_eq!(got, how);
                    assert!(sent < 48 + u64::from(data_length), "the cut is inside the response");
                    if which == Which::WithPayload {
                        assert!(in_payload, "a response with a payload is cut in its payload");
                    }
                }
                other => unreachable!("{other:?}"),
            }
        }
    })
}

#[test]
fn responses_reset_mid_payload() {
    let run = cuts("reset mid-response", Cut::Reset);
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    assert!(run.reconnects >= 6, "{} reconnects", run.reconnects);
}

#[test]
fn truncated_responses() {
    let run = cuts("truncate", Cut::Truncate);
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    assert!(run.reconnects >= 6, "{} reconnects", run.reconnects);
}

#[test]
fn store_error_results_fail_requests_with_their_errno() {
    let run = under("store errors", true, |rig, _| {
        let f = rig.store().faults();
        let wait = |n: u64| {
            let t0 = Instant::now();
            while f.failed() < n {
                assert!(t0.elapsed() < PATIENCE, "{} of {n} injected errors happened", f.failed());
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        f.fail_next(3, Some(Opcode::WriteObj), SD_RES_EIO);
        wait(3);
        f.fail_next(2, Some(Opcode::ReadObj), SD_RES_NO_SPACE);
        wait(5);
    });
    let mut errnos: Vec<i32> = run.errors.iter().map(|e| e.errno()).collect();
    errnos.sort_unstable();
    let mut want = vec![EIO, EIO, EIO, ENOSPC, ENOSPC];
    want.sort_unstable();
    assert_eq!(errnos, want, "{:?}", run.errors);
    assert!(run
        .errors
        .iter()
        .all(|e| matches!(e, Error::Server(c) if *c == SD_RES_EIO || *c == SD_RES_NO_SPACE)));
    assert!(run.errors.iter().all(|e| !e.should_reconnect()));
}

#[test]
fn store_restarts() {
    let run = under("store restart", false, |rig, load| {
        for _ in 0..2 {
            let store = rig.store.take().expect("store");
            rig.store =
                Some(store.restart().expect("the store restarts on the same address at once"));
            load.wait_past(load.done(), ROUND / 4, "after a restart");
        }
        // Down for a second this time.
        let store = rig.store.take().expect("store");
        let cfg = store.config();
        store.shutdown();
        std::thread::sleep(Duration::from_secs(1));
        rig.store = Some(Store::start(cfg).expect("the store comes back"));
    });
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    assert!(run.reconnects >= 3, "{} reconnects", run.reconnects);
    assert!(
        run.longest_gap >= Duration::from_secs(1),
        "the store was down for a second, yet I/O stalled only {:?}",
        run.longest_gap
    );
}

/// `sheepdev fault-proxy` with bad flags: one line on stderr, exit status 2.
#[test]
fn fault_proxy_cli_refuses_bad_flags() {
    let bin = env!("CARGO_BIN_EXE_sheepdev");
    for (args, says) in [
        (
            &["--listen", "127.0.0.1:0", "--target", "127.0.0.1:7000", "--reset-every", "5"][..],
            "bad duration",
        ),
        (
            &["--listen", "127.0.0.1:0", "--target", "127.0.0.1:7000", "--stall-every", "1s"][..],
            "--stall-for",
        ),
        (&["--listen", "nowhere", "--target", "127.0.0.1:7000"][..], "bad address"),
        (
            &["--listen", "127.0.0.1:0", "--target", "127.0.0.1:7000", "--drop-every", "0s"][..],
            "at least 1ms",
        ),
    ] {
        let out = std::process::Command::new(bin)
            .arg("fault-proxy")
            .args(args)
            .output()
            .expect("run sheepdev");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// `sheepdev fault-proxy --reset-every 100ms` between a client and the store prints a line
/// per reset, with a timestamp, and the client's requests keep being answered in between.
#[test]
fn fault_proxy_cli_resets_on_schedule() {
    use sheepdev::proto::{ReqHeader, RspHeader, VdiArgs, HEADER_LEN, SD_RES_SUCCESS};
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::{Command, Stdio};

    let rig = rig();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sheepdev"))
        .args([
            "fault-proxy",
            "--listen",
            "127.0.0.1:0",
            "--target",
            &rig.store_addr.to_string(),
            "--reset-every",
            "100ms",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sheepdev fault-proxy");
    let mut banner = String::new();
    BufReader::new(child.stderr.take().expect("stderr")).read_line(&mut banner).expect("banner");
    let addr: SocketAddr = banner
        .split_whitespace()
        .nth(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {banner:?}"));
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let client = std::thread::spawn(move || {
        let (mut answered, mut broken) = (0u64, 0u64);
        while !stop2.load(Ordering::SeqCst) {
            let Ok(mut s) = std::net::TcpStream::connect(addr) else { continue };
            s.set_read_timeout(Some(PATIENCE)).expect("timeout");
            loop {
                let req = ReqHeader::vdi(Opcode::GetClusterDefault, 0, 0, VdiArgs::default());
                let mut head = [0u8; HEADER_LEN];
                if s.write_all(&req.encode()).and_then(|()| s.read_exact(&mut head)).is_err() {
                    broken += 1;
                    break;
                }
                assert_eq!(RspHeader::decode(&head).result, SD_RES_SUCCESS);
                answered += 1;
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
            }
        }
        (answered, broken)
    });
    let mut resets = Vec::new();
    while resets.len() < 3 {
        let line = rx.recv_timeout(PATIENCE).expect("a line per reset");
        if line.contains(" reset connection ") {
            resets.push(line);
        }
    }
    stop.store(true, Ordering::SeqCst);
    let (answered, broken) = client.join().expect("client");
    child.kill().expect("stop the proxy");
    let _ = child.wait();
    println!("fault-proxy CLI: {resets:?}; {answered} answers, {broken} broken connections");
    for l in &resets {
        let ts = l.split(' ').next().unwrap_or("");
        assert!(
            ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "timestamp first: {l}"
        );
        assert!(l.contains("mid-header"), "header-only responses are cut in their header: {l}");
    }
    assert!(broken >= 3 && answered > broken, "{answered} answers, {broken} broken connections");
}
