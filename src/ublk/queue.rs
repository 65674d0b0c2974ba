//! One ublk hardware queue of one device, served from the calling thread's ring.
//!
//! Why not libublk's `UblkQueue`: in 0.4.8 `UblkQueue::new` registers the device's char
//! device as fixed file 0 of the thread-local ring (`register_files`, which a ring accepts
//! once: a second queue on the thread fails with EBUSY, and every command names
//! `Fixed(0)`), and its event loop counts every ublk command CQE of the ring as its own
//! queue's (`update_state_batch`, which marks the queue stopping on any abort). So libublk
//! gives one queue per thread. A core thread of the daemon serves queue q of every device
//! (`cores.rs`), so the queue protocol — the driver's, not libublk's — is done here with
//! plain file descriptors; libublk still does the device's control commands.
//!
//! Contract:
//! - [`Queue::new`] maps the queue's request descriptors (read-only, written by the driver)
//!   and holds the device (its char device stays open) until dropped.
//! - [`Queue::fetch`] / [`Queue::commit`] push FETCH_REQ / COMMIT_AND_FETCH_REQ for a tag
//!   on this thread's ring and resolve when the driver hands the tag its next request:
//!   `Ok(())`, or `Err(errno)` when it will not (ENODEV: the device stops, or the queue is
//!   aborted). Every command of a queue comes from the one thread that made it.
//! - How request data moves is the device's [`Transfer`] mode ([`Queue::transfer`]):
//!   - [`Transfer::GetData`] (UBLK_F_NEED_GET_DATA, the default for new sheep devices): a tag
//!     has no buffer while it waits. A write with data first resolves
//!     [`Next::NeedData`]; [`Queue::get_data`] with a buffer has the driver copy the payload
//!     into it. A read's data is copied out of the `addr` its commit names while the ring
//!     hands the driver that command (the driver serves queue commands inline, in the
//!     submitting thread), so the buffer must live until [`crate::shard::ring::entered`]
//!     resolves after the commit was pushed — not until the commit resolves, which is the
//!     tag's next request. Other commands name `addr` 0.
//!   - [`Transfer::UserCopy`] (UBLK_F_USER_COPY, Linux 6.5+; null devices, and sheep devices a
//!     previous daemon made with it): `addr` is 0 and the data moves with
//!     [`Queue::copy_in`] / [`Queue::copy_out`], `pread`/`pwrite` on the char device at the
//!     tag's offset, a copy the driver makes to or from a request in flight (never blocks).
//!   - [`Transfer::Own`] (neither flag): `addr` is the tag's own buffer of max-io bytes, which
//!     must outlive every command of the tag.
//!   - [`Transfer::AutoReg`] (UBLK_F_AUTO_BUF_REG, 6.16+, with USER_COPY beside it; zero
//!     copy): `addr` is 0 and every fetch or commit names an entry of the ring's buffer table
//!     in the SQE's own `addr` ([`Queue::fetch_reg`], [`Queue::commit_reg`]). Before it hands
//!     the tag a request with data, the driver registers the request's pages there; the
//!     commit unregisters them, and the request completes once the ring's last use of them
//!     (a zero-copy send still in flight) is over. Should the registration fail, the request
//!     comes flagged UBLK_IO_F_NEED_REG_BUF (the fallback asked for) and is served by user
//!     copy instead — which is also how a tag asks for no registration: it names an entry
//!     past the table (`zero_copy::NO_ENTRY`).

use std::io;
use std::sync::Arc;

use io_uring::{opcode, types};
use libublk::io::UblkDev;
use libublk::sys;

use crate::shard::ring;

/// One queue of one device (module contract).
pub struct Queue {
    dev: Arc<UblkDev>,
    qid: u16,
    depth: u16,
    fd: i32,
    iods: *const sys::ublksrv_io_desc,
    map_len: usize,
    encode: bool,
    transfer: Transfer,
}

/// How a device's request data reaches the daemon (module contract).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transfer {
    GetData,
    UserCopy,
    Own,
    AutoReg,
}

/// What the driver answered a fetch or commit with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// The tag's next request is in its descriptor.
    Request,
    /// The next request is a write whose payload [`Queue::get_data`] must fetch first.
    NeedData,
}

impl Transfer {
    pub fn of(flags: u64) -> Transfer {
        if flags & u64::from(sys::UBLK_F_AUTO_BUF_REG) != 0 {
            Transfer::AutoReg
        } else if flags & u64::from(sys::UBLK_F_USER_COPY) != 0 {
            Transfer::UserCopy
        } else if flags & u64::from(sys::UBLK_F_NEED_GET_DATA) != 0 {
            Transfer::GetData
        } else {
            Transfer::Own
        }
    }
}

fn page_round(n: usize) -> usize {
    // SAFETY: sysconf has no memory arguments.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    n.div_ceil(page) * page
}

impl Queue {
    pub fn new(dev: Arc<UblkDev>, qid: u16) -> io::Result<Queue> {
        let depth = dev.dev_info.queue_depth;
        if qid >= dev.dev_info.nr_hw_queues || depth == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let fd = dev.tgt.fds[0];
        let desc = std::mem::size_of::<sys::ublksrv_io_desc>();
        let map_len = page_round(usize::from(depth) * desc);
        let stride = page_round(sys::UBLK_MAX_QUEUE_DEPTH as usize * desc);
        let off = sys::UBLKSRV_CMD_BUF_OFFSET as libc::off_t
            + libc::off_t::from(qid) * stride as libc::off_t;
        // SAFETY: maps `map_len` bytes of the char device read-only at the queue's
        // descriptor offset; the result is checked and unmapped in `Drop`.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let flags = dev.dev_info.flags;
        Ok(Queue {
            qid,
            depth,
            fd,
            iods: p.cast(),
            map_len,
            encode: flags & u64::from(sys::UBLK_F_CMD_IOCTL_ENCODE) != 0,
            transfer: Transfer::of(flags),
            dev,
        })
    }

    pub fn qid(&self) -> u16 {
        self.qid
    }

    pub fn depth(&self) -> u16 {
        self.depth
    }

    pub fn dev(&self) -> &Arc<UblkDev> {
        &self.dev
    }

    /// How the device moves request data (module contract).
    pub fn transfer(&self) -> Transfer {
        self.transfer
    }

    /// The request the driver gave `tag` (valid once its fetch or commit resolved `Ok`).
    pub fn desc(&self, tag: u16) -> sys::ublksrv_io_desc {
        assert!(tag < self.depth, "tag {tag} of a {}-deep queue", self.depth);
        // SAFETY: `tag` < depth and the mapping holds `depth` descriptors; the driver
        // wrote this one before completing the tag's command, and a volatile read copies
        // it out whole.
        unsafe { std::ptr::read_volatile(self.iods.add(usize::from(tag))) }
    }

    /// The char device (user copy).
    pub fn fd(&self) -> i32 {
        self.fd
    }

    async fn cmd(&self, op: u32, tag: u16, addr: u64, result: i32) -> Result<Next, i32> {
        self.cmd_at(op, tag, addr, result, 0).await
    }

    /// A queue command; `sqe_addr` goes in the SQE's own `addr` (AUTO_BUF_REG's buffer entry).
    async fn cmd_at(
        &self,
        op: u32,
        tag: u16,
        addr: u64,
        result: i32,
        sqe_addr: u64,
    ) -> Result<Next, i32> {
        let mut c = [0u8; 16];
        c[0..2].copy_from_slice(&self.qid.to_ne_bytes());
        c[2..4].copy_from_slice(&tag.to_ne_bytes());
        c[4..8].copy_from_slice(&result.to_ne_bytes());
        c[8..16].copy_from_slice(&addr.to_ne_bytes());
        let op = if self.encode { op } else { op & 0xff };
        let mut sqe = opcode::UringCmd16::new(types::Fd(self.fd), op).cmd(c).build();
        if sqe_addr != 0 {
            sqe = ring::with_sqe_addr(sqe, sqe_addr);
        }
        match ring::submit(sqe).await {
            r if r == sys::UBLK_IO_RES_OK as i32 => Ok(Next::Request),
            r if r == sys::UBLK_IO_RES_NEED_GET_DATA as i32
                && self.transfer == Transfer::GetData =>
            {
                Ok(Next::NeedData)
            }
            r if r < 0 => Err(-r),
            // Anything else is not ours to understand.
            _ => Err(libc::EPROTO),
        }
    }

    /// First command of `tag` (module contract).
    pub async fn fetch(&self, tag: u16, addr: u64) -> Result<Next, i32> {
        self.cmd(sys::UBLK_U_IO_FETCH_REQ, tag, addr, -1).await
    }

    /// Complete `tag`'s request with `res` (bytes done or -errno) and wait for its next one.
    pub async fn commit(&self, tag: u16, addr: u64, res: i32) -> Result<Next, i32> {
        self.cmd(sys::UBLK_U_IO_COMMIT_AND_FETCH_REQ, tag, addr, res).await
    }

    /// `Transfer::AutoReg`: first command of `tag`, whose requests' pages go to entry
    /// `index` of the ring's buffer table.
    pub async fn fetch_reg(&self, tag: u16, index: u16) -> Result<Next, i32> {
        self.cmd_at(sys::UBLK_U_IO_FETCH_REQ, tag, 0, -1, auto_buf_reg(index)).await
    }

    /// `Transfer::AutoReg`: complete `tag`'s request and wait for its next one (its pages
    /// again at entry `index`).
    pub async fn commit_reg(&self, tag: u16, index: u16, res: i32) -> Result<Next, i32> {
        self.cmd_at(sys::UBLK_U_IO_COMMIT_AND_FETCH_REQ, tag, 0, res, auto_buf_reg(index)).await
    }

    /// `Transfer::GetData`: have the driver copy the payload of `tag`'s write into `buf` (which
    /// holds the request's length); resolves once it is there.
    pub async fn get_data(&self, tag: u16, buf: &mut [u8]) -> Result<(), i32> {
        let addr = buf.as_mut_ptr() as u64;
        match self.cmd(sys::UBLK_U_IO_NEED_GET_DATA, tag, addr, 0).await? {
            Next::Request => Ok(()),
            Next::NeedData => Err(libc::EPROTO),
        }
    }

    /// The user-copy offset of `tag`'s request on the char device.
    pub fn pos(&self, tag: u16) -> libc::off_t {
        (u64::from(sys::UBLKSRV_IO_BUF_OFFSET)
            + ((u64::from(self.qid) << sys::UBLK_QID_OFF) | (u64::from(tag) << sys::UBLK_TAG_OFF)))
            as libc::off_t
    }

    /// User copy: the payload of `tag`'s write into `buf` (its whole length).
    pub fn copy_in(&self, tag: u16, buf: &mut [u8]) -> io::Result<()> {
        // SAFETY: reads at most `buf.len()` bytes into `buf`, which is live and ours.
        let n = unsafe { libc::pread(self.fd, buf.as_mut_ptr().cast(), buf.len(), self.pos(tag)) };
        short(n, buf.len())
    }

    /// User copy: `buf` as the data of `tag`'s read.
    pub fn copy_out(&self, tag: u16, buf: &[u8]) -> io::Result<()> {
        // SAFETY: writes `buf.len()` bytes from `buf`, which is live.
        let n = unsafe { libc::pwrite(self.fd, buf.as_ptr().cast(), buf.len(), self.pos(tag)) };
        short(n, buf.len())
    }
}

/// `struct ublk_auto_buf_reg` as the SQE's `addr`: the buffer entry, then its flags — here
/// UBLK_AUTO_BUF_REG_FALLBACK, so a failed registration hands the request over flagged
/// instead of failing it.
fn auto_buf_reg(index: u16) -> u64 {
    u64::from(index) | u64::from(sys::UBLK_AUTO_BUF_REG_FALLBACK) << 16
}

fn short(n: isize, want: usize) -> io::Result<()> {
    match n {
        n if n < 0 => Err(io::Error::last_os_error()),
        n if n as usize == want => Ok(()),
        n => Err(io::Error::other(format!("user copy moved {n} of {want} bytes"))),
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; nothing reads it after this.
        unsafe { libc::munmap(self.iods as *mut libc::c_void, self.map_len) };
    }
}
