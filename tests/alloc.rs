//! STYLE §4, "the hot path does not allocate", checked: a shard serves thousands of I/Os of
//! every op after a warm-up while a counting global allocator watches its thread.
//!
//! - The allocator wraps `System` and counts `alloc`, `alloc_zeroed` and `realloc` made by a
//!   thread whose thread-local tracking slot is set. Only the shard thread sets it, so the
//!   in-process store's threads and the control-plane client never count.
//! - The shard thread is set up as a ublk queue thread is: its own ring, the shard's
//!   `exec::LocalExecutor`, [`Shard::new`] with its metrics handles and ticker task, one
//!   long-lived task per tag, [`ring::run_local`].
//! - It runs a plan of phases, each one op kind spread over [`TAGS`] tasks: first a warm-up
//!   of every kind at full concurrency (one-time growth — per-tag buffers, slab and queue
//!   capacities — happens there), then the measured phases with fresh object indexes, so
//!   creates, COW creates, discards and write-zeroes of whole objects all really happen.
//! - Phases are separated by an allocation-free gate (wakers in preallocated slots): no
//!   sleep synchronises anything.
//!
//! Every measured phase must make no allocation at all, executor included: the shard's
//! executor (`shard::exec`) queues woken tasks in a queue that stops growing once it holds
//! every task ([`the_executor_allocates_nothing_per_wake_up`] checks it alone). smol's
//! executor, used before, allocated a 504-byte run-queue block per 31 wake-ups.
//!
//! `SHEEPDEV_ALLOC_BACKTRACES=N` prints where the first N counted allocations came from
//! (warm-up included, where one-time growth shows).

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use sheepdev::block::{IoDesc, Op};
use sheepdev::metrics::DeviceMetrics;
use sheepdev::proto::{VdiName, Vid};
use sheepdev::shard::exec::LocalExecutor;
use sheepdev::shard::{self, ring, Error, Shard};
use sheepdev::sheep::manage::{self, Redundancy};
use sheepdev::vdi::Volume;

mod common;
use common::control;

// ---------------------------------------------------------------------------------------
// The counting allocator.

#[global_allocator]
static ALLOC: Counting = Counting;

struct Counting;

/// Counting slots: phases of the shard test, and the last one for the executor test.
const SLOTS: usize = 32;
const EXECUTOR_SLOT: usize = SLOTS - 1;

thread_local! {
    /// The slot this thread's allocations are counted in; `None`: not counted.
    static TRACKED: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Allocations, per slot.
static ALLOCS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
/// Sizes of the allocations: (size + 1, count); 0 marks a free entry.
static SIZES: [(AtomicUsize, AtomicUsize); 16] =
    [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; 16];
static TRACES_LEFT: AtomicUsize = AtomicUsize::new(0);
static TRACES: Mutex<Vec<(usize, usize, Backtrace)>> = Mutex::new(Vec::new());

fn note(size: usize) {
    let Ok(Some(slot)) = TRACKED.try_with(Cell::get) else { return };
    ALLOCS[slot].fetch_add(1, Relaxed);
    for (s, n) in &SIZES {
        match s.compare_exchange(0, size + 1, Relaxed, Relaxed) {
            Ok(_) => {}
            Err(v) if v == size + 1 => {}
            Err(_) => continue,
        }
        n.fetch_add(1, Relaxed);
        break;
    }
    if TRACES_LEFT.load(Relaxed) > 0 {
        TRACES_LEFT.fetch_sub(1, Relaxed);
        // Capturing allocates: untracked meanwhile.
        TRACKED.set(None);
        let bt = Backtrace::force_capture();
        TRACES.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((slot, size, bt));
        TRACKED.set(Some(slot));
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; `note`
// only touches atomics, a `Cell` thread-local and (when asked for) a mutex, and never
// unwinds.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: `ptr` and `layout` come from this allocator, which is `System`'s.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` and `layout` come from this allocator, which is `System`'s.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Count this thread's allocations in `slot` from now on (`None`: stop).
fn track(slot: Option<usize>) {
    if let Some(k) = slot {
        ALLOCS[k].store(0, Relaxed);
    }
    TRACKED.set(slot);
}

/// Print the backtraces asked for with `SHEEPDEV_ALLOC_BACKTRACES`.
fn print_traces() {
    for (slot, size, bt) in
        TRACES.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain(..)
    {
        eprintln!("--- allocation of {size} bytes counted in slot {slot}:\n{bt}");
    }
}

// ---------------------------------------------------------------------------------------
// The plan: which I/Os each phase issues.

const MIB: u64 = 1 << 20;
/// Concurrent tasks (tags) in every phase, warm-up included.
const TAGS: usize = 32;
/// Per-tag buffer (the largest request is a 2 MiB DISCARD, which only uses 4 bytes of it).
const BUF: usize = 256 << 10;
/// The clone's size in 1 MiB objects.
const OBJECTS: u64 = 32 << 10;
/// Objects the parent snapshot holds: COW targets, then objects read from the parent.
const PARENT: u64 = 1280;
/// The first parent object only read (never COW-written) by the read phases.
const PARENT_READS: u64 = 768;
/// COW creates in the warm-up; the measured phase COW-creates the rest up to PARENT_READS
/// (each copies a whole 1 MiB object in the store: the slowest phase).
const WARM_COWS: u64 = 256;
/// Never written: reads of these are zeros without a request.
const HOLES: u64 = 20 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// 4 KiB writes creating objects `own..own + own_n()`.
    Create,
    /// 4 KiB writes COW-creating parent objects `cow..`.
    Cow,
    /// Reads of own, parent, never-written objects, and across an own object boundary.
    Read,
    /// Writes (4 KiB, 64 KiB, 8 KiB across a boundary) to existing own objects.
    Write,
    /// 4 KiB writes to existing own objects, the tags' requests adjacent (a sequential
    /// stream at depth TAGS): they ride on each other (coalescing).
    SeqWrite,
    Flush,
    /// DISCARD of one whole existing object (some with partial, ignored, edges).
    Discard,
    /// WRITE_ZEROES of 4 KiB inside existing objects.
    ZeroPartial,
    /// WRITE_ZEROES of a whole object, or of a partial head, a whole middle and a partial tail.
    ZeroWhole,
    /// 4 KiB writes creating objects `shared..`, four tags per object at once: one creates,
    /// the others wait for it on the ring (`WritePlan::Wait`), then write.
    CreateShared,
    /// Every tag at once sleeps for no time: grows libublk's op slab to one entry per tag
    /// plus the connections' and the ticker's, the most the other phases can have in flight
    /// (one-time growth, so it must happen in the warm-up).
    Sleep,
}

/// The object regions of one stage (warm-up or measured): `own..own + own_n()` is created by
/// the Create phase; its first `half` objects are read, written and partly zeroed; then come
/// the `discards` discarded objects, then the zeroed ones (three per request). The `shared`
/// objects after them are created by the contended phase.
#[derive(Debug, Clone, Copy)]
struct Stage {
    own: u64,
    half: u64,
    discards: u64,
    zero_whole: u64,
    shared: u64,
    cow: u64,
    cows: u64,
}

impl Stage {
    fn own_n(&self) -> u64 {
        self.half + self.discards + 3 * self.zero_whole
    }
    fn discard_base(&self) -> u64 {
        self.own + self.half
    }
    fn zero_base(&self) -> u64 {
        self.discard_base() + self.discards
    }
    fn shared_base(&self) -> u64 {
        self.own + self.own_n()
    }
}

#[derive(Debug, Clone, Copy)]
struct Phase {
    name: &'static str,
    kind: Kind,
    count: u64,
    stage: Stage,
    measured: bool,
}

fn io(op: Op, offset: u64, len: u64, tag: usize) -> IoDesc {
    IoDesc { op, offset, len: len as u32, tag: tag as u16, fua: false }
}

impl Phase {
    /// The `i`-th request of this phase, issued by `tag`.
    fn request(&self, i: u64, tag: usize) -> IoDesc {
        let s = self.stage;
        let page = |k: u64| (k % 256) * 4096;
        match self.kind {
            Kind::Create => io(Op::Write, (s.own + i) * MIB + page(i * 7), 4096, tag),
            Kind::CreateShared => {
                io(Op::Write, (s.shared_base() + i / 4) * MIB + page(i), 4096, tag)
            }
            Kind::Sleep => io(Op::Flush, 0, 0, tag),
            Kind::Cow => io(Op::Write, (s.cow + i) * MIB + page(i * 5), 4096, tag),
            Kind::Read => {
                let obj = s.own + i % (s.half - 1);
                match i % 4 {
                    0 => io(Op::Read, obj * MIB + page(i * 3), 4096, tag),
                    1 => io(
                        Op::Read,
                        (PARENT_READS + i % (PARENT - PARENT_READS)) * MIB + page(i),
                        4096,
                        tag,
                    ),
                    2 => io(Op::Read, (HOLES + i % (OBJECTS - HOLES)) * MIB + page(i), 4096, tag),
                    _ => io(Op::Read, (obj + 1) * MIB - 8192, 16384, tag),
                }
            }
            Kind::Write => {
                let obj = s.own + i % (s.half - 1);
                match i % 8 {
                    3 => io(Op::Write, obj * MIB + (i % 16) * 65536, 65536, tag),
                    7 => io(Op::Write, (obj + 1) * MIB - 4096, 8192, tag),
                    _ => io(Op::Write, obj * MIB + page(i * 11), 4096, tag),
                }
            }
            Kind::SeqWrite => {
                io(Op::Write, (s.own + (i / 256) % (s.half - 1)) * MIB + page(i), 4096, tag)
            }
            Kind::Flush => io(Op::Flush, 0, 0, tag),
            Kind::Discard => {
                let obj = s.discard_base() + i;
                if i % 4 == 3 {
                    io(Op::Discard, obj * MIB - MIB / 2, 2 * MIB, tag)
                } else {
                    io(Op::Discard, obj * MIB, MIB, tag)
                }
            }
            Kind::ZeroPartial => {
                io(Op::WriteZeroes, (s.own + i % s.half) * MIB + page(i * 13), 4096, tag)
            }
            Kind::ZeroWhole => {
                let obj = s.zero_base() + 3 * i;
                if i % 2 == 0 {
                    io(Op::WriteZeroes, obj * MIB, MIB, tag)
                } else {
                    io(Op::WriteZeroes, (obj + 1) * MIB - 4096, MIB + 8192, tag)
                }
            }
        }
    }
}

/// Every kind over `stage`, `n` requests each (fewer where the stage has fewer objects).
fn phases(stage: Stage, n: u64, measured: bool) -> Vec<Phase> {
    let p = |name, kind, count| Phase { name, kind, count, stage, measured };
    vec![
        p("sleep", Kind::Sleep, TAGS as u64),
        p("create", Kind::Create, stage.own_n()),
        p("create, contended", Kind::CreateShared, 4 * stage.shared),
        p("cow create", Kind::Cow, stage.cows),
        p("read", Kind::Read, n),
        p("write", Kind::Write, n),
        p("write, sequential", Kind::SeqWrite, n),
        p("flush", Kind::Flush, n),
        p("discard", Kind::Discard, stage.discards),
        p("write zeroes, partial", Kind::ZeroPartial, n),
        p("write zeroes, whole", Kind::ZeroWhole, stage.zero_whole),
    ]
}

// ---------------------------------------------------------------------------------------
// The shard thread: a gate between phases, one task per tag.

/// Releases the tags into phase after phase and lets the coordinator wait for them: all
/// state preallocated, so passing the gate allocates nothing.
struct Gate {
    /// Phases released so far: a tag may run phase `k` once `released > k`.
    released: Cell<usize>,
    /// Tags still running the current phase.
    running: Cell<usize>,
    tags: RefCell<Vec<Option<Waker>>>,
    coordinator: RefCell<Option<Waker>>,
    failed: Cell<Option<(IoDesc, Error)>>,
}

impl Gate {
    fn new() -> Gate {
        Gate {
            released: Cell::new(0),
            running: Cell::new(0),
            tags: RefCell::new(vec![None; TAGS]),
            coordinator: RefCell::new(None),
            failed: Cell::new(None),
        }
    }

    async fn enter(&self, tag: usize, phase: usize) {
        poll_fn(|cx| {
            if self.released.get() > phase {
                Poll::Ready(())
            } else {
                self.tags.borrow_mut()[tag] = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    fn leave(&self) {
        self.running.set(self.running.get() - 1);
        if self.running.get() == 0 {
            if let Some(w) = self.coordinator.borrow_mut().take() {
                w.wake();
            }
        }
    }

    /// Release the next phase and wait until every tag has left it.
    async fn run_phase(&self) {
        self.running.set(TAGS);
        self.released.set(self.released.get() + 1);
        for w in self.tags.borrow_mut().iter_mut() {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
        poll_fn(|cx| {
            if self.running.get() == 0 {
                Poll::Ready(())
            } else {
                *self.coordinator.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

async fn tag_task(tag: usize, shard: Rc<Shard>, gate: Rc<Gate>, plan: Rc<[Phase]>) {
    let mut buf = vec![tag as u8 | 0x80; BUF];
    for (k, phase) in plan.iter().enumerate() {
        gate.enter(tag, k).await;
        let mut i = tag as u64;
        while i < phase.count {
            let d = phase.request(i, tag);
            if phase.kind == Kind::Sleep {
                ring::sleep(Duration::ZERO).await;
            } else if let Err(e) = shard.handle(d, &mut buf).await {
                gate.failed.set(Some((d, e)));
            }
            i += TAGS as u64;
        }
        gate.leave();
    }
}

/// What one phase did.
#[derive(Debug)]
struct Outcome {
    phase: Phase,
    /// Allocations of the shard thread.
    allocs: usize,
    /// Task runs on the shard thread.
    runs: u64,
    /// Block requests that rode on another one.
    merged: u64,
    elapsed: Duration,
}

const CONNECTIONS: usize = 2;

/// Run `plan` on a fresh shard thread for `vol`, counting the allocations of every phase.
fn run_shard(addr: SocketAddr, vol: Arc<Volume>, plan: Vec<Phase>) -> Vec<Outcome> {
    let metrics = DeviceMetrics::new(
        &format!("alloc-{}", vol.vid()),
        "alloc",
        "",
        false,
        1,
        TAGS as u16,
        vol.size(),
    );
    let qm = shard::QueueMetrics {
        device: metrics.clone(),
        queue: 0,
        depth: TAGS as u16,
        zero_copy: false,
    };
    let cfg =
        shard::Config { connections: CONNECTIONS, metrics: Some(qm), ..shard::Config::new([addr]) };
    let spawned = shard::spawn("alloc-shard", cfg, vol, move |shard, exe| {
        let plan: Rc<[Phase]> = plan.into();
        assert!(plan.len() < EXECUTOR_SLOT, "one counting slot per phase");
        let gate = Rc::new(Gate::new());
        let tasks: Vec<_> = (0..TAGS)
            .map(|t| exe.spawn(tag_task(t, shard.clone(), gate.clone(), plan.clone())))
            .collect();
        let mut out = Vec::with_capacity(plan.len());
        async move {
            for (k, phase) in plan.iter().enumerate() {
                let (t0, runs, merged) = (Instant::now(), ring::tasks_run(), shard.merged());
                track(Some(k));
                gate.run_phase().await;
                track(None);
                let (elapsed, runs, merged) =
                    (t0.elapsed(), ring::tasks_run() - runs, shard.merged() - merged);
                if let Some((d, e)) = gate.failed.take() {
                    panic!("phase {}: {d:?} failed: {e}", phase.name);
                }
                out.push(Outcome {
                    phase: *phase,
                    allocs: ALLOCS[k].load(Relaxed),
                    runs,
                    merged,
                    elapsed,
                });
            }
            for t in tasks {
                t.await;
            }
            out
        }
    })
    .expect("shard connects");
    let out = spawned.join().expect("shard thread");
    metrics.remove();
    out
}

// ---------------------------------------------------------------------------------------
// The tests.

fn volume(addr: SocketAddr, vid: Vid) -> Arc<Volume> {
    common::volume(addr, vid, false)
}

#[test]
fn the_shard_thread_allocates_nothing_after_warm_up() {
    if let Some(n) = std::env::var("SHEEPDEV_ALLOC_BACKTRACES").ok().and_then(|v| v.parse().ok()) {
        TRACES_LEFT.store(n, Relaxed);
    }
    let t0 = Instant::now();
    let (_store, _dir, addr) = common::store();

    // A parent with PARENT objects, snapshotted and cloned: the clone COW-creates from it.
    let size = OBJECTS * MIB;
    let base = control(addr, async |c| {
        manage::create(&c, &VdiName::new("base").expect("name"), size, Redundancy::Default, MIB)
            .await
            .expect("create")
            .vid
    });
    let fill =
        Stage { own: 0, half: PARENT, discards: 0, zero_whole: 0, shared: 0, cow: 0, cows: 0 };
    run_shard(
        addr,
        volume(addr, base),
        vec![Phase {
            name: "parent",
            kind: Kind::Create,
            count: PARENT,
            stage: fill,
            measured: false,
        }],
    );
    let child = control(addr, async |c| {
        manage::snapshot(
            &c,
            &VdiName::new("base").expect("name"),
            Some(&VdiName::new("s").expect("tag")),
        )
        .await
        .expect("snapshot");
        manage::clone(&c, &"base:s".parse().expect("spec"), &VdiName::new("child").expect("name"))
            .await
            .expect("clone")
            .vid
    });
    let setup = t0.elapsed();

    let warm = Stage {
        own: 2048,
        half: 128,
        discards: 64,
        zero_whole: 64,
        shared: 64,
        cow: 0,
        cows: WARM_COWS,
    };
    let measured = Stage {
        own: 4096,
        half: 2048,
        discards: 1024,
        zero_whole: 1024,
        shared: 1024,
        cow: WARM_COWS,
        cows: PARENT_READS - WARM_COWS,
    };
    assert!(
        warm.shared_base() + warm.shared <= measured.own
            && measured.shared_base() + measured.shared <= HOLES
    );
    let mut plan = phases(warm, 512, false);
    plan.extend(phases(measured, 4096, true));
    let t1 = Instant::now();
    let outcomes = run_shard(addr, volume(addr, child), plan);
    let run = t1.elapsed();

    print_traces();
    eprintln!("setup {setup:.1?}, warm-up and measured phases {run:.1?}");
    for o in &outcomes {
        let p = o.phase;
        eprintln!(
            "{:>8} {:<22} {:>5} I/Os in {:>8.1?}: {:>6} task runs, {} allocations, {} merged",
            if p.measured { "measured" } else { "warm-up" },
            p.name,
            p.count,
            o.elapsed,
            o.runs,
            o.allocs,
            o.merged
        );
    }
    let sizes: Vec<_> = SIZES
        .iter()
        .filter(|(s, _)| s.load(Relaxed) != 0)
        .map(|(s, n)| (s.load(Relaxed) - 1, n.load(Relaxed)))
        .collect();
    if !sizes.is_empty() {
        eprintln!("allocations by size (bytes, count), warm-up included: {sizes:?}");
    }

    // The I/Os did what they should: check the clone's inode.
    let entries = control(addr, async |c| c.read_inode(child).await.expect("inode").1);
    let entry = |idx: u64| entries.get(idx as usize).copied().unwrap_or(0);
    let m = measured;
    assert!((m.cow..m.cow + m.cows).all(|i| entry(i) == child.0), "cow creates");
    assert!((PARENT_READS..PARENT).all(|i| entry(i) == base.0), "parent objects stay the parent's");
    assert!((m.own..m.own + m.half).all(|i| entry(i) == child.0), "creates");
    assert!(
        (m.shared_base()..m.shared_base() + m.shared).all(|i| entry(i) == child.0),
        "contended creates"
    );
    assert!((m.discard_base()..m.discard_base() + m.discards).all(|i| entry(i) == 0), "discards");
    for k in 0..m.zero_whole {
        let o = m.zero_base() + 3 * k;
        let want = if k % 2 == 0 { [0, child.0, child.0] } else { [child.0, 0, child.0] };
        assert_eq!([entry(o), entry(o + 1), entry(o + 2)], want, "write zeroes {k}");
    }

    let measured: Vec<_> = outcomes.iter().filter(|o| o.phase.measured).collect();
    let ios: u64 =
        measured.iter().filter(|o| o.phase.kind != Kind::Sleep).map(|o| o.phase.count).sum();
    let allocs: usize = measured.iter().map(|o| o.allocs).sum();
    let seq = measured
        .iter()
        .find(|o| o.phase.kind == Kind::SeqWrite)
        .expect("a measured sequential phase");
    assert!(
        seq.merged > 0,
        "the sequential writes rode on each other (so merging is among what allocates nothing)"
    );
    for o in &measured {
        assert_eq!(
            o.allocs, 0,
            "{}: the shard thread allocated {} times in {} I/Os ({} task runs)",
            o.phase.name, o.allocs, o.phase.count, o.runs
        );
    }
    assert_eq!(allocs, 0, "after warm-up, the shard thread allocated {allocs} times in {ios} I/Os");
}

/// The executor alone: once its queue has held every task, wake-ups allocate nothing —
/// tasks that wake each other (the shard's pattern: a receiver waking callers) and tasks
/// that wake themselves.
#[test]
fn the_executor_allocates_nothing_per_wake_up() {
    const TASKS: usize = 64;
    const ROUNDS: usize = 200;
    let exe = LocalExecutor::new();
    let wakers: Rc<RefCell<Vec<Option<Waker>>>> = Rc::new(RefCell::new(vec![None; TASKS]));
    let turn = Rc::new(Cell::new(0usize));
    for i in 0..TASKS {
        let (wakers, turn) = (wakers.clone(), turn.clone());
        exe.spawn(async move {
            for _ in 0..ROUNDS {
                // Wait for this task's turn, then hand the turn to the next task.
                poll_fn(|cx| {
                    if turn.get() % TASKS == i {
                        Poll::Ready(())
                    } else {
                        wakers.borrow_mut()[i] = Some(cx.waker().clone());
                        Poll::Pending
                    }
                })
                .await;
                turn.set(turn.get() + 1);
                if let Some(w) = wakers.borrow_mut()[(i + 1) % TASKS].take() {
                    w.wake();
                }
                futures_lite::future::yield_now().await;
            }
        })
        .detach();
    }
    // Warm-up: every task parked once (their wakers and the queue at full size).
    for _ in 0..4 * TASKS {
        exe.try_tick();
    }
    track(Some(EXECUTOR_SLOT));
    let mut runs = 0u64;
    while exe.try_tick() {
        runs += 1;
    }
    track(None);
    assert_eq!(turn.get(), TASKS * ROUNDS, "every task ran every round");
    assert!(runs > (TASKS * ROUNDS / 2) as u64, "{runs} task runs measured");
    assert_eq!(ALLOCS[EXECUTOR_SLOT].load(Relaxed), 0, "{runs} task runs allocated");
}
