//! iovec bookkeeping shared by the vectored writers (the shard's SENDMSG, the store's
//! `writev`): after a partial write, skip what the kernel took.
//!
//! Contract: [`advance`] consumes `n` bytes from `iov[start..]`, dropping whole iovecs and
//! moving into a partly written one, and answers the index of the first iovec with bytes
//! left (`iov.len()` when all were written). It never moves past the end of `iov`.

/// Skip `n` written bytes of `iov[start..]` (module contract).
pub(crate) fn advance(iov: &mut [libc::iovec], mut start: usize, mut n: usize) -> usize {
    while n > 0 && start < iov.len() {
        let v = &mut iov[start];
        if n >= v.iov_len {
            n -= v.iov_len;
            start += 1;
        } else {
            // SAFETY: advancing within the same iovec's memory, by less than its length.
            v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
            v.iov_len -= n;
            n = 0;
        }
    }
    start
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_whole_iovecs_and_moves_into_a_partial_one() {
        let (a, b) = (*b"abcd", *b"efgh");
        let mut iov = [
            libc::iovec { iov_base: a.as_ptr().cast_mut().cast(), iov_len: 4 },
            libc::iovec { iov_base: b.as_ptr().cast_mut().cast(), iov_len: 4 },
        ];
        assert_eq!(advance(&mut iov, 0, 0), 0);
        assert_eq!(advance(&mut iov, 0, 5), 1);
        assert_eq!((iov[1].iov_base as *const u8, iov[1].iov_len), (b[1..].as_ptr(), 3));
        assert_eq!(advance(&mut iov, 1, 3), 2);
        assert_eq!(advance(&mut iov, 2, 9), 2, "never past the end");
    }
}
