//! Conformance cases on objects and the wire: headers, pipelining, reads, creates and
//! COW, persisted entries, the vid bitmap.

use super::*;
pub(crate) async fn header_version_and_unknown_opcodes(cx: Rc<Ctx>) -> Result<()> {
    let mut h = ReqHeader::vdi(Opcode::GetClusterDefault, 0, 0, VdiArgs::default());
    let (rsp, _) = cx.client.call(h, &[]).await?;
    ensure!(rsp.result == SD_RES_SUCCESS && rsp.opcode == SD_OP_GET_CLUSTER_DEFAULT);
    let (copies, _, bss) = rsp.cluster_default();
    ensure!(copies >= 1 && bss == 22, "cluster default copies {copies} bss {bss}");
    h.proto_ver = 0;
    ensure!(cx.code(h, &[]).await? == SD_RES_SUCCESS, "proto_ver 0 is accepted");
    h.proto_ver = 3;
    ensure!(cx.code(h, &[]).await? == SD_RES_VER_MISMATCH, "proto_ver 3 is refused");
    let mut unknown = ReqHeader::vdi(Opcode::GetClusterDefault, 0, 0, VdiArgs::default());
    unknown.opcode = 0x7e;
    ensure!(cx.code(unknown, &[]).await? == SD_RES_INVALID_PARMS, "unknown opcode");
    Ok(())
}

/// Raw pipelining on one socket: one 4 MiB write then four small reads, sent together.
pub(crate) async fn responses_come_back_out_of_order(cx: Rc<Ctx>) -> Result<()> {
    let vid = cx.create("ooo", 64 * MIB).await?;
    let addr = cx.addr;
    let big = vec![0xabu8; 4 << 20];
    let mut out_of_order = 0;
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_nodelay(true)?;
    for trial in 0..20u32 {
        let mut frame = Vec::new();
        let w = ReqHeader::obj(
            Opcode::CreateAndWriteObj,
            SD_FLAG_CMD_WRITE,
            big.len() as u32,
            ObjArgs { oid: Oid::data(vid, trial), ..Default::default() },
        );
        let mut w = w;
        w.id = 1000 + trial;
        frame.extend_from_slice(&w.encode());
        frame.extend_from_slice(&big);
        for i in 0..4u32 {
            let mut r = ReqHeader::obj(
                Opcode::ReadObj,
                0,
                512,
                ObjArgs { oid: Oid::inode(vid), ..Default::default() },
            );
            r.id = i;
            frame.extend_from_slice(&r.encode());
        }
        s.write_all(&frame)?;
        let mut order = Vec::new();
        for _ in 0..5 {
            let mut hb = [0u8; HEADER_LEN];
            s.read_exact(&mut hb)?;
            let rsp = RspHeader::decode(&hb);
            ensure!(
                rsp.result == SD_RES_SUCCESS,
                "pipelined request {} failed: {}",
                rsp.id,
                rsp.result
            );
            let mut payload = vec![0u8; rsp.data_length as usize];
            s.read_exact(&mut payload)?;
            order.push(rsp.id);
        }
        let mut sorted = order.clone();
        sorted.sort_unstable();
        ensure!(sorted == [0, 1, 2, 3, 1000 + trial], "every id answered once: {order:?}");
        if order[0] != 1000 + trial {
            out_of_order += 1;
        }
    }
    // Remove the objects the raw writes made outside the inode.
    for trial in 0..20 {
        cx.client.remove_obj(Oid::data(vid, trial)).await?;
    }
    ensure!(out_of_order > 0, "20 pipelined trials all answered in submission order");
    Ok(())
}

pub(crate) async fn reads_are_not_bounds_checked(cx: Rc<Ctx>) -> Result<()> {
    let vid = cx.create("bounds", 8 * MIB).await?;
    let v = cx.vol(vid).await?;
    v.write(0, &[7u8; 4096]).await?;
    let os = 1u32 << v.header().block_size_shift;
    let data = cx.client.read_obj(Oid::data(vid, 0), os - 512, 4096).await?;
    ensure!(data.len() == 4096, "read past the object end answers the requested length");
    let r = cx.client.read_obj(Oid::data(vid, 1), 0, 512).await;
    ensure!(
        r.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_NO_OBJ),
        "unwritten object: {r:?}"
    );
    Ok(())
}

pub(crate) async fn double_create_replaces_the_object(cx: Rc<Ctx>) -> Result<()> {
    let vid = cx.create("double", 8 * MIB).await?;
    let oid = Oid::data(vid, 0);
    cx.client.create_obj(oid, None, 0, &[1u8; 4096], 0, 0).await?;
    cx.client.create_obj(oid, None, 8192, &[2u8; 4096], 0, 0).await?;
    let a = cx.client.read_obj(oid, 0, 4096).await?;
    let b = cx.client.read_obj(oid, 8192, 4096).await?;
    ensure!(a.iter().all(|&x| x == 0), "the first create's data is gone");
    ensure!(b.iter().all(|&x| x == 2));
    cx.client.remove_obj(oid).await?;
    Ok(())
}

pub(crate) async fn clone_writes_copy_on_write(cx: Rc<Ctx>) -> Result<()> {
    let vid = cx.create("base", 16 * MIB).await?;
    cx.vol(vid).await?.write(0, &[0xaa; 8192]).await?;
    manage::snapshot(&cx.client, &cx.name("base"), Some(&VdiName::new("gold")?)).await?;
    let clone = manage::clone(&cx.client, &cx.spec("base:gold"), &cx.name("clone")).await?.vid;
    let cv = cx.vol(clone).await?;
    ensure!(cv.header().parent_vdi_id == vid.0, "clone's parent is the snapshot");
    cv.write(4096, &[0xbb; 512]).await?;
    let mut got = vec![0u8; 8192];
    cv.read(0, &mut got).await?;
    ensure!(
        got[..4096].iter().all(|&x| x == 0xaa)
            && got[4096..4608].iter().all(|&x| x == 0xbb)
            && got[4608..].iter().all(|&x| x == 0xaa),
        "clone sees parent data overlaid with its write"
    );
    let (_, entries) = cx.client.read_inode(clone).await?;
    ensure!(entries[0] == clone.0, "the clone owns object 0 after the COW");
    let parent = cx.ro(vid).await?;
    parent.read(0, &mut got).await?;
    ensure!(got.iter().all(|&x| x == 0xaa), "the parent's bytes did not change");
    Ok(())
}

pub(crate) async fn created_entries_are_persisted(cx: Rc<Ctx>) -> Result<()> {
    let vid = cx.create("entries", 64 * MIB).await?;
    let v = cx.vol(vid).await?;
    let bss = v.header().block_size_shift;
    // Three objects in one request, plus concurrent writers to one object.
    v.write((1u64 << bss) - 512, &vec![3u8; (2usize << bss) + 1024]).await?;
    let w: Vec<_> = (0..8u64).map(|i| v.write((5u64 << bss) + i * 4096, &[9u8; 4096])).collect();
    for r in manage::join_all(w).await {
        r?;
    }
    let (_, entries) = cx.client.read_inode(vid).await?;
    ensure!(
        entries[0..4] == [vid.0; 4] && entries[4] == 0 && entries[5] == vid.0,
        "entries {:?}",
        &entries[..6]
    );
    let again = cx.vol(vid).await?;
    let mut got = vec![0u8; 8 * 4096];
    again.read(5u64 << bss, &mut got).await?;
    ensure!(got.iter().all(|&x| x == 9), "every concurrent write to one new object survived");
    Ok(())
}

pub(crate) fn first_clear_at_or_above(bitmap: &[u8], start: u32) -> u32 {
    let set = |v: u32| bitmap[(v / 8) as usize] & (1 << (v % 8)) != 0;
    (start..SD_NR_VDIS).chain(1..start).find(|&v| !set(v)).unwrap_or(0)
}

pub(crate) async fn vids_come_from_the_bitmap(cx: Rc<Ctx>) -> Result<()> {
    let name = cx.name("vid");
    let before = cx.client.read_vdis().await?;
    let expect = first_clear_at_or_above(&before, hash_vid(name.as_str().as_bytes()));
    let vid = cx.create("vid", 4 * MIB).await?;
    ensure!(
        vid.0 == expect,
        "vid {vid} but the first clear bit at or above the hash is {expect:x}"
    );
    let after = cx.client.read_vdis().await?;
    ensure!(after[(vid.0 / 8) as usize] & (1 << (vid.0 % 8)) != 0, "the new vid's bit is set");
    let (old, new) = manage::snapshot(&cx.client, &name, None).await?;
    ensure!(
        old == vid && new.0 == first_clear_at_or_above(&after, hash_vid(name.as_str().as_bytes())),
        "snapshot's working vid {new}"
    );
    let exists = manage::create(&cx.client, &name, 4 * MIB, Redundancy::Default, 0).await;
    ensure!(
        exists.as_ref().err().and_then(|e| e.code()) == Some(SD_RES_VDI_EXIST),
        "second create: {exists:?}"
    );
    Ok(())
}
