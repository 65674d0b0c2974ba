//! Owned messages into a shard thread from any thread.
//!
//! Contract: [`mailbox`] gives a [`Post`] (`Send`, cloneable) and a [`Mail`] that stays on
//! the shard thread. [`Post::send`] queues a message on a channel and rings an eventfd;
//! [`Mail::recv`] waits for that eventfd with a READ SQE on the shard's own ring (so the
//! thread sleeps in its one `io_uring_enter`) and hands the messages out in order. `recv`
//! answers `None` once every `Post` is gone and the queue is empty; a `recv` future is
//! never dropped before it resolves (its READ SQE points into it). Used by
//! [`super::Remote`] (block requests from `vdi read/write` and tests) and by the daemon's
//! core threads (`ublk::cores`: attach a device's queue).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{mpsc, Arc};

use io_uring::{opcode, types};

use super::ring;

/// The sending half: any thread.
pub struct Post<T> {
    /// `None` only while dropping (the sender goes before the bell rings).
    tx: Option<mpsc::Sender<T>>,
    bell: Arc<OwnedFd>,
}

impl<T> Clone for Post<T> {
    fn clone(&self) -> Self {
        Post { tx: self.tx.clone(), bell: self.bell.clone() }
    }
}

/// The receiving half: the shard thread.
pub struct Mail<T> {
    rx: mpsc::Receiver<T>,
    bell: Arc<OwnedFd>,
    ready: RefCell<VecDeque<T>>,
    gone: std::cell::Cell<bool>,
}

/// A new mailbox (module contract).
pub fn mailbox<T>() -> io::Result<(Post<T>, Mail<T>)> {
    // SAFETY: eventfd has no memory arguments; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let bell = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
    let (tx, rx) = mpsc::channel();
    let mail = Mail {
        rx,
        bell: bell.clone(),
        ready: RefCell::new(VecDeque::new()),
        gone: std::cell::Cell::new(false),
    };
    Ok((Post { tx: Some(tx), bell }, mail))
}

impl<T> Post<T> {
    /// Queue `msg` and wake the shard; `Err(msg)` when the shard's mailbox is gone.
    pub fn send(&self, msg: T) -> Result<(), T> {
        self.tx.as_ref().expect("a live Post").send(msg).map_err(|e| e.0)?;
        self.ring();
        Ok(())
    }

    fn ring(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live local array to an eventfd we own.
        let _ = unsafe { libc::write(self.bell.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}

impl<T> Drop for Post<T> {
    /// The last `Post` going must wake a shard asleep in `recv` so that it sees the end:
    /// the sender is dropped first, then the bell rings (the other order lets the shard
    /// wake, find the channel still connected, and sleep for good).
    fn drop(&mut self) {
        drop(self.tx.take());
        self.ring();
    }
}

impl<T> Mail<T> {
    /// The next message, `None` once every sender is gone (module contract).
    pub async fn recv(&self) -> Option<T> {
        let mut count = [0u8; 8];
        loop {
            if let Some(m) = self.ready.borrow_mut().pop_front() {
                return Some(m);
            }
            loop {
                match self.rx.try_recv() {
                    Ok(m) => self.ready.borrow_mut().push_back(m),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        self.gone.set(true);
                        break;
                    }
                }
            }
            if let Some(m) = self.ready.borrow_mut().pop_front() {
                return Some(m);
            }
            if self.gone.get() {
                return None;
            }
            // `count` lives in this future until the read completes.
            let r = ring::submit(
                opcode::Read::new(types::Fd(self.bell.as_raw_fd()), count.as_mut_ptr(), 8).build(),
            )
            .await;
            if r < 0 && r != -libc::EINTR && r != -libc::EAGAIN {
                tracing::error!("shard mailbox: reading its eventfd failed (errno {})", -r);
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::exec::LocalExecutor;

    /// Every message arrives in order, and the last `Post` going ends `recv` even when the
    /// shard is asleep in its ring at that moment (many rounds: the drop races the wake-up).
    #[test]
    fn messages_arrive_in_order_and_the_last_sender_ends_recv() {
        for round in 0..200 {
            let (post, mail) = mailbox::<u32>().expect("mailbox");
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                ring::init_thread_ring(64).expect("ring");
                let exe = LocalExecutor::new();
                let got = ring::run_local(&exe, async {
                    let mut got = Vec::new();
                    while let Some(m) = mail.recv().await {
                        got.push(m);
                    }
                    got
                });
                let _ = tx.send(got);
            });
            let second = post.clone();
            for i in 0..3 {
                post.send(i).expect("send");
            }
            if round % 2 == 0 {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            second.send(3).expect("send");
            drop(second);
            drop(post);
            let got = rx.recv_timeout(std::time::Duration::from_secs(10));
            assert_eq!(got, Ok(Some(vec![0, 1, 2, 3])), "round {round}: recv did not end");
        }
    }
}
