//! The control plane's runtime: one glommio executor on the calling thread, for the CLI's
//! VDI management, the daemon's control socket and `/metrics`, and tests. The data plane
//! never runs here (shards own their rings, `shard::ring`).

use std::future::Future;

/// Run `fut` to completion on a new glommio executor on this thread.
pub fn block_on<T>(fut: impl Future<Output = T>) -> std::io::Result<T> {
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("sheepdev-cli")
        .io_memory(512 << 10)
        .make()
        .map_err(|e| {
            std::io::Error::other(format!(
                "cannot start the glommio executor (is RLIMIT_MEMLOCK at least 512 KiB?): {e}"
            ))
        })?;
    Ok(ex.run(fut))
}
