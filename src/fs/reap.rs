//! Deleting unlinked files off the request path.
//!
//! The last unlink of a closed file used to delete it in the request: every extent row,
//! the refcount of every chunk, the inode, its xattrs. Now the unlink only marks the inode
//! an orphan (nlink 0, on the orphan list, committed with the unlink) and queues it; the
//! flusher thread deletes queued orphans in small batches every tick, and every durable point
//! deletes the rest first, so a durable point still includes every unlink before it with its
//! space freed, and `stats`, `du` and `gc` see the same as before. A crash leaves them on the
//! orphan list, which the next mount deletes (as for files unlinked while open).

use super::{Fs, State};
use crate::error::{Ino, Result};
use crate::meta::WTx;

/// Queued orphans above which an unlink deletes its file itself (bounds the queue).
const QUEUE_MAX: usize = 4096;
/// Orphans deleted per state-lock hold by the flusher.
const BATCH: usize = 64;

impl Fs {
    /// The last link of closed inode `ino` is gone (nlink already 0 in `tx`): queue it for
    /// deletion, or delete it now when the queue is full.
    pub(super) fn orphan_closed(&self, st: &mut State, tx: &mut WTx, ino: Ino) -> Result<()> {
        if st.reap.len() >= QUEUE_MAX {
            return tx.delete_inode(ino);
        }
        tx.add_orphan(ino)?;
        st.reap.push(ino);
        Ok(())
    }

    /// Deletes up to `max` queued orphans (all with `usize::MAX`), under the state lock the
    /// caller holds.
    pub(super) fn reap_queued(&self, st: &mut State, max: usize) -> Result<()> {
        while !st.reap.is_empty() {
            let n = st.reap.len().min(max).min(BATCH);
            let mut batch: Vec<Ino> = st.reap.drain(..n).collect();
            // An open that resolved the name before the unlink can still reach the inode: it
            // stays on the orphan list, and its last release deletes it.
            batch.retain(|ino| !st.open.contains_key(ino));
            self.group(st, |_, tx| {
                for &ino in &batch {
                    tx.delete_inode(ino)?;
                }
                Ok(())
            })?;
            if n == max {
                break;
            }
        }
        Ok(())
    }

    /// The flusher's tick: deletes one batch of queued orphans.
    pub fn reap_some(&self) -> Result<()> {
        let mut st = self.state.lock();
        self.reap_queued(&mut st, BATCH)
    }
}
