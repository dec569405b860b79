//! Opening targets safely, preallocating them, and the raw syscalls
//! (`pwritev`, `pread`, `fdatasync`) with their retry rules.
//!
//! Paths below the download directory are opened one component at a time
//! with `openat(O_NOFOLLOW)` starting from a directory fd of the root, so a
//! symbolic link planted anywhere in the tree (or a name that slipped past
//! the layout's checks) can never make the storage layer write outside its
//! root. This is defence in depth: the layout has already refused unsafe
//! names.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Result, StorageError};
use crate::fdcache::{FdCache, Slot};
use crate::layout::check_component;

/// How files are sized when they are created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Preallocation {
    /// Reserve the blocks with `fallocate` (falls back to sparse where the
    /// file system does not support it). A full disk is found at open time.
    #[default]
    Full,
    /// Only set the size; blocks are allocated as data arrives.
    Sparse,
}

/// An opened target: a file of the torrent, or the raw device/image.
///
/// A file target's descriptor is held in a slot that the process-wide
/// [`FdCache`] may close; [`Target::file`] reopens it (below its root, as it
/// was first opened, but never creating it). A raw target or a part file
/// stays open.
pub(crate) struct Target {
    slot: Arc<Slot>,
    reopen: Option<Reopen>,
    /// For error messages.
    pub path: PathBuf,
    /// Device the bytes land on (st_rdev for a block device, st_dev else);
    /// writers are grouped by it.
    pub device: u64,
    /// Process-unique id: the writer sorts by (id, offset).
    pub id: u64,
    /// A raw target opened for O_DIRECT as well (`disk.direct_io`).
    pub direct: Option<Direct>,
}

/// The O_DIRECT side of a raw target: a second descriptor on the same
/// device or image, and the alignment its offsets, lengths and buffers
/// need. The buffered descriptor stays for what cannot be aligned (the
/// unaligned head or tail of a run, the last short piece), so no byte
/// outside the verified run is ever written and nothing past the target's
/// end is touched.
pub(crate) struct Direct {
    pub file: File,
    pub align: usize,
}

/// How a closed file target is opened again.
struct Reopen {
    root: PathBuf,
    comps: Vec<String>,
    cache: Arc<FdCache>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("path", &self.path)
            .field("device", &self.device)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

static NEXT_TARGET_ID: AtomicU64 = AtomicU64::new(1);

impl Target {
    /// A target that stays open (a raw device or image, a part file).
    pub fn new(file: File, path: PathBuf) -> Result<Target> {
        Self::build(file, path, None)
    }

    /// A torrent file opened as `root/comps...`, its descriptor counted in
    /// `cache` (which may close it; it is reopened on use).
    pub fn cached(
        file: File,
        path: PathBuf,
        root: &Path,
        comps: &[String],
        cache: &Arc<FdCache>,
    ) -> Result<Target> {
        let t = Self::build(
            file,
            path,
            Some(Reopen {
                root: root.to_path_buf(),
                comps: comps.to_vec(),
                cache: cache.clone(),
            }),
        )?;
        cache.touch(t.id, &t.slot, false);
        Ok(t)
    }

    fn build(file: File, path: PathBuf, reopen: Option<Reopen>) -> Result<Target> {
        let meta = file
            .metadata()
            .map_err(|e| StorageError::from_io(&path, 0, e))?;
        let device = if meta.file_type().is_block_device() {
            meta.rdev()
        } else {
            meta.dev()
        };
        Ok(Target {
            slot: Arc::new(Mutex::new(Some(Arc::new(file)))),
            reopen,
            path,
            device,
            id: NEXT_TARGET_ID.fetch_add(1, Ordering::Relaxed),
            direct: None,
        })
    }

    /// Writes `bufs` (one run of adjacent bytes) at `offset`: through the
    /// O_DIRECT descriptor for the aligned middle when there is one, else
    /// (and for the unaligned edges) with `pwritev`. Returns the number of
    /// write calls; on failure the error and the offset of the failing call.
    pub fn write_run<B: AsRef<[u8]>>(
        &self,
        offset: u64,
        bufs: &[B],
        max_iov: usize,
    ) -> std::result::Result<u64, (io::Error, u64)> {
        let f = self.file().map_err(|e| (e, offset))?;
        let Some(d) = &self.direct else {
            return pwritev_all(f.as_raw_fd(), offset, bufs, max_iov);
        };
        let len: u64 = bufs.iter().map(|b| b.as_ref().len() as u64).sum();
        let align = d.align as u64;
        let (a0, a1) = (
            offset.next_multiple_of(align),
            (offset + len) / align * align,
        );
        if a1 <= a0 {
            return pwritev_all(f.as_raw_fd(), offset, bufs, max_iov);
        }
        let mut calls = 0;
        if a0 > offset {
            let head = sub_slices(bufs, 0, a0 - offset);
            calls += pwritev_all(f.as_raw_fd(), offset, &head, max_iov)?;
        }
        calls += with_aligned_buf(
            d.align,
            |buf| -> std::result::Result<u64, (io::Error, u64)> {
                let mut calls = 0;
                let mut pos = a0;
                while pos < a1 {
                    let n = (a1 - pos).min(buf.len() as u64) as usize;
                    copy_range(bufs, pos - offset, &mut buf[..n]);
                    let mut done = 0;
                    while done < n {
                        // SAFETY: `buf` is valid for reads of `n` bytes; `pos +
                        // done` and `n - done` stay multiples of the alignment
                        // unless a short write broke them (handled below).
                        let r = unsafe {
                            libc::pwrite(
                                d.file.as_raw_fd(),
                                buf[done..n].as_ptr().cast(),
                                n - done,
                                (pos + done as u64) as libc::off_t,
                            )
                        };
                        calls += 1;
                        if r < 0 {
                            let e = io::Error::last_os_error();
                            if e.kind() == io::ErrorKind::Interrupted {
                                continue;
                            }
                            return Err((e, pos + done as u64));
                        }
                        if r == 0 {
                            return Err((io::ErrorKind::WriteZero.into(), pos + done as u64));
                        }
                        done += r as usize;
                        if done < n && done % d.align != 0 {
                            // An unaligned short write: finish buffered.
                            calls +=
                                pwritev_all(f.as_raw_fd(), pos + done as u64, &[&buf[done..n]], 1)?;
                            done = n;
                        }
                    }
                    pos += n as u64;
                }
                Ok(calls)
            },
        )?;
        if offset + len > a1 {
            let tail = sub_slices(bufs, a1 - offset, len);
            calls += pwritev_all(f.as_raw_fd(), a1, &tail, max_iov)?;
        }
        Ok(calls)
    }

    /// Reads exactly `dst.len()` bytes at `offset`: the aligned superset
    /// through the O_DIRECT descriptor (sliced into `dst`) when there is
    /// one, the rest (past a short read at the target's end) buffered.
    pub fn read_at(&self, offset: u64, dst: &mut [std::mem::MaybeUninit<u8>]) -> io::Result<()> {
        let f = self.file()?;
        let Some(d) = &self.direct else {
            return pread_exact_uninit(f.as_raw_fd(), offset, dst);
        };
        let align = d.align as u64;
        let end = offset + dst.len() as u64;
        let mut pos = offset;
        with_aligned_buf(d.align, |buf| {
            while pos < end {
                let a = pos / align * align;
                let want = ((end - a).next_multiple_of(align)).min(buf.len() as u64) as usize;
                // SAFETY: `buf` is valid for writes of `want` bytes, `a` and
                // `want` are multiples of the alignment, as is `buf`'s start.
                let r = unsafe {
                    libc::pread(
                        d.file.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        want,
                        a as libc::off_t,
                    )
                };
                if r < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
                let got = a + r as u64;
                if got <= pos {
                    // Past what O_DIRECT can give (the end of an image
                    // file or of a device not a multiple of the alignment).
                    let at = (pos - offset) as usize;
                    return pread_exact_uninit(f.as_raw_fd(), pos, &mut dst[at..]);
                }
                let upto = got.min(end);
                let src = &buf[(pos - a) as usize..(upto - a) as usize];
                let at = (pos - offset) as usize;
                for (o, i) in dst[at..at + src.len()].iter_mut().zip(src) {
                    *o = std::mem::MaybeUninit::new(*i);
                }
                pos = upto;
            }
            Ok(())
        })
    }

    /// The open file, reopened if the cache closed it. Hold the returned
    /// reference only for the call that uses it.
    pub fn file(&self) -> io::Result<Arc<File>> {
        let open = self.slot.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(reopen) = &self.reopen else {
            return open.ok_or_else(|| io::Error::other("target closed"));
        };
        if let Some(f) = open {
            reopen.cache.touch(self.id, &self.slot, false);
            return Ok(f);
        }
        let f = Arc::new(
            open_existing_under_root(&reopen.root, &reopen.comps).map_err(|e| match e {
                StorageError::Io { source, .. } => source,
                other => io::Error::other(other.to_string()),
            })?,
        );
        {
            let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
            // Another thread may have reopened it meanwhile: keep one.
            if let Some(other) = &*slot {
                return Ok(other.clone());
            }
            *slot = Some(f.clone());
        }
        reopen.cache.touch(self.id, &self.slot, true);
        Ok(f)
    }

    /// Size and times of the file, without reopening a closed one.
    pub fn metadata(&self) -> io::Result<std::fs::Metadata> {
        let open = self.slot.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match open {
            Some(f) => f.metadata(),
            None => std::fs::symlink_metadata(&self.path),
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(r) = &self.reopen {
            r.cache.forget(self.id);
        }
    }
}

/// Writes `bytes` to `path` atomically: a temp file beside it (`path` +
/// `.tmp`), fsync, rename over `path`, fsync of the directory. A crash
/// leaves the old file or the new one, never a mix. The error names the
/// file that failed (the temp file, the target or the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::result::Result<(), (PathBuf, io::Error)> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let err = |p: &Path| {
        let p = p.to_path_buf();
        move |e| (p, e)
    };
    let mut f = File::create(&tmp).map_err(err(&tmp))?;
    f.write_all(bytes).map_err(err(&tmp))?;
    f.sync_all().map_err(err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err(path))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(err(dir))
}

fn cstr(c: &str) -> io::Result<CString> {
    CString::new(c).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

fn escape_or_io(path: &Path, e: io::Error) -> StorageError {
    match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => StorageError::Escape {
            path: path.to_path_buf(),
        },
        _ => StorageError::from_io(path, 0, e),
    }
}

/// Opens (creating as needed) `root/comps...` for reading and writing,
/// refusing symbolic links and non-directories on the way.
pub(crate) fn open_under_root(root: &Path, comps: &[String]) -> Result<File> {
    std::fs::create_dir_all(root).map_err(|e| StorageError::from_io(root, 0, e))?;
    open_below(root, comps, true)
}

/// [`open_under_root`] for a file that must exist already: nothing is
/// created (a file deleted meanwhile is an error, not a new empty file).
pub(crate) fn open_existing_under_root(root: &Path, comps: &[String]) -> Result<File> {
    open_below(root, comps, false)
}

fn open_below(root: &Path, comps: &[String], create: bool) -> Result<File> {
    let mut dir = File::open(root).map_err(|e| StorageError::from_io(root, 0, e))?;
    let mut path = root.to_path_buf();
    let Some((name, dirs)) = comps.split_last() else {
        return Err(StorageError::EmptyPath);
    };
    for c in comps {
        check_component(c).map_err(|reason| StorageError::UnsafePath {
            path: comps.to_vec(),
            component: c.clone(),
            reason,
        })?;
    }
    for c in dirs {
        path.push(c);
        let cs = cstr(c).map_err(|e| StorageError::from_io(&path, 0, e))?;
        let r = if create {
            // SAFETY: `dir` is an open directory fd and `cs` a NUL-terminated name.
            unsafe { libc::mkdirat(dir.as_raw_fd(), cs.as_ptr(), 0o755) }
        } else {
            0
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(StorageError::from_io(&path, 0, e));
            }
        }
        // SAFETY: as above; the returned fd is owned by the new File.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                cs.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(escape_or_io(&path, io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor we own.
        dir = unsafe { File::from_raw_fd(fd) };
    }
    path.push(name);
    let cs = cstr(name).map_err(|e| StorageError::from_io(&path, 0, e))?;
    // SAFETY: as above.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            cs.as_ptr(),
            libc::O_RDWR
                | if create { libc::O_CREAT } else { 0 }
                | libc::O_NOFOLLOW
                | libc::O_CLOEXEC
                | libc::O_NONBLOCK,
            0o644 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(escape_or_io(&path, io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor we own.
    let file = unsafe { File::from_raw_fd(fd) };
    let meta = file
        .metadata()
        .map_err(|e| StorageError::from_io(&path, 0, e))?;
    if !meta.file_type().is_file() {
        return Err(StorageError::Escape { path });
    }
    Ok(file)
}

/// Opens the user-given raw target (block device or image file, created if
/// missing). Returns the file and, for a block device, its size.
pub(crate) fn open_raw_target(path: &Path) -> Result<(File, Option<u64>)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| StorageError::from_io(path, 0, e))?;
    let meta = file
        .metadata()
        .map_err(|e| StorageError::from_io(path, 0, e))?;
    let capacity = if meta.file_type().is_block_device() {
        // SAFETY: plain lseek on an fd we own.
        let end = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) };
        if end < 0 {
            return Err(StorageError::from_io(path, 0, io::Error::last_os_error()));
        }
        Some(end as u64)
    } else if meta.file_type().is_file() {
        None
    } else {
        return Err(StorageError::Io {
            path: path.to_path_buf(),
            offset: 0,
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "raw target is neither a block device nor a regular file",
            ),
        });
    };
    Ok((file, capacity))
}

/// Opens `path` (a raw target already opened buffered as `file`) a second
/// time with O_DIRECT. A file system that refuses it (EINVAL) is an error
/// naming the target, not a silent fallback: the user asked for it.
pub(crate) fn open_direct(path: &Path, file: &File) -> Result<Direct> {
    let direct = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_DIRECT)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::EINVAL) {
                StorageError::Io {
                    path: path.to_path_buf(),
                    offset: 0,
                    source: io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "the file system refuses O_DIRECT (disk.direct_io / --direct-io)",
                    ),
                }
            } else {
                StorageError::from_io(path, 0, e)
            }
        })?;
    let mut align = 4096usize;
    let meta = file
        .metadata()
        .map_err(|e| StorageError::from_io(path, 0, e))?;
    if meta.file_type().is_block_device() {
        let mut lbs: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int through the pointer.
        if unsafe { libc::ioctl(direct.as_raw_fd(), BLKSSZGET, &mut lbs) } == 0 && lbs > 0 {
            align = align.max(lbs as usize).next_power_of_two();
        }
    }
    Ok(Direct {
        file: direct,
        align,
    })
}

/// `_IO(0x12, 104)`: the logical block size of a block device.
const BLKSSZGET: libc::c_ulong = 0x1268;

/// Bytes per O_DIRECT call, and the size of each thread's aligned buffer.
const DIRECT_CHUNK: usize = 1 << 20;

/// A heap buffer aligned for O_DIRECT; one per I/O thread, reused.
struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    fn new(align: usize) -> AlignedBuf {
        let layout = std::alloc::Layout::from_size_align(DIRECT_CHUNK, align)
            .expect("alignment is a power of two below the chunk size");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, layout }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

thread_local! {
    // Pooled per thread: the writer and reader threads of a device are few
    // and fixed, so this is a bounded number of 1 MiB buffers.
    static ALIGNED: std::cell::RefCell<Option<AlignedBuf>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's aligned buffer (made on first use).
fn with_aligned_buf<R>(align: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    ALIGNED.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|b| b.layout.align() < align) {
            *slot = Some(AlignedBuf::new(align));
        }
        let b = slot.as_mut().expect("set above");
        // SAFETY: the allocation is `DIRECT_CHUNK` initialised bytes owned
        // by this thread; the borrow ends with `f`.
        let buf = unsafe { std::slice::from_raw_parts_mut(b.ptr.as_ptr(), DIRECT_CHUNK) };
        f(buf)
    })
}

/// The bytes `[from, to)` of the concatenation of `bufs`, as slices.
fn sub_slices<B: AsRef<[u8]>>(bufs: &[B], from: u64, to: u64) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0u64;
    for b in bufs {
        let b = b.as_ref();
        let (s, e) = (at, at + b.len() as u64);
        at = e;
        if e <= from || s >= to {
            continue;
        }
        out.push(&b[(from.max(s) - s) as usize..(to.min(e) - s) as usize]);
    }
    out
}

/// Copies the bytes `[from, from + dst.len())` of the concatenation of
/// `bufs` into `dst`.
fn copy_range<B: AsRef<[u8]>>(bufs: &[B], from: u64, dst: &mut [u8]) {
    let mut at = 0usize;
    for s in sub_slices(bufs, from, from + dst.len() as u64) {
        dst[at..at + s.len()].copy_from_slice(s);
        at += s.len();
    }
}

/// Makes `[offset, offset + len)` of a regular file exist, per `mode`.
/// Never shrinks a file.
pub(crate) fn preallocate(
    file: &File,
    path: &Path,
    offset: u64,
    len: u64,
    mode: Preallocation,
) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let end = offset + len;
    let size = file
        .metadata()
        .map_err(|e| StorageError::from_io(path, 0, e))?
        .len();
    if offset == 0 && size >= end {
        // A whole file already there (an earlier run): `fallocate` would
        // bump its modification time even when it allocates nothing, and
        // the resume data would then distrust every piece of it.
        return Ok(());
    }
    if mode == Preallocation::Full {
        // SAFETY: plain fallocate on an fd we own.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, offset as i64, len as i64) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {} // sparse fallback below
            _ => return Err(StorageError::from_io(path, offset, e)),
        }
    }
    let size = file
        .metadata()
        .map_err(|e| StorageError::from_io(path, 0, e))?
        .len();
    if size < end {
        file.set_len(end)
            .map_err(|e| StorageError::from_io(path, end, e))?;
    }
    Ok(())
}

/// Writes `bufs` at `offset` with as few `pwritev` calls as possible:
/// at most `max_iov` buffers per call, resuming after short writes and
/// retrying EINTR. Returns the number of calls made; on failure, the error
/// and the offset at which the failing call started.
pub(crate) fn pwritev_all<B: AsRef<[u8]>>(
    fd: RawFd,
    mut offset: u64,
    bufs: &[B],
    max_iov: usize,
) -> std::result::Result<u64, (io::Error, u64)> {
    let max_iov = max_iov.clamp(1, 1024);
    let mut calls = 0u64;
    let mut idx = 0usize;
    let mut skip = 0usize; // bytes of bufs[idx] already written
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(bufs.len().min(max_iov));
    while idx < bufs.len() {
        if bufs[idx].as_ref().len() == skip {
            idx += 1;
            skip = 0;
            continue;
        }
        iov.clear();
        for (k, b) in bufs[idx..].iter().take(max_iov).enumerate() {
            let b = b.as_ref();
            let s = if k == 0 { &b[skip..] } else { b };
            iov.push(libc::iovec {
                iov_base: s.as_ptr() as *mut libc::c_void,
                iov_len: s.len(),
            });
        }
        // SAFETY: every iovec points into a live `Bytes` borrowed for the
        // duration of the call; the kernel only reads from them.
        let n = unsafe {
            libc::pwritev(
                fd,
                iov.as_ptr(),
                iov.len() as libc::c_int,
                offset as libc::off_t,
            )
        };
        calls += 1;
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err((e, offset));
        }
        if n == 0 {
            return Err((io::Error::from(io::ErrorKind::WriteZero), offset));
        }
        let mut n = n as usize;
        offset += n as u64;
        while n > 0 {
            let left = bufs[idx].as_ref().len() - skip;
            if n >= left {
                n -= left;
                idx += 1;
                skip = 0;
            } else {
                skip += n;
                n = 0;
            }
        }
    }
    Ok(calls)
}

/// Reads exactly `buf.len()` bytes at `offset`, retrying EINTR and short
/// reads. Reading past the end of the file is an `UnexpectedEof` error.
#[cfg(test)]
pub(crate) fn pread_exact(fd: RawFd, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    pread_exact_uninit(fd, offset, as_uninit(buf))
}

/// An initialised buffer viewed as possibly uninitialised bytes (only ever
/// written through), for the readers that take either.
pub(crate) fn as_uninit(buf: &mut [u8]) -> &mut [std::mem::MaybeUninit<u8>] {
    // SAFETY: same length and layout; writing initialised bytes keeps it
    // initialised.
    unsafe {
        std::slice::from_raw_parts_mut(
            buf.as_mut_ptr().cast::<std::mem::MaybeUninit<u8>>(),
            buf.len(),
        )
    }
}

/// [`pread_exact`] into memory not yet initialised (a buffer's spare
/// capacity), so a read never pays for zero-filling what it overwrites.
pub(crate) fn pread_exact_uninit(
    fd: RawFd,
    mut offset: u64,
    mut buf: &mut [std::mem::MaybeUninit<u8>],
) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for writes of its length; the kernel only
        // writes into it, never reads it.
        let n = unsafe {
            libc::pread(
                fd,
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                offset as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        offset += n as u64;
        buf = &mut buf[n as usize..];
    }
    Ok(())
}

/// `fdatasync`, retrying EINTR.
pub(crate) fn datasync(fd: RawFd) -> io::Result<()> {
    loop {
        // SAFETY: plain syscall on an fd.
        if unsafe { libc::fdatasync(fd) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn refuses_symlinked_directory_and_final_symlink() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        let r = open_under_root(root.path(), &["link".into(), "f".into()]);
        assert!(matches!(r, Err(StorageError::Escape { .. })), "{r:?}");
        std::os::unix::fs::symlink(outside.path().join("x"), root.path().join("fl")).unwrap();
        let r = open_under_root(root.path(), &["fl".into()]);
        assert!(matches!(r, Err(StorageError::Escape { .. })), "{r:?}");
        let r = open_under_root(root.path(), &["..".into(), "f".into()]);
        assert!(matches!(r, Err(StorageError::UnsafePath { .. })), "{r:?}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        open_under_root(root.path(), &["d".into(), "e".into(), "f".into()]).unwrap();
        assert!(root.path().join("d/e/f").is_file());
    }

    #[test]
    fn pwritev_splits_at_max_iov() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        let bufs: Vec<Bytes> = (0..10u8).map(|i| Bytes::from(vec![i; 100])).collect();
        let calls = pwritev_all(f.as_raw_fd(), 50, &bufs, 4).unwrap();
        assert_eq!(calls, 3);
        let data = std::fs::read(dir.path().join("f")).unwrap();
        assert_eq!(data.len(), 1050);
        assert!(data[..50].iter().all(|&b| b == 0));
        for i in 0..10 {
            assert!(
                data[50 + i * 100..150 + i * 100]
                    .iter()
                    .all(|&b| b == i as u8)
            );
        }
        let mut back = vec![0u8; 1000];
        pread_exact(f.as_raw_fd(), 50, &mut back).unwrap();
        assert_eq!(&back[..], &data[50..]);
        let e = pread_exact(f.as_raw_fd(), 1000, &mut back).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
