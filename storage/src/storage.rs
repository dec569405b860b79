//! A torrent's opened storage and the process-wide set of device threads.
//!
//! [`DiskIo`] owns one writer thread and one small reader pool per storage
//! device, created the first time a target on that device is opened and
//! shared by every torrent on it. [`Storage`] is one torrent: its [`Layout`],
//! its opened targets, and the devices they live on. It turns a verified
//! piece into chunks per device and hands them to the right writers; a piece
//! that straddles two devices is split and its reply fires once both halves
//! are done.
//!
//! Async use: `try_write`/`try_read` never block when the piece lives on one
//! device (the usual case). The actor layer holds a semaphore of
//! [`Storage::write_capacity`] permits per device, released on each reply, so
//! `Full` never happens. A piece straddling two devices queues its second
//! part with a blocking push (bounded by one writer draining one slot).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::error::{Result, StorageError};
use crate::fs::{Preallocation, Target, open_raw_target, open_under_root, preallocate};
use crate::hash::{Reply, VerifiedPiece};
use crate::layout::{FileSpec, Layout, Placement, TargetSpec};
use crate::queue::SubmitError;
use crate::reader::{ReadDone, ReadItem, ReadJob, ReadPart, ReaderPool, read_parts};
use crate::resume::FileStamp;
use crate::writer::{
    Chunk, Completion, Countdown, DiskWriter, WriteDone, WriterConfig, WriterItem, WriterStats,
};

/// Sizing of the per-device threads.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiskIoConfig {
    /// Writer mailbox and batching.
    pub writer: WriterConfig,
    /// Reader threads per device.
    pub readers_per_device: usize,
    /// Read jobs that may wait per device.
    pub reader_queue_capacity: usize,
}

impl Default for DiskIoConfig {
    fn default() -> Self {
        DiskIoConfig {
            writer: WriterConfig::default(),
            readers_per_device: 2,
            reader_queue_capacity: 64,
        }
    }
}

/// One device's threads.
pub(crate) struct Device {
    pub id: u64,
    writer: DiskWriter,
    readers: ReaderPool,
}

struct DiskIoInner {
    config: DiskIoConfig,
    devices: Mutex<HashMap<u64, Arc<Device>>>,
}

/// The process-wide registry of device threads. Cheap to clone. Threads of
/// a device stop when the registry and every storage on it are dropped,
/// after finishing their queued jobs.
#[derive(Clone)]
pub struct DiskIo {
    inner: Arc<DiskIoInner>,
}

impl DiskIo {
    /// An empty registry; threads start as devices are first used.
    pub fn new(config: DiskIoConfig) -> DiskIo {
        DiskIo {
            inner: Arc::new(DiskIoInner {
                config,
                devices: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn device(&self, id: u64) -> Result<Arc<Device>> {
        let mut map = self.inner.devices.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = map.get(&id) {
            return Ok(d.clone());
        }
        let cfg = &self.inner.config;
        let io_err = |e| StorageError::Io {
            path: format!("<device {id:#x}>").into(),
            offset: 0,
            source: e,
        };
        let writer = DiskWriter::start(id, cfg.writer.clone()).map_err(io_err)?;
        let readers = ReaderPool::start(id, cfg.readers_per_device, cfg.reader_queue_capacity)
            .map_err(io_err)?;
        let d = Arc::new(Device {
            id,
            writer,
            readers,
        });
        map.insert(id, d.clone());
        Ok(d)
    }

    /// Jobs waiting in each device's writer mailbox, by device id, and the
    /// mailbox capacity.
    pub fn writer_queue_depths(&self) -> (Vec<(u64, usize)>, usize) {
        let map = self.inner.devices.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map
            .values()
            .map(|d| (d.id, d.writer.shared.queue.len()))
            .collect();
        v.sort_unstable_by_key(|x| x.0);
        (v, self.inner.config.writer.queue_capacity)
    }

    /// Counters of every device's writer, by device id.
    pub fn writer_stats(&self) -> Vec<(u64, WriterStats)> {
        let map = self.inner.devices.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map
            .values()
            .map(|d| (d.id, d.writer.shared.counters.snapshot()))
            .collect();
        v.sort_unstable_by_key(|x| x.0);
        v
    }
}

/// How a torrent's storage is opened.
#[derive(Clone, Debug, Default)]
pub struct StorageConfig {
    /// How new files are sized.
    pub preallocation: Preallocation,
}

/// A verified piece to write, and who to tell.
pub struct WriteJob {
    /// The piece.
    pub piece: VerifiedPiece,
    /// Called once with the outcome.
    pub reply: Reply<WriteDone>,
}

impl std::fmt::Debug for WriteJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteJob")
            .field("piece", &self.piece.piece())
            .finish_non_exhaustive()
    }
}

struct StorageInner {
    layout: Layout,
    targets: Vec<Arc<Target>>,
    /// Index into `devices` for each target.
    target_device: Vec<usize>,
    devices: Vec<Arc<Device>>,
}

/// One torrent's opened storage. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<StorageInner>,
}

impl Storage {
    /// Normal mode: files created below `root`.
    pub fn open_files(
        io: &DiskIo,
        root: &Path,
        files: Vec<FileSpec>,
        piece_length: u32,
        config: &StorageConfig,
    ) -> Result<Storage> {
        let layout = Layout::new_files(files, piece_length)?;
        let mut targets = Vec::with_capacity(layout.targets().len());
        for t in layout.targets() {
            let TargetSpec::File { path, length } = t else {
                return Err(StorageError::InvalidLayout(
                    "raw target in file mode".into(),
                ));
            };
            let shown = path.iter().fold(root.to_path_buf(), |p, c| p.join(c));
            let file = open_under_root(root, path)?;
            preallocate(&file, &shown, 0, *length, config.preallocation)?;
            targets.push(Target::new(file, shown)?);
        }
        Self::assemble(io, layout, targets)
    }

    /// Raw-disk mode: every file written into `target` (a block device or an
    /// image file, created if missing) at the offset its name gives. For a
    /// block device, extents past its end are refused; an image file grows.
    pub fn open_raw(
        io: &DiskIo,
        target: &Path,
        files: Vec<FileSpec>,
        piece_length: u32,
        config: &StorageConfig,
    ) -> Result<Storage> {
        let (file, capacity) = open_raw_target(target)?;
        let layout = Layout::new_raw(files, piece_length, capacity)?;
        if capacity.is_none() {
            // An image file: make each extent exist; gaps stay holes.
            for f in layout.files() {
                if let Placement::Target { offset, .. } = f.placement {
                    preallocate(&file, target, offset, f.length, config.preallocation)?;
                }
            }
        }
        let t = Target::new(file, target.to_path_buf())?;
        Self::assemble(io, layout, vec![t])
    }

    /// Normal mode from a parsed torrent: `<out>/<name>/...` for a
    /// multi-file torrent, `<out>/<name>` for a single file.
    pub fn open_info(
        io: &DiskIo,
        info: &protocol::metainfo::Info,
        out: &Path,
        config: &StorageConfig,
    ) -> Result<Storage> {
        crate::layout::check_info(info)?;
        let specs = crate::layout::specs_from_info(info);
        Self::open_files(io, out, specs, info.piece_length, config)
    }

    /// Raw-disk mode from a parsed torrent (`--raw-target`): the last path
    /// component of each file is its hex offset on `target`.
    pub fn open_info_raw(
        io: &DiskIo,
        info: &protocol::metainfo::Info,
        target: &Path,
        config: &StorageConfig,
    ) -> Result<Storage> {
        crate::layout::check_info(info)?;
        let specs = crate::layout::raw_specs_from_info(info);
        Self::open_raw(io, target, specs, info.piece_length, config)
    }

    fn assemble(io: &DiskIo, layout: Layout, targets: Vec<Target>) -> Result<Storage> {
        let mut devices: Vec<Arc<Device>> = Vec::new();
        let mut target_device = Vec::with_capacity(targets.len());
        for t in &targets {
            let idx = match devices.iter().position(|d| d.id == t.device) {
                Some(i) => i,
                None => {
                    devices.push(io.device(t.device)?);
                    devices.len() - 1
                }
            };
            target_device.push(idx);
        }
        Ok(Storage {
            inner: Arc::new(StorageInner {
                layout,
                targets: targets.into_iter().map(Arc::new).collect(),
                target_device,
                devices,
            }),
        })
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    /// Slots in the smallest writer mailbox of this storage's devices.
    pub fn write_capacity(&self) -> usize {
        self.inner
            .devices
            .iter()
            .map(|d| d.writer.shared.queue.capacity())
            .min()
            .unwrap_or(1)
    }

    /// Counters of the writers of this storage's devices.
    pub fn writer_stats(&self) -> Vec<WriterStats> {
        self.inner
            .devices
            .iter()
            .map(|d| d.writer.shared.counters.snapshot())
            .collect()
    }

    /// Cuts a piece into chunks, grouped by device.
    fn chunks_by_device(&self, piece: &VerifiedPiece) -> Result<Vec<(usize, Vec<Chunk>)>> {
        let inner = &*self.inner;
        let expected = inner.layout.piece_len(piece.piece())?;
        let got = piece.len();
        if got != expected {
            return Err(StorageError::PieceLength {
                piece: piece.piece(),
                got,
                expected,
            });
        }
        let mut groups: Vec<(usize, Vec<Chunk>)> = Vec::with_capacity(1);
        let blocks = piece.blocks();
        let (mut bi, mut boff) = (0usize, 0usize); // position in the blocks
        for s in inner.layout.piece_slices(piece.piece())? {
            let mut need = s.length as usize;
            let mut at = s.target_offset;
            while need > 0 {
                let b = &blocks[bi];
                let take = (b.len() - boff).min(need);
                if let Some(t) = s.target {
                    let dev = inner.target_device[t];
                    let chunk = Chunk {
                        target: inner.targets[t].clone(),
                        offset: at,
                        data: b.slice(boff..boff + take),
                    };
                    match groups.iter_mut().find(|g| g.0 == dev) {
                        Some(g) => g.1.push(chunk),
                        None => groups.push((dev, vec![chunk])),
                    }
                }
                at += take as u64;
                need -= take;
                boff += take;
                if boff == b.len() {
                    bi += 1;
                    boff = 0;
                }
            }
        }
        Ok(groups)
    }

    /// Queues a verified piece without blocking (see the module docs for
    /// pieces straddling devices). An invalid piece (wrong length) is
    /// answered through its reply at once, on this thread.
    pub fn try_write(&self, job: WriteJob) -> Result<(), SubmitError<WriteJob>> {
        self.submit_write(job, false)
    }

    /// Queues a verified piece, waiting for room. Fails only when the
    /// writers are shut down.
    pub fn write(&self, job: WriteJob) -> Result<(), WriteJob> {
        self.submit_write(job, true)
            .map_err(SubmitError::into_inner)
    }

    fn submit_write(&self, job: WriteJob, blocking: bool) -> Result<(), SubmitError<WriteJob>> {
        let WriteJob { piece, reply } = job;
        let index = piece.piece();
        let groups = match self.chunks_by_device(&piece) {
            Ok(g) => g,
            Err(e) => {
                reply(WriteDone {
                    piece: index,
                    result: Err(e),
                });
                return Ok(());
            }
        };
        if groups.is_empty() {
            // Only padding: nothing to write.
            reply(WriteDone {
                piece: index,
                result: Ok(()),
            });
            return Ok(());
        }
        let done = Countdown::new(
            groups.len(),
            Completion::Write {
                piece: index,
                reply,
            },
        );
        let give_back = |done: &Countdown, piece: VerifiedPiece| match done.take() {
            Some(Completion::Write { reply, .. }) => WriteJob { piece, reply },
            // The completion was just built as a write.
            _ => unreachable!("write completion"),
        };
        for (k, (dev, chunks)) in groups.into_iter().enumerate() {
            let q = &self.inner.devices[dev].writer.shared.queue;
            let item = WriterItem::Write {
                chunks,
                done: done.clone(),
            };
            let r = if blocking || k > 0 {
                q.push(item).map_err(SubmitError::Closed)
            } else {
                q.try_push(item)
            };
            match r {
                Ok(()) => {}
                Err(SubmitError::Full(_)) => {
                    return Err(SubmitError::Full(give_back(&done, piece)));
                }
                Err(SubmitError::Closed(_)) if k == 0 => {
                    return Err(SubmitError::Closed(give_back(&done, piece)));
                }
                Err(SubmitError::Closed(_)) => done.finish(Err(StorageError::Closed)),
            }
        }
        Ok(())
    }

    /// Writes a piece and waits for the result (tests, tools).
    pub fn write_blocking(&self, piece: VerifiedPiece) -> Result<()> {
        let (tx, rx) = sync_channel(1);
        self.write(WriteJob {
            piece,
            reply: Box::new(move |d| {
                let _ = tx.send(d.result);
            }),
        })
        .map_err(|_| StorageError::Closed)?;
        rx.recv().map_err(|_| StorageError::Closed)?
    }

    /// `fdatasync` of every target, after every write queued before this
    /// call. Queued with a blocking push: syncs are rare.
    pub fn sync(&self, reply: Reply<Result<()>>) {
        let inner = &*self.inner;
        if inner.devices.is_empty() {
            // Only padding files: nothing on disk to sync.
            reply(Ok(()));
            return;
        }
        let done = Countdown::new(inner.devices.len(), Completion::Sync(reply));
        for (di, d) in inner.devices.iter().enumerate() {
            let targets = inner
                .targets
                .iter()
                .zip(&inner.target_device)
                .filter(|(_, td)| **td == di)
                .map(|(t, _)| t.clone())
                .collect();
            let item = WriterItem::Sync {
                targets,
                done: done.clone(),
            };
            if d.writer.shared.queue.push(item).is_err() {
                done.finish(Err(StorageError::Closed));
            }
        }
    }

    /// [`Storage::sync`], waiting for the result.
    pub fn sync_blocking(&self) -> Result<()> {
        let (tx, rx) = sync_channel(1);
        self.sync(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        rx.recv().map_err(|_| StorageError::Closed)?
    }

    fn read_parts_of(&self, piece: u32, begin: u64, length: u64) -> Result<Vec<ReadPart>> {
        let inner = &*self.inner;
        Ok(inner
            .layout
            .block_slices(piece, begin, length)?
            .into_iter()
            .map(|s| ReadPart {
                target: s.target.map(|t| inner.targets[t].clone()),
                offset: s.target_offset,
                length: s.length,
            })
            .collect())
    }

    fn read_item(&self, job: ReadJob) -> std::result::Result<(usize, ReadItem), ()> {
        let ReadJob {
            piece,
            begin,
            length,
            reply,
        } = job;
        match self.read_parts_of(piece, u64::from(begin), u64::from(length)) {
            Ok(parts) => {
                // A block straddling devices is read by the first device's pool.
                let dev = parts
                    .iter()
                    .find_map(|p| p.target.as_ref())
                    .and_then(|t| self.inner.targets.iter().position(|x| x.id == t.id))
                    .map_or(0, |ti| self.inner.target_device[ti]);
                Ok((
                    dev,
                    ReadItem {
                        piece,
                        begin,
                        parts,
                        reply,
                    },
                ))
            }
            Err(e) => {
                reply(ReadDone {
                    piece,
                    begin,
                    result: Err(e),
                });
                Err(())
            }
        }
    }

    fn item_to_job(item: ReadItem, length: u32) -> ReadJob {
        ReadJob {
            piece: item.piece,
            begin: item.begin,
            length,
            reply: item.reply,
        }
    }

    /// Queues a block read for seeding without blocking. A bad range is
    /// answered through the reply at once.
    pub fn try_read(&self, job: ReadJob) -> Result<(), SubmitError<ReadJob>> {
        let length = job.length;
        let Ok((dev, item)) = self.read_item(job) else {
            return Ok(());
        };
        self.inner.devices[dev]
            .readers
            .shared
            .queue
            .try_push(item)
            .map_err(|e| match e {
                SubmitError::Full(i) => SubmitError::Full(Self::item_to_job(i, length)),
                SubmitError::Closed(i) => SubmitError::Closed(Self::item_to_job(i, length)),
            })
    }

    /// Queues a block read, waiting for room.
    pub fn read(&self, job: ReadJob) -> Result<(), ReadJob> {
        let length = job.length;
        let Ok((dev, item)) = self.read_item(job) else {
            return Ok(());
        };
        self.inner.devices[dev]
            .readers
            .shared
            .queue
            .push(item)
            .map_err(|i| Self::item_to_job(i, length))
    }

    /// Reads bytes of a piece on the calling thread.
    pub fn read_blocking(&self, piece: u32, begin: u64, length: u64) -> Result<Bytes> {
        read_parts(&self.read_parts_of(piece, begin, length)?)
    }

    /// Reads `buf.len()` bytes of the torrent's byte space at `offset` on the
    /// calling thread (padding reads as zeros): one `pread` per file slice.
    pub fn read_range_into(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let inner = &*self.inner;
        let slices = inner.layout.range_slices(offset, buf.len() as u64);
        let mut covered = 0usize;
        for s in slices {
            let at = s.range_offset as usize;
            let n = s.length as usize;
            match s.target {
                Some(t) => {
                    let t = &inner.targets[t];
                    crate::fs::pread_exact(t.fd(), s.target_offset, &mut buf[at..at + n])
                        .map_err(|e| StorageError::from_io(&t.path, s.target_offset, e))?;
                }
                None => buf[at..at + n].fill(0),
            }
            covered = at + n;
        }
        if covered != buf.len() {
            return Err(StorageError::InvalidLayout(format!(
                "read of {} bytes at {offset} runs past the end of the torrent",
                buf.len()
            )));
        }
        Ok(())
    }

    /// Tells the kernel each target will be read sequentially (recheck).
    pub(crate) fn advise_sequential(&self) {
        for t in &self.inner.targets {
            // SAFETY: advisory call on an fd we own; failure is harmless.
            unsafe {
                libc::posix_fadvise(t.fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
            }
        }
    }

    /// Size and modification time of every target, now.
    pub fn stamps(&self) -> Result<Vec<FileStamp>> {
        self.inner
            .targets
            .iter()
            .map(|t| {
                let m = t
                    .file
                    .metadata()
                    .map_err(|e| StorageError::from_io(&t.path, 0, e))?;
                Ok(FileStamp {
                    size: m.size(),
                    mtime_sec: m.mtime(),
                    mtime_nsec: m.mtime_nsec() as u32,
                })
            })
            .collect()
    }
}
