//! `sheepdev batch-null` (tooling, hidden): a ublk null device served by libublk's own queue
//! loop, with UBLK_F_BATCH_IO (Linux 7.0+: tags prepared, fetched and committed in groups by
//! multishot commands and provided buffers) or without (one FETCH/COMMIT_AND_FETCH per
//! request), so that `bench/vm-batch.sh` can measure what batching the queue commands buys
//! on this kernel, both ways in one boot. Both give each tag its own buffer (the driver
//! copies data in and out: the copy mode batch I/O has in libublk 0.4.8, which refuses it
//! with user copy and zero copy), so the commands are the only difference.
//!
//! Contract: prints the block device's path on stdout once it is up, serves until the file
//! `--stop` names exists (polled every 100 ms), then stops and deletes the device.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::{
    BufDescList, UblkBatchBuffers, UblkBatchCompletion, UblkBatchConfig, UblkBatchQueue, UblkDev,
    UblkIOCtx, UblkQueue,
};
use libublk::{sys, BufDesc, UblkFlags, UblkIORes};

#[derive(Debug, clap::Args)]
pub struct BatchNullArgs {
    /// `on`: UBLK_F_BATCH_IO; `off`: one queue command per request.
    #[arg(long, value_parser = ["on", "off"])]
    batch: String,
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    queues: u16,
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u16).range(1..=4096))]
    depth: u16,
    /// Device size.
    #[arg(long, default_value = "1G", value_parser = super::size_arg)]
    size: u64,
    /// Serve until this file exists.
    #[arg(long)]
    stop: PathBuf,
}

/// The bytes a null request completes with.
fn result(q: &UblkQueue, tag: u16) -> i32 {
    let iod = q.get_iod(tag);
    match iod.op_flags & 0xff {
        sys::UBLK_IO_OP_READ | sys::UBLK_IO_OP_WRITE => (iod.nr_sectors << 9) as i32,
        sys::UBLK_IO_OP_FLUSH | sys::UBLK_IO_OP_DISCARD | sys::UBLK_IO_OP_WRITE_ZEROES => 0,
        _ => -libc::EOPNOTSUPP,
    }
}

fn queue_plain(qid: u16, dev: &UblkDev) {
    let bufs = dev.alloc_queue_io_bufs();
    let handler = |q: &UblkQueue, tag: u16, _io: &UblkIOCtx| {
        let r = result(q, tag);
        let _ = q.complete_io_cmd_unified(
            tag,
            BufDesc::Slice(bufs[tag as usize].as_slice()),
            Ok(UblkIORes::Result(r)),
        );
    };
    let q = match UblkQueue::new(qid, dev)
        .and_then(|q| q.submit_fetch_commands_unified(BufDescList::Slices(Some(&bufs))))
    {
        Ok(q) => q,
        Err(e) => {
            eprintln!("sheepdev batch-null: queue {qid}: {e}");
            return;
        }
    };
    q.wait_and_handle_io(handler);
}

fn queue_batch(qid: u16, dev: &UblkDev) {
    let queue = match UblkQueue::new(qid, dev) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("sheepdev batch-null: queue {qid}: {e}");
            return;
        }
    };
    let buffers = dev.alloc_queue_io_bufs();
    let mut batch = match UblkBatchQueue::new(
        &queue,
        UblkBatchBuffers::IoBufs(buffers),
        UblkBatchConfig::new(),
    ) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("sheepdev batch-null: queue {qid}: batch set-up: {e}");
            return;
        }
    };
    let mut pending: Vec<UblkBatchCompletion> = Vec::with_capacity(queue.get_depth() as usize);
    loop {
        let mut failed = None;
        let r = queue.flush_and_wake_io_tasks(
            |_, cqe, _| {
                if let Err(e) = batch.handle_cqe(cqe, |_, tags| {
                    for &tag in tags {
                        pending.push(UblkBatchCompletion::new(tag, result(&queue, tag)));
                    }
                    Ok(())
                }) {
                    failed = Some(e);
                }
            },
            1,
        );
        if let Some(e) = failed.or(r.err()) {
            // The device stopping ends the queue's commands with errors: that is the end.
            tracing::debug!("batch queue {qid}: {e}");
        }
        if !pending.is_empty() && batch.try_submit_completions(&pending).unwrap_or(true) {
            pending.clear();
        }
        if batch.try_begin_shutdown().unwrap_or(true) && batch.is_shutdown_complete() {
            break;
        }
    }
}

pub fn run(a: BatchNullArgs) -> anyhow::Result<()> {
    let on = a.batch == "on";
    let have = UblkCtrl::get_features().unwrap_or(0);
    if on && have & u64::from(sys::UBLK_F_BATCH_IO) == 0 {
        bail!("this kernel's ublk driver has no UBLK_F_BATCH_IO (Linux 7.0+)");
    }
    let ctrl = UblkCtrlBuilder::default()
        .name("sheepdev-batch-null")
        .nr_queues(a.queues)
        .depth(a.depth)
        .ctrl_flags(if on { u64::from(sys::UBLK_F_BATCH_IO) } else { 0 })
        .dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV)
        .build()
        .context("cannot create the ublk null device")?;
    let size = a.size;
    let tgt_init = move |dev: &mut UblkDev| {
        dev.set_default_params(size);
        Ok(())
    };
    let stop = a.stop.clone();
    let up = move |c: &UblkCtrl| {
        println!("{}", c.get_bdev_path());
        while !stop.exists() {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill_dev();
    };
    let r = if on {
        ctrl.run_target(tgt_init, |qid, dev: &_| queue_batch(qid, dev), up)
    } else {
        ctrl.run_target(tgt_init, |qid, dev: &_| queue_plain(qid, dev), up)
    };
    let _ = ctrl.del_dev();
    r.map(|_| ()).context("serving the null device")
}
