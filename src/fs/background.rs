//! Background threads of a mounted filesystem: write-back of files over their dirty budget,
//! and read-ahead (prefetch) of chunks.

use super::{Fs, PREFETCHERS, WRITERS};
use crate::error::Ino;
use crate::hash::ChunkId;
use std::sync::Arc;

impl Fs {
    /// Starts the background writer, which writes back files that crossed a quarter of their
    /// dirty budget while their writer goes on. Without it, write-back happens only in the
    /// caller's thread (as in most tests).
    pub fn start_background(self: &Arc<Self>) {
        let (tx, rx) = crossbeam_channel::bounded::<Ino>(1024);
        *self.background.lock() = Some(tx);
        // Two writers: while one waits on the backing filesystem (creating a chunk file costs
        // an inode allocation), the other hashes. Write-backs of one inode are serialised by
        // `wait_idle` (an inode over its dirty budget may be queued again while queued).
        for n in 0..WRITERS {
            let (weak, rx) = (Arc::downgrade(self), rx.clone());
            std::thread::Builder::new()
                .name(format!("dedupfs-writeback-{n}"))
                .spawn(move || {
                    for ino in rx {
                        let Some(fs) = weak.upgrade() else { break };
                        let mut st = fs.state.lock();
                        let closed = st.open.get(&ino).is_some_and(|o| o.opens == 0);
                        match fs.writeback(&mut st, ino, closed) {
                            Ok(()) => fs.forget_if_idle(&mut st, ino),
                            Err(e) => tracing::warn!(
                                ino,
                                "background write-back failed (will retry): {e}"
                            ),
                        }
                    }
                })
                .ok();
        }
        // Two prefetchers: loading (and verifying) chunks in parallel keeps a cold sequential
        // read from waiting on one small file at a time.
        let (ptx, prx) = crossbeam_channel::bounded::<(ChunkId, u32)>(256);
        *self.prefetch.lock() = Some(ptx);
        for n in 0..PREFETCHERS {
            let (weak, prx) = (Arc::downgrade(self), prx.clone());
            std::thread::Builder::new()
                .name(format!("dedupfs-prefetch-{n}"))
                .spawn(move || {
                    for (id, len) in prx {
                        let Some(fs) = weak.upgrade() else { break };
                        let _no_removal = fs.removal.read();
                        // Errors surface (and are logged) when a reader asks for the chunk.
                        fs.cache.prefetch(&id, len as u64);
                    }
                })
                .ok();
        }
    }

    /// Stops the background writer and the prefetchers (their queues close; threads exit).
    pub fn stop_background(&self) {
        self.background.lock().take();
        self.prefetch.lock().take();
    }
}
