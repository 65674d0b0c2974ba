//! Starting shards. Every byte of VDI I/O goes through a [`Shard`]; this is how one comes to
//! life, the same way for every caller:
//! - [`Shard::start`] on a thread that already has its ring (a ublk queue thread, whose
//!   ring libublk made), from a [`Config`];
//! - [`spawn`]: a new thread (pinned when [`Config::core`] says so) with its own ring and
//!   executor, a shard started on it, and a driver the caller gives (the benchmark's
//!   workload tasks, a test's requests); it closes the shard and lets its connection tasks
//!   end before the thread's ring goes;
//! - [`Remote`]: a spawned shard fed [`IoDesc`]s from any thread (`vdi read/write`, the
//!   conformance suite, tests): `depth` tag tasks on the shard take jobs from an inbox that
//!   a feeder task fills from a [`super::mail`] mailbox (a channel and an eventfd read on
//!   the shard's own ring, so the thread sleeps in one `io_uring_enter`), and send each
//!   completion back on a channel. Jobs carry their buffers (owned `Vec<u8>`), so
//!   nothing is shared but the channels.
//!
//! Contract: `spawn` and `Remote::start` return only once the shard's connections are up
//! (or with the connect error); dropping a `Remote` lets the jobs already submitted finish,
//! then joins the thread. A shard thread that died answers [`Error::Closed`].

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

use super::exec::LocalExecutor;
use super::mail::{mailbox, Post};
use super::{ring, Error, IoDesc, Shard};
use crate::metrics::DeviceMetrics;
use crate::net::Gateway;
use crate::vdi::Volume;

/// How a shard connects and serves (the device's `add` flags, or a test's choice).
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to connect, first reachable first; connections reconnect through the rest.
    pub gateways: Vec<Gateway>,
    /// Pipelined connections (`--connections`).
    pub connections: usize,
    /// Request slots per connection (the most sheep requests in flight on one).
    pub slots: usize,
    /// The largest block request (`--max-io`); sizes the WRITE_ZEROES buffer.
    pub max_io: usize,
    /// How long a block request may wait for the cluster (zero: forever).
    pub io_timeout: Duration,
    /// Adjacent queued writes of one object go as one WRITE_OBJ (`shard::conn`).
    pub coalesce: bool,
    /// [`spawn`]: pin the new thread to this core (modulo the cores the process may use).
    pub core: Option<usize>,
    /// [`spawn`]: entries of the new thread's ring.
    pub ring_entries: u32,
    /// Record into this device's metrics as one of its queues (none: metrics off).
    pub metrics: Option<QueueMetrics>,
    /// Raised by the control plane to fail every request at once (forced delete).
    pub abort: Option<Arc<AtomicBool>>,
}

/// Which device and queue a shard's metrics belong to.
#[derive(Clone)]
pub struct QueueMetrics {
    pub device: DeviceMetrics,
    pub queue: u16,
    /// The queue's depth (tags), shown as `sheepdev_queue_depth`.
    pub depth: u16,
    /// The queue is served zero copy (`sheepdev_zero_copy_requests_total`).
    pub zero_copy: bool,
}

impl std::fmt::Debug for QueueMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueMetrics")
            .field("queue", &self.queue)
            .field("depth", &self.depth)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// One connection of 64 slots to `gateways`, 1 MiB requests, 30 s I/O timeout,
    /// coalescing on, no pinning.
    pub fn new<G: Into<Gateway>>(gateways: impl IntoIterator<Item = G>) -> Config {
        Config {
            gateways: gateways.into_iter().map(Into::into).collect(),
            connections: 1,
            slots: 64,
            max_io: 1 << 20,
            io_timeout: Duration::from_secs(30),
            coalesce: true,
            core: None,
            ring_entries: 256,
            metrics: None,
            abort: None,
        }
    }
}

/// A shard running on its own thread with a driver; see [`spawn`].
pub struct Spawned<T> {
    thread: JoinHandle<Option<T>>,
}

impl<T> Spawned<T> {
    /// Whether the thread has ended (its driver done, or it failed).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Wait for the driver's result (an error when the thread's ring failed or it panicked).
    pub fn join(self) -> io::Result<T> {
        match self.thread.join() {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(io::Error::other("the shard's io_uring failed")),
            Err(_) => Err(io::Error::other("a shard thread panicked")),
        }
    }
}

/// Start a shard on a new thread named `name` and run `drive(shard, executor)` there: it may
/// spawn tasks on the executor and returns the future whose output [`Spawned::join`] gives.
/// When that future is done the shard is shut down (connections closed, their tasks ended).
pub fn spawn<T, F, Fut>(
    name: &str,
    cfg: Config,
    vol: Arc<Volume>,
    drive: F,
) -> io::Result<Spawned<T>>
where
    T: Send + 'static,
    F: FnOnce(Rc<Shard>, &LocalExecutor<'static>) -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
    let thread = std::thread::Builder::new().name(name.to_string()).spawn(move || {
        if let Some(core) = cfg.core {
            super::pin_thread(core);
        }
        if let Err(e) = ring::init_thread_ring(cfg.ring_entries) {
            let _ = ready_tx.send(Err(e));
            return None;
        }
        let exe: LocalExecutor<'static> = LocalExecutor::new();
        let shard = match Shard::start(&cfg, vol, &exe) {
            Ok(s) => s,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return None;
            }
        };
        let _ = ready_tx.send(Ok(()));
        let fut = drive(shard.clone(), &exe);
        ring::run_local(&exe, async move {
            let out = fut.await;
            shard.shut_down().await;
            out
        })
    })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(Spawned { thread }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(io::Error::other("a shard thread died while starting"))
        }
    }
}

/// One block request for a [`Remote`], with its buffer (data to write, room to read into;
/// DISCARD uses it as scratch for inode entries). `id` is the caller's, given back.
#[derive(Debug)]
pub struct Job {
    pub id: u64,
    pub desc: IoDesc,
    pub buf: Vec<u8>,
}

/// A finished [`Job`]: the shard's answer (bytes done) and the buffer.
#[derive(Debug)]
pub struct Done {
    pub id: u64,
    pub result: Result<u32, Error>,
    pub buf: Vec<u8>,
}

/// A shard on its own thread, fed from any thread; see the module contract.
pub struct Remote {
    vol: Arc<Volume>,
    jobs: Option<Post<Job>>,
    done: mpsc::Receiver<Done>,
    thread: Option<Spawned<()>>,
}

impl Remote {
    /// Spawn a shard for `vol` serving up to `depth` jobs at once.
    pub fn start(cfg: Config, vol: Arc<Volume>, depth: usize) -> io::Result<Remote> {
        let (jobs_tx, jobs_rx) = mailbox::<Job>()?;
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let thread = spawn("sheepdev-shard", cfg, vol.clone(), move |shard, exe| {
            let inbox = Rc::new(Inbox::default());
            let tags: Vec<_> = (0..depth.max(1))
                .map(|_| {
                    let (shard, inbox, done) = (shard.clone(), inbox.clone(), done_tx.clone());
                    exe.spawn(async move {
                        while let Some(mut job) = inbox.next().await {
                            let result = shard.handle(job.desc, &mut job.buf).await;
                            let _ = done.send(Done { id: job.id, result, buf: job.buf });
                        }
                    })
                })
                .collect();
            drop(done_tx);
            async move {
                while let Some(job) = jobs_rx.recv().await {
                    inbox.push(job);
                }
                inbox.close();
                for t in tags {
                    t.await;
                }
            }
        })?;
        Ok(Remote { vol, jobs: Some(jobs_tx), done: done_rx, thread: Some(thread) })
    }

    pub fn volume(&self) -> &Arc<Volume> {
        &self.vol
    }

    /// Hand a job to the shard; its [`Done`] comes from [`Remote::next_done`].
    pub fn submit(&self, job: Job) -> Result<(), Error> {
        self.jobs.as_ref().ok_or(Error::Closed)?.send(job).map_err(|_| Error::Closed)
    }

    /// The next finished job, in completion order (blocks).
    pub fn next_done(&self) -> Result<Done, Error> {
        self.done.recv().map_err(|_| Error::Closed)
    }

    /// One request when nothing else is in flight: submit, wait, answer and buffer back.
    pub fn call(&self, desc: IoDesc, buf: Vec<u8>) -> Result<(u32, Vec<u8>), (Error, Vec<u8>)> {
        if let Err(e) = self.submit(Job { id: 0, desc, buf }) {
            return Err((e, Vec::new()));
        }
        match self.next_done() {
            Ok(Done { result: Ok(n), buf, .. }) => Ok((n, buf)),
            Ok(Done { result: Err(e), buf, .. }) => Err((e, buf)),
            Err(e) => Err((e, Vec::new())),
        }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            if let Err(e) = t.join() {
                tracing::warn!("{e}");
            }
        }
    }
}

/// Jobs waiting for a tag task, and the tag tasks waiting for a job.
#[derive(Default)]
struct Inbox {
    jobs: RefCell<VecDeque<Job>>,
    idle: RefCell<VecDeque<Waker>>,
    closed: Cell<bool>,
}

impl Inbox {
    fn push(&self, job: Job) {
        self.jobs.borrow_mut().push_back(job);
        if let Some(w) = self.idle.borrow_mut().pop_front() {
            w.wake();
        }
    }

    fn close(&self) {
        self.closed.set(true);
        let idle = std::mem::take(&mut *self.idle.borrow_mut());
        idle.into_iter().for_each(Waker::wake);
    }

    /// The next job; `None` once the inbox is closed and empty.
    async fn next(&self) -> Option<Job> {
        poll_fn(|cx| {
            if let Some(job) = self.jobs.borrow_mut().pop_front() {
                return Poll::Ready(Some(job));
            }
            if self.closed.get() {
                return Poll::Ready(None);
            }
            self.idle.borrow_mut().push_back(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}
