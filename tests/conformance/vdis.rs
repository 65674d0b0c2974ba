//! Conformance cases on VDIs: lookups, snapshots, rebase, delete, locks, flush and
//! discard, hyper volumes, payload lengths, and the shard's own (discard, live snapshots,
//! create races, empty COW).

use super::*;
pub(crate) async fn lookups_by_name_id_and_tag(cx: Rc<Ctx>) -> Result<()> {
    let name = cx.name("look");
    let v1 = cx.create("look", 4 * MIB).await?;
    let (s1, _) = manage::snapshot(&cx.client, &name, Some(&VdiName::new("first")?)).await?;
    let (s2, w) = manage::snapshot(&cx.client, &name, None).await?;
    ensure!(s1 == v1);
    let c = &cx.client;
    ensure!(c.vdi_info(&name, &SnapSel::Working).await?.vid == w);
    ensure!(c.vdi_info(&name, &SnapSel::Id(1)).await?.vid == s1);
    ensure!(c.vdi_info(&name, &SnapSel::Id(2)).await?.vid == s2);
    ensure!(c.vdi_info(&name, &SnapSel::Tag(VdiName::new("first")?)).await?.vid == s1);
    // LOCK_VDI by id, with the tagged snapshot among the candidates (the lookup a by-id
    // `add --read-only` sends; sheep crashes on it when the payload has no tag field).
    ensure!(c.lock_vdi(&name, &SnapSel::Id(2), false).await?.vid == s2);
    c.release_vdi(s2, false).await?;
    ensure!(c.read_inode_header(w).await?.snap_id == 3, "the working vdi has the highest snap_id");
    let no_tag = c.vdi_info(&name, &SnapSel::Tag(VdiName::new("nope")?)).await;
    ensure!(no_tag.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_NO_TAG), "{no_tag:?}");
    let no_id = c.vdi_info(&name, &SnapSel::Id(3)).await;
    ensure!(
        no_id.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_NO_TAG),
        "id 3 is the working vdi, not a snapshot: {no_id:?}"
    );
    let no_vdi = c.vdi_info(&cx.name("missing"), &SnapSel::Working).await;
    ensure!(no_vdi.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_NO_VDI), "{no_vdi:?}");
    let no_vdi_tag = c.vdi_info(&cx.name("missing"), &SnapSel::Tag(VdiName::new("first")?)).await;
    ensure!(
        no_vdi_tag.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_NO_VDI),
        "{no_vdi_tag:?}"
    );
    Ok(())
}

pub(crate) async fn snapshot_freezes_the_old_vid(cx: Rc<Ctx>) -> Result<()> {
    let name = cx.name("snap");
    let vid = cx.create("snap", 16 * MIB).await?;
    cx.vol(vid).await?.write(0, &[1u8; 4096]).await?;
    let (old, new) = manage::snapshot(&cx.client, &name, Some(&VdiName::new("t1")?)).await?;
    ensure!(old == vid && new != vid, "the working vdi gets a new vid");
    let h = cx.client.read_inode_header(old).await?;
    ensure!(h.is_snapshot() && h.tag_lossy() == "t1", "old vid is a tagged snapshot");
    let nh = cx.client.read_inode_header(new).await?;
    ensure!(!nh.is_snapshot() && nh.parent_vdi_id == old.0 && nh.snap_id == h.snap_id + 1);
    // A writer still using the old vid (someone snapshotted under it) gets READONLY.
    let w = cx.client.write_obj(Oid::data(old, 0), 0, &[2u8; 512]).await;
    ensure!(
        w.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_READONLY),
        "write to a snapshot object: {w:?}"
    );
    let c = cx.client.create_obj(Oid::data(old, 1), None, 0, &[2u8; 512], 0, 0).await;
    ensure!(
        c.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_READONLY),
        "create of a snapshot object: {c:?}"
    );
    // The snapshot's inode stays writable (tags are set that way) and its snap_ctime is set.
    let ct = cx.client.read_obj(Oid::inode(old), OFF_SNAP_CTIME as u32, 8).await?;
    ensure!(ct != [0u8; 8]);
    // The new working vdi writes through COW and leaves the snapshot alone.
    let nv = cx.vol(new).await?;
    nv.write(0, &[5u8; 512]).await?;
    let mut got = vec![0u8; 4096];
    cx.ro(old).await?.read(0, &mut got).await?;
    ensure!(got.iter().all(|&x| x == 1));
    Ok(())
}

pub(crate) async fn snapshot_chain_keeps_every_version(cx: Rc<Ctx>) -> Result<()> {
    let name = cx.name("chain");
    let mut vid = cx.create("chain", 8 * MIB).await?;
    for i in 1..=4u8 {
        cx.vol(vid).await?.write(0, &[i; 4096]).await?;
        vid = manage::snapshot(&cx.client, &name, None).await?.1;
    }
    for i in 1..=4u8 {
        let snap = cx.client.vdi_info(&name, &SnapSel::Id(u32::from(i))).await?.vid;
        let mut got = vec![0u8; 4096];
        cx.ro(snap).await?.read(0, &mut got).await?;
        ensure!(got.iter().all(|&x| x == i), "snapshot {i} reads version {i}, got {}", got[0]);
    }
    Ok(())
}

pub(crate) async fn rebase_keeps_the_working_vdi(cx: Rc<Ctx>) -> Result<()> {
    let name = cx.name("rb");
    let vid = cx.create("rb", 8 * MIB).await?;
    cx.vol(vid).await?.write(0, &[0xa; 4096]).await?;
    let (snap, working) = manage::snapshot(&cx.client, &name, Some(&VdiName::new("s")?)).await?;
    cx.vol(working).await?.write(0, &[0xb; 4096]).await?;
    let (old, new) = manage::rebase(&cx.client, &cx.spec("rb:s")).await?;
    ensure!(old == working && new.vid != working && new.vid != snap);
    let h = cx.client.read_inode_header(new.vid).await?;
    ensure!(h.parent_vdi_id == snap.0 && !h.is_snapshot());
    ensure!(cx.client.vdi_info(&name, &SnapSel::Working).await?.vid == new.vid);
    let oh = cx.client.read_inode_header(old).await?;
    ensure!(oh.is_snapshot(), "the previous working vdi is now a snapshot");
    ensure!(
        cx.client.vdi_info(&name, &SnapSel::Id(oh.snap_id)).await?.vid == old,
        "and is found by its snapshot id"
    );
    let mut got = vec![0u8; 4096];
    cx.vol(new.vid).await?.read(0, &mut got).await?;
    ensure!(got.iter().all(|&x| x == 0xa), "the new working vdi reads the snapshot");
    cx.ro(old).await?.read(0, &mut got).await?;
    ensure!(got.iter().all(|&x| x == 0xb), "the kept vdi still reads what was written to it");
    Ok(())
}

pub(crate) async fn delete_refuses_silently_until_entries_are_zero(cx: Rc<Ctx>) -> Result<()> {
    let name = cx.name("del");
    let vid = cx.create("del", 16 * MIB).await?;
    cx.vol(vid).await?.write(0, &[1u8; 8192]).await?;
    // Bare DEL_VDI: SUCCESS, and nothing happens.
    let deleted = cx.client.del_vdi(&name, &SnapSel::Working).await?;
    ensure!(deleted == vid);
    ensure!(
        cx.client.read_obj(Oid::data(vid, 0), 0, 512).await.is_ok(),
        "the data object is still there"
    );
    // The real delete.
    ensure!(manage::delete(&cx.client, &VdiSpec::working(name.clone())).await? == vid);
    let gone = cx.client.vdi_info(&name, &SnapSel::Working).await;
    ensure!(gone.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_NO_VDI), "{gone:?}");
    let obj = cx.client.read_obj(Oid::data(vid, 0), 0, 512).await;
    ensure!(
        obj.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_NO_OBJ),
        "the data object was reclaimed: {obj:?}"
    );
    Ok(())
}

pub(crate) async fn deleted_working_vdi_leaves_snapshots(cx: Rc<Ctx>) -> Result<()> {
    let name = cx.name("keep");
    let vid = cx.create("keep", 8 * MIB).await?;
    cx.vol(vid).await?.write(0, &[4u8; 4096]).await?;
    let (snap, working) = manage::snapshot(&cx.client, &name, Some(&VdiName::new("k")?)).await?;
    cx.vol(working).await?.write(0, &[6u8; 4096]).await?;
    manage::delete(&cx.client, &VdiSpec::working(name.clone())).await?;
    let s = cx.client.vdi_info(&name, &SnapSel::Tag(VdiName::new("k")?)).await?;
    ensure!(s.vid == snap);
    let mut got = vec![0u8; 4096];
    cx.ro(snap).await?.read(0, &mut got).await?;
    ensure!(
        got.iter().all(|&x| x == 4),
        "the snapshot's shared object survived the working vdi's delete"
    );
    Ok(())
}

pub(crate) async fn locks_are_enforced(cx: Rc<Ctx>) -> Result<()> {
    if !cx.locking {
        bail!("this case needs a store or cluster with locking on (SHEEP_LOCKING=1)");
    }
    let name = cx.name("lock");
    let vid = cx.create("lock", 8 * MIB).await?;
    ensure!(cx.client.lock_vdi(&name, &SnapSel::Working, false).await?.vid == vid);
    let again = cx.client.lock_vdi(&name, &SnapSel::Working, false).await;
    ensure!(again.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_VDI_LOCKED), "{again:?}");
    // From another connection too, and after the locker disconnects.
    let other = Client::connect(&Config::new(vec![cx.addr])).await?;
    let r = other.lock_vdi(&name, &SnapSel::Working, false).await;
    ensure!(r.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_VDI_LOCKED), "{r:?}");
    drop(other);
    // Locks do not block I/O.
    cx.vol(vid).await?.write(0, &[1u8; 512]).await?;
    cx.client.release_vdi(vid, false).await?;
    let r = cx
        .client
        .call(
            ReqHeader::vdi(
                Opcode::ReleaseVdi,
                0,
                0,
                VdiArgs { base_vdi_id: vid.0, ..Default::default() },
            ),
            &[],
        )
        .await?;
    // sheep 1.0 answers SUCCESS (and logs "unlocking unlocked VDI"); seen on 1 and 3 nodes.
    ensure!(r.0.result == SD_RES_SUCCESS, "release of an unlocked vdi: {}", r.0.result);
    ensure!(
        cx.client.lock_vdi(&name, &SnapSel::Working, false).await?.vid == vid,
        "lockable again after release"
    );
    // A snapshot leaves the lock on the old vid; the new working vid is free.
    let (_, new) = manage::snapshot(&cx.client, &name, None).await?;
    ensure!(cx.client.lock_vdi(&name, &SnapSel::Working, false).await?.vid == new);
    cx.client.release_vdi(new, false).await?;
    cx.client.release_vdi(vid, false).await?;
    Ok(())
}

pub(crate) async fn locks_follow_the_cluster_setting(cx: Rc<Ctx>) -> Result<()> {
    let name = cx.name("nolock");
    cx.create("nolock", 8 * MIB).await?;
    cx.client.lock_vdi(&name, &SnapSel::Working, false).await?;
    let second = cx.client.lock_vdi(&name, &SnapSel::Working, false).await;
    if cx.locking {
        ensure!(
            second.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_VDI_LOCKED),
            "{second:?}"
        );
        cx.client
            .release_vdi(cx.client.vdi_info(&name, &SnapSel::Working).await?.vid, false)
            .await?;
    } else {
        ensure!(second.is_ok(), "without locking LOCK_VDI is only a lookup: {second:?}");
    }
    Ok(())
}

pub(crate) async fn flush_is_obsolete_and_discard_zeroes(cx: Rc<Ctx>) -> Result<()> {
    let vid = cx.create("discard", 16 * MIB).await?;
    let flush = ReqHeader::obj(
        Opcode::FlushVdi,
        0,
        0,
        ObjArgs { oid: Oid::inode(vid), ..Default::default() },
    );
    ensure!(cx.code(flush, &[]).await? == SD_RES_INVALID_PARMS, "FLUSH_VDI is obsolete");
    let v = cx.vol(vid).await?;
    let os = 1u64 << v.header().block_size_shift;
    v.write(0, &vec![8u8; 2 * os as usize]).await?;
    // QEMU's way: zero the entry in the inode; the object is reclaimed. Real sheep drops
    // the reference when the inode write is acknowledged but removes the object a moment
    // later (on a 3-node cluster a read right after the write still found the data in 3
    // runs of 4); the embedded store removes it at once. Nobody may rely on the moment.
    cx.client.write_obj(Oid::inode(vid), entry_offset(0), &[0u8; 4]).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = cx.client.read_obj(Oid::data(vid, 0), 0, 512).await;
        if r.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_NO_OBJ) {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the object of a zeroed entry is still there after 10 s: {:?}",
            r.map(|d| d.len())
        );
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    // DISCARD_OBJ: the server clears the entry itself.
    cx.client.discard_obj(vid, 1).await?;
    let (_, entries) = cx.client.read_inode(vid).await?;
    ensure!(entries[0] == 0 && entries[1] == 0, "{:?}", &entries[..2]);
    let mut got = vec![1u8; 4096];
    cx.vol(vid).await?.read(os, &mut got).await?;
    ensure!(got.iter().all(|&x| x == 0), "a discarded object reads as zeros");
    Ok(())
}

pub(crate) async fn hyper_volumes_are_refused(cx: Rc<Ctx>) -> Result<()> {
    let name = cx.name("hyper");
    let args =
        VdiArgs { vdi_size: 8 * MIB, store_policy: 1, block_size_shift: 22, ..Default::default() };
    let (rsp, _) = cx
        .client
        .request(ReqHeader::vdi(Opcode::NewVdi, SD_FLAG_CMD_WRITE, 256, args), &name.to_field())
        .await?;
    let vid = Vid(rsp.vdi_id());
    ensure!(cx.client.read_inode_header(vid).await?.store_policy == 1);
    let open = manage::open(&cx.client, &VdiSpec::working(name.clone())).await;
    ensure!(
        open.as_ref()
            .err()
            .is_some_and(|e| e.to_string().contains("hyper volumes are not supported")),
        "{:?}",
        open.err()
    );
    let vol = load_volume(&cx.client, vid, true).await;
    ensure!(vol.is_err(), "a hyper volume cannot be opened for i/o");
    // Its inode is not a flat array: delete it with DEL_VDI alone.
    cx.client.del_vdi(&name, &SnapSel::Working).await?;
    Ok(())
}

pub(crate) async fn wrong_payload_lengths_are_invalid(cx: Rc<Ctx>) -> Result<()> {
    let name = cx.name("len");
    let field = name.to_field();
    let short = ReqHeader::vdi(
        Opcode::NewVdi,
        SD_FLAG_CMD_WRITE,
        255,
        VdiArgs { vdi_size: MIB, ..Default::default() },
    );
    ensure!(cx.code(short, &field[..255]).await? == SD_RES_INVALID_PARMS, "NEW_VDI with 255 bytes");
    let mut long = field.to_vec();
    long.extend_from_slice(&[0u8; 44]);
    let info = ReqHeader::vdi(Opcode::GetVdiInfo, SD_FLAG_CMD_WRITE, 300, VdiArgs::default());
    ensure!(cx.code(info, &long).await? == SD_RES_INVALID_PARMS, "GET_VDI_INFO with 300 bytes");
    let vdis = ReqHeader::vdi(Opcode::ReadVdis, 0, 4096, VdiArgs::default());
    ensure!(cx.code(vdis, &[]).await? == SD_RES_INVALID_PARMS, "READ_VDIS of 4096 bytes");
    let gone = cx.client.vdi_info(&name, &SnapSel::Working).await;
    ensure!(
        gone.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_NO_VDI),
        "nothing was created: {gone:?}"
    );
    Ok(())
}

/// Discard of whole objects (owned, and shared with a snapshot) and write-zeroes (partial
/// and whole objects) through the shard; the snapshot keeps its bytes.
pub(crate) async fn discard_and_write_zeroes_through_the_shard(cx: Rc<Ctx>) -> Result<()> {
    let name = cx.name("dz");
    let vid = cx.create("dz", 32 * MIB).await?;
    let d = cx.vol(vid).await?;
    let os = 1usize << d.header().block_size_shift;
    d.write(0, &vec![5u8; 4 * os]).await?;
    let (snap, working) = manage::snapshot(&cx.client, &name, None).await?;
    let w = cx.vol(working).await?;
    let s = &w;
    // Object 0 rewritten (owned now), object 1 still shared with the snapshot.
    w.write(0, &vec![6u8; os]).await?;
    s.op(Op::Discard, 0, 2 * os as u32)?;
    // Write-zeroes: a partial range inside object 2, and object 3 whole.
    s.op(Op::WriteZeroes, 2 * os as u64 + 4096, 8192)?;
    s.op(Op::WriteZeroes, 3 * os as u64, os as u32)?;
    s.op(Op::Flush, 0, 0)?;
    let mut got = vec![1u8; 4 * os];
    w.read(0, &mut got).await?;
    ensure!(got[..2 * os].iter().all(|&b| b == 0), "discarded objects read as zeros");
    let o2 = &got[2 * os..3 * os];
    ensure!(
        o2[..4096].iter().all(|&b| b == 5)
            && o2[4096..12288].iter().all(|&b| b == 0)
            && o2[12288..].iter().all(|&b| b == 5),
        "partial write-zeroes"
    );
    ensure!(got[3 * os..].iter().all(|&b| b == 0), "a whole-object write-zeroes");
    let (_, entries) = cx.client.read_inode(working).await?;
    ensure!(
        entries[0] == 0 && entries[1] == 0,
        "discard cleared the inode entries: {:?}",
        &entries[..4]
    );
    // Reopened (the entries come from the cluster), and the snapshot untouched.
    let mut again = vec![1u8; 4 * os];
    cx.vol(working).await?.read(0, &mut again).await?;
    ensure!(again == got, "the discards and zeroes were persisted");
    cx.ro(snap).await?.read(0, &mut got).await?;
    ensure!(got.iter().all(|&b| b == 5), "the snapshot kept its bytes");
    Ok(())
}

/// A snapshot taken by another client while the shard has the VDI open: the shard's next
/// write gets READONLY, follows the new working vid and goes out as a COW; the snapshot
/// keeps what was written before it.
pub(crate) async fn live_snapshot_is_followed_by_the_shard(cx: Rc<Ctx>) -> Result<()> {
    let name = cx.name("live");
    let vid = cx.create("live", 16 * MIB).await?;
    let d = cx.vol(vid).await?;
    let os = 1u64 << d.header().block_size_shift;
    d.write(0, &[1u8; 4096]).await?;
    let (old, new) = manage::snapshot(&cx.client, &name, Some(&VdiName::new("live")?)).await?;
    ensure!(old == vid);
    d.write(4096, &[2u8; 4096]).await?;
    d.write(os, &[3u8; 4096]).await?;
    let now = d.vol.vid();
    ensure!(now == new, "the shard now writes vid {:#x}, not the new working {:#x}", now.0, new.0);
    let mut got = vec![0u8; 8192];
    cx.ro(new).await?.read(0, &mut got).await?;
    ensure!(
        got[..4096].iter().all(|&b| b == 1) && got[4096..].iter().all(|&b| b == 2),
        "the new working vdi has both writes"
    );
    let mut o1 = vec![0u8; 4096];
    cx.ro(new).await?.read(os, &mut o1).await?;
    ensure!(o1.iter().all(|&b| b == 3));
    cx.ro(old).await?.read(0, &mut got).await?;
    ensure!(
        got[..4096].iter().all(|&b| b == 1) && got[4096..].iter().all(|&b| b == 0),
        "the snapshot has only the first write"
    );
    let (_, entries) = cx.client.read_inode(new).await?;
    ensure!(
        entries[0] == new.0 && entries[1] == new.0,
        "the new inode owns both objects: {:?}",
        &entries[..2]
    );
    Ok(())
}

/// Four shards (threads, rings, connections of their own, one `Volume`) write different
/// blocks of the same unallocated objects at once: every create is claimed by one of them
/// and the others wait and write, so no create wipes another's data (reference §9).
pub(crate) async fn shards_race_to_create_the_same_objects(cx: Rc<Ctx>) -> Result<()> {
    const SHARDS: usize = 4;
    const OBJECTS: u64 = 12;
    let vid = cx.create("race", OBJECTS * 4 * MIB).await?;
    let vol = Arc::new(load_volume(&cx.client, vid, false).await?);
    let os = 1u64 << vol.header().block_size_shift;
    let barrier = Arc::new(std::sync::Barrier::new(SHARDS));
    let mut workers = Vec::new();
    for k in 0..SHARDS {
        let dev = Dev::start(cx.addr, vol.clone());
        let barrier = barrier.clone();
        workers.push(std::thread::spawn(move || -> Result<()> {
            barrier.wait();
            for obj in 0..OBJECTS {
                dev.io(
                    Op::Write,
                    obj * os + k as u64 * 4096,
                    vec![(obj as u8) << 4 | k as u8; 4096],
                )?;
            }
            Ok(())
        }));
    }
    for w in workers {
        w.join().map_err(|_| anyhow::anyhow!("a racing shard panicked"))??;
    }
    let (_, entries) = cx.client.read_inode(vid).await?;
    ensure!(
        entries[..OBJECTS as usize].iter().all(|&e| e == vid.0),
        "every object is allocated to the vdi"
    );
    let fresh = cx.ro(vid).await?;
    for obj in 0..OBJECTS {
        let mut got = vec![0u8; SHARDS * 4096];
        fresh.read(obj * os, &mut got).await?;
        for k in 0..SHARDS {
            let want = (obj as u8) << 4 | k as u8;
            ensure!(
                got[k * 4096..(k + 1) * 4096].iter().all(|&b| b == want),
                "object {obj}: shard {k}'s write was lost (a second create wiped it?)"
            );
        }
    }
    Ok(())
}

/// A CREATE_AND_WRITE_OBJ with the COW flag and no payload makes the new object a whole copy
/// of `cow_oid` (what a shard does to carry an object a live snapshot raced into the new
/// working vid), and leaves the source alone.
pub(crate) async fn an_empty_cow_create_copies_the_whole_object(cx: Rc<Ctx>) -> Result<()> {
    let name = cx.name("copy");
    let vid = cx.create("copy", 8 * MIB).await?;
    let v = cx.vol(vid).await?;
    let os = 1usize << v.header().block_size_shift;
    let data: Vec<u8> = (0..os).map(|i| (i / 4096 % 251) as u8 + 1).collect();
    v.write(0, &data).await?;
    let (snap, working) = manage::snapshot(&cx.client, &name, None).await?;
    let h = cx.client.read_inode_header(working).await?;
    cx.client
        .create_obj(
            Oid::data(working, 0),
            Some(Oid::data(snap, 0)),
            0,
            &[],
            h.nr_copies,
            h.copy_policy,
        )
        .await?;
    let copy = cx.client.read_obj(Oid::data(working, 0), 0, os as u32).await?;
    ensure!(copy == data, "the empty COW create copied the whole object");
    let src = cx.client.read_obj(Oid::data(snap, 0), 0, os as u32).await?;
    ensure!(src == data, "the source object is untouched");
    // Point the working inode at its copy (a real change: the snapshot's reference stays
    // counted) and the snapshot still reads its bytes.
    cx.client.write_obj(Oid::inode(working), entry_offset(0), &working.0.to_le_bytes()).await?;
    let mut got = vec![0u8; os];
    cx.ro(snap).await?.read(0, &mut got).await?;
    ensure!(got == data, "the snapshot keeps its object");
    Ok(())
}

/// A VDI grows the way `dog vdi resize` grows it (one WRITE_OBJ of `vdi_size`), with a
/// shard serving it: the shard's volume grows, writes past the old end land and read back,
/// the data before it is kept. Shrinking, a misaligned size, a size past what an inode maps
/// and a snapshot are refused before anything is written.
pub(crate) async fn a_vdi_grows_online(cx: Rc<Ctx>) -> Result<()> {
    let name = cx.name("grow");
    let vid = cx.create("grow", 8 * MIB).await?;
    let d = cx.vol(vid).await?;
    d.write(8 * MIB - 4096, &[7u8; 4096]).await?;
    ensure!(d.write(8 * MIB, &[8u8; 4096]).await.is_err(), "past the end before the resize");
    let (v, old) = manage::resize(&cx.client, &name, 20 * MIB).await?;
    ensure!(v == vid && old == 8 * MIB);
    ensure!(cx.client.read_inode_header(vid).await?.vdi_size == 20 * MIB, "the inode says so");
    d.vol.grow(20 * MIB)?;
    d.write(20 * MIB - 4096, &[9u8; 4096]).await?;
    let mut got = vec![0u8; 4096];
    let again = cx.vol(vid).await?;
    again.read(20 * MIB - 4096, &mut got).await?;
    ensure!(got.iter().all(|&b| b == 9), "written past the old end, read back after reopening");
    again.read(8 * MIB - 4096, &mut got).await?;
    ensure!(got.iter().all(|&b| b == 7), "the old end kept its data");
    let listed = manage::list(&cx.client).await?;
    ensure!(
        listed.iter().any(|r| r.name == name.to_string() && r.size == 20 * MIB),
        "listed grown"
    );
    ensure!(manage::resize(&cx.client, &name, 20 * MIB).await? == (vid, 20 * MIB), "no change");
    for bad in [16 * MIB, 20 * MIB + 100, (1u64 << 20 << 22) + 4 * MIB] {
        let r = manage::resize(&cx.client, &name, bad).await;
        ensure!(r.is_err(), "resize to {bad} must be refused: {r:?}");
    }
    ensure!(cx.client.read_inode_header(vid).await?.vdi_size == 20 * MIB, "refusals wrote nothing");
    let (snap, _) = manage::snapshot(&cx.client, &name, None).await?;
    let h = cx.client.read_inode_header(snap).await?;
    ensure!(
        manage::grow(&cx.client, snap, &h, 32 * MIB).await.is_err(),
        "a snapshot does not grow"
    );
    Ok(())
}
