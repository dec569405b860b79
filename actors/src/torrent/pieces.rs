//! The torrent's data path: blocks from peers into the picker, complete
//! pieces to the hash pool, verified pieces to the disk writers, their
//! completions back, and checkpoints of the resume data. Methods of the
//! torrent actor; the peers are in [`super::peers`].

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use storage::{HashDone, HashJob, StorageError, WriteDone, WriteJob};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, info, warn};

use super::done::DoneBox;
use super::msg::{ExchangeReply, TorrentState};
use super::{DONE_BATCH, Torrent};
use crate::budget::BufferBudget;
use crate::peer::msg::PeerCmd;
use crate::picker::{Block, PeerId, Received};

/// A completion from the hash or disk threads.
pub(super) enum Done {
    Hash(HashDone, OwnedSemaphorePermit),
    Write(WriteDone, OwnedSemaphorePermit),
    Sync(Result<(), StorageError>),
}

impl Torrent {
    pub(super) fn exchange(
        &mut self,
        id: PeerId,
        blocks: Vec<(Block, Bytes)>,
        want: u32,
        partial_only: bool,
    ) -> ExchangeReply {
        let now = Instant::now();
        let mut violation = None;
        let mut dropped = 0u64;
        let mut accepted = 0u64;
        for (block, data) in blocks {
            let len = u64::from(block.length);
            if violation.is_some() {
                dropped += len;
                continue;
            }
            match self.picker.block_received(id, block, data) {
                Received::Accepted { cancel, complete } => {
                    self.shared.budget.land(len);
                    self.bytes_down += len;
                    accepted += len;
                    self.down.record(now, len);
                    for other in cancel {
                        // Policy: a cancel that finds the peer's mailbox full
                        // is dropped; the block then arrives as a duplicate
                        // and its budget is released here.
                        if let Some(tx) = self.peers.get(&other).and_then(|p| p.cmds.as_ref()) {
                            let _ = tx.try_send(PeerCmd::Cancel(block));
                        }
                    }
                    if let Some(c) = complete {
                        self.pending_hash.push_back((c.index, c.blocks));
                    }
                }
                Received::Duplicate => dropped += len,
                Received::Unrequested => {
                    // libtorrent counts it as waste and keeps the peer.
                    dropped += len;
                    self.protocol_oddities += 1;
                    debug!(
                        peer = id.0,
                        block = %format_args!("{}:{}+{}", block.piece, block.begin, block.length),
                        "block never requested; dropped"
                    );
                }
                Received::Invalid => {
                    dropped += len;
                    violation = Some(format!(
                        "sent block {}:{}+{} that fits no piece of the torrent",
                        block.piece, block.begin, block.length
                    ));
                }
            }
        }
        self.release(dropped);
        self.bytes_wasted += dropped;
        if let Some(p) = self.peers.get_mut(&id) {
            p.exchanged += accepted;
        }
        let requests = if violation.is_none() && want > 0 && !self.picker.is_banned(id) {
            if partial_only {
                self.picker.pick_partial(id, want as usize, now)
            } else {
                self.picker.pick(id, want as usize, now)
            }
        } else {
            Vec::new()
        };
        ExchangeReply {
            requests,
            violation,
        }
    }

    /// Takes the completions waiting (at most [`DONE_BATCH`] before the
    /// loop looks at its other inputs; then it comes back at once), and
    /// settles what written pieces change. True if there were any.
    pub(super) async fn drain_done(&mut self) -> bool {
        let mut any = false;
        for _ in 0..DONE_BATCH {
            match self.done.pop() {
                Some(d) => {
                    any = true;
                    self.on_done(d).await;
                }
                None => break,
            }
        }
        if any {
            if !self.done.is_empty() {
                self.done.nudge();
            }
            self.after_writes();
        }
        any
    }

    pub(super) fn release(&self, bytes: u64) {
        if bytes > 0 {
            self.shared.budget.release(bytes);
        }
    }

    /// Gives back blocks taken by `exchange` (written, or failed their
    /// hash).
    pub(super) fn release_landed(&self, bytes: u64) {
        self.shared.budget.release_landed(bytes);
    }

    pub(super) fn submit_hash(&mut self, permit: OwnedSemaphorePermit) {
        let Some((index, blocks)) = self.pending_hash.pop_front() else {
            return;
        };
        let Some(expected) = self.meta.info.piece_hash(index).copied() else {
            return;
        };
        let done = self.done.clone();
        // Direct: the hash worker hands the verified piece to the disk
        // writer itself (or, when the device's writer is parked, writes it
        // on its own thread: no hand-over at all), returns its buffer
        // budget and leaves a quiet completion that the torrent takes on
        // its next run. So a piece costs the wake-up of a hash worker and
        // nothing more. It needs a write permit now (held while hashing)
        // and no smart-ban evidence (a piece that failed before is judged
        // here first).
        let direct = if self.write_backoff || self.picker.has_evidence(index) {
            None
        } else {
            self.write_permits
                .clone()
                .try_acquire_owned()
                .ok()
                .map(|w| (self.storage.clone(), self.shared.budget.clone(), w))
        };
        if direct.is_some() {
            // The hash worker may hand the piece to the writer without
            // coming back here: note it now (see `WriteJournal`), so a
            // crash after its write still finds it listed for recheck.
            self.note_journal(index);
        }
        let job = HashJob {
            piece: index,
            blocks,
            expected,
            reply: Box::new(move |d| match (d, direct) {
                (HashDone::Verified(piece), Some((storage, budget, write_permit))) => {
                    let job = WriteJob {
                        reply: written(done.clone(), budget, piece.len(), write_permit),
                        piece,
                    };
                    if let Err(e) = storage.write_here_or_queue(job) {
                        // The device's queue is full (another torrent) or
                        // closing: the torrent queues it as before. The
                        // hash permit backs this message's slot.
                        let piece = e.into_inner().piece;
                        done.push(Done::Hash(HashDone::Verified(piece), permit), true);
                    }
                }
                (d, _) => done.push(Done::Hash(d, permit), true),
            }),
        };
        if let Err(e) = self.shared.hash.try_submit(job) {
            // Only if the pool is stopping; the permit bounded the queue.
            let job = e.into_inner();
            self.pending_hash.push_front((job.piece, job.blocks));
        }
    }

    /// Appends `piece` to the write journal (once per piece until cleared).
    fn note_journal(&mut self, piece: u32) {
        if let Err(e) = self.journal.note(piece)
            && !self.journal_failed
        {
            self.journal_failed = true;
            warn!(error = %e, "writing the write journal failed; a crash will mean a recheck");
        }
    }

    pub(super) fn submit_write(&mut self, permit: OwnedSemaphorePermit) {
        let Some(piece) = self.pending_write.pop_front() else {
            return;
        };
        // Noted before the write is handed over (see `WriteJournal`).
        self.note_journal(piece.piece());
        let job = WriteJob {
            reply: written(
                self.done.clone(),
                self.shared.budget.clone(),
                piece.len(),
                permit,
            ),
            piece,
        };
        if let Err(e) = self.storage.try_write(job) {
            // Another torrent on the same device filled the writer's queue:
            // keep the piece and try again shortly.
            let job = e.into_inner();
            self.pending_write.push_front(job.piece);
            self.write_backoff = true;
        }
    }

    pub(super) async fn on_done(&mut self, done: Done) {
        match done {
            Done::Hash(HashDone::Verified(piece), _permit) => {
                // Smart ban: a good copy judges the senders of earlier bad ones.
                for id in self.picker.piece_passed(piece.piece(), piece.blocks()) {
                    self.ban(id, "sent a block that differs from the verified piece");
                }
                self.pending_write.push_back(piece);
            }
            Done::Hash(HashDone::Mismatch { piece, blocks }, _permit) => {
                let bytes = bytes_of(&blocks);
                self.release_landed(bytes);
                self.hash_failures += 1;
                match self.picker.piece_failed_blocks(piece, &blocks) {
                    Ok(f) => {
                        warn!(
                            piece,
                            contributors = f.contributors.len(),
                            "hash check failed"
                        );
                        for id in f.newly_banned {
                            self.ban(id, "involved in repeated hash failures");
                        }
                    }
                    Err(e) => warn!(error = %e, "picker refused a hash failure"),
                }
            }
            Done::Write(WriteDone { piece, result }, _permit) => {
                // Its landed bytes were given back by the writing thread.
                match result {
                    Ok(()) => {
                        if let Err(e) = self.picker.piece_verified(piece) {
                            warn!(error = %e, "picker refused a verified piece");
                        }
                        self.resume.written(piece);
                        self.stream_piece_done(piece);
                        if self.storage.needs_relocation(piece) {
                            // Planned while its file was still parked.
                            self.start_relocation();
                        }
                        for p in self.peers.values() {
                            if let Some(tx) = &p.cmds {
                                // Policy: a HAVE that finds a full mailbox is
                                // dropped; it only informs the remote peer.
                                let _ = tx.try_send(PeerCmd::Have(piece));
                            }
                        }
                        // Interest and completion once per drained batch
                        // (`after_writes`), not once per piece.
                        self.written_unsettled = true;
                    }
                    Err(e) => self.fail(format!("writing piece {piece}: {e}")),
                }
            }
            Done::Sync(result) => {
                let cp = self.checkpoint.take();
                match (result, cp) {
                    (Ok(()), Some(cp)) => {
                        self.resume.commit(cp, Instant::now());
                        let saved = self.save_resume().await;
                        if let Err(e) = &saved {
                            warn!(error = %e, "saving resume data failed");
                        }
                        if self.finishing && !self.picker.wanted_complete() {
                            // The selection widened meanwhile.
                            self.finishing = false;
                        } else if self.finishing && self.state == TorrentState::Downloading {
                            if self.resume.unsynced() > 0 {
                                // Pieces written after that checkpoint began.
                                self.start_sync();
                            } else {
                                info!("download complete");
                                // Everything is written and saved.
                                if saved.is_ok()
                                    && let Err(e) = self.journal.clear()
                                {
                                    warn!(error = %e, "removing the write journal failed");
                                }
                                self.state = if self.seed {
                                    TorrentState::Seeding
                                } else {
                                    TorrentState::Complete
                                };
                                self.publish();
                            }
                        }
                    }
                    (Err(e), cp) => {
                        if let Some(cp) = cp {
                            let _ = self.resume.abort(cp);
                        }
                        self.fail(format!("syncing to disk: {e}"));
                    }
                    (Ok(()), None) => {}
                }
            }
        }
    }

    /// After a batch of completions: what written pieces change for every
    /// peer (interest) and for the torrent (completion), once.
    pub(super) fn after_writes(&mut self) {
        if !std::mem::take(&mut self.written_unsettled) {
            return;
        }
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            self.update_interest(id);
        }
        self.check_complete();
    }

    pub(super) async fn save_resume(&self) -> Result<(), String> {
        let storage = self.storage.clone();
        let path = self.resume_file.clone();
        let info_hash = self.meta.info_hash.0;
        let have = self.resume.have().to_vec();
        let priorities = self.selection.levels(self.storage.layout().files().len());
        // A journal is settled only by a record written now; otherwise an
        // unchanged record is not written again (a restart with nothing to
        // recheck, a seed's completion check).
        let force = self.journal.exists();
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            }
            let data = storage::ResumeData::of(&storage, info_hash, have, priorities)
                .map_err(|e| e.to_string())?;
            if force {
                storage::resume::save(&path, &data)
            } else {
                storage::resume::save_if_changed(&path, &data).map(|_| ())
            }
            .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    pub(super) fn start_sync(&mut self) {
        let cp = self.resume.begin();
        self.checkpoint = Some(cp);
        let done = self.done.clone();
        // `Storage::sync` waits for room in the writer queues; on a runtime
        // worker that wait stalls every task (stats, signals) for as long
        // as a slow disk takes to drain a full queue.
        let storage = self.storage.clone();
        tokio::task::spawn_blocking(move || {
            storage.sync(Box::new(move |r| done.push(Done::Sync(r), true)));
        });
    }

    pub(super) fn maybe_checkpoint(&mut self) {
        if self.checkpoint.is_none() && !self.finishing && self.resume.due(Instant::now()) {
            self.start_sync();
        }
    }

    pub(super) fn check_complete(&mut self) {
        if self.finishing || !self.picker.wanted_complete() {
            return;
        }
        self.finishing = true;
        // Connections to other seeds are of no use now; without seeding,
        // none are.
        // (Unless a stream still needs pieces of a skipped file.)
        if !self.picker.needs_anything() {
            for p in self.peers.values() {
                if !self.seed || p.is_seed {
                    p.cancel.cancel();
                }
            }
        }
        // A checkpoint in flight finishes first; its completion sees
        // `finishing` and syncs again if pieces were written since.
        if self.checkpoint.is_none() {
            self.start_sync();
        }
    }
}

/// The reply of a piece's write, on the writing thread: gives the piece's
/// landed bytes back to the budget at once (peers waiting on it resume
/// without a hop through the torrent) and leaves the result in the
/// torrent's mailbox, waking it only for a failure.
fn written(
    done: Arc<DoneBox>,
    budget: Arc<BufferBudget>,
    bytes: u64,
    permit: OwnedSemaphorePermit,
) -> storage::Reply<WriteDone> {
    Box::new(move |w: WriteDone| {
        budget.release_landed(bytes);
        let failed = w.result.is_err();
        done.push(Done::Write(w, permit), failed);
    })
}

/// Bytes held by a piece's blocks (what they hold of the buffer budget).
pub(super) fn bytes_of(blocks: &[Bytes]) -> u64 {
    blocks.iter().map(|b| b.len() as u64).sum()
}
