//! The I/O buffers of one core thread, shared by every device queue it serves.
//!
//! With NEED_GET_DATA (or user copy) a tag has no buffer while it waits for a request
//! (`queue.rs`), so a core needs buffers only for the requests it has in flight — not
//! depth × max_io for every queue of every device.
//!
//! Contract:
//! - [`Buffers::get`] lends a buffer of at least `len` bytes: from a free list of its size
//!   class (powers of two from 4 KiB to 4 MiB), else newly allocated while the bytes the
//!   pool holds (lent and free) stay within its cap; when they would not, free buffers of
//!   other classes are given back to the allocator first, and failing that the request
//!   waits (in arrival order) until a lease ends. A request larger than the cap is lent a
//!   buffer anyway when nothing else is lent, so the pool never deadlocks.
//! - A [`Lease`] returns its buffer to the free list when dropped and wakes the next
//!   waiter. Requests above the largest class (objects over 4 MiB with a larger
//!   `--max-io`) get an exact buffer that is freed with the lease.
//! - Memory: at most `cap` bytes of buffers per core (plus one oversized request), so the
//!   daemon's buffer memory is `cores × cap`, whatever the devices and depths; buffers are
//!   zero-allocated, so untouched pages cost nothing.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

const MIN_SHIFT: u32 = 12;
const CLASSES: usize = 11; // 4 KiB .. 4 MiB

/// One core's buffers (module contract).
pub struct Buffers {
    free: RefCell<[Vec<Box<[u8]>>; CLASSES]>,
    /// Bytes allocated in classes (lent or free).
    held: Cell<usize>,
    lent: Cell<usize>,
    cap: usize,
    waiters: RefCell<VecDeque<Waker>>,
}

/// A lent buffer (module contract); derefs to exactly the bytes asked for.
pub struct Lease {
    pool: Rc<Buffers>,
    buf: Option<Box<[u8]>>,
    len: usize,
    class: Option<usize>,
}

fn class_of(len: usize) -> Option<usize> {
    let shift = len.max(1).next_power_of_two().trailing_zeros().max(MIN_SHIFT);
    let c = (shift - MIN_SHIFT) as usize;
    (c < CLASSES).then_some(c)
}

impl Buffers {
    pub fn new(cap: usize) -> Rc<Buffers> {
        Rc::new(Buffers {
            free: RefCell::new(Default::default()),
            held: Cell::new(0),
            lent: Cell::new(0),
            cap,
            waiters: RefCell::new(VecDeque::new()),
        })
    }

    /// Bytes the pool holds now (lent and free).
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held.get()
    }

    /// Lend a buffer of `len` bytes (module contract).
    pub async fn get(self: &Rc<Self>, len: usize) -> Lease {
        let Some(class) = class_of(len) else {
            self.lent.set(self.lent.get() + 1);
            return Lease { pool: self.clone(), buf: Some(vec![0; len].into()), len, class: None };
        };
        let mut queued = false;
        poll_fn(|cx| {
            // Arrival order: a newcomer waits behind the queue.
            if !queued && !self.waiters.borrow().is_empty() {
                self.waiters.borrow_mut().push_back(cx.waker().clone());
                queued = true;
                return Poll::Pending;
            }
            match self.take(class) {
                Some(buf) => {
                    if queued {
                        // Pass the turn on: the next waiter may fit too.
                        if let Some(w) = self.waiters.borrow_mut().pop_front() {
                            w.wake();
                        }
                    }
                    self.lent.set(self.lent.get() + 1);
                    Poll::Ready(Lease {
                        pool: self.clone(),
                        buf: Some(buf),
                        len,
                        class: Some(class),
                    })
                }
                None => {
                    self.waiters.borrow_mut().push_front(cx.waker().clone());
                    queued = true;
                    Poll::Pending
                }
            }
        })
        .await
    }

    fn take(&self, class: usize) -> Option<Box<[u8]>> {
        if let Some(b) = self.free.borrow_mut()[class].pop() {
            return Some(b);
        }
        let size = 1usize << (class as u32 + MIN_SHIFT);
        if self.held.get() + size > self.cap {
            let mut free = self.free.borrow_mut();
            for (c, list) in free.iter_mut().enumerate() {
                while self.held.get() + size > self.cap {
                    let Some(b) = list.pop() else { break };
                    drop(b);
                    self.held.set(self.held.get() - (1 << (c as u32 + MIN_SHIFT)));
                }
            }
        }
        if self.held.get() + size > self.cap && self.lent.get() > 0 {
            return None;
        }
        self.held.set(self.held.get() + size);
        Some(vec![0u8; size].into_boxed_slice())
    }
}

impl std::ops::Deref for Lease {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf.as_ref().expect("a live lease")[..self.len]
    }
}

impl std::ops::DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf.as_mut().expect("a live lease")[..self.len]
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let pool = &self.pool;
        pool.lent.set(pool.lent.get() - 1);
        if let (Some(buf), Some(c)) = (self.buf.take(), self.class) {
            pool.free.borrow_mut()[c].push(buf);
        }
        // Woken outside the borrow: the waiter's poll takes it again.
        let w = pool.waiters.borrow_mut().pop_front();
        if let Some(w) = w {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::exec::LocalExecutor;

    #[test]
    fn classes_round_up_to_powers_of_two_from_4k() {
        assert_eq!(class_of(1), Some(0));
        assert_eq!(class_of(4096), Some(0));
        assert_eq!(class_of(4097), Some(1));
        assert_eq!(class_of(512 << 10), Some(7));
        assert_eq!(class_of(4 << 20), Some(10));
        assert_eq!(class_of((4 << 20) + 1), None);
    }

    #[test]
    fn leases_are_reused_and_the_cap_holds_requests_until_a_lease_ends() {
        let exe = LocalExecutor::new();
        let pool = Buffers::new(64 << 10);
        let order = Rc::new(RefCell::new(Vec::new()));
        let a = futures_lite::future::block_on(pool.get(32 << 10));
        let b = futures_lite::future::block_on(pool.get(32 << 10));
        assert_eq!(pool.held(), 64 << 10);
        assert_eq!(a.len(), 32 << 10);
        let waiting: Vec<_> = (0..2)
            .map(|i| {
                let (pool, order) = (pool.clone(), order.clone());
                exe.spawn(async move {
                    let l = pool.get(4096).await;
                    order.borrow_mut().push(i);
                    drop(l);
                })
            })
            .collect();
        while exe.try_tick() {}
        assert!(order.borrow().is_empty(), "over the cap: both wait");
        drop(a);
        while exe.try_tick() {}
        assert_eq!(*order.borrow(), vec![0, 1], "served in arrival order once a lease ended");
        assert!(waiting.iter().all(|t| t.is_finished()));
        assert!(pool.held() <= 64 << 10, "the free 32K went back to make room: {}", pool.held());
        drop(b);
        // A request bigger than the cap still gets a buffer when nothing is lent.
        let big = futures_lite::future::block_on(pool.get(128 << 10));
        assert_eq!(big.len(), 128 << 10);
    }
}
