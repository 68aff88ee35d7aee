//! Error types of every layer, and the ONE place where errno values are chosen.
//!
//! Each layer returns `Result<T, FsError>`; the FUSE adapter turns an error into a reply
//! with [`FsError::errno`]. Nothing else in the crate picks an errno.

use crate::hash::ChunkId;
use std::io;

/// Inode number as stored in the metadata database and shown to the kernel.
pub type Ino = u64;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("file name too long")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("no such attribute")]
    NoXattr,
    #[error("attribute value does not fit the buffer")]
    Range,
    #[error("read-only file system")]
    ReadOnly,
    /// A handle or name of something that no longer exists (a deleted snapshot).
    #[error("stale file handle")]
    Stale,
    /// A request refused with a message for the user (a snapshot name taken, say).
    #[error("{0}")]
    Refused(String),
    #[error("operation not supported: {0}")]
    NotSupported(&'static str),
    #[error("file too large")]
    TooBig,
    #[error("operation not permitted")]
    NotPermitted,
    #[error("no space left on the backing store")]
    NoSpace,
    #[error("chunk {id} is corrupted (content does not match its name)")]
    CorruptChunk { id: ChunkId },
    #[error("chunk {id} is missing from the store")]
    MissingChunk { id: ChunkId },
    #[error("chunk {id} has length {actual}, metadata says {expected}")]
    ChunkLength {
        id: ChunkId,
        expected: u64,
        actual: u64,
    },
    #[error("metadata database: {0}")]
    Db(String),
    #[error("metadata is inconsistent: {0}")]
    Corrupt(String),
    #[error("I/O error: {0}")]
    Io(io::Error),
    /// The object store of a remote volume failed or could not be reached.
    #[error("object store: {0}")]
    Remote(Box<RemoteError>),
}

impl From<RemoteError> for FsError {
    fn from(e: RemoteError) -> Self {
        FsError::Remote(Box::new(e))
    }
}

impl From<io::Error> for FsError {
    fn from(e: io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
            FsError::NoSpace
        } else {
            FsError::Io(e)
        }
    }
}

impl FsError {
    /// The errno reported to the kernel. Data damage (missing or corrupted chunk) is EIO,
    /// never EINVAL: the caller did nothing wrong, the store did.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::NoXattr => libc::ENODATA,
            FsError::Range => libc::ERANGE,
            FsError::ReadOnly => libc::EROFS,
            FsError::Refused(_) => libc::EINVAL,
            FsError::Stale => libc::ESTALE,
            FsError::NotSupported(_) => libc::EOPNOTSUPP,
            FsError::TooBig => libc::EFBIG,
            FsError::NotPermitted => libc::EPERM,
            FsError::NoSpace => libc::ENOSPC,
            FsError::CorruptChunk { .. }
            | FsError::MissingChunk { .. }
            | FsError::ChunkLength { .. }
            | FsError::Db(_)
            | FsError::Corrupt(_) => libc::EIO,
            FsError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            FsError::Remote(_) => libc::EIO,
        }
    }

    /// redb refused to open a database file because another handle (another process) has it
    /// open: the file is busy, not damaged.
    pub fn is_held_elsewhere(&self) -> bool {
        matches!(self, FsError::Db(m) if m.contains("already open"))
    }

    /// A refusal decided before anything was changed (a bad name, a missing entry, a full
    /// buffer...), as opposed to a failure of the store or the database part-way through.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            FsError::NotFound
                | FsError::Exists
                | FsError::NotDir
                | FsError::IsDir
                | FsError::NotEmpty
                | FsError::NameTooLong
                | FsError::Invalid(_)
                | FsError::NoXattr
                | FsError::Range
                | FsError::ReadOnly
                | FsError::Refused(_)
                | FsError::Stale
                | FsError::NotSupported(_)
                | FsError::TooBig
                | FsError::NotPermitted
        )
    }
}

macro_rules! db_error {
    ($($t:ty),*) => {$(
        impl From<$t> for FsError {
            fn from(e: $t) -> Self {
                // redb wraps I/O errors; keep ENOSPC recognisable so writers see it.
                let msg = e.to_string();
                if msg.contains("No space left") {
                    FsError::NoSpace
                } else {
                    FsError::Db(msg)
                }
            }
        }
    )*};
}
db_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

pub type Result<T, E = FsError> = std::result::Result<T, E>;

/// Errors of the remote object store (`store::remote`). Each names what the user can act on:
/// the endpoint, the bucket, the key id or the object. No errno here: the remote volume
/// decides how these reach the filesystem (through [`FsError`]).
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("remote store configuration: {0}")]
    Config(String),
    #[error("cannot reach the object store at {endpoint}: {detail}")]
    Unreachable { endpoint: String, detail: String },
    #[error("the object store at {endpoint} did not answer {op} {key} in time: {detail}")]
    Timeout {
        endpoint: String,
        op: &'static str,
        key: String,
        detail: String,
    },
    #[error(
        "the object store at {endpoint} refused access key {key_id} to bucket {bucket}: {detail} \
         (check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and the key's permissions)"
    )]
    Auth {
        endpoint: String,
        bucket: String,
        key_id: String,
        detail: String,
    },
    #[error("bucket {bucket} does not exist at {endpoint}")]
    NoBucket { endpoint: String, bucket: String },
    #[error("object {key} not found")]
    NotFound { key: String },
    #[error("object {key} already exists (conditional create refused)")]
    AlreadyExists { key: String },
    #[error("object {key} changed since it was read (conditional update refused)")]
    Precondition { key: String },
    #[error("object {key}: asked for bytes {start}..{end}, got {got}")]
    ShortRead {
        key: String,
        start: u64,
        end: u64,
        got: u64,
    },
    #[error("object {key}: reading the local file to upload failed: {detail}")]
    LocalRead { key: String, detail: String },
    #[error("object {key}: writing the download to a local file failed: {detail}")]
    LocalWrite { key: String, detail: String },
    #[error("{op} {key} at {endpoint}: {detail}")]
    Other {
        endpoint: String,
        op: &'static str,
        key: String,
        detail: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_damage_is_eio_not_einval() {
        let id = ChunkId::of(b"x");
        assert_eq!(FsError::CorruptChunk { id }.errno(), libc::EIO);
        assert_eq!(FsError::MissingChunk { id }.errno(), libc::EIO);
    }

    #[test]
    fn enospc_from_io_is_preserved() {
        let e: FsError = io::Error::from_raw_os_error(libc::ENOSPC).into();
        assert_eq!(e.errno(), libc::ENOSPC);
    }
}
