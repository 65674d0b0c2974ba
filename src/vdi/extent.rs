//! Splitting a byte range of a VDI into per-object pieces.
//!
//! Contract: the pieces of `[offset, offset + len)` cover it exactly, in order, and no piece
//! crosses an object boundary (`1 << block_size_shift`). Pure arithmetic, no allocation.

/// One object's share of a byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Object index.
    pub idx: u32,
    /// Byte offset inside the object.
    pub obj_off: u32,
    /// Byte offset inside the caller's buffer.
    pub buf_off: usize,
    /// Length of the piece.
    pub len: u32,
}

/// Iterator over the pieces of a byte range; see [`split`].
#[derive(Debug, Clone)]
pub struct Pieces {
    pos: u64,
    end: u64,
    start: u64,
    bss: u8,
}

/// The pieces of `[offset, offset + len)` for objects of `1 << bss` bytes (`bss` ≤ 31).
pub fn split(offset: u64, len: u64, bss: u8) -> Pieces {
    Pieces { pos: offset, end: offset.saturating_add(len), start: offset, bss: bss.min(31) }
}

impl Iterator for Pieces {
    type Item = Piece;
    fn next(&mut self) -> Option<Piece> {
        if self.pos >= self.end {
            return None;
        }
        let obj_size = 1u64 << self.bss;
        let idx = self.pos >> self.bss;
        let obj_off = self.pos & (obj_size - 1);
        let len = (obj_size - obj_off).min(self.end - self.pos);
        let p = Piece {
            idx: u32::try_from(idx).unwrap_or(u32::MAX),
            obj_off: obj_off as u32,
            buf_off: (self.pos - self.start) as usize,
            len: len as u32,
        };
        self.pos += len;
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn splits_at_object_boundaries() {
        let v: Vec<Piece> = split((4 << 20) - 512, 1024 + (4 << 20), 22).collect();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0], Piece { idx: 0, obj_off: (4 << 20) - 512, buf_off: 0, len: 512 });
        assert_eq!(v[1], Piece { idx: 1, obj_off: 0, buf_off: 512, len: 4 << 20 });
        assert_eq!(v[2], Piece { idx: 2, obj_off: 0, buf_off: 512 + (4 << 20), len: 512 });
        assert_eq!(split(10, 0, 22).count(), 0);
    }

    proptest! {
        #[test]
        fn pieces_cover_exactly_and_never_cross(off in 0u64..(1 << 40), len in 0u64..(64 << 20), bss in 20u8..=25) {
            let os = 1u64 << bss;
            let mut pos = off;
            let mut buf = 0usize;
            for p in split(off, len, bss) {
                prop_assert_eq!(u64::from(p.idx) * os + u64::from(p.obj_off), pos);
                prop_assert_eq!(p.buf_off, buf);
                prop_assert!(p.len > 0);
                prop_assert!(u64::from(p.obj_off) + u64::from(p.len) <= os);
                pos += u64::from(p.len);
                buf += p.len as usize;
            }
            prop_assert_eq!(pos, off + len);
        }
    }
}
