//! The connection demultiplexer (`proto::demux`, the framing and checks the shard's receiver
//! runs) against a hostile peer. The input describes a slot table (which slots have a request
//! in flight, their generations and bounds), a receive-buffer size, a cycle of read sizes, and
//! a byte stream made of well-formed responses, stale generations, oversize lengths, raw
//! headers and raw garbage. The stream is fed through a receive buffer exactly as
//! `RingConn::recv_inner` handles it, and checked against a straight-line reference parse:
//! - no panic, and no heap allocation inside `Demux::feed`;
//! - every payload piece belongs to the response being read, lands at the next offset, is
//!   the stream's own bytes and stays within the response's length and its request's bound;
//!   completions come in stream order, each after its whole payload;
//! - a header whose id is not in flight (no such slot, nothing there, answered already, an
//!   earlier generation) or whose length exceeds its bound always ends in `Break` with that
//!   reason, nothing after it is reported, and the break is final; a stream without such a
//!   header never breaks;
//! - bytes left unconsumed are always fewer than a header, so the buffer never stalls.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sheepdev_fuzz::counting::count;
use sheepdev_fuzz::proto::demux::{wire_id, Broken, Demux, Event, InFlight};
use sheepdev_fuzz::proto::HEADER_LEN;
use sheepdev_fuzz::Input;

const MAX_SLOTS: usize = 8;
/// Streams are cut here (executions stay fast).
const MAX_STREAM: usize = 256 << 10;
/// The receiver's buffer size in `shard::conn`.
const RECV_BUF: usize = 256 << 10;

/// What the reference parse expects, in stream order.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    /// A response to `slot` whose payload sits at `at..at + len` of the stream.
    Complete {
        slot: usize,
        id: u32,
        at: usize,
        len: usize,
    },
    /// The last response, accepted but cut short by the end of the stream.
    Partial {
        slot: usize,
        at: usize,
        len: usize,
    },
    Break(Broken),
}

fn lookup(table: &[Option<InFlight>], slot: usize) -> Option<InFlight> {
    table.get(slot).copied().flatten()
}

/// The reference: walk the stream header by header with its own copy of the table.
fn reference(mut table: Vec<Option<InFlight>>, s: &[u8]) -> Vec<Want> {
    let mut out = Vec::new();
    let mut at = 0;
    while s.len() - at >= HEADER_LEN {
        let id = u32::from_le_bytes([s[at + 8], s[at + 9], s[at + 10], s[at + 11]]);
        let len = u32::from_le_bytes([s[at + 12], s[at + 13], s[at + 14], s[at + 15]]);
        let (slot, gen) = ((id & 0xffff) as usize, (id >> 16) as u16);
        let why = match lookup(&table, slot) {
            None => Some(Broken::NotInFlight { id }),
            Some(f) if f.gen != gen => Some(Broken::StaleGeneration { id, current: f.gen }),
            Some(f) if len > f.bound => Some(Broken::Oversize { id, len, bound: f.bound }),
            Some(_) => None,
        };
        if let Some(b) = why {
            out.push(Want::Break(b));
            return out;
        }
        at += HEADER_LEN;
        let len = len as usize;
        if s.len() - at < len {
            out.push(Want::Partial { slot, at, len });
            return out;
        }
        out.push(Want::Complete { slot, id, at, len });
        table[slot] = None;
        at += len;
    }
    out
}

/// A payload byte that depends on its position, so a misplaced piece shows.
fn pattern(pos: usize) -> u8 {
    ((pos as u32).wrapping_mul(2_654_435_761) >> 24) as u8
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    let n = 1 + inp.u8() as usize % MAX_SLOTS;
    let mut table: Vec<Option<InFlight>> = Vec::with_capacity(n);
    for _ in 0..n {
        let flags = inp.u8();
        let gen = inp.u16();
        let bound = match (flags >> 1) & 3 {
            0 => 0,
            1 => u32::from(inp.u8()),
            2 => u32::from(inp.u16()),
            _ => inp.u32(),
        };
        table.push((flags & 1 == 1).then_some(InFlight { gen, bound }));
    }
    let buf_len = match inp.u16() {
        0 => RECV_BUF,
        x => HEADER_LEN + x as usize % 4096,
    };
    let nreads = 1 + inp.u8() as usize % 16;
    let reads: Vec<usize> = inp
        .bytes(nreads)
        .iter()
        .map(|&b| if b < 200 { 1 + b as usize } else { (b as usize - 199) * 1024 })
        .collect();
    let reads = if reads.is_empty() { vec![1] } else { reads };

    // The stream.
    let mut s: Vec<u8> = Vec::new();
    while !inp.is_empty() && s.len() < MAX_STREAM {
        let op = inp.u8();
        let slot = inp.u8() as usize % (n + 1);
        let f = lookup(&table, slot);
        let gen = f.map_or_else(|| inp.u16(), |f| f.gen);
        let bound = f.map_or(0, |f| f.bound);
        let mut h: [u8; HEADER_LEN] = inp.array();
        let (id, len) = match op % 6 {
            // Well-formed (as far as the table at the start knows).
            0..=2 => {
                (wire_id(slot as u16, gen), (u32::from(inp.u16()) >> (inp.u8() % 17)).min(bound))
            }
            // An earlier generation.
            3 => (wire_id(slot as u16, gen.wrapping_sub(1 + u16::from(inp.u8()))), 0),
            // Oversize.
            4 => (wire_id(slot as u16, gen), bound.saturating_add(1 + u32::from(inp.u8()))),
            // Raw header as read, any slot number.
            _ => {
                let more = usize::from(inp.u8());
                s.extend_from_slice(&h);
                s.extend_from_slice(inp.bytes(more));
                continue;
            }
        };
        h[8..12].copy_from_slice(&id.to_le_bytes());
        h[12..16].copy_from_slice(&len.to_le_bytes());
        s.extend_from_slice(&h);
        let body = (len as usize).min(MAX_STREAM.saturating_sub(s.len()));
        s.extend((s.len()..s.len() + body).map(pattern));
    }

    let want = reference(table.clone(), &s);

    // The receiver: the same buffer handling as `RingConn::recv_inner`.
    let mut buf = vec![0u8; buf_len];
    let (mut head, mut tail, mut pos, mut r) = (0usize, 0usize, 0usize, 0usize);
    let mut demux = Demux::new();
    let mut k = 0; // next entry of `want`
    let mut done = 0; // payload bytes of want[k] reported so far
    'reads: while pos < s.len() {
        if head == tail {
            (head, tail) = (0, 0);
        } else if tail == buf.len() {
            buf.copy_within(head..tail, 0);
            (head, tail) = (0, tail - head);
        }
        assert!(tail < buf.len(), "the receive buffer is full of unconsumed bytes");
        let got = reads[r % reads.len()].min(buf.len() - tail).min(s.len() - pos);
        r += 1;
        buf[tail..tail + got].copy_from_slice(&s[pos..pos + got]);
        (pos, tail) = (pos + got, tail + got);
        loop {
            let ((used, ev), allocs) =
                count(|| demux.feed(&buf[head..tail], |i| lookup(&table, i)));
            assert_eq!(allocs, 0, "Demux::feed allocated");
            assert!(used <= tail - head);
            head += used;
            match ev {
                Event::NeedMore => {
                    assert!(tail - head < HEADER_LEN, "{} bytes left unread", tail - head);
                    break;
                }
                Event::Payload { slot, offset, data } => {
                    let (wslot, at, len) = match want.get(k) {
                        Some(
                            &Want::Complete { slot, at, len, .. }
                            | &Want::Partial { slot, at, len },
                        ) => (slot, at, len),
                        w => panic!("payload for slot {slot} where the reference has {w:?}"),
                    };
                    let bound = lookup(&table, slot).map(|f| f.bound as usize);
                    assert_eq!(slot, wslot);
                    assert_eq!(offset, done, "payload out of order");
                    assert!(!data.is_empty());
                    assert!(offset + data.len() <= len, "payload beyond the response's length");
                    assert!(
                        bound.is_some_and(|b| offset + data.len() <= b),
                        "payload beyond its request's bound"
                    );
                    assert_eq!(data, &s[at + offset..at + offset + data.len()]);
                    done += data.len();
                }
                Event::Complete { slot, rsp } => {
                    assert_eq!(
                        want.get(k),
                        Some(&Want::Complete {
                            slot,
                            id: rsp.id,
                            at: want_at(&want, k),
                            len: rsp.data_length as usize
                        })
                    );
                    assert_eq!(
                        done, rsp.data_length as usize,
                        "completed before its whole payload"
                    );
                    table[slot] = None;
                    (k, done) = (k + 1, 0);
                }
                Event::Break(b) => {
                    assert_eq!(want.get(k), Some(&Want::Break(b)));
                    assert_eq!(
                        demux.feed(&buf[head..tail], |_| None),
                        (0, Event::Break(b)),
                        "a break is final"
                    );
                    assert_eq!(demux.broken(), Some(b));
                    k += 1;
                    break 'reads;
                }
            }
        }
    }
    match want.get(k) {
        None => {}
        Some(&Want::Partial { at, .. }) => {
            assert_eq!(k + 1, want.len());
            assert_eq!(done, s.len() - at, "payload bytes left unreported");
        }
        Some(w) => panic!("the reference expects {w:?} but the stream ended"),
    }
});

/// Where the payload of `want[k]` starts (for comparing a whole `Complete`).
fn want_at(want: &[Want], k: usize) -> usize {
    match want.get(k) {
        Some(Want::Complete { at, .. } | Want::Partial { at, .. }) => *at,
        _ => usize::MAX,
    }
}
