//! The volume's decisions, claims and parking, against a reference model too.

use super::*;
use proptest::prelude::*;

fn vol(vid: u32, entries: Vec<u32>) -> Volume {
    let h =
        InodeHeader { vdi_id: vid, vdi_size: 16 << 22, block_size_shift: 22, ..Default::default() };
    Volume::new(h, entries, false)
}

/// What a plan says, without its claim: (kind, oid, cow).
fn shape(p: Result<WritePlan<'_>, Error>) -> Result<(&'static str, Oid, Oid), Error> {
    Ok(match p? {
        WritePlan::Write(oid) => ("write", oid, Oid(0)),
        WritePlan::Create { oid, .. } => ("create", oid, Oid(0)),
        WritePlan::Cow { oid, cow, .. } => ("cow", oid, cow),
        WritePlan::Wait => ("wait", Oid(0), Oid(0)),
    })
}

fn claim(p: Result<WritePlan<'_>, Error>) -> Claim<'_> {
    match p {
        Ok(WritePlan::Create { claim, .. } | WritePlan::Cow { claim, .. }) => claim,
        other => panic!("not a create: {other:?}"),
    }
}

#[test]
fn write_decisions_follow_entries() {
    let v = vol(7, vec![0, 7, 5]);
    assert_eq!(shape(v.plan_write(0)), Ok(("create", Oid::data(Vid(7), 0), Oid(0))));
    assert_eq!(shape(v.plan_write(1)), Ok(("write", Oid::data(Vid(7), 1), Oid(0))));
    assert_eq!(shape(v.plan_write(2)), Ok(("cow", Oid::data(Vid(7), 2), Oid::data(Vid(5), 2))));
    assert_eq!(v.plan_read(2), Ok(ReadPlan::Read(Oid::data(Vid(5), 2))));
    assert_eq!(v.plan_read(3), Ok(ReadPlan::Zero));
    assert!(v.plan_read(16).is_err());
}

#[test]
fn second_create_waits_then_writes() {
    let v = vol(7, vec![]);
    let mut c = claim(v.plan_write(4));
    assert_eq!(shape(v.plan_write(4)), Ok(("wait", Oid(0), Oid(0))));
    c.created(Vid(7));
    assert_eq!(
        shape(v.plan_write(4)),
        Ok(("wait", Oid(0), Oid(0))),
        "gated until the inode update is done"
    );
    c.persisted();
    drop(c);
    assert_eq!(shape(v.plan_write(4)), Ok(("write", Oid::data(Vid(7), 4), Oid(0))));
    assert_eq!(v.entry(4), Some(7));
}

#[test]
fn failed_create_lets_the_next_writer_create() {
    let v = vol(7, vec![]);
    drop(claim(v.plan_write(1)));
    let mut c = claim(v.plan_write(1));
    c.created(Vid(7));
    assert_eq!(v.entry(1), Some(7));
    drop(c);
    assert_eq!(v.entry(1), Some(0), "a claim dropped before its inode update restores the entry");
    assert!(v.plan_write(1).is_ok_and(|p| p.is_create()));
}

#[test]
fn following_a_snapshot_turns_own_objects_into_cows() {
    let v = vol(7, vec![7, 0, 5]);
    assert!(v.begin_follow(Vid(7)));
    assert!(!v.begin_follow(Vid(7)), "one follower at a time");
    assert!(v.is_following());
    v.follow(Vid(7), Vid(8));
    v.end_follow();
    assert!(!v.begin_follow(Vid(7)), "the vid moved on: nothing to follow");
    assert_eq!(v.vid(), Vid(8));
    assert_eq!(shape(v.plan_write(0)), Ok(("cow", Oid::data(Vid(8), 0), Oid::data(Vid(7), 0))));
    assert_eq!(shape(v.plan_write(1)), Ok(("create", Oid::data(Vid(8), 1), Oid(0))));
    assert_eq!(v.plan_read(0), Ok(ReadPlan::Read(Oid::data(Vid(7), 0))));
    let mut c = claim(v.plan_write(1));
    c.created(Vid(8));
    c.persisted();
    drop(c);
    assert_eq!(shape(v.plan_write(1)), Ok(("write", Oid::data(Vid(8), 1), Oid(0))));
}

#[test]
fn claim_runs_hold_every_index_until_dropped() {
    let v = vol(7, vec![7, 7, 7]);
    let held = v.try_claim(2).expect("in range").expect("free");
    let mut run = v.claim_run(0);
    assert_eq!(run.try_extend(), Ok(true));
    assert_eq!(run.try_extend(), Ok(true));
    assert_eq!(run.try_extend(), Ok(false), "index 2 is held");
    assert_eq!(shape(v.plan_write(1)), Ok(("wait", Oid(0), Oid(0))));
    drop(held);
    assert_eq!(run.try_extend(), Ok(true));
    drop(run);
    assert!((0..3).all(|i| shape(v.plan_write(i)).is_ok_and(|s| s.0 == "write")));
}

#[test]
fn a_dropped_claim_wakes_the_parked_waiters() {
    use std::sync::Arc;
    use std::task::Wake;
    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let v = vol(7, vec![]);
    let c = claim(v.plan_write(0));
    let flags: Vec<Arc<Flag>> = (0..3).map(|_| Arc::new(Flag(AtomicBool::new(false)))).collect();
    let parked: Vec<Parked<'_>> = flags
        .iter()
        .map(|f| {
            let p = v.park().expect("a free slot");
            p.register(&Waker::from(f.clone()));
            p
        })
        .collect();
    assert!(flags.iter().all(|f| !f.0.load(Ordering::SeqCst)));
    drop(c);
    assert!(flags.iter().all(|f| f.0.load(Ordering::SeqCst)), "every parked waiter was woken");
    drop(parked);
    let all: Vec<_> = (0..PARK_SLOTS).map(|_| v.park().expect("slots are free again")).collect();
    assert!(v.park().is_none(), "no more than PARK_SLOTS at once");
    drop(all);
}

#[test]
fn read_only_refuses_writes() {
    let h =
        InodeHeader { vdi_id: 7, vdi_size: 1 << 22, block_size_shift: 22, ..Default::default() };
    let v = Volume::new(h, vec![], true);
    assert_eq!(shape(v.plan_write(0)), Err(Error::ReadOnly));
}

#[test]
fn threads_never_have_two_creates_of_one_object() {
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;
    let v = Arc::new(vol(9, vec![]));
    let active: Arc<Vec<AtomicU32>> = Arc::new((0..4).map(|_| AtomicU32::new(0)).collect());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (v, active) = (v.clone(), active.clone());
            std::thread::spawn(move || {
                for i in 0..20_000u32 {
                    let idx = (i + t) % 4;
                    match v.plan_write(idx) {
                        Ok(
                            WritePlan::Create { mut claim, .. } | WritePlan::Cow { mut claim, .. },
                        ) => {
                            assert_eq!(
                                active[idx as usize].fetch_add(1, Ordering::SeqCst),
                                0,
                                "two creates of {idx}"
                            );
                            claim.created(Vid(9));
                            active[idx as usize].fetch_sub(1, Ordering::SeqCst);
                            // Fail most creates so that the race keeps happening.
                            if i % 7 == 0 {
                                claim.persisted();
                            }
                        }
                        Ok(WritePlan::Write(_)) => assert_eq!(v.entry(idx), Some(9)),
                        Ok(_) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("no thread panicked");
    }
}

// Against a reference model: with any interleaving of plans and create completions,
// at most one create per index is ever outstanding, and a write is only planned
// once the index has no create in flight.
proptest! {
    #[test]
    fn never_two_creates_in_flight(ops in proptest::collection::vec((0u32..4, any::<bool>(), any::<bool>()), 1..200)) {
        let v = vol(9, vec![0, 3, 0, 9]);
        let mut outstanding: [Option<Claim<'_>>; 4] = [None, None, None, None];
        for (idx, finish, ok) in ops {
            if finish {
                if let Some(mut c) = outstanding[idx as usize].take() {
                    c.created(Vid(9));
                    if ok {
                        c.persisted();
                    }
                }
                continue;
            }
            match v.plan_write(idx) {
                Ok(WritePlan::Wait) => prop_assert!(outstanding[idx as usize].is_some()),
                Ok(WritePlan::Create { claim, .. } | WritePlan::Cow { claim, .. }) => {
                    prop_assert!(outstanding[idx as usize].is_none());
                    outstanding[idx as usize] = Some(claim);
                }
                Ok(WritePlan::Write(_)) => {
                    prop_assert!(outstanding[idx as usize].is_none());
                    prop_assert_eq!(v.entry(idx), Some(9));
                }
                Err(e) => prop_assert!(false, "unexpected {:?}", e),
            }
        }
    }
}

#[test]
fn a_volume_grows_online_and_never_shrinks() {
    let v = vol(7, vec![0, 7]);
    assert!(v.plan_read(16).is_err(), "past the end before the resize");
    v.grow(32 << 22).expect("grows");
    assert_eq!((v.size(), v.nr_objects()), (32 << 22, 32));
    assert_eq!(v.plan_read(16), Ok(ReadPlan::Zero));
    assert_eq!(shape(v.plan_write(31)), Ok(("create", Oid::data(Vid(7), 31), Oid(0))));
    assert!(v.plan_read(32).is_err());
    assert_eq!(v.entry(1), Some(7), "entries kept");
    v.grow(8 << 22).expect("a smaller size is no change");
    assert_eq!(v.size(), 32 << 22, "never shrinks");
    let max = u64::from(SD_INODE_DATA_INDEX) << 22;
    v.grow(max).expect("the largest VDI an inode maps");
    assert_eq!(v.nr_objects(), SD_INODE_DATA_INDEX);
    assert!(v.grow(max + 1).is_err(), "beyond what an inode can map");
    assert_eq!(v.size(), max);
}
