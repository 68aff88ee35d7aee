//! Maintenance commands. Each returns a report struct; the CLI renders it and derives its
//! exit code from it.

pub mod backup;
pub mod du;
pub mod fsck;
pub mod gc;
pub mod stats;
