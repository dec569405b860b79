//! The torrent's side of selection changes and streams: new file priorities
//! (the picker's levels, files created, parked bytes moved into place in a
//! blocking task), and the registry of stream readers, whose positions
//! decide the time-critical pieces. Methods of the torrent actor.
//!
//! Each reader's window is the piece under it and the pieces covering
//! `read_ahead` bytes after it, clipped to its file. The windows of all
//! readers are interleaved by distance from their reader (every reader's
//! own piece first, then every reader's next one, ...) into the picker's
//! time-critical list, so several streams progress together and each is
//! sequential within its window.

use std::collections::BTreeMap;
use std::ops::Range;

use storage::layout::Placement;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::Torrent;
use super::msg::{SetPrioritiesError, StreamError, StreamGrant, TorrentState};
use super::selection::SelectionError;
use crate::picker::Priority;

/// One open stream.
pub(super) struct Reader {
    /// The pieces of its file.
    pieces: Range<u32>,
    /// The piece under it, once it has read.
    at: Option<u32>,
    /// Waiting for this piece to be ours.
    waiter: Option<(u32, oneshot::Sender<()>)>,
    /// Closes when the stream is dropped.
    alive: mpsc::Sender<()>,
}

/// Open streams and the next id.
#[derive(Default)]
pub(super) struct Streams {
    readers: BTreeMap<u64, Reader>,
    next: u64,
}

impl Streams {
    pub(super) fn len(&self) -> usize {
        self.readers.len()
    }
}

impl Torrent {
    /// New file priorities from the handle.
    pub(super) fn set_priorities(
        &mut self,
        priorities: Vec<Priority>,
        reply: oneshot::Sender<Result<(), SetPrioritiesError>>,
    ) {
        let newly = match self.selection.set(priorities) {
            Ok(n) => n,
            Err(SelectionError::Count { got, expected }) => {
                let _ = reply.send(Err(SetPrioritiesError::Count { got, expected }));
                return;
            }
        };
        let levels = self.selection.piece_levels(self.storage.layout());
        if let Err(e) = self.picker.set_piece_priorities(&levels) {
            warn!(error = %e, "picker refused the priorities");
        }
        let ids: Vec<_> = self.peers.keys().copied().collect();
        for id in ids {
            self.update_interest(id);
        }
        let files: Vec<usize> = newly
            .iter()
            .filter_map(|&i| self.selection.layout_index(i))
            .collect();
        if !files.is_empty() {
            self.unpark.extend(files);
            self.start_relocation();
        }
        if !self.picker.wanted_complete() {
            // More to fetch: back to downloading, peers welcome again.
            self.finishing = false;
            if self.state == TorrentState::Seeding {
                info!("selection widened; downloading again");
                self.state = TorrentState::Downloading;
            }
            self.connect_peers();
        } else {
            self.check_complete();
        }
        self.publish();
        let _ = reply.send(Ok(()));
    }

    /// Starts the blocking task that creates newly selected files and moves
    /// their parked bytes into place, unless one runs already (its end
    /// starts the next).
    pub(super) fn start_relocation(&mut self) {
        if self.relocation.is_some() {
            return;
        }
        let files = std::mem::take(&mut self.unpark);
        let storage = self.storage.clone();
        let meta = self.meta.clone();
        // Only pieces that are ours: one whose write is still in flight is
        // relocated when that write completes (see `pieces`).
        let have = self.picker.have_bitfield().clone();
        let (tx, rx) = oneshot::channel();
        self.relocation = Some(rx);
        tokio::task::spawn_blocking(move || {
            let r = storage
                .unpark(&files)
                .and_then(|()| {
                    let pending: Vec<u32> = storage
                        .relocation_pending()
                        .into_iter()
                        .filter(|&p| have.get(p))
                        .collect();
                    storage::relocate_blocking(&storage, &meta.info.pieces, &pending)
                })
                .map_err(|e| e.to_string());
            let _ = tx.send(r);
        });
    }

    /// The relocation task ended.
    pub(super) async fn relocated(&mut self, result: Result<Vec<u32>, String>) {
        self.relocation = None;
        match result {
            Ok(bad) if bad.is_empty() => {
                debug!("parked bytes moved into place");
                if let Err(e) = self.save_resume().await {
                    warn!(error = %e, "saving resume data failed");
                }
            }
            Ok(bad) => {
                self.fail(format!(
                    "the part file is damaged: {} piece(s) held there failed verification \
                     (first: {}); run again to recheck",
                    bad.len(),
                    bad[0]
                ));
                return;
            }
            Err(e) => {
                self.fail(format!("moving parked bytes into place: {e}"));
                return;
            }
        }
        let more = self
            .storage
            .relocation_pending()
            .iter()
            .any(|&p| self.picker.have(p));
        if !self.unpark.is_empty() || more {
            self.start_relocation();
        }
    }

    /// A stream asks for file `file`.
    pub(super) fn stream_open(
        &mut self,
        file: usize,
        reply: oneshot::Sender<Result<StreamGrant, StreamError>>,
    ) {
        let layout = self.storage.layout();
        let Some(f) = self.selection.layout_index(file) else {
            let _ = reply.send(Err(StreamError::NoSuchFile(file)));
            return;
        };
        let max = self.shared.config.stream.max_readers;
        if self.streams.len() >= max {
            let _ = reply.send(Err(StreamError::TooManyReaders(max)));
            return;
        }
        let entry = &layout.files()[f];
        debug_assert!(!matches!(entry.placement, Placement::Padding));
        let (alive_tx, alive_rx) = mpsc::channel(1);
        let id = self.streams.next;
        self.streams.next += 1;
        let cfg = &self.shared.config.stream;
        let grant = StreamGrant {
            id,
            file_offset: entry.torrent_offset,
            length: entry.length,
            name: entry.path.last().cloned().unwrap_or_default(),
            piece_length: layout.piece_length(),
            chunk_size: cfg.chunk_size.max(1),
            wait_timeout: cfg.wait_timeout,
            storage: self.storage.clone(),
            alive: alive_rx,
        };
        let pieces = layout.pieces_of_file(f);
        if reply.send(Ok(grant)).is_ok() {
            self.streams.readers.insert(
                id,
                Reader {
                    pieces,
                    at: None,
                    waiter: None,
                    alive: alive_tx,
                },
            );
            self.publish();
        }
    }

    /// A stream entered `piece`.
    pub(super) fn stream_want(&mut self, id: u64, piece: u32, reply: oneshot::Sender<()>) {
        let have = self.picker.have(piece);
        let Some(r) = self.streams.readers.get_mut(&id) else {
            return;
        };
        if !r.pieces.contains(&piece) {
            // Not its file: the stream gets no answer and reports it.
            return;
        }
        let moved = r.at != Some(piece);
        r.at = Some(piece);
        if have {
            r.waiter = None;
            let _ = reply.send(());
        } else {
            r.waiter = Some((piece, reply));
        }
        if moved {
            self.update_critical();
        }
    }

    /// A stream went away: its window stops being time-critical.
    pub(super) fn stream_close(&mut self, id: u64) {
        if self.streams.readers.remove(&id).is_some() {
            self.update_critical();
            self.publish();
        }
    }

    /// Drops streams whose owner went away without a close getting through.
    pub(super) fn sweep_streams(&mut self) {
        let before = self.streams.len();
        self.streams.readers.retain(|_, r| !r.alive.is_closed());
        if self.streams.len() != before {
            self.update_critical();
        }
    }

    /// Piece `piece` is verified and written: wake the streams waiting on it.
    pub(super) fn stream_piece_done(&mut self, piece: u32) {
        for r in self.streams.readers.values_mut() {
            if r.waiter.as_ref().is_some_and(|(p, _)| *p == piece)
                && let Some((_, tx)) = r.waiter.take()
            {
                let _ = tx.send(());
            }
        }
    }

    /// Recomputes the time-critical pieces from every reader's window.
    fn update_critical(&mut self) {
        let pl = u64::from(self.storage.layout().piece_length());
        let ahead = self.shared.config.stream.read_ahead.div_ceil(pl);
        let window = u32::try_from(ahead.saturating_add(1)).unwrap_or(u32::MAX);
        let mut list = Vec::new();
        for k in 0..window {
            let mut any = false;
            for r in self.streams.readers.values() {
                let Some(at) = r.at else { continue };
                let p = at.saturating_add(k);
                if p < r.pieces.end {
                    any = true;
                    if !self.picker.have(p) {
                        list.push(p);
                    }
                }
            }
            if !any {
                break;
            }
        }
        self.picker.set_time_critical(&list);
        let ids: Vec<_> = self.peers.keys().copied().collect();
        for id in ids {
            self.update_interest(id);
        }
        // Peers may have been let go when the selection completed.
        self.connect_peers();
    }
}
