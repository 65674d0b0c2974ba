//! The connection's own tests: a fake sheep, merging, broken streams.
use super::super::coalesce::{MAX_MERGED, MAX_RIDERS};
use super::*;
use crate::proto::{demux::split_id, ObjArgs, SD_RES_SUCCESS};
use std::io::{Read, Write};
use std::net::TcpListener;

const LEN: usize = 4096;

/// A fake sheep: each answer in turn goes to one new connection, as the reply to the one
/// READ_OBJ it receives; then it reads until the client closes that connection.
fn fake_sheep(
    answers: Vec<fn(RspHeader) -> Vec<u8>>,
) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let t = std::thread::spawn(move || {
        for answer in answers {
            let (mut s, _) = l.accept().expect("accept");
            let mut hb = [0u8; HEADER_LEN];
            s.read_exact(&mut hb).expect("request");
            let mut rsp = RspHeader::reply_to(&ReqHeader::decode(&hb), SD_RES_SUCCESS);
            rsp.data_length = LEN as u32;
            s.write_all(&answer(rsp)).expect("answer");
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        }
    });
    (addr, t)
}

fn with_payload(rsp: RspHeader) -> Vec<u8> {
    let mut b = rsp.encode().to_vec();
    b.resize(HEADER_LEN + rsp.data_length as usize, 0x5a);
    b
}

/// A response read after the connection failed (the stall watch fired while its payload
/// was arriving) must not turn the request's error into a success with half a payload.
#[test]
fn a_late_answer_does_not_replace_the_error_of_a_failed_request() {
    let (_l, conn) = idle_conn(1);
    {
        let mut st = conn.st.borrow_mut();
        st.slots[0].phase = Phase::Sent;
        st.inflight += 1;
    }
    conn.fail(Error::Io(libc::ETIMEDOUT));
    let req = ReqHeader::obj(Opcode::ReadObj, 0, LEN as u32, ObjArgs::default());
    conn.complete(0, Ok(RspHeader::reply_to(&req, SD_RES_SUCCESS)));
    let mut st = conn.st.borrow_mut();
    assert_eq!(st.slots[0].result.take(), Some(Err(Error::Io(libc::ETIMEDOUT))));
    assert!(st.broken.is_some());
}

/// A connection without tasks (the test drives its queue by hand) and its listener.
fn idle_conn(slots: usize) -> (TcpListener, Rc<RingConn>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    (
        l,
        RingConn::build(
            Gateway::from(addr).connect(Duration::from_secs(3)).expect("connect"),
            addr.into(),
            Vec::new(),
            Duration::ZERO,
            slots,
        ),
    )
}

/// Queue `op` of `payload.len()` bytes at `offset` of `oid` in a fresh slot.
fn queue(conn: &RingConn, op: Opcode, oid: u64, offset: u32, payload: &[u8]) -> usize {
    queue_src(conn, op, oid, offset, Src::Mem(payload))
}

fn queue_src(conn: &RingConn, op: Opcode, oid: u64, offset: u32, payload: Src<'_>) -> usize {
    let idx = usize::from(conn.st.borrow_mut().free.pop().expect("a free slot"));
    let args = ObjArgs { oid: crate::proto::Oid(oid), offset, ..Default::default() };
    conn.enqueue(
        idx,
        ReqHeader::obj(op, crate::proto::SD_FLAG_CMD_WRITE, payload.len() as u32, args),
        payload,
        &mut Dst::Mem(&mut []),
    );
    idx
}

#[test]
fn a_batch_with_kernel_payloads_goes_as_runs_of_iovecs_around_them() {
    let (_l, conn) = idle_conn(16);
    conn.set_coalesce(false);
    let k = |index| KernelBuf { index, fd: -1, pos: 0, off: 0, len: 4096, ring_reads: true };
    let mem = [7u8; 512];
    queue(&conn, Opcode::WriteObj, 1, 0, &mem);
    queue_src(&conn, Opcode::WriteObj, 2, 0, Src::Kernel(k(5)));
    queue_src(&conn, Opcode::WriteObj, 3, 0, Src::Kernel(k(6)));
    queue(&conn, Opcode::WriteObj, 4, 0, &mem);
    let (mut iov, mut segs) = (Vec::new(), Vec::new());
    conn.take_batch(&mut iov, &mut segs);
    // header+payload, header | k5 | header | k6 | header+payload
    let lens: Vec<usize> = iov.iter().map(|v| v.iov_len).collect();
    assert_eq!(lens, [HEADER_LEN, 512, HEADER_LEN, HEADER_LEN, HEADER_LEN, 512]);
    let shape: Vec<String> = segs
        .iter()
        .map(|s| match s {
            socket::Seg::Iov { from, to } => format!("{from}..{to}"),
            socket::Seg::Kernel(k) => format!("k{}", k.index),
        })
        .collect();
    assert_eq!(shape, ["0..3", "k5", "3..4", "k6", "4..6"]);
}

fn sent_header(conn: &RingConn, idx: usize) -> ReqHeader {
    // SAFETY: no sender task runs; nothing writes the cell while the test reads it.
    ReqHeader::decode(unsafe { &*conn.headers[idx].get() })
}

#[test]
fn adjacent_writes_of_one_object_ride_on_the_queued_one_and_share_its_result() {
    let (_l, conn) = idle_conn(16);
    let bufs: Vec<Vec<u8>> = (0..8u8).map(|k| vec![k; 4096]).collect();
    let a = queue(&conn, Opcode::WriteObj, 1, 0, &bufs[0]);
    let b = queue(&conn, Opcode::WriteObj, 1, 4096, &bufs[1]); // rides on a
    let c = queue(&conn, Opcode::WriteObj, 2, 8192, &bufs[2]); // another object
    let d = queue(&conn, Opcode::WriteObj, 1, 8192, &bufs[3]); // rides on a, behind c
    let e = queue(&conn, Opcode::CreateAndWriteObj, 1, 12288, &bufs[4]); // a create never merges
    let f = queue(&conn, Opcode::WriteObj, 1, 20480, &bufs[5]); // a gap
    let g = queue(&conn, Opcode::WriteObj, 1, 0, &bufs[6]); // overlaps a
    let h = queue(&conn, Opcode::CreateAndWriteObj, 1, 24576, &bufs[7]); // adjacent to f, but a create
    assert_eq!(conn.merged(), 2);
    assert_eq!(sent_header(&conn, a).data_length, 3 * 4096, "the lead's header carries its riders");
    assert_eq!(sent_header(&conn, a).obj_args().offset, 0);
    assert_eq!(sent_header(&conn, c).data_length, 4096);
    let mut iov = Vec::with_capacity(MAX_IOV);
    let mut segs = Vec::new();
    conn.take_batch(&mut iov, &mut segs);
    let order: Vec<*mut libc::c_void> = iov.iter().map(|v| v.iov_base).collect();
    let hdr = |i: usize| conn.headers[i].get().cast::<libc::c_void>();
    let pay = |k: usize| bufs[k].as_ptr() as *mut libc::c_void;
    assert_eq!(
        order,
        vec![
            hdr(a),
            pay(0),
            pay(1),
            pay(3),
            hdr(c),
            pay(2),
            hdr(e),
            pay(4),
            hdr(f),
            pay(5),
            hdr(g),
            pay(6),
            hdr(h),
            pay(7)
        ],
        "one header, then the lead's and each rider's payload in order"
    );
    let req = ReqHeader::obj(Opcode::WriteObj, 0, 0, ObjArgs::default());
    conn.complete(a, Ok(RspHeader::reply_to(&req, crate::proto::SD_RES_EIO)));
    let mut st = conn.st.borrow_mut();
    for i in [a, b, d] {
        assert_eq!(
            st.slots[i].result.take().map(|r| r.map(|r| r.result)),
            Some(Ok(crate::proto::SD_RES_EIO)),
            "slot {i}"
        );
    }
    for i in [c, e, f, g, h] {
        assert!(st.slots[i].result.is_none(), "slot {i} is not answered by a's response");
    }
    drop(st);
    conn.fail(Error::Closed);
    assert_eq!(conn.st.borrow_mut().slots[c].result.take(), Some(Err(Error::Closed)));
}

#[test]
fn merging_stops_at_its_caps_and_when_turned_off() {
    let (_l, conn) = idle_conn(MAX_RIDERS + 8);
    let big = vec![0u8; MAX_MERGED as usize];
    let a = queue(&conn, Opcode::WriteObj, 1, 0, &big[..MAX_MERGED as usize - 4096]);
    let _ = queue(&conn, Opcode::WriteObj, 1, MAX_MERGED - 4096, &big[..4096]);
    let c = queue(&conn, Opcode::WriteObj, 1, MAX_MERGED, &big[..1]);
    assert_eq!(sent_header(&conn, a).data_length, MAX_MERGED);
    assert_eq!(conn.merged(), 1, "no request grows past MAX_MERGED");
    for k in 1..=MAX_RIDERS as u32 + 1 {
        queue(&conn, Opcode::WriteObj, 1, MAX_MERGED + k, &big[..1]);
    }
    assert_eq!(conn.merged(), 1 + MAX_RIDERS as u64);
    assert_eq!(
        sent_header(&conn, c).data_length,
        1 + MAX_RIDERS as u32,
        "no request carries more than MAX_RIDERS riders"
    );
    assert_eq!(conn.st.borrow().sendq.len(), 3);
    conn.fail(Error::Closed);
    let (_l, conn) = idle_conn(4);
    conn.set_coalesce(false);
    queue(&conn, Opcode::WriteObj, 1, 0, &big[..4096]);
    queue(&conn, Opcode::WriteObj, 1, 4096, &big[..4096]);
    assert_eq!((conn.merged(), conn.st.borrow().sendq.len()), (0, 2));
    conn.fail(Error::Closed);
}

#[test]
fn a_response_that_matches_no_request_breaks_the_connection_and_it_comes_back() {
    let answers: Vec<fn(RspHeader) -> Vec<u8>> = vec![
        // An earlier generation of the same slot.
        |mut r| {
            let (slot, gen) = split_id(r.id);
            r.id = wire_id(slot as u16, gen.wrapping_sub(1));
            with_payload(r)
        },
        // A slot nobody uses.
        |mut r| {
            r.id = wire_id(999, split_id(r.id).1);
            with_payload(r)
        },
        // One byte more than the read asked for.
        |mut r| {
            r.data_length += 1;
            with_payload(r)
        },
        // Finally a good answer, on the fourth connection.
        with_payload,
    ];
    let (addr, server) = fake_sheep(answers);
    let client = std::thread::spawn(move || {
        super::super::ring::init_thread_ring(64).expect("ring");
        let exe = crate::shard::exec::LocalExecutor::new();
        let conn = RingConn::connect_supervised(
            &[addr.into()],
            Duration::from_secs(1),
            4,
            Duration::ZERO,
            &exe,
        )
        .expect("connect");
        let c2 = conn.clone();
        super::super::ring::run_local(&exe, async move {
            let conn = c2;
            let hdr = ReqHeader::obj(Opcode::ReadObj, 0, LEN as u32, ObjArgs::default());
            let mut dest = vec![0u8; LEN];
            for bad in 0..3 {
                let r = conn.call(hdr, &[], &mut dest).await;
                assert_eq!(r, Err(Error::Protocol), "bad answer {bad}");
                assert!(r.err().is_some_and(Error::should_reconnect));
                assert!(
                    dest.iter().all(|&b| b == 0),
                    "bad answer {bad} wrote into the destination"
                );
                let deadline = Instant::now() + Duration::from_secs(10);
                while !conn.is_up() {
                    assert!(Instant::now() < deadline, "no reconnect after bad answer {bad}");
                    super::super::ring::sleep(Duration::from_millis(10)).await;
                }
            }
            let r = conn.call(hdr, &[], &mut dest).await.expect("the resent request is answered");
            assert_eq!(r.data_length as usize, LEN);
            assert!(dest.iter().all(|&b| b == 0x5a));
            assert_eq!(conn.reconnects(), 3);
            conn.shut_down().await;
        })
        .expect("ring");
    });
    client.join().expect("client");
    server.join().expect("fake sheep");
}

/// A connect that blocks (here: a unix listener whose backlog is full) runs on its helper
/// thread: the ring serves its other tasks meanwhile, and the connect completes once the
/// listener makes room.
#[test]
fn a_blocked_connect_does_not_stall_the_ring() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sock");
    let l = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    // SAFETY: a zeroed sockaddr_un is a valid value; the path fits (checked) and is copied
    // into its sun_path.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let p = path.as_os_str().as_bytes();
    assert!(p.len() < sa.sun_path.len());
    for (d, s) in sa.sun_path.iter_mut().zip(p) {
        *d = *s as libc::c_char;
    }
    // Fill the backlog with non-blocking connects until the next one would block.
    let mut fill = Vec::new();
    loop {
        // SAFETY: socket has no memory arguments; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
        assert!(fd >= 0, "socket");
        // SAFETY: `fd` is new and owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        // SAFETY: `sa` is a live sockaddr_un of `len` bytes.
        let r = unsafe { libc::connect(fd.as_raw_fd(), (&raw const sa).cast(), len) };
        if r < 0 {
            assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::EAGAIN));
            break;
        }
        fill.push(fd);
        assert!(fill.len() < 100_000, "the backlog never filled");
    }
    // Make room after 300 ms.
    let acceptor = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let first = l.accept().expect("accept");
        (l, first)
    });
    super::super::ring::init_thread_ring(64).expect("ring");
    let exe = crate::shard::exec::LocalExecutor::new();
    let start = Instant::now();
    let gw = Gateway::Unix(path.clone());
    let (connected, ticked) = super::super::ring::run_local(&exe, async move {
        futures_lite::future::zip(
            async {
                let s = connect_aside(&gw, Duration::from_secs(5)).await;
                (s.map(|_| ()), start.elapsed())
            },
            async move {
                super::super::ring::sleep(Duration::from_millis(20)).await;
                start.elapsed()
            },
        )
        .await
    })
    .expect("ring");
    let (r, took) = connected;
    assert!(r.is_ok(), "connect: {r:?}");
    assert!(took >= Duration::from_millis(250), "the connect did not wait for room ({took:?})");
    assert!(
        ticked < Duration::from_millis(200),
        "the ring stalled behind the connect ({ticked:?})"
    );
    drop(acceptor.join().expect("acceptor"));
    drop(fill);
}
