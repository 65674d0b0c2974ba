//! The kernel boundary: one block request as a ublk queue (or a test, or the no-kernel
//! benchmark, or `vdi read/write`) hands it to a shard, with its data: a buffer of ours, or
//! (zero copy) the request's own pages in the ring's buffer table ([`KernelBuf`]). Plain
//! data, no runtime: the shard, the metrics and the ublk queue all name it from here; the
//! one call here is the user copy into a request's pages ([`copy_to_kernel`]).

/// What the kernel asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
}

/// One block request; its data is the tag's buffer, handed over beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoDesc {
    pub op: Op,
    /// Byte offset in the device.
    pub offset: u64,
    /// Bytes.
    pub len: u32,
    pub tag: u16,
    pub fua: bool,
}

/// A ublk request's own pages, registered in the serving ring's buffer table by the driver
/// (zero copy, UBLK_F_AUTO_BUF_REG). The daemon never maps them: its ring sends a write's
/// payload from them and reads a read's data into them, and user copy (`pread`/`pwrite`
/// on the device's char device at `pos`) reaches the same bytes where the ring cannot.
/// This one names `len` bytes from byte `off` of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelBuf {
    /// The entry of the ring's buffer table.
    pub index: u16,
    /// The device's char device (user copy).
    pub fd: i32,
    /// The tag's user-copy offset on it.
    pub pos: i64,
    pub off: u32,
    pub len: u32,
    /// Whether the ring can read a socket into it (READ_FIXED; probed at start-up).
    pub ring_reads: bool,
}

impl KernelBuf {
    /// `len` bytes from `off` of this one (both within it).
    pub fn sub(self, off: u32, len: u32) -> KernelBuf {
        debug_assert!(off + len <= self.len);
        KernelBuf { off: self.off + off, len, ..self }
    }
}

/// A request's data: memory of the caller's, or the request's registered kernel pages.
pub enum Data<'a> {
    Mem(&'a mut [u8]),
    Kernel(KernelBuf),
}

/// Bytes to send: ours, or a request's kernel pages.
#[derive(Debug, Clone, Copy)]
pub enum Src<'a> {
    Mem(&'a [u8]),
    Kernel(KernelBuf),
}

/// Where received bytes go: ours, or a request's kernel pages.
pub enum Dst<'a> {
    Mem(&'a mut [u8]),
    Kernel(KernelBuf),
}

impl Src<'_> {
    pub fn len(&self) -> usize {
        match self {
            Src::Mem(m) => m.len(),
            Src::Kernel(k) => k.len as usize,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `len` bytes from `off`; `None` past the end.
    pub fn slice(&self, off: usize, len: usize) -> Option<Src<'_>> {
        match self {
            Src::Mem(m) => m.get(off..off.checked_add(len)?).map(Src::Mem),
            Src::Kernel(k) => (off.checked_add(len)? <= k.len as usize)
                .then(|| Src::Kernel(k.sub(off as u32, len as u32))),
        }
    }
}

impl Dst<'_> {
    pub fn len(&self) -> usize {
        match self {
            Dst::Mem(m) => m.len(),
            Dst::Kernel(k) => k.len as usize,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The same destination, for one more use.
    pub fn reborrow(&mut self) -> Dst<'_> {
        match self {
            Dst::Mem(m) => Dst::Mem(m),
            Dst::Kernel(k) => Dst::Kernel(*k),
        }
    }
    /// `len` bytes from `off`; `None` past the end.
    pub fn slice(&mut self, off: usize, len: usize) -> Option<Dst<'_>> {
        match self {
            Dst::Mem(m) => m.get_mut(off..off.checked_add(len)?).map(Dst::Mem),
            Dst::Kernel(k) => (off.checked_add(len)? <= k.len as usize)
                .then(|| Dst::Kernel(k.sub(off as u32, len as u32))),
        }
    }
}

/// User copy: `data` into the request pages `k` names, from byte `at` of them.
pub fn copy_to_kernel(k: &KernelBuf, at: usize, data: &[u8]) -> std::io::Result<()> {
    if at + data.len() > k.len as usize {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let pos = k.pos + i64::from(k.off) + at as i64;
    // SAFETY: writes `data.len()` bytes from `data`, which is live, to a file descriptor.
    let n = unsafe { libc::pwrite(k.fd, data.as_ptr().cast(), data.len(), pos) };
    match n {
        n if n < 0 => Err(std::io::Error::last_os_error()),
        n if n as usize == data.len() => Ok(()),
        n => Err(std::io::Error::other(format!("user copy moved {n} of {} bytes", data.len()))),
    }
}
