//! Where the responses of one server→client byte stream begin and end, so a cut can land
//! inside a chosen response. Pure: no I/O, no allocation.
//!
//! Contract:
//! - [`Framer::scan`] is fed every byte the server sent, in order and in any chunking. A
//!   response is a 48-byte header followed by `data_length` bytes (offset 12, as
//!   [`RspHeader::decode`] reads it), with no bound: the proxy cuts, it does not judge.
//! - A cut is decided when a header is complete: `want` is asked once per response and, when
//!   it says yes, the response is cut in the middle of its payload, or in the middle of its
//!   header when it has no payload. The returned position is never before the start of the
//!   chunk being scanned (what is forwarded already cannot be taken back) and is always
//!   inside the chosen response.

use crate::proto::{RspHeader, HEADER_LEN};

/// Where a chosen response is cut, in bytes of the stream from its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutPoint {
    /// Forward the stream up to (not including) this byte, then end the connection.
    pub at: u64,
    /// Where the chosen response starts.
    pub start: u64,
    /// Whether `at` is inside the payload (else inside the header).
    pub in_payload: bool,
    /// The response's id and payload length, for the log.
    pub id: u32,
    pub data_length: u32,
}

/// Tracks response boundaries; see the module contract.
#[derive(Debug, Clone)]
pub struct Framer {
    head: [u8; HEADER_LEN],
    have: usize,
    left: u64,
    pos: u64,
}

impl Default for Framer {
    fn default() -> Self {
        Framer { head: [0; HEADER_LEN], have: 0, left: 0, pos: 0 }
    }
}

impl Framer {
    /// Bytes of the stream scanned so far.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Scan the next `chunk` of the stream. At each response whose header completes in it,
    /// `want(data_length)` says whether to cut that response; the first yes ends the scan
    /// with its cut point (the rest of the chunk is not scanned: the stream ends there).
    pub fn scan(&mut self, chunk: &[u8], mut want: impl FnMut(u32) -> bool) -> Option<CutPoint> {
        let start = self.pos;
        let mut i = 0;
        while i < chunk.len() {
            if self.left > 0 {
                let n = (chunk.len() - i).min(usize::try_from(self.left).unwrap_or(usize::MAX));
                i += n;
                self.left -= n as u64;
                self.pos += n as u64;
                continue;
            }
            let n = (chunk.len() - i).min(HEADER_LEN - self.have);
            self.head[self.have..self.have + n].copy_from_slice(&chunk[i..i + n]);
            self.have += n;
            i += n;
            self.pos += n as u64;
            if self.have < HEADER_LEN {
                break;
            }
            self.have = 0;
            let rsp = RspHeader::decode(&self.head);
            self.left = u64::from(rsp.data_length);
            if want(rsp.data_length) {
                let header_end = self.pos;
                let (at, in_payload) = if rsp.data_length > 0 {
                    (header_end + u64::from(rsp.data_length) / 2, true)
                } else {
                    ((header_end - HEADER_LEN as u64 / 2).max(start), false)
                };
                return Some(CutPoint {
                    at,
                    start: header_end - HEADER_LEN as u64,
                    in_payload,
                    id: rsp.id,
                    data_length: rsp.data_length,
                });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ReqHeader, SD_RES_SUCCESS};

    fn response(id: u32, len: u32) -> Vec<u8> {
        let req = ReqHeader {
            proto_ver: 2,
            opcode: 2,
            flags: 0,
            epoch: 0,
            id,
            data_length: len,
            args: [0; 32],
        };
        let mut r = RspHeader::reply_to(&req, SD_RES_SUCCESS);
        r.data_length = len;
        let mut v = r.encode().to_vec();
        v.extend(std::iter::repeat_n(0xab, len as usize));
        v
    }

    #[test]
    fn cuts_the_chosen_response_in_its_payload_whatever_the_chunking() {
        let mut stream = response(1, 100);
        stream.extend(response(2, 0));
        stream.extend(response(3, 4096));
        let third = (100 + 2 * HEADER_LEN) as u64;
        for chunk in [1, 7, 48, 100, 5000] {
            let mut f = Framer::default();
            let mut seen = 0;
            let mut cut = None;
            for c in stream.chunks(chunk) {
                cut = f.scan(c, |len| {
                    seen += 1;
                    len == 4096
                });
                if cut.is_some() {
                    break;
                }
            }
            assert_eq!(seen, 3, "chunk {chunk}");
            let cut = cut.expect("the third response is cut");
            assert_eq!(
                cut,
                CutPoint {
                    at: third + HEADER_LEN as u64 + 2048,
                    start: third,
                    in_payload: true,
                    id: 3,
                    data_length: 4096
                }
            );
        }
    }

    #[test]
    fn a_response_without_payload_is_cut_in_its_header() {
        let mut stream = response(1, 10);
        stream.extend(response(2, 0));
        let second = (HEADER_LEN + 10) as u64;
        let mut f = Framer::default();
        let cut = f.scan(&stream, |len| len == 0).expect("cut");
        assert_eq!((cut.at, cut.start), (second + 24, second));
        assert!(!cut.in_payload);
        // Most of the header already went out with an earlier chunk: the cut is at the
        // start of the chunk that completes it, still inside the header.
        let mut f = Framer::default();
        assert_eq!(f.scan(&stream[..(second as usize) + 40], |_| false), None);
        let cut = f.scan(&stream[(second as usize) + 40..], |_| true).expect("cut");
        assert_eq!(cut.at, second + 40);
        assert!(!cut.in_payload);
    }

    #[test]
    fn nothing_is_cut_unless_asked() {
        let mut stream = Vec::new();
        for i in 0..5 {
            stream.extend(response(i, i * 1000));
        }
        let mut f = Framer::default();
        for c in stream.chunks(333) {
            assert_eq!(f.scan(c, |_| false), None);
        }
        assert_eq!(f.pos(), stream.len() as u64);
    }
}
