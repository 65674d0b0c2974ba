//! Response decoding against hostile bytes: the 48-byte headers (`RspHeader`, `ReqHeader`),
//! the bound a response may carry (`response_bound`, `RspHeader::check_len`), result codes,
//! and the inode header and `data_vdi_id` entries a client parses from a READ_OBJ payload.
//!
//! Checked, for any input: no panic; decoding and bound checks allocate nothing; a header
//! decodes and re-encodes to the same 48 bytes; `check_len` refuses exactly the lengths above
//! the bound, with an error that asks for a reconnect; the bound is what the request asked
//! for (READ_OBJ), the VDI bitmap (READ_VDIS) or nothing; a short inode is an error, a parsed
//! one re-encodes to the same bytes, asks to read no more than the whole `data_vdi_id`
//! array, and is only usable with a sane block size and object count.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sheepdev_fuzz::counting::count;
use sheepdev_fuzz::proto::inode::{parse_entries, INODE_HEADER_PARSE_LEN, OFF_DATA_VDI_ID};
use sheepdev_fuzz::proto::{
    libc_errno, response_bound, InodeHeader, Opcode, ReqHeader, RspHeader, HEADER_LEN,
    SD_INODE_DATA_INDEX, SD_MAX_BLOCK_SIZE_SHIFT, SD_MIN_BLOCK_SIZE_SHIFT, SD_VDI_BITMAP_LEN,
};
use sheepdev_fuzz::Input;

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    let hb: [u8; HEADER_LEN] = inp.array();
    let bound_in = inp.u32();
    // The inode bytes: the rest of the input, cycled to a length of its own choosing, so that
    // short inputs reach a whole header too.
    let want_len = usize::from(inp.u16()) % 8192;
    let tail = inp.bytes(usize::MAX);
    let rest: Vec<u8> = if tail.is_empty() {
        vec![0; want_len]
    } else {
        tail.iter().copied().cycle().take(want_len).collect()
    };
    let rest = &rest[..];

    // Headers and bounds: no allocation anywhere in decoding and checking.
    let ((rsp, req, bound, ok_own, ok_in), allocs) = count(|| {
        let rsp = RspHeader::decode(&hb);
        let req = ReqHeader::decode(&hb);
        let bound = response_bound(&req);
        (rsp, req, bound, rsp.check_len(bound).is_ok(), rsp.check_len(bound_in).is_ok())
    });
    assert_eq!(allocs, 0, "decoding a header allocated");
    assert_eq!(rsp.encode(), hb);
    assert_eq!(req.encode(), hb);
    assert_eq!((rsp.id, rsp.data_length), (req.id, req.data_length));
    let want = match Opcode::try_from(req.opcode) {
        Ok(Opcode::ReadObj) => req.data_length,
        Ok(Opcode::ReadVdis) => SD_VDI_BITMAP_LEN,
        _ => 0,
    };
    assert_eq!(bound, want);
    assert_eq!(ok_own, rsp.data_length <= bound);
    assert_eq!(ok_in, rsp.data_length <= bound_in);
    if let Err(e) = rsp.check_len(bound_in) {
        assert!(e.should_reconnect(), "an oversize response must break the connection");
        assert_eq!(e.errno(), libc_errno::EPROTO);
    }
    let _ = (req.obj_args(), req.vdi_args(), rsp.vdi_id(), rsp.cluster_default());
    let _ = (rsp.result.name(), rsp.result.label(), rsp.result.errno(), rsp.result.is_success());

    // The inode header and entries from the rest of the input.
    let (parsed, allocs) = count(|| InodeHeader::parse(rest));
    assert_eq!(allocs, 0, "parsing an inode header allocated");
    match parsed {
        Err(e) => {
            assert!(rest.len() < INODE_HEADER_PARSE_LEN, "a long enough header was refused: {e}")
        }
        Ok(h) => {
            assert!(rest.len() >= INODE_HEADER_PARSE_LEN);
            let mut back = rest[..INODE_HEADER_PARSE_LEN].to_vec();
            back.fill(0);
            h.encode_into(&mut back);
            assert_eq!(back, &rest[..INODE_HEADER_PARSE_LEN]);
            assert!(h.read_len() <= OFF_DATA_VDI_ID + 4 * SD_INODE_DATA_INDEX);
            if h.check_usable().is_ok() {
                assert!((SD_MIN_BLOCK_SIZE_SHIFT..=SD_MAX_BLOCK_SIZE_SHIFT)
                    .contains(&h.block_size_shift));
                assert!(h.nr_objects() <= SD_INODE_DATA_INDEX);
                assert_eq!(h.read_len(), OFF_DATA_VDI_ID + 4 * h.nr_objects());
            }
            let _ = (h.name_lossy(), h.tag_lossy(), h.is_snapshot(), h.is_deleted(), h.vid());
        }
    }
    let mut entries = Vec::with_capacity(rest.len() / 4);
    let ((), allocs) = count(|| parse_entries(rest, &mut entries));
    assert_eq!(allocs, 0, "entries beyond the room their bytes declare");
    assert_eq!(entries.len(), rest.len() / 4);
});
