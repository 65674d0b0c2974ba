//! Framing and demultiplexing of a pipelined response stream, as pure data: given the bytes
//! received so far and which requests are in flight, say what happens next. The shard's
//! receiver (`shard::conn`) is this plus the reads and the copies; the fuzz targets in
//! `tests/fuzz/` drive this same code with hostile streams.
//!
//! Contract:
//! - A wire id is `slot | generation << 16` ([`wire_id`], [`split_id`]).
//! - [`Demux::feed`] looks at the bytes not consumed yet and returns how many of them it
//!   consumed and one [`Event`]: read more, a piece of payload for a slot (with its offset
//!   in that request's destination), a complete response, or break.
//! - Check, then parse: a header is judged as soon as its 48 bytes are there, before any of
//!   its payload is reported. Its slot must have a request in flight under the same
//!   generation, and `data_length` must be within the bound the caller gave for that request
//!   ([`RspHeader::check_len`]). Otherwise the stream is [`Broken`] for good: every later
//!   `feed` returns the same `Break` and consumes nothing, so no byte after a bad header is
//!   ever interpreted.
//! - The payload of an accepted response is reported in order, in contiguous pieces, each
//!   within `data_length` (so within the bound), then `Complete`; a response without payload
//!   is `Complete` at once. The caller must stop reporting a slot as in flight once it has
//!   seen `Complete` for it, so a second answer to one request breaks the stream.
//! - No allocation, no I/O, no runtime, no panic on any input; the caller owns the buffer.

use super::{RspHeader, HEADER_LEN};

/// The wire id of the request in `slot` under generation `gen`.
pub fn wire_id(slot: u16, gen: u16) -> u32 {
    (u32::from(gen) << 16) | u32::from(slot)
}

/// (slot, generation) of a wire id.
pub fn split_id(id: u32) -> (usize, u16) {
    ((id & 0xffff) as usize, (id >> 16) as u16)
}

/// What the caller knows about the request in flight in one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    /// The generation its wire id carries.
    pub gen: u16,
    /// The most payload its response may carry (what its destination can take).
    pub bound: u32,
}

/// Why a response stream can no longer be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    #[error("response id {id:#x} names no request in flight")]
    NotInFlight { id: u32 },
    #[error("response id {id:#x} is for an earlier request (the slot is at generation {current})")]
    StaleGeneration { id: u32, current: u16 },
    #[error("response id {id:#x} announces {len} bytes, more than the {bound} its request takes")]
    Oversize { id: u32, len: u32, bound: u32 },
}

/// What the bytes fed so far mean; see [`Demux::feed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// Nothing more can be decoded from the bytes not consumed: read more, keep them.
    NeedMore,
    /// The next piece of the payload of the response to `slot`, which belongs at `offset` of
    /// that request's destination; `offset + data.len()` is within the response's
    /// `data_length`, which is within the request's bound.
    Payload { slot: usize, offset: usize, data: &'a [u8] },
    /// The response to `slot` is complete: its header, and all of its payload reported.
    Complete { slot: usize, rsp: RspHeader },
    /// The stream is broken: fail every request in flight and reconnect.
    Break(Broken),
}

/// The receiver's state between reads: the response whose payload is being reported, or
/// the broken verdict. Plain data; see the module contract.
#[derive(Debug, Clone, Default)]
pub struct Demux {
    /// (slot, header, payload bytes reported so far).
    cur: Option<(usize, RspHeader, usize)>,
    broken: Option<Broken>,
}

impl Demux {
    pub fn new() -> Demux {
        Demux::default()
    }

    /// Why the stream broke, once it has.
    pub fn broken(&self) -> Option<Broken> {
        self.broken
    }

    /// Look at `input`, the bytes received and not consumed yet, and say what happens next;
    /// returns how many bytes of `input` that consumed (the caller drops them before the
    /// next call). `in_flight(slot)` says what request is in flight in a slot (none: `None`);
    /// it is asked at most once, when a whole header is there.
    pub fn feed<'a>(
        &mut self,
        input: &'a [u8],
        in_flight: impl FnOnce(usize) -> Option<InFlight>,
    ) -> (usize, Event<'a>) {
        if let Some(b) = self.broken {
            return (0, Event::Break(b));
        }
        if self.cur.is_some() {
            return self.payload(input, 0);
        }
        let Some(hb) = input.first_chunk::<HEADER_LEN>() else {
            return (0, Event::NeedMore);
        };
        let rsp = RspHeader::decode(hb);
        let (slot, gen) = split_id(rsp.id);
        let verdict = match in_flight(slot) {
            None => Err(Broken::NotInFlight { id: rsp.id }),
            Some(f) if f.gen != gen => Err(Broken::StaleGeneration { id: rsp.id, current: f.gen }),
            Some(f) => rsp.check_len(f.bound).map_err(|_| Broken::Oversize {
                id: rsp.id,
                len: rsp.data_length,
                bound: f.bound,
            }),
        };
        if let Err(b) = verdict {
            self.broken = Some(b);
            return (0, Event::Break(b));
        }
        if rsp.data_length == 0 {
            return (HEADER_LEN, Event::Complete { slot, rsp });
        }
        self.cur = Some((slot, rsp, 0));
        self.payload(&input[HEADER_LEN..], HEADER_LEN)
    }

    /// The response whose payload is being reported: (slot, offset reached, bytes still to
    /// come). The caller may deliver those bytes itself ([`Demux::skip`]) instead of feeding
    /// them — a receiver that reads them straight into the request's destination.
    pub fn pending(&self) -> Option<(usize, usize, usize)> {
        match (&self.cur, self.broken) {
            (Some((slot, rsp, done)), None) => {
                Some((*slot, *done, rsp.data_length as usize - done))
            }
            _ => None,
        }
    }

    /// `n` bytes of the current response's payload reached its destination without being
    /// fed; at most what [`Demux::pending`] says is still to come (more is clamped). The next
    /// `feed` then reports the rest, or `Complete`.
    pub fn skip(&mut self, n: usize) {
        if let Some((_, rsp, done)) = &mut self.cur {
            *done = (*done + n).min(rsp.data_length as usize);
        }
    }

    /// The next payload piece (or completion) of the current response; `used` bytes before
    /// `input` were consumed already by this call.
    fn payload<'a>(&mut self, input: &'a [u8], used: usize) -> (usize, Event<'a>) {
        let Some((slot, rsp, done)) = &mut self.cur else {
            return (used, Event::NeedMore);
        };
        let (slot, offset, want) = (*slot, *done, rsp.data_length as usize - *done);
        if want == 0 {
            let rsp = *rsp;
            self.cur = None;
            return (used, Event::Complete { slot, rsp });
        }
        let take = want.min(input.len());
        if take == 0 {
            return (used, Event::NeedMore);
        }
        *done += take;
        (used + take, Event::Payload { slot, offset, data: &input[..take] })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ReqHeader, SD_RES_SUCCESS};
    use super::*;

    #[test]
    fn payload_delivered_aside_is_skipped_and_the_response_completes() {
        let table = [Some(InFlight { gen: 3, bound: 8192 })];
        let mut d = Demux::new();
        let stream = response(0, 3, 8192, 7);
        // The header and 100 payload bytes arrive; the rest is read elsewhere.
        let (used, ev) = d.feed(&stream[..HEADER_LEN + 100], |i| table[i]);
        assert_eq!(used, HEADER_LEN + 100);
        assert!(matches!(ev, Event::Payload { slot: 0, offset: 0, data } if data.len() == 100));
        assert_eq!(d.pending(), Some((0, 100, 8092)));
        d.skip(8000);
        assert_eq!(d.pending(), Some((0, 8100, 92)));
        let (used, ev) = d.feed(&stream[HEADER_LEN + 8100..], |i| table[i]);
        assert_eq!(used, 92);
        assert!(matches!(ev, Event::Payload { slot: 0, offset: 8100, .. }));
        let (_, ev) = d.feed(&[], |i| table[i]);
        assert!(matches!(ev, Event::Complete { slot: 0, .. }));
        assert_eq!(d.pending(), None);
        // Skipping more than is left is clamped: the response completes, nothing spills.
        let (_, _) = d.feed(&stream[..HEADER_LEN], |i| table[i]);
        d.skip(1 << 20);
        assert!(matches!(d.feed(&[], |i| table[i]).1, Event::Complete { .. }));
    }

    /// The header of a response to the request in `slot` under `gen`, announcing `len` bytes.
    fn header(slot: u16, gen: u16, len: u32) -> [u8; HEADER_LEN] {
        let mut req = ReqHeader::decode(&[0; HEADER_LEN]);
        req.id = wire_id(slot, gen);
        let mut rsp = RspHeader::reply_to(&req, SD_RES_SUCCESS);
        rsp.data_length = len;
        rsp.encode()
    }

    /// That header followed by `len` payload bytes of `fill`.
    fn response(slot: u16, gen: u16, len: u32, fill: u8) -> Vec<u8> {
        let mut b = header(slot, gen, len).to_vec();
        b.resize(HEADER_LEN + len as usize, fill);
        b
    }

    /// What a receiver does with the events: payloads copied per slot, completions in order.
    #[derive(Default)]
    struct Seen {
        dest: Vec<Vec<u8>>,
        complete: Vec<usize>,
        broken: Option<Broken>,
    }

    /// Feed `stream` in reads of at most `chunk` bytes, as the receiver does: unconsumed
    /// bytes stay at the front of the buffer. A completed slot is no longer in flight.
    fn drive(table: &mut [Option<InFlight>], stream: &[u8], chunk: usize) -> Seen {
        let mut seen = Seen { dest: vec![Vec::new(); table.len()], ..Default::default() };
        let mut d = Demux::new();
        let mut buf = Vec::new();
        for piece in stream.chunks(chunk) {
            buf.extend_from_slice(piece);
            let mut head = 0;
            loop {
                let (used, ev) = d.feed(&buf[head..], |i| table.get(i).copied().flatten());
                head += used;
                match ev {
                    Event::NeedMore => break,
                    Event::Payload { slot, offset, data } => {
                        assert_eq!(offset, seen.dest[slot].len());
                        seen.dest[slot].extend_from_slice(data);
                        assert!(
                            seen.dest[slot].len() <= table[slot].map_or(0, |f| f.bound as usize)
                        );
                    }
                    Event::Complete { slot, rsp } => {
                        assert_eq!(rsp.data_length as usize, seen.dest[slot].len());
                        table[slot] = None;
                        seen.complete.push(slot);
                    }
                    Event::Break(b) => {
                        assert_eq!(
                            d.feed(&buf[head..], |_| None),
                            (0, Event::Break(b)),
                            "a break is final"
                        );
                        seen.broken = Some(b);
                        return seen;
                    }
                }
            }
            buf.drain(..head);
        }
        seen
    }

    fn table(n: usize, gen: u16, bound: u32) -> Vec<Option<InFlight>> {
        vec![Some(InFlight { gen, bound }); n]
    }

    #[test]
    fn ids_pack_slot_and_generation() {
        assert_eq!(wire_id(3, 7), 0x0007_0003);
        assert_eq!(split_id(0x0007_0003), (3, 7));
        assert_eq!(split_id(wire_id(u16::MAX, u16::MAX)), (u16::MAX as usize, u16::MAX));
    }

    #[test]
    fn many_responses_in_one_buffer_in_any_order() {
        let mut t = table(4, 1, 4096);
        let mut s = Vec::new();
        for (slot, len, fill) in
            [(2u16, 4096u32, 0xa2u8), (0, 0, 0), (3, 17, 0xa3), (1, 4096, 0xa1)]
        {
            s.extend(response(slot, 1, len, fill));
        }
        let seen = drive(&mut t, &s, s.len());
        assert_eq!(seen.broken, None);
        assert_eq!(seen.complete, [2, 0, 3, 1]);
        assert_eq!(seen.dest[2], vec![0xa2; 4096]);
        assert_eq!(seen.dest[3], vec![0xa3; 17]);
        assert!(t.iter().all(Option::is_none));
    }

    #[test]
    fn headers_and_payloads_split_across_reads() {
        let mut s = response(0, 9, 100, 0x11);
        s.extend(response(1, 9, 0, 0));
        s.extend(response(2, 9, 3, 0x22));
        for chunk in 1..=s.len() {
            let seen = drive(&mut table(3, 9, 100), &s, chunk);
            assert_eq!(
                (seen.broken, &seen.complete[..]),
                (None, &[0, 1, 2][..]),
                "reads of {chunk}"
            );
            assert_eq!(seen.dest[0], vec![0x11; 100]);
            assert_eq!(seen.dest[2], vec![0x22; 3]);
        }
    }

    #[test]
    fn a_partial_header_waits() {
        let s = response(0, 1, 0, 0);
        let mut d = Demux::new();
        assert_eq!(
            d.feed(&s[..HEADER_LEN - 1], |_| panic!("looked up before the header is whole")),
            (0, Event::NeedMore)
        );
        assert!(matches!(
            d.feed(&s, |_| Some(InFlight { gen: 1, bound: 0 })),
            (HEADER_LEN, Event::Complete { slot: 0, .. })
        ));
        assert_eq!(d.feed(&[], |_| None), (0, Event::NeedMore));
    }

    #[test]
    fn unknown_id_breaks() {
        let seen = drive(&mut table(2, 1, 64), &response(5, 1, 0, 0), 48);
        assert_eq!(seen.broken, Some(Broken::NotInFlight { id: wire_id(5, 1) }));
        // A slot that exists but has nothing in flight, and a second answer to one request.
        let mut t = vec![Some(InFlight { gen: 1, bound: 64 }), None];
        assert_eq!(
            drive(&mut t, &response(1, 1, 0, 0), 48).broken,
            Some(Broken::NotInFlight { id: wire_id(1, 1) })
        );
        let mut s = response(0, 1, 8, 0);
        s.extend(response(0, 1, 8, 0));
        let seen = drive(&mut table(1, 1, 64), &s, 7);
        assert_eq!(
            (seen.complete, seen.broken),
            (vec![0], Some(Broken::NotInFlight { id: wire_id(0, 1) }))
        );
    }

    #[test]
    fn stale_generation_breaks() {
        let seen = drive(&mut table(2, 4, 64), &response(1, 3, 0, 0), 100);
        assert_eq!(seen.broken, Some(Broken::StaleGeneration { id: wire_id(1, 3), current: 4 }));
    }

    #[test]
    fn oversize_length_breaks_before_any_payload() {
        let mut t = table(1, 1, 4096);
        let seen = drive(&mut t, &response(0, 1, 4096, 1), 10_000);
        assert_eq!(seen.broken, None, "exactly the bound is fine");
        let mut t = table(1, 1, 4096);
        let seen = drive(&mut t, &response(0, 1, 4097, 1), 10_000);
        assert_eq!(
            seen.broken,
            Some(Broken::Oversize { id: wire_id(0, 1), len: 4097, bound: 4096 })
        );
        assert!(seen.dest[0].is_empty(), "no payload reported");
        // A write (bound 0) whose answer announces u32::MAX bytes.
        let seen = drive(&mut table(1, 1, 0), &header(0, 1, u32::MAX), 48);
        assert!(matches!(seen.broken, Some(Broken::Oversize { len: u32::MAX, bound: 0, .. })));
    }

    #[test]
    fn bytes_after_a_bad_header_are_never_interpreted() {
        let mut s = response(0, 1, 0, 0);
        s.extend(response(7, 1, 0, 0));
        s.extend(response(1, 1, 0, 0));
        let seen = drive(&mut table(2, 1, 0), &s, s.len());
        assert_eq!(seen.complete, [0]);
        assert!(matches!(seen.broken, Some(Broken::NotInFlight { .. })));
    }
}
