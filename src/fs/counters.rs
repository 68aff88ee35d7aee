//! Counts of the requests a mounted filesystem served, by operation, for `dedupfs stats` and
//! the benchmark's requests-per-file figures. One relaxed atomic increment per request.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! ops {
    ($($op:ident => $name:literal),* $(,)?) => {
        /// A kind of request, as the FUSE adapter receives it.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Op { $($op),* }

        impl Op {
            pub const ALL: &'static [Op] = &[$(Op::$op),*];

            pub fn name(self) -> &'static str {
                match self { $(Op::$op => $name),* }
            }
        }
    };
}

ops! {
    Lookup => "lookup", Forget => "forget", Getattr => "getattr", Setattr => "setattr",
    Readlink => "readlink", Mknod => "mknod", Mkdir => "mkdir", Unlink => "unlink",
    Rmdir => "rmdir", Symlink => "symlink", Rename => "rename", Link => "link",
    Open => "open", Read => "read", Write => "write", Flush => "flush", Release => "release",
    Fsync => "fsync", Opendir => "opendir", Readdir => "readdir", Readdirplus => "readdirplus",
    Releasedir => "releasedir", Fsyncdir => "fsyncdir", Statfs => "statfs",
    Setxattr => "setxattr", Getxattr => "getxattr", Listxattr => "listxattr",
    Removexattr => "removexattr", Access => "access", Create => "create",
    Fallocate => "fallocate", Lseek => "lseek", CopyFileRange => "copy_file_range",
}

pub struct Counters {
    counts: [AtomicU64; Op::ALL.len()],
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Counters {
    pub fn count(&self, op: Op) {
        self.counts[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> RequestCounts {
        let by_op: BTreeMap<String, u64> = Op::ALL
            .iter()
            .map(|&op| {
                (
                    op.name().to_string(),
                    self.counts[op as usize].load(Ordering::Relaxed),
                )
            })
            .filter(|&(_, n)| n > 0)
            .collect();
        RequestCounts {
            total: by_op.values().sum(),
            by_op,
        }
    }
}

/// Requests served since the mount, in total and by operation (operations never seen are
/// left out).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RequestCounts {
    pub total: u64,
    pub by_op: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_operation_and_in_total() {
        let c = Counters::default();
        c.count(Op::Lookup);
        c.count(Op::Lookup);
        c.count(Op::CopyFileRange);
        let s = c.snapshot();
        assert_eq!(s.total, 3);
        assert_eq!(s.by_op["lookup"], 2);
        assert_eq!(s.by_op["copy_file_range"], 1);
        assert!(!s.by_op.contains_key("read"));
        let names: std::collections::HashSet<_> = Op::ALL.iter().map(|o| o.name()).collect();
        assert_eq!(names.len(), Op::ALL.len(), "names are distinct");
    }
}
