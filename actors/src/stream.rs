//! Streaming one file of a torrent while it downloads: a [`FileStream`]
//! reads verified bytes only, in bounded chunks, through the storage's
//! reader threads, and tells its torrent where it is so the pieces under it
//! and a read-ahead window after them become time-critical.
//!
//! Who sends what: a stream awaits room in its torrent's mailbox (it is
//! downstream of the torrent like a peer) with `StreamOpen`, then one
//! `StreamWant` per piece it enters, answered by oneshot once that piece is
//! verified and written; the torrent never awaits a stream. On drop it
//! says `StreamClose` with `try_send`; if that finds the mailbox full, the
//! torrent still notices within a tick that the stream's `alive` channel
//! closed, and lowers the window's priorities again. Reads go to the
//! storage readers with `try_read` (a full reader queue is retried after a
//! short sleep), so the runtime never blocks on file I/O, and a stream holds
//! at most one chunk (`chunk_size`) in flight.
//!
//! Bounded everywhere: readers per torrent (`max_readers`), the window
//! (`read_ahead` bytes of pieces), bytes per read (`chunk_size`), and the
//! wait for an unverified piece (`wait_timeout_ms`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use storage::{ReadJob, Storage, SubmitError};
use tokio::sync::{mpsc, oneshot};

pub use crate::torrent::msg::StreamError;
use crate::torrent::msg::{StreamGrant, TorrentHandle, TorrentMsg};

/// Streaming limits (`[stream]` in the config file).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Streams open at once on one torrent. Default 8.
    pub max_readers: usize,
    /// Bytes after a reader's position that are fetched as time-critical
    /// (rounded up to whole pieces, plus the piece under the reader).
    /// Default 16 MiB.
    pub read_ahead: u64,
    /// Bytes per read, and so the most a stream holds. Default 256 KiB.
    pub chunk_size: usize,
    /// How long a read waits for its piece to be verified. Default 60 s.
    #[serde(rename = "wait_timeout_ms", with = "storage::serde_fmt::duration_ms")]
    pub wait_timeout: Duration,
    /// HTTP connections served at once by the stream server; more wait in
    /// the kernel's accept queue. Default 32.
    pub http_max_connections: usize,
    /// Largest HTTP request head read, in bytes. Default 16 KiB.
    pub http_max_header_bytes: usize,
    /// Time allowed to send a request head. Default 10 s.
    #[serde(
        rename = "http_header_timeout_ms",
        with = "storage::serde_fmt::duration_ms"
    )]
    pub http_header_timeout: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            max_readers: 8,
            read_ahead: 16 << 20,
            chunk_size: 256 << 10,
            wait_timeout: Duration::from_secs(60),
            http_max_connections: 32,
            http_max_header_bytes: 16 << 10,
            http_header_timeout: Duration::from_secs(10),
        }
    }
}

/// One reader of one file. Dropping it closes it.
pub struct FileStream {
    grant: StreamGrant,
    torrent: mpsc::Sender<TorrentMsg>,
    /// The last piece the torrent confirmed as ours.
    confirmed: Option<u32>,
}

impl std::fmt::Debug for FileStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStream")
            .field("id", &self.grant.id)
            .field("name", &self.grant.name)
            .field("length", &self.grant.length)
            .finish_non_exhaustive()
    }
}

impl FileStream {
    /// Opens file `file` (numbered as `info` lists them) of the torrent.
    pub async fn open(torrent: &TorrentHandle, file: usize) -> Result<FileStream, StreamError> {
        let tx = torrent.sender();
        let (reply, rx) = oneshot::channel();
        tx.send(TorrentMsg::StreamOpen { file, reply })
            .await
            .map_err(|_| StreamError::Stopped)?;
        let grant = rx.await.map_err(|_| StreamError::Stopped)??;
        Ok(FileStream {
            grant,
            torrent: tx,
            confirmed: None,
        })
    }

    /// Length of the file in bytes.
    pub fn len(&self) -> u64 {
        self.grant.length
    }

    /// True for a zero-length file.
    pub fn is_empty(&self) -> bool {
        self.grant.length == 0
    }

    /// The file's name (last path component), for its content type.
    pub fn name(&self) -> &str {
        &self.grant.name
    }

    /// Most bytes one read returns.
    pub fn chunk_size(&self) -> usize {
        self.grant.chunk_size
    }

    /// Reads up to `max` bytes (at most `chunk_size`, never across a piece
    /// boundary) at file offset `pos`, waiting for the piece to be verified
    /// and written. Empty at or past the end of the file.
    pub async fn read_at(&mut self, pos: u64, max: usize) -> Result<Bytes, StreamError> {
        let g = &self.grant;
        if pos >= g.length || max == 0 {
            return Ok(Bytes::new());
        }
        let pl = u64::from(g.piece_length);
        let at = g.file_offset + pos;
        let piece = (at / pl) as u32;
        let begin = at % pl;
        let len = (max.min(g.chunk_size) as u64)
            .min(pl - begin)
            .min(g.length - pos) as u32;
        let deadline = Instant::now() + g.wait_timeout;
        if self.confirmed != Some(piece) {
            self.wait_for(piece, deadline).await?;
            self.confirmed = Some(piece);
        }
        read_chunk(&self.grant.storage, piece, begin as u32, len, deadline).await
    }

    /// Moves the window to `piece` and waits until it is ours.
    async fn wait_for(&self, piece: u32, deadline: Instant) -> Result<(), StreamError> {
        let (reply, rx) = oneshot::channel();
        let msg = TorrentMsg::StreamWant {
            id: self.grant.id,
            piece,
            reply,
        };
        let wait = async {
            self.torrent
                .send(msg)
                .await
                .map_err(|_| StreamError::Stopped)?;
            rx.await.map_err(|_| StreamError::Stopped)
        };
        match tokio::time::timeout_at(deadline.into(), wait).await {
            Ok(r) => r,
            Err(_) => Err(StreamError::Timeout(piece)),
        }
    }
}

/// One read through the storage readers, retried while their queue is full.
async fn read_chunk(
    storage: &Storage,
    piece: u32,
    begin: u32,
    length: u32,
    deadline: Instant,
) -> Result<Bytes, StreamError> {
    let (tx, mut rx) = oneshot::channel();
    let mut job = ReadJob {
        piece,
        begin,
        length,
        reply: Box::new(move |d| {
            let _ = tx.send(d);
        }),
    };
    loop {
        match storage.try_read(job) {
            Ok(()) => break,
            Err(SubmitError::Full(j)) => {
                if Instant::now() >= deadline {
                    return Err(StreamError::Timeout(piece));
                }
                job = j;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(SubmitError::Closed(_)) => return Err(StreamError::Read("storage closed".into())),
        }
    }
    let done = tokio::time::timeout_at(deadline.into(), &mut rx)
        .await
        .map_err(|_| StreamError::Timeout(piece))?
        .map_err(|_| StreamError::Read("reader gone".into()))?;
    done.result.map_err(|e| StreamError::Read(e.to_string()))
}

impl Drop for FileStream {
    fn drop(&mut self) {
        // Policy: a close that finds the mailbox full is dropped; the
        // torrent sees the `alive` channel close on its next tick.
        let _ = self
            .torrent
            .try_send(TorrentMsg::StreamClose { id: self.grant.id });
    }
}
