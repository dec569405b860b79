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
//! With a partial selection ([`Selection`]) the files nobody asked for are
//! not created: their bytes in pieces shared with wanted files go to the
//! part file ([`crate::parts`]). Which bytes go where is the storage's
//! routing (per file: created or parked; per piece: its part-file slot),
//! behind a lock that only the owning torrent writes and that is held for
//! look-ups only.
//!
//! Async use: `try_write`/`try_read` never block when the piece lives on one
//! device (the usual case). The actor layer holds a semaphore of
//! [`Storage::write_capacity`] permits per device, released on each reply, so
//! `Full` never happens. A piece straddling two devices queues its second
//! part with a blocking push (bounded by one writer draining one slot).

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;

use crate::error::{Result, StorageError};
use crate::fdcache::{FdCache, FdCacheStats};
use crate::fs::{Preallocation, Target, open_raw_target, open_under_root, preallocate};
use crate::hash::{Reply, VerifiedPiece};
use crate::layout::{FileSpec, Layout, Placement, Slice, TargetSpec};
use crate::parts::{SlotRecord, SlotTable};
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
    /// Most torrent files open at once, across every torrent of the
    /// process; the least recently used is closed (and reopened on its
    /// next use) beyond it. Raw targets and part files are not counted.
    pub max_open_files: usize,
    /// Raw targets (block devices, image files) are written and read with
    /// O_DIRECT, bypassing the page cache; the unaligned edges of a run
    /// (the last short piece) go through the page cache. Opening fails,
    /// naming the target, where the file system refuses O_DIRECT.
    pub direct_io: bool,
}

impl Default for DiskIoConfig {
    fn default() -> Self {
        DiskIoConfig {
            writer: WriterConfig::default(),
            readers_per_device: 2,
            reader_queue_capacity: 64,
            max_open_files: 512,
            direct_io: false,
        }
    }
}

/// How a write is handed to the writers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Submit {
    /// Give it back if the first device's queue is full.
    Try,
    /// Write it on this thread if its one device's writer is idle, else as `Try`.
    HereOrTry,
    /// Wait for room.
    Wait,
}

/// One device's threads.
pub(crate) struct Device {
    pub id: u64,
    writer: DiskWriter,
    readers: ReaderPool,
}

struct DiskIoInner {
    config: DiskIoConfig,
    fd_cache: Arc<FdCache>,
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
                fd_cache: Arc::new(FdCache::new(config.max_open_files)),
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

    /// The open-file cache: files open now, its cap, reopens, closes.
    pub fn open_files(&self) -> FdCacheStats {
        self.inner.fd_cache.stats()
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
    /// Which files are wanted, and where the bytes of the others go.
    /// `None`: every file is wanted and no part file is used.
    pub selection: Option<Selection>,
}

/// A partial selection of the torrent's files.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// One flag per file of the layout (padding files included, ignored):
    /// whether the user wants it. An unwanted file is not created unless it
    /// exists already; its bytes go to the part file.
    pub wanted: Vec<bool>,
    /// The part file (see [`crate::parts`]), created only when needed.
    pub part_path: PathBuf,
    /// What the part file holds, from the resume data.
    pub slots: Vec<SlotRecord>,
}

/// Sizes and modification times of everything a torrent keeps on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamps {
    /// One per target, `None` for a file not created (unselected).
    pub targets: Vec<Option<FileStamp>>,
    /// The part file's, when there is one.
    pub part: Option<FileStamp>,
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

/// The part file, opened.
struct PartTarget {
    target: Arc<Target>,
    device: usize,
}

/// Where the bytes of each file go now. Changed only by the torrent that
/// owns the storage (a slot for a new piece, a file selected, a settled
/// relocation), read by every reader; held for a few map look-ups, never
/// across a syscall or a queue push.
struct Routing {
    /// One per layout target; `None` for a file not created.
    targets: Vec<Option<Arc<Target>>>,
    /// Index into `devices` per target (meaningless where absent).
    target_device: Vec<usize>,
    devices: Vec<Arc<Device>>,
    /// Per file: its bytes go to the part file.
    parked: Vec<bool>,
    part: Option<PartTarget>,
    slots: SlotTable,
}

impl Routing {
    fn device_index(&mut self, io: &DiskIo, id: u64) -> Result<usize> {
        if let Some(i) = self.devices.iter().position(|d| d.id == id) {
            return Ok(i);
        }
        self.devices.push(io.device(id)?);
        Ok(self.devices.len() - 1)
    }
}

struct StorageInner {
    layout: Layout,
    io: DiskIo,
    /// The download directory (file mode), for files selected later.
    root: Option<PathBuf>,
    preallocation: Preallocation,
    routing: RwLock<Routing>,
}

/// One torrent's opened storage. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<StorageInner>,
}

/// Where the bytes of one slice of a piece are read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// A padding file: zeros.
    Padding,
    /// The piece's slot in the part file.
    Part,
    /// This target.
    Target(usize),
    /// Nowhere: an unselected file's bytes that the part file lacks.
    Missing,
}

/// Where one slice of a piece is read from or written to.
struct Dest {
    target: Arc<Target>,
    device: usize,
    offset: u64,
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
        let wanted = wanted_of(&layout, config)?;
        let mut targets = Vec::with_capacity(layout.targets().len());
        for (t, spec) in layout.targets().iter().enumerate() {
            let TargetSpec::File { path, length } = spec else {
                return Err(StorageError::InvalidLayout(
                    "raw target in file mode".into(),
                ));
            };
            let shown = path.iter().fold(root.to_path_buf(), |p, c| p.join(c));
            let want = layout.files_of_target(t).any(|f| wanted[f]);
            // An unselected file is not created; one that exists already
            // (selected in an earlier run) keeps being used.
            if !want && std::fs::symlink_metadata(&shown).is_err() {
                targets.push(None);
                continue;
            }
            let file = open_under_root(root, path)?;
            preallocate(&file, &shown, 0, *length, config.preallocation)?;
            targets.push(Some(Target::cached(
                file,
                shown,
                root,
                path,
                &io.inner.fd_cache,
            )?));
        }
        let parked = (0..layout.files().len())
            .map(|f| match layout.files()[f].placement {
                Placement::Target { target, .. } => targets[target].is_none(),
                Placement::Padding => false,
            })
            .collect();
        Self::assemble(
            io,
            layout,
            targets,
            parked,
            config,
            Some(root.to_path_buf()),
        )
    }

    /// Raw-disk mode: every file written into `target` (a block device or an
    /// image file, created if missing) at the offset its name gives. For a
    /// block device, extents past its end are refused; an image file grows.
    /// Unselected extents are not written: their bytes go to the part file.
    pub fn open_raw(
        io: &DiskIo,
        target: &Path,
        files: Vec<FileSpec>,
        piece_length: u32,
        config: &StorageConfig,
    ) -> Result<Storage> {
        let (file, capacity) = open_raw_target(target)?;
        let layout = Layout::new_raw(files, piece_length, capacity)?;
        let wanted = wanted_of(&layout, config)?;
        if capacity.is_none() {
            // An image file: make each wanted extent exist; gaps stay holes.
            for (i, f) in layout.files().iter().enumerate() {
                if let (Placement::Target { offset, .. }, true) = (f.placement, wanted[i]) {
                    preallocate(&file, target, offset, f.length, config.preallocation)?;
                }
            }
        }
        let mut t = Target::new(file, target.to_path_buf())?;
        if io.inner.config.direct_io {
            t.direct = Some(crate::fs::open_direct(
                target,
                t.file()
                    .map_err(|e| StorageError::from_io(target, 0, e))?
                    .as_ref(),
            )?);
        }
        let parked = layout
            .files()
            .iter()
            .enumerate()
            .map(|(i, f)| !wanted[i] && !matches!(f.placement, Placement::Padding))
            .collect();
        Self::assemble(io, layout, vec![Some(t)], parked, config, None)
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

    fn assemble(
        io: &DiskIo,
        layout: Layout,
        targets: Vec<Option<Target>>,
        parked: Vec<bool>,
        config: &StorageConfig,
        root: Option<PathBuf>,
    ) -> Result<Storage> {
        let mut p = Routing {
            targets: Vec::with_capacity(targets.len()),
            target_device: Vec::with_capacity(targets.len()),
            devices: Vec::new(),
            parked,
            part: None,
            slots: SlotTable::default(),
        };
        for t in targets {
            let dev = match &t {
                Some(t) => p.device_index(io, t.device)?,
                None => usize::MAX,
            };
            p.target_device.push(dev);
            p.targets.push(t.map(Arc::new));
        }
        let any_parked = layout
            .files()
            .iter()
            .zip(&p.parked)
            .any(|(f, parked)| *parked && f.length > 0);
        if let (true, Some(sel)) = (any_parked, &config.selection) {
            let path = &sel.part_path;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| StorageError::from_io(dir, 0, e))?;
            }
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|e| StorageError::from_io(path, 0, e))?;
            let target = Target::new(file, path.clone())?;
            let device = p.device_index(io, target.device)?;
            p.part = Some(PartTarget {
                target: Arc::new(target),
                device,
            });
            p.slots =
                SlotTable::from_records(&sel.slots, layout.piece_count(), layout.files().len());
        }
        Ok(Storage {
            inner: Arc::new(StorageInner {
                layout,
                io: io.clone(),
                root,
                preallocation: config.preallocation,
                routing: RwLock::new(p),
            }),
        })
    }

    fn routing(&self) -> std::sync::RwLockReadGuard<'_, Routing> {
        self.inner.routing.read().unwrap_or_else(|e| e.into_inner())
    }

    fn routing_mut(&self) -> std::sync::RwLockWriteGuard<'_, Routing> {
        self.inner
            .routing
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    /// Slots in the smallest writer mailbox of this storage's devices.
    pub fn write_capacity(&self) -> usize {
        self.routing()
            .devices
            .iter()
            .map(|d| d.writer.shared.queue.capacity())
            .min()
            .unwrap_or(1)
    }

    /// Counters of the writers of this storage's devices.
    pub fn writer_stats(&self) -> Vec<WriterStats> {
        self.routing()
            .devices
            .iter()
            .map(|d| d.writer.shared.counters.snapshot())
            .collect()
    }

    /// Per file: whether its bytes go to the part file (not created).
    pub fn parked_files(&self) -> Vec<bool> {
        self.routing().parked.clone()
    }

    /// What the part file holds, for the resume data.
    pub fn slot_records(&self) -> Vec<SlotRecord> {
        self.routing().slots.records()
    }

    /// Pieces whose parked bytes belong to files that are no longer parked:
    /// they wait for [`crate::parts::relocate_blocking`].
    pub fn relocation_pending(&self) -> Vec<u32> {
        let p = self.routing();
        p.slots.pieces_holding(|f| !p.parked[f as usize])
    }

    /// Whether piece `piece` has bytes waiting to move out of the part file.
    pub fn needs_relocation(&self, piece: u32) -> bool {
        let p = self.routing();
        p.slots
            .get(piece)
            .is_some_and(|(_, files)| files.iter().any(|&f| !p.parked[f as usize]))
    }

    /// The files `files` are wanted from now on: each parked one is created
    /// (file mode) and new writes of its bytes go to it. Bytes already in
    /// the part file stay readable from there until relocated and settled.
    /// Blocking (opens and sizes files): call it from a blocking task.
    pub fn unpark(&self, files: &[usize]) -> Result<()> {
        let layout = &self.inner.layout;
        let parked = self.parked_files();
        let mut opened = Vec::new();
        for &f in files {
            if !parked.get(f).copied().unwrap_or(false) {
                continue;
            }
            if let (Some(root), Placement::Target { target, .. }) =
                (&self.inner.root, layout.files()[f].placement)
            {
                let TargetSpec::File { path, length } = &layout.targets()[target] else {
                    continue;
                };
                let shown = path.iter().fold(root.clone(), |p, c| p.join(c));
                let file = open_under_root(root, path)?;
                preallocate(&file, &shown, 0, *length, self.inner.preallocation)?;
                let t = Target::cached(file, shown, root, path, &self.inner.io.inner.fd_cache)?;
                opened.push((f, Some((target, t))));
            } else {
                opened.push((f, None));
            }
        }
        let mut p = self.routing_mut();
        for (f, t) in opened {
            if let Some((ti, t)) = t {
                let dev = p.device_index(&self.inner.io, t.device)?;
                p.targets[ti] = Some(Arc::new(t));
                p.target_device[ti] = dev;
            }
            p.parked[f] = false;
        }
        Ok(())
    }

    /// After the relocation writes of `pieces` are synced: their slots stop
    /// holding the bytes of files that are no longer parked.
    pub fn settle(&self, pieces: &[u32]) {
        let mut p = self.routing_mut();
        let Routing { slots, parked, .. } = &mut *p;
        for &piece in pieces {
            slots.settle(piece, |f| parked[f as usize]);
        }
    }

    /// Where each slice of `piece` goes for a write. A fresh piece with
    /// parked bytes gets its slot here; a relocation keeps the slot's
    /// entry as it is until [`Storage::settle`].
    fn write_dests(&self, piece: u32, relocate: bool) -> Result<Vec<(Slice, Option<Dest>)>> {
        let layout = &self.inner.layout;
        let slices = layout.piece_slices(piece)?;
        let pl = u64::from(layout.piece_length());
        let mut p = self.routing_mut();
        let parked: Vec<u32> = slices
            .iter()
            .filter(|s| s.target.is_some() && p.parked[s.file])
            .map(|s| s.file as u32)
            .collect();
        let slot = if relocate {
            p.slots.get(piece).map(|(s, _)| s)
        } else if parked.is_empty() {
            // No parked bytes: an old entry must not claim the new bytes.
            p.slots.settle(piece, |_| false);
            None
        } else {
            Some(p.slots.assign(piece, parked))
        };
        let mut out = Vec::with_capacity(slices.len());
        for s in slices {
            let Some(t) = s.target else {
                out.push((s, None));
                continue;
            };
            let dest = if p.parked[s.file] {
                match (&p.part, slot) {
                    (Some(part), Some(slot)) => Dest {
                        target: part.target.clone(),
                        device: part.device,
                        offset: u64::from(slot) * pl + s.range_offset,
                    },
                    _ => {
                        return Err(StorageError::NotStored {
                            piece,
                            file: s.file,
                        });
                    }
                }
            } else {
                match &p.targets[t] {
                    Some(target) => Dest {
                        target: target.clone(),
                        device: p.target_device[t],
                        offset: s.target_offset,
                    },
                    None => {
                        return Err(StorageError::NotStored {
                            piece,
                            file: s.file,
                        });
                    }
                }
            };
            out.push((s, Some(dest)));
        }
        Ok(out)
    }

    /// Cuts a piece into chunks, grouped by device.
    fn chunks_by_device(
        &self,
        piece: &VerifiedPiece,
        relocate: bool,
    ) -> Result<Vec<(Arc<Device>, Vec<Chunk>)>> {
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
        let dests = self.write_dests(piece.piece(), relocate)?;
        let devices = self.routing().devices.clone();
        let mut groups: Vec<(usize, Vec<Chunk>)> = Vec::with_capacity(1);
        let blocks = piece.blocks();
        let (mut bi, mut boff) = (0usize, 0usize); // position in the blocks
        for (s, dest) in dests {
            let mut need = s.length as usize;
            let mut at = dest.as_ref().map_or(0, |d| d.offset);
            while need > 0 {
                let b = &blocks[bi];
                let take = (b.len() - boff).min(need);
                if let Some(d) = &dest {
                    let chunk = Chunk {
                        target: d.target.clone(),
                        offset: at,
                        data: b.slice(boff..boff + take),
                    };
                    match groups.iter_mut().find(|g| g.0 == d.device) {
                        Some(g) => g.1.push(chunk),
                        None => groups.push((d.device, vec![chunk])),
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
        Ok(groups
            .into_iter()
            .map(|(d, c)| (devices[d].clone(), c))
            .collect())
    }

    /// Queues a verified piece without blocking (see the module docs for
    /// pieces straddling devices). An invalid piece (wrong length) is
    /// answered through its reply at once, on this thread.
    pub fn try_write(&self, job: WriteJob) -> Result<(), SubmitError<WriteJob>> {
        self.submit_write(job, Submit::Try, false)
    }

    /// [`Storage::try_write`], except that a piece on one device whose
    /// writer thread is parked with nothing queued is written on the
    /// calling thread, its reply called there: no hand-over, so no wake-up
    /// of the writer. The device still has one writer at a time. For
    /// threads that may block on a write (the hash workers), not async
    /// code.
    pub fn write_here_or_queue(&self, job: WriteJob) -> Result<(), SubmitError<WriteJob>> {
        self.submit_write(job, Submit::HereOrTry, false)
    }

    /// Queues a verified piece, waiting for room. Fails only when the
    /// writers are shut down.
    pub fn write(&self, job: WriteJob) -> Result<(), WriteJob> {
        self.submit_write(job, Submit::Wait, false)
            .map_err(SubmitError::into_inner)
    }

    fn submit_write(
        &self,
        job: WriteJob,
        how: Submit,
        relocate: bool,
    ) -> Result<(), SubmitError<WriteJob>> {
        let WriteJob { piece, reply } = job;
        let index = piece.piece();
        let groups = match self.chunks_by_device(&piece, relocate) {
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
        let single = groups.len() == 1;
        for (k, (dev, chunks)) in groups.into_iter().enumerate() {
            let q = &dev.writer.shared.queue;
            let mut item = WriterItem::Write {
                chunks,
                done: done.clone(),
            };
            if single && how == Submit::HereOrTry {
                match dev.writer.shared.write_here(item) {
                    Ok(()) => return Ok(()),
                    Err(back) => item = back,
                }
            }
            let r = if how == Submit::Wait || k > 0 {
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
        self.write_blocking_as(piece, false)
    }

    /// Writes a piece that is ours already through the current placement
    /// (its parked bytes stay claimed by the part file until settled).
    pub(crate) fn relocate_write_blocking(&self, piece: VerifiedPiece) -> Result<()> {
        self.write_blocking_as(piece, true)
    }

    fn write_blocking_as(&self, piece: VerifiedPiece, relocate: bool) -> Result<()> {
        let (tx, rx) = sync_channel(1);
        let job = WriteJob {
            piece,
            reply: Box::new(move |d| {
                let _ = tx.send(d.result);
            }),
        };
        self.submit_write(job, Submit::Wait, relocate)
            .map_err(|_| StorageError::Closed)?;
        rx.recv().map_err(|_| StorageError::Closed)?
    }

    /// `fdatasync` of every target (and the part file), after every write
    /// queued before this call. Queued with a blocking push: syncs are rare.
    pub fn sync(&self, reply: Reply<Result<()>>) {
        let items: Vec<(Arc<Device>, Vec<Arc<Target>>)> = {
            let p = self.routing();
            p.devices
                .iter()
                .enumerate()
                .map(|(di, d)| {
                    let mut targets: Vec<Arc<Target>> = p
                        .targets
                        .iter()
                        .zip(&p.target_device)
                        .filter(|(t, td)| t.is_some() && **td == di)
                        .filter_map(|(t, _)| t.clone())
                        .collect();
                    if let Some(part) = p.part.as_ref().filter(|x| x.device == di) {
                        targets.push(part.target.clone());
                    }
                    (d.clone(), targets)
                })
                .filter(|(_, t)| !t.is_empty())
                .collect()
        };
        if items.is_empty() {
            // Only padding files: nothing on disk to sync.
            reply(Ok(()));
            return;
        }
        let done = Countdown::new(items.len(), Completion::Sync(reply));
        for (d, targets) in items {
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

    /// Where the bytes of a block are read from, and the device of the
    /// first part that is on disk.
    fn read_parts_of(
        &self,
        piece: u32,
        begin: u64,
        length: u64,
    ) -> Result<(Vec<ReadPart>, Option<Arc<Device>>)> {
        let layout = &self.inner.layout;
        let slices = layout.block_slices(piece, begin, length)?;
        let pl = u64::from(layout.piece_length());
        let p = self.routing();
        let mut device = None;
        let mut parts = Vec::with_capacity(slices.len());
        for s in slices {
            let Some(t) = s.target else {
                parts.push(ReadPart {
                    target: None,
                    offset: s.target_offset,
                    length: s.length,
                });
                continue;
            };
            let (target, dev, offset) = match (p.slots.holds(piece, s.file as u32), &p.part) {
                (Some(slot), Some(part)) => (
                    part.target.clone(),
                    part.device,
                    u64::from(slot) * pl + begin + s.range_offset,
                ),
                _ if !p.parked[s.file] && p.targets[t].is_some() => (
                    p.targets[t].clone().expect("checked"),
                    p.target_device[t],
                    s.target_offset,
                ),
                _ => {
                    return Err(StorageError::NotStored {
                        piece,
                        file: s.file,
                    });
                }
            };
            device.get_or_insert_with(|| p.devices[dev].clone());
            parts.push(ReadPart {
                target: Some(target),
                offset,
                length: s.length,
            });
        }
        Ok((parts, device))
    }

    /// Where each slice of `piece` is read from, in order.
    pub(crate) fn piece_sources(&self, piece: u32) -> Result<Vec<Source>> {
        let slices = self.inner.layout.piece_slices(piece)?;
        let p = self.routing();
        Ok(slices
            .iter()
            .map(|s| match s.target {
                None => Source::Padding,
                Some(_) if p.part.is_some() && p.slots.holds(piece, s.file as u32).is_some() => {
                    Source::Part
                }
                Some(t) if !p.parked[s.file] && p.targets[t].is_some() => Source::Target(t),
                Some(_) => Source::Missing,
            })
            .collect())
    }

    fn read_item(&self, job: ReadJob) -> std::result::Result<(Arc<Device>, ReadItem), ()> {
        let ReadJob {
            piece,
            begin,
            length,
            reply,
        } = job;
        match self.read_parts_of(piece, u64::from(begin), u64::from(length)) {
            Ok((parts, dev)) => {
                // A block straddling devices is read by the first device's
                // pool; one of padding only by any.
                let dev = match dev {
                    Some(d) => d,
                    None => match self.routing().devices.first() {
                        Some(d) => d.clone(),
                        None => {
                            reply(ReadDone {
                                piece,
                                begin,
                                result: read_parts(&parts),
                            });
                            return Err(());
                        }
                    },
                };
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
        dev.readers
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
        dev.readers
            .shared
            .queue
            .push(item)
            .map_err(|i| Self::item_to_job(i, length))
    }

    /// Reads bytes of a piece on the calling thread.
    pub fn read_blocking(&self, piece: u32, begin: u64, length: u64) -> Result<Bytes> {
        read_parts(&self.read_parts_of(piece, begin, length)?.0)
    }

    /// Reads `buf.len()` bytes of the torrent's byte space at `offset` on the
    /// calling thread (padding reads as zeros, parked bytes come from the
    /// part file): one `pread` per file slice.
    pub fn read_range_into(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let layout = &self.inner.layout;
        let end = offset.saturating_add(buf.len() as u64);
        if end > layout.total_length() {
            return Err(StorageError::InvalidLayout(format!(
                "read of {} bytes at {offset} runs past the end of the torrent",
                buf.len()
            )));
        }
        let pl = u64::from(layout.piece_length());
        let mut pos = offset;
        while pos < end {
            let piece = (pos / pl) as u32;
            let begin = pos - layout.piece_offset(piece);
            let len = (pl - begin).min(end - pos);
            let (parts, _) = self.read_parts_of(piece, begin, len)?;
            let mut at = (pos - offset) as usize;
            for part in parts {
                let n = part.length as usize;
                let dst = &mut buf[at..at + n];
                match &part.target {
                    Some(t) => t
                        .read_at(part.offset, crate::fs::as_uninit(dst))
                        .map_err(|e| StorageError::from_io(&t.path, part.offset, e))?,
                    None => dst.fill(0),
                }
                at += n;
            }
            pos += len;
        }
        Ok(())
    }

    /// Tells the kernel each target will be read sequentially (recheck).
    pub(crate) fn advise_sequential(&self) {
        for t in self.routing().targets.iter().flatten() {
            let Ok(f) = t.file() else { continue };
            // SAFETY: advisory call on an fd we own; failure is harmless.
            unsafe {
                libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
            }
        }
    }

    /// Size and modification time of every target, now (`None` for files
    /// not created).
    pub fn stamps(&self) -> Result<Stamps> {
        let (targets, part) = {
            let p = self.routing();
            (p.targets.clone(), p.part.as_ref().map(|x| x.target.clone()))
        };
        Ok(Stamps {
            targets: targets
                .iter()
                .map(|t| t.as_deref().map(stamp_of).transpose())
                .collect::<Result<_>>()?,
            part: part.as_deref().map(stamp_of).transpose()?,
        })
    }
}

fn stamp_of(t: &Target) -> Result<FileStamp> {
    let m = t
        .metadata()
        .map_err(|e| StorageError::from_io(&t.path, 0, e))?;
    Ok(FileStamp {
        size: m.size(),
        mtime_sec: m.mtime(),
        mtime_nsec: m.mtime_nsec() as u32,
    })
}

/// Which files are wanted, checked against the layout.
fn wanted_of(layout: &Layout, config: &StorageConfig) -> Result<Vec<bool>> {
    let n = layout.files().len();
    match &config.selection {
        None => Ok(vec![true; n]),
        Some(s) if s.wanted.len() == n => Ok(s.wanted.clone()),
        Some(s) => Err(StorageError::InvalidLayout(format!(
            "selection names {} files of a torrent of {n}",
            s.wanted.len()
        ))),
    }
}
