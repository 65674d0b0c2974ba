//! The `sheepdev` binary against an embedded store started in-process: bad input gets one
//! clear line and a non-zero exit with nothing half-made; a 512 MiB write and read give
//! back identical bytes with many requests in flight; the VDI commands work end to end;
//! `fio-report` turns fio JSON into its table.

use std::ffi::OsStr;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sheepdev::store::{Config, Store};

struct Env {
    store: Store,
    _dir: tempfile::TempDir,
    addr: SocketAddr,
}

fn start(sync: bool) -> Env {
    start_with(Config { sync, ..Default::default() })
}

fn start_with(cfg: Config) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = Config {
        dir: dir.path().to_path_buf(),
        listen: vec!["127.0.0.1:0".parse().expect("addr")],
        ..cfg
    };
    let store = Store::start(cfg).expect("store starts");
    let addr = store.local_addrs()[0];
    Env { store, _dir: dir, addr }
}

fn sheepdev(env: &Env, args: &[&str]) -> Output {
    sheepdev_at(&env.addr.to_string(), args, None)
}

fn sheepdev_at(addr: &str, args: &[&str], stdin: Option<std::fs::File>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sheepdev"));
    cmd.arg("vdi").arg("-a").arg(addr).args(args);
    cmd.stdin(stdin.map(Stdio::from).unwrap_or_else(Stdio::null));
    cmd.output().expect("sheepdev runs")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "expected success, got {:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Fails with exactly one line on stderr that contains `needle`.
fn fails_with(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure containing {needle:?}, got success");
    assert_eq!(err.trim_end().lines().count(), 1, "one line on stderr, got: {err}");
    assert!(err.contains(needle), "stderr {err:?} should contain {needle:?}");
    assert!(!err.contains("panicked"), "{err}");
}

fn names(env: &Env) -> Vec<String> {
    let out = ok(&sheepdev(env, &["list", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).expect("list --json is JSON");
    let mut n: Vec<String> = v
        .as_array()
        .expect("an array")
        .iter()
        .map(|r| {
            format!(
                "{}{}",
                r["name"].as_str().unwrap_or("?"),
                if r["snapshot"].as_bool() == Some(true) { "@snap" } else { "" }
            )
        })
        .collect();
    n.sort();
    n
}

#[test]
fn bad_input_gets_one_clear_line() {
    let env = start(false);
    ok(&sheepdev(&env, &["create", "linux", "64M"]));

    fails_with(&sheepdev(&env, &["read", "nosuch"]), "no vdi found");
    fails_with(&sheepdev(&env, &["read", "linux:nosuchtag"]), "no such snapshot tag");
    fails_with(&sheepdev(&env, &["read", "linux:7"]), "no such snapshot tag or id");
    fails_with(&sheepdev(&env, &["create", &"n".repeat(256), "1G"]), "too long");
    fails_with(&sheepdev(&env, &["create", "big", "5T"]), "above the limit");
    fails_with(
        &sheepdev(&env, &["create", "big", "1G", "--object-size", "3M"]),
        "not a power of two",
    );
    fails_with(&sheepdev(&env, &["create", "zero", "0"]), "size must be above 0");
    fails_with(&sheepdev(&env, &["create", "x", "12Q"]), "bad size");
    fails_with(
        &sheepdev(&env, &["create", "x", "1G", "--copies", "3:1"]),
        "data must be 2, 4, 8 or 16",
    );
    fails_with(&sheepdev(&env, &["create", "linux", "1G"]), "vdi exists already");
    fails_with(&sheepdev(&env, &["clone", "linux", "copy"]), "needs a snapshot");
    fails_with(&sheepdev(&env, &["snapshot", "linux", "--tag", "12"]), "all digits");
    fails_with(&sheepdev(&env, &["write", "linux:1"]), "no such snapshot tag or id");
    fails_with(&sheepdev(&env, &["resize", "linux", "32M"]), "shrinking it to 33554432 is refused");
    fails_with(&sheepdev(&env, &["resize", "linux", "5T"]), "above the limit");
    fails_with(&sheepdev(&env, &["resize", "linux:1", "1G"]), "cannot contain ':'");
    fails_with(&sheepdev(&env, &["resize", "nosuch", "1G"]), "no vdi found");
    fails_with(&sheepdev_at("127.0.0.1:99999", &["list"], None), "bad address");
    fails_with(&sheepdev_at("127.0.0.1:", &["list"], None), "bad address");
    fails_with(&sheepdev_at("unix:relative/sock", &["list"], None), "absolute path");
    fails_with(
        &sheepdev_at("unix:/nonexistent/sock", &["list"], None),
        "cannot connect to unix:/nonexistent/sock",
    );
    // The store's own unix socket, as a sheep's `<dir>/sock`.
    let sock = env.store.unix_socket().expect("DIR/sock").display().to_string();
    assert!(
        ok(&sheepdev_at(&format!("unix:{sock}"), &["list"], None)).contains("linux"),
        "list through unix:{sock}"
    );

    // Unreachable: a port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    fails_with(&sheepdev_at(&closed.to_string(), &["list"], None), "cannot connect to");

    // A gateway that never answers the handshake: bounded by --connect-timeout.
    let (addr, _hold) = black_hole();
    let t = Instant::now();
    fails_with(
        &sheepdev_at(&addr.to_string(), &["--connect-timeout", "1", "list"], None),
        "no answer within 1000 ms",
    );
    assert!(t.elapsed() < Duration::from_secs(10), "connect timeout took {:?}", t.elapsed());

    // Writing more than the VDI holds is refused before anything is written.
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(file.path(), vec![1u8; 65 << 20]).expect("write tmp");
    let o = sheepdev_at(
        &env.addr.to_string(),
        &["write", "linux"],
        Some(std::fs::File::open(file.path()).expect("open")),
    );
    fails_with(&o, "do not fit");
    let mut head = Vec::new();
    Command::new(env!("CARGO_BIN_EXE_sheepdev"))
        .args(["vdi", "-a", &env.addr.to_string(), "read", "linux", "--length", "4096"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn")
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut head)
        .expect("read");
    assert!(head.iter().all(|&b| b == 0), "nothing was written by the refused write");

    // Nothing half-made by any of the above; then the VDI grows as `dog vdi resize` does.
    assert_eq!(names(&env), vec!["linux".to_string()]);
    let grown = sheepdev(&env, &["resize", "linux", "96M"]);
    assert!(String::from_utf8_lossy(&grown.stderr).contains("67108864 -> 100663296 bytes"));
    ok(&grown);
    let same = sheepdev(&env, &["resize", "linux", "96M"]);
    assert!(String::from_utf8_lossy(&same.stderr).contains("is 100663296 bytes already"));
    ok(&same);
    let o = sheepdev(&env, &["read", "linux", "--offset", "95M"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.stdout.len(), 1 << 20, "the grown VDI reads to its new end");
    // `resize` and `features` of the device side: one line without a daemon or a driver.
    let dev = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sheepdev"))
            .args(args)
            .env("SHEEPDEV_CONTROL", "/nonexistent/control.sock")
            .output()
            .expect("sheepdev runs")
    };
    fails_with(&dev(&["resize", "linux", "1G"]), "is `sheepdev serve` running?");
    fails_with(&dev(&["resize", "linux"]), "which size?");
    fails_with(&dev(&["resize", "linux", "12Q"]), "bad size");
    fails_with(&dev(&["resize", "--id", "3", "linux", "1G"]), "not both");
    if !std::path::Path::new("/dev/ublk-control").exists() {
        fails_with(&dev(&["features"]), "ublk_drv");
    }
    env.store.shutdown();
}

/// A listener whose accept queue is full, so new connections are never completed.
fn black_hole() -> (SocketAddr, Vec<TcpStream>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let mut hold = Vec::new();
    // Fill the backlog; further SYNs are dropped by the kernel.
    for _ in 0..4096 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => hold.push(s),
            Err(_) => break,
        }
    }
    std::mem::forget(l);
    (addr, hold)
}

/// "up to N requests in flight" from the CLI's info log.
fn peak_from_log(log: &str) -> usize {
    log.split("up to ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no in-flight count in the log: {log}"))
}

fn pattern(seed: u64, buf: &mut [u8]) {
    let mut x = seed | 1;
    for c in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
}

struct RoundTrip {
    write_secs: f64,
    read_secs: f64,
    write_peak: usize,
    read_peak: usize,
}

/// `vdi write` 512 MiB of a pattern at offset 4 KiB, `vdi read` it back, compare every byte.
fn round_trip_512_mib(env: &Env) -> RoundTrip {
    const LEN: usize = 512 << 20;
    ok(&sheepdev(env, &["create", "big", "1G"]));
    let src = tempfile::NamedTempFile::new().expect("tmp");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(src.path()).expect("create"));
        let mut buf = vec![0u8; 1 << 20];
        for i in 0..(LEN >> 20) {
            pattern(i as u64 + 1, &mut buf);
            f.write_all(&buf).expect("write");
        }
        f.flush().expect("flush");
    }
    let a = env.addr.to_string();
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_sheepdev"))
        .args(["vdi", "-a", &a, "write", "big", "--offset", "4K"])
        .env("SHEEPDEV_LOG", "info")
        .stdin(std::fs::File::open(src.path()).expect("open"))
        .output()
        .expect("write runs");
    let write_secs = t.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let write_peak = peak_from_log(&log);

    let dst = tempfile::NamedTempFile::new().expect("tmp");
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_sheepdev"))
        .args(["vdi", "-a", &a, "read", "big", "--offset", "4K", "--length", "512M"])
        .env("SHEEPDEV_LOG", "info")
        .stdout(std::fs::File::create(dst.path()).expect("dst"))
        .stderr(Stdio::piped())
        .output()
        .expect("read runs");
    let read_secs = t.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let read_peak = peak_from_log(&log);

    let (mut x, mut y) = (
        BufReader::new(std::fs::File::open(src.path()).expect("src")),
        BufReader::new(std::fs::File::open(dst.path()).expect("dst")),
    );
    let (mut bx, mut by) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    for i in 0..(LEN >> 20) {
        x.read_exact(&mut bx).expect("src chunk");
        y.read_exact(&mut by).expect("dst chunk");
        assert!(bx == by, "MiB {i} differs");
    }
    assert_eq!(y.read(&mut by).expect("eof"), 0, "no extra bytes");
    // The unaligned start: the 4 KiB before the data are still zeros.
    let head = Command::new(env!("CARGO_BIN_EXE_sheepdev"))
        .args(["vdi", "-a", &a, "read", "big", "--length", "4K"])
        .output()
        .expect("runs");
    assert!(
        head.status.success() && head.stdout.len() == 4096 && head.stdout.iter().all(|&b| b == 0)
    );
    RoundTrip { write_secs, read_secs, write_peak, read_peak }
}

#[test]
fn write_then_read_512_mib_keeps_16_requests_in_flight() {
    // A 100 ms disk, so requests queue up as they do on a cluster whose latency is longer
    // than the time the client needs to produce the next request.
    let env = start_with(Config {
        sync: true,
        object_delay: Duration::from_millis(100),
        workers: 64,
        ..Default::default()
    });
    let r = round_trip_512_mib(&env);
    let store_peak = env.store.peak_inflight();
    eprintln!(
        "in flight with a 100 ms disk: write {}, read {} (client); {store_peak} (store)",
        r.write_peak, r.read_peak
    );
    assert!(
        r.write_peak >= 16 && r.read_peak >= 16 && store_peak >= 16,
        "in flight: write {}, read {}, store {store_peak}",
        r.write_peak,
        r.read_peak
    );
    env.store.shutdown();
}

#[test]
fn write_then_read_512_mib_throughput() {
    let env = start(true);
    let r = round_trip_512_mib(&env);
    eprintln!(
        "512 MiB against the embedded store (sync on): write {:.1} MiB/s, read {:.1} MiB/s (client peaks {} / {} in flight)",
        512.0 / r.write_secs,
        512.0 / r.read_secs,
        r.write_peak,
        r.read_peak
    );
    env.store.shutdown();
}

#[test]
fn snapshot_clone_rebase_delete_from_the_cli() {
    let env = start(false);
    let a = env.addr.to_string();
    ok(&sheepdev(&env, &["create", "linux", "16M", "--copies", "2", "--object-size", "1M"]));
    let write = |spec: &str, byte: u8| {
        let f = tempfile::NamedTempFile::new().expect("tmp");
        std::fs::write(f.path(), vec![byte; 8192]).expect("tmp write");
        ok(&sheepdev_at(&a, &["write", spec], Some(std::fs::File::open(f.path()).expect("open"))));
    };
    let read = |spec: &str| -> Vec<u8> {
        let o = sheepdev_at(&a, &["read", spec, "--length", "8K"], None);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    };
    write("linux", 0xa);
    ok(&sheepdev(&env, &["snapshot", "linux", "--tag", "snap"]));
    write("linux", 0xb);
    assert!(read("linux:snap").iter().all(|&x| x == 0xa));
    assert!(read("linux:1").iter().all(|&x| x == 0xa));
    assert!(read("linux").iter().all(|&x| x == 0xb));
    ok(&sheepdev(&env, &["clone", "linux:snap", "copy"]));
    write("copy", 0xc);
    assert!(read("linux:snap").iter().all(|&x| x == 0xa), "clone writes never reach the parent");
    assert!(read("copy").iter().all(|&x| x == 0xc));
    ok(&sheepdev(&env, &["rebase", "linux:snap"]));
    assert!(read("linux").iter().all(|&x| x == 0xa), "rebased working vdi reads the snapshot");
    assert!(read("linux:2").iter().all(|&x| x == 0xb), "the old working vdi is kept as snapshot 2");
    let table = ok(&sheepdev(&env, &["list"]));
    assert!(table.contains("snap") && table.contains("copy"), "{table}");
    assert_eq!(names(&env), ["copy", "linux", "linux@snap", "linux@snap"]);
    ok(&sheepdev(&env, &["delete", "copy"]));
    ok(&sheepdev(&env, &["delete", "linux:2"]));
    assert_eq!(names(&env), ["linux", "linux@snap"]);
    fails_with(&sheepdev(&env, &["read", "linux:2"]), "no such snapshot tag or id");
    assert!(read("linux:snap").iter().all(|&x| x == 0xa));
    env.store.shutdown();
}

/// `sheepdev fio-report`: fio JSON (a warning line first, as fio writes it) from a directory,
/// against a ceiling; a job that reported an error still prints, then fails the command.
/// And the bench's bad options (`--plot`, `--devices`), refused in one line before it runs.
#[test]
fn fio_report_against_a_ceiling() {
    let job = |name: &str, iops: f64, p99: u64, error: i32| {
        format!(
            "fio: multiple writers may overwrite blocks that belong to other jobs.\n{{ \"fio version\" : \"fio-3.33\", \"jobs\" : [ {{ \"jobname\" : \"{name}\", \"groupid\" : 0, \"error\" : {error},
              \"job options\" : {{ \"iodepth\" : \"32\", \"numjobs\" : \"2\" }},
              \"read\" : {{ \"total_ios\" : 1000, \"iops\" : {iops}, \"bw_bytes\" : {bw},
                \"clat_ns\" : {{ \"percentile\" : {{ \"50.000000\" : 100000, \"99.000000\" : {p99}, \"99.900000\" : 900000 }} }} }},
              \"write\" : {{ \"total_ios\" : 0, \"iops\" : 0, \"bw_bytes\" : 0 }} }} ] }}\n",
            bw = iops * 4096.0
        )
    };
    let (dev, null) =
        (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    std::fs::write(
        dev.path().join("randread-4k-qd32.json"),
        job("randread-4k-qd32", 1000.0, 400000, 0),
    )
    .expect("write");
    std::fs::write(
        null.path().join("randread-4k-qd32.json"),
        job("randread-4k-qd32", 4000.0, 200000, 0),
    )
    .expect("write");
    let run = |args: &[&OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_sheepdev"))
            .arg("fio-report")
            .args(args)
            .output()
            .expect("sheepdev runs")
    };
    let o = run(&[OsStr::new("--ceiling"), null.path().as_os_str(), dev.path().as_os_str()]);
    let out = ok(&o);
    assert!(
        out.contains("| randread-4k-qd32 | read | 2 × 32 | 1000 | 4000 | 0.25 | 3.9 | 0.25 | 100 | 1.00 | 400 | 2.00 | 900 | 1.00 | 0 |"),
        "{out}"
    );

    std::fs::write(dev.path().join("randread-4k-qd1.json"), job("randread-4k-qd1", 10.0, 1000, 5))
        .expect("write");
    let o = run(&[dev.path().as_os_str()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("| randread-4k-qd1 | read | 2 × 32 | 10 |"),
        "the table is printed: {out}"
    );
    fails_with(&o, "fio reported errors in randread-4k-qd1");

    let o = Command::new(env!("CARGO_BIN_EXE_sheepdev"))
        .args(["bench", "--plot", "out.svg"])
        .output()
        .expect("sheepdev runs");
    fails_with(&o, "--plot writes a PNG");

    // Bad --devices: each fails at once with one line, before any store is started.
    for (args, line) in [
        (&["--devices", "0"][..], "0 is not in 1..=256"),
        (&["--devices", "1,8", "--coalesce", "on,off"][..], "takes one --coalesce setting"),
        (
            &["--workloads", "seqwrite-1m", "--shards", "2", "--devices", "1,64", "--size", "64M"]
                [..],
            "64 devices leave less than one seqwrite-1m request per shard of the 64 MiB region",
        ),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_sheepdev"))
            .arg("bench")
            .args(args)
            .output()
            .expect("sheepdev runs");
        fails_with(&o, line);
    }
}

/// `sheepdev serve` given the device table of a daemon that is gone, on a kernel that no
/// longer has the device: the device is dropped from the table with a log line (a re-attach
/// needs the kernel side); `recover` of it, or of nothing, fails with one line; SIGTERM exits
/// 0 and leaves the table persisted; `systemd-unit` names this binary. No kernel device is
/// touched, so this runs anywhere.
#[test]
fn serve_drops_lost_devices_and_exits_on_sigterm() {
    let bin = env!("CARGO_BIN_EXE_sheepdev");
    let dir = tempfile::tempdir().expect("tempdir");
    let id = 4242;
    assert!(
        !std::path::Path::new(&format!("/dev/ublkc{id}")).exists(),
        "this test needs ublk device {id} not to exist"
    );
    let table = format!(
        r#"[{{"device":"/dev/ublkb{id}","id":{id},"vdi":"linux","name":"linux","vid":7,"snapshot":null,"rebased_from":null,
        "gateways":["127.0.0.1:1"],"queues":1,"depth":8,"connections":1,"max_io":524288,"block_size":512,"size":1073741824,
        "read_only":false,"shared":false,"locked":false,"state":"live"}}]"#
    );
    std::fs::write(dir.path().join("devices.json"), table).expect("write the table");
    let sock = dir.path().join("control.sock");
    let log = std::fs::File::create(dir.path().join("serve.log")).expect("log");
    let mut serve = Command::new(bin)
        .args(["serve", "--metrics-addr", "off", "--state-dir"])
        .arg(dir.path())
        .env("SHEEPDEV_CONTROL", &sock)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("serve starts");
    let cli = |args: &[&str]| {
        Command::new(bin).args(args).env("SHEEPDEV_CONTROL", &sock).output().expect("sheepdev runs")
    };
    let t = Instant::now();
    let list = loop {
        let o = cli(&["list", "--json"]);
        if o.status.success() {
            break String::from_utf8_lossy(&o.stdout).into_owned();
        }
        assert!(
            serve.try_wait().expect("try_wait").is_none(),
            "serve exited: {}",
            std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default()
        );
        assert!(t.elapsed() < Duration::from_secs(30), "serve did not answer within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&list).expect("JSON"),
        serde_json::json!([]),
        "the lost device is dropped"
    );
    fails_with(
        &cli(&["recover", "--id", &id.to_string()]),
        &format!("no mapped device matches device id {id}"),
    );
    fails_with(&cli(&["recover", "/dev/ublkb4242"]), "no mapped device matches /dev/ublkb4242");
    fails_with(&cli(&["recover"]), "which device?");
    fails_with(&cli(&["recover", "linux:"]), "");

    // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(serve.id() as i32, libc::SIGTERM) }, 0);
    let t = Instant::now();
    let status = loop {
        if let Some(s) = serve.try_wait().expect("try_wait") {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "serve did not exit within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(dir.path().join("serve.log")).expect("log");
    assert!(status.success(), "serve exits 0 on SIGTERM, got {status:?}: {log}");
    assert!(
        log.contains(&format!(
            "/dev/ublkb{id} (linux) no longer exists in the kernel: dropped from the device table"
        )),
        "{log}"
    );
    assert!(log.contains("SIGTERM: exiting; 0 device(s) stay in the kernel"), "{log}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("devices.json")).expect("table").trim(),
        "[]"
    );

    let unit = ok(&Command::new(bin).arg("systemd-unit").output().expect("sheepdev runs"));
    let exe = std::fs::canonicalize(bin).expect("canonical path");
    assert!(
        unit.contains(&format!("\nExecStart={} serve\n", exe.display()))
            || unit.contains(&format!("\nExecStart={bin} serve\n")),
        "{unit}"
    );
    for line in ["Restart=always", "KillMode=mixed", "KillSignal=SIGTERM", "[Install]"] {
        assert!(unit.contains(line), "the unit has {line}: {unit}");
    }
    fails_with(
        &Command::new(bin)
            .args(["systemd-unit", "--bin", "relative/sheepdev"])
            .output()
            .expect("runs"),
        "absolute path",
    );
}
