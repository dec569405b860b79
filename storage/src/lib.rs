//! Storage for actorrent: piece layout, hash workers, per-device `pwritev`
//! writers, seeding readers, resume data and recheck.
//!
//! Data path of a downloaded piece:
//!
//! ```text
//! blocks (Bytes) -> HashHandle::try_submit(HashJob)     hash pool (N threads)
//!               <- HashDone::Verified(VerifiedPiece)     reply closure
//!               -> Storage::try_write(WriteJob)          writer of the device
//!               <- WriteDone                             reply closure
//!               -> ResumeTracker::written; checkpoint: Storage::sync, save
//! ```
//!
//! Every queue is a bounded `crossbeam_queue::ArrayQueue`; worker threads
//! park when idle and are woken only when they sleep. Jobs carry their own
//! reply closure so callers choose how to receive (a tokio channel's
//! `try_send` from the actor layer, a std `SyncSender` in tests). Nothing
//! here depends on an async runtime.
//!
//! Modules: [`layout`] (pure byte mapping and name checks), `fs` (safe
//! opening, preallocation, syscalls), `queue` (the mailbox), [`hash`],
//! [`writer`], [`reader`], [`pool`] (reused read buffers), [`storage`] (a
//! torrent's opened files and the device registry), [`resume`],
//! [`recheck`](mod@recheck), [`error`].

pub mod error;
mod fdcache;
mod fs;
pub mod hash;
pub mod layout;
pub mod metrics;
pub mod parts;
pub mod pool;
mod queue;
pub mod reader;
pub mod recheck;
pub mod resume;
pub mod serde_fmt;
pub mod storage;
pub mod writer;

pub use error::StorageError;
pub use fdcache::FdCacheStats;
pub use fs::{Preallocation, write_atomic};
pub use hash::{
    HashCounters, HashDone, HashHandle, HashJob, HashPool, HashPoolConfig, Reply, VerifiedPiece,
    sha1_of,
};
pub use layout::{FileEntry, FileSpec, Layout, Placement, Slice, TargetSpec};
pub use parts::{SlotRecord, SlotTable, relocate_blocking};
pub use pool::{BufPool, BufPoolStats, PooledBuf};
pub use queue::SubmitError;
pub use reader::{ReadDone, ReadJob};
pub use recheck::{RecheckConfig, RecheckReport, recheck};
pub use resume::{
    Checkpoint, FileStamp, ResumeCheck, ResumeData, ResumeError, ResumePolicy, ResumeTracker,
};
pub use storage::{DiskIo, DiskIoConfig, Selection, Stamps, Storage, StorageConfig, WriteJob};
pub use writer::{WriteDone, WriterConfig, WriterCounters, WriterStats};
