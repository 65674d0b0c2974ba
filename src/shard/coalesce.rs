//! The coalescer: which sheep request may carry another one ([`rides_on`], [`find_lead`])
//! and the rider chains ([`Chains`]) that say which slots ride on which queued lead, as
//! pure data. The connection (`conn`) applies the rule to its send queue, grows the lead's
//! header, sends a chain's payloads as one request and completes the chain with one
//! response.
//!
//! Contract:
//! - A request `h` may ride on a queued request `lead` (which already carries `riders`
//!   others, its `data_length` covering all of them) when both are plain WRITE_OBJ with a
//!   payload, of the same object with the same flags, epoch, copies, copy policy and COW
//!   source, `h` starts exactly where `lead` ends (adjacent, never overlapping), the sum
//!   stays within [`MAX_MERGED`] bytes and `lead` carries fewer than [`MAX_RIDERS`].
//! - Never a CREATE_AND_WRITE (a create is never widened, so a resent create carries
//!   exactly its own piece and cannot replay over another request's data), never a read,
//!   never across objects.
//! - A chain starts at a lead (a queued request), links its riders in the order they
//!   joined (the order of their payloads on the wire) and ends when its lead is completed
//!   or failed: every slot of it then gets the lead's result, once.
//! - Pure: no I/O; no allocation after [`Chains::new`].

use crate::proto::{Opcode, ReqHeader};

/// No slot (end of a chain).
const NONE: u16 = u16::MAX;

#[derive(Debug, Clone, Copy)]
struct Link {
    /// The next slot whose payload follows this one's.
    next: u16,
    /// Lead only: the last slot of its chain, and how many riders it carries.
    tail: u16,
    riders: u16,
    /// Rides on another slot's request: no response of its own is expected.
    carried: bool,
}

const FREE: Link = Link { next: NONE, tail: NONE, riders: 0, carried: false };

/// The rider chains of one connection's slots (module contract).
#[derive(Debug)]
pub struct Chains {
    links: Box<[Link]>,
}

impl Chains {
    pub fn new(slots: usize) -> Chains {
        Chains { links: vec![FREE; slots].into_boxed_slice() }
    }

    /// Slot `idx` was just queued: a chain of its own.
    pub fn start(&mut self, idx: usize) {
        self.links[idx] = Link { tail: idx as u16, ..FREE };
    }

    /// Slot `idx` (just set up, not queued) rides on the queued `lead`: its payload goes
    /// after the last one of `lead`'s chain.
    pub fn attach(&mut self, lead: usize, idx: usize) {
        let tail = usize::from(self.links[lead].tail);
        self.links[tail].next = idx as u16;
        self.links[idx] = Link { carried: true, ..FREE };
        self.links[lead].tail = idx as u16;
        self.links[lead].riders += 1;
    }

    /// Riders `lead` carries.
    pub fn riders(&self, lead: usize) -> usize {
        usize::from(self.links[lead].riders)
    }

    /// Whether `idx` rides on another slot (its response is the lead's).
    pub fn is_carried(&self, idx: usize) -> bool {
        self.links[idx].carried
    }

    /// The slot after `idx` in its chain.
    pub fn next(&self, idx: usize) -> Option<usize> {
        let n = self.links[idx].next;
        (n != NONE).then_some(usize::from(n))
    }

    /// The slot after `idx`, unlinked (a completion walks a chain once).
    pub fn take_next(&mut self, idx: usize) -> Option<usize> {
        let n = std::mem::replace(&mut self.links[idx].next, NONE);
        (n != NONE).then_some(usize::from(n))
    }

    /// Slot `idx` is free again.
    pub fn clear(&mut self, idx: usize) {
        self.links[idx] = FREE;
    }
}

/// Of the most recently queued requests (`recent`: newest first, at most [`MERGE_SCAN`]
/// looked at), the one `h` may ride on (module contract).
pub fn find_lead<'h>(
    recent: impl Iterator<Item = (usize, &'h ReqHeader)>,
    chains: &Chains,
    h: &ReqHeader,
) -> Option<usize> {
    if !may_ride(h) {
        return None;
    }
    recent
        .take(MERGE_SCAN)
        .find(|&(lead, lh)| rides_on(lh, chains.riders(lead), h))
        .map(|(lead, _)| lead)
}

/// The most requests that ride on one queued WRITE_OBJ.
pub const MAX_RIDERS: usize = 63;
/// The most bytes one merged WRITE_OBJ carries.
pub const MAX_MERGED: u32 = 1 << 20;
/// How many of the most recently queued requests a new write looks at for one to ride on.
const MERGE_SCAN: usize = 8;

/// Whether `h` may be one of the requests merged at all (a plain WRITE_OBJ with a payload).
pub fn may_ride(h: &ReqHeader) -> bool {
    h.opcode == Opcode::WriteObj as u8 && h.has_payload() && h.data_length > 0
}

/// Whether `h` may ride on `lead`, which carries `riders` riders already (module contract).
pub fn rides_on(lead: &ReqHeader, riders: usize, h: &ReqHeader) -> bool {
    let (la, a) = (lead.obj_args(), h.obj_args());
    may_ride(h)
        && may_ride(lead)
        && riders < MAX_RIDERS
        && lead.flags == h.flags
        && lead.epoch == h.epoch
        && lead.proto_ver == h.proto_ver
        && crate::proto::ObjArgs { offset: a.offset, ..la } == a
        && la.offset.checked_add(lead.data_length) == Some(a.offset)
        && lead.data_length.checked_add(h.data_length).is_some_and(|n| n <= MAX_MERGED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ObjArgs, Oid, SD_FLAG_CMD_COW, SD_FLAG_CMD_DIRECT, SD_FLAG_CMD_WRITE};

    const W: u16 = SD_FLAG_CMD_WRITE | SD_FLAG_CMD_DIRECT;

    fn req(op: Opcode, flags: u16, oid: u64, offset: u32, len: u32) -> ReqHeader {
        ReqHeader::obj(op, flags, len, ObjArgs { oid: Oid(oid), offset, ..Default::default() })
    }

    #[test]
    fn only_adjacent_plain_writes_of_one_object_ride() {
        let lead = req(Opcode::WriteObj, W, 7, 4096, 8192);
        assert!(rides_on(&lead, 0, &req(Opcode::WriteObj, W, 7, 12288, 4096)));
        assert!(!rides_on(&lead, 0, &req(Opcode::WriteObj, W, 7, 16384, 4096)), "a gap");
        assert!(!rides_on(&lead, 0, &req(Opcode::WriteObj, W, 7, 8192, 4096)), "an overlap");
        assert!(!rides_on(&lead, 0, &req(Opcode::WriteObj, W, 7, 0, 4096)), "before the lead");
        assert!(!rides_on(&lead, 0, &req(Opcode::WriteObj, W, 8, 12288, 4096)), "another object");
        assert!(
            !rides_on(&lead, 0, &req(Opcode::CreateAndWriteObj, W, 7, 12288, 4096)),
            "a create"
        );
        assert!(
            !rides_on(
                &req(Opcode::CreateAndWriteObj, W, 7, 4096, 8192),
                0,
                &req(Opcode::WriteObj, W, 7, 12288, 4096)
            ),
            "onto a create"
        );
        assert!(
            !rides_on(&lead, 0, &req(Opcode::WriteObj, W | SD_FLAG_CMD_COW, 7, 12288, 4096)),
            "other flags"
        );
        assert!(!rides_on(&lead, 0, &req(Opcode::ReadObj, 0, 7, 12288, 4096)), "a read");
        assert!(!rides_on(&lead, 0, &req(Opcode::WriteObj, W, 7, 12288, 0)), "no payload");
        assert!(
            !rides_on(&lead, MAX_RIDERS, &req(Opcode::WriteObj, W, 7, 12288, 4096)),
            "a full chain"
        );
        let big = req(Opcode::WriteObj, W, 7, 0, MAX_MERGED - 4096);
        assert!(rides_on(&big, 0, &req(Opcode::WriteObj, W, 7, MAX_MERGED - 4096, 4096)));
        assert!(
            !rides_on(&big, 0, &req(Opcode::WriteObj, W, 7, MAX_MERGED - 4096, 4097)),
            "past MAX_MERGED"
        );
        let mut copies = req(Opcode::WriteObj, W, 7, 12288, 4096);
        copies.args[16] = 3;
        assert!(!rides_on(&lead, 0, &copies), "other copies");
        let end = req(Opcode::WriteObj, W, 7, u32::MAX - 10, 10);
        assert!(!rides_on(&end, 0, &req(Opcode::WriteObj, W, 7, 0, 1)), "offsets do not wrap");
    }

    #[test]
    fn chains_link_riders_in_order_and_unlink_once() {
        let mut c = Chains::new(4);
        c.start(0);
        c.attach(0, 2);
        c.attach(0, 1);
        assert_eq!((c.riders(0), c.is_carried(0), c.is_carried(2)), (2, false, true));
        assert_eq!(
            (c.next(0), c.next(2), c.next(1)),
            (Some(2), Some(1), None),
            "payload order is join order"
        );
        assert_eq!(c.take_next(0), Some(2));
        assert_eq!(c.next(0), None, "taken");
        c.clear(2);
        assert!(!c.is_carried(2));
    }

    #[test]
    fn the_lead_is_the_newest_queued_request_the_rule_allows() {
        let (a, b, c) = (
            req(Opcode::WriteObj, W, 7, 0, 4096),
            req(Opcode::ReadObj, 0, 7, 4096, 4096),
            req(Opcode::WriteObj, W, 8, 0, 4096),
        );
        let chains = Chains::new(MERGE_SCAN + 1);
        let queued = [(0, &a), (1, &b), (2, &c)];
        let h = req(Opcode::WriteObj, W, 7, 4096, 4096);
        assert_eq!(find_lead(queued.iter().rev().copied(), &chains, &h), Some(0));
        assert_eq!(
            find_lead(
                queued.iter().rev().copied(),
                &chains,
                &req(Opcode::CreateAndWriteObj, W, 7, 4096, 4096)
            ),
            None
        );
        let many: Vec<_> =
            std::iter::once((0, &a)).chain((1..=MERGE_SCAN).map(|i| (i, &c))).collect();
        assert_eq!(
            find_lead(many.iter().rev().copied(), &chains, &h),
            None,
            "only the last MERGE_SCAN are looked at"
        );
    }
}
