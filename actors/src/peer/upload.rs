//! The serving side of a connection: requests from the remote peer checked
//! and queued, whole pieces read ahead through the storage readers (each
//! holding its bytes of the buffer budget), and block frames queued for the
//! socket without copying the data. Methods of the peer actor's connection
//! state ([`super::Conn`]); the receiving side is in the parent module.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use protocol::wire::{self, Message};
use storage::{ReadDone, ReadJob};
use tokio::sync::mpsc;
use tracing::warn;

use super::{Conn, End, Frame};
use crate::metrics::LocalHistogram;
use crate::pipeline::RateMeter;
use crate::ratelimit;

/// The serving side of a connection.
pub(super) struct Upload {
    /// We choke the remote peer (the initial state).
    pub(super) am_choking: bool,
    /// The remote peer is interested in us.
    pub(super) peer_interested: bool,
    /// Requests accepted and not yet served, oldest first, with when each
    /// arrived.
    pub(super) queue: VecDeque<(wire::BlockRef, Instant)>,
    /// Request arrival to its block written to the socket, flushed to
    /// [`crate::metrics::SERVE_TURNAROUND_US`] every tick.
    pub(super) turnaround: LocalHistogram,
    /// Recently read ranges `(piece, begin, data)`: read-ahead of whole
    /// pieces, each holding its bytes of the buffer budget until the last
    /// slice of it (a cached entry, a queued block) is dropped.
    pub(super) cache: VecDeque<(u32, u32, Bytes)>,
    /// Reads in flight `(piece, begin, length)`; with the cache, at most
    /// `read_cache_pieces` in all.
    pub(super) reading: Vec<(u32, u32, u32)>,
    pub(super) reads_tx: mpsc::Sender<ReadDone>,
    pub(super) bytes_up: u64,
    pub(super) meter: RateMeter,
    /// Bytes uploaded already reported to the torrent.
    pub(super) reported_up: u64,
    pub(super) last_status: Instant,
    pub(super) status_interested: bool,
    /// The next block, taken off `queue` and waiting for the upload limits;
    /// nothing behind it is served until it is.
    pub(super) throttled: Option<Throttled>,
}

/// A block waiting for the upload limits to grant its bytes.
pub(super) struct Throttled {
    pub(super) req: (wire::BlockRef, Instant),
    pub(super) data: Bytes,
    pub(super) wait: ratelimit::Wait,
}

/// Whether a read-ahead cache entry `(piece, begin, data)` holds all of `r`.
fn covers(entry: &(u32, u32, Bytes), r: &wire::BlockRef) -> bool {
    let end = entry.1 as usize + entry.2.len();
    entry.0 == r.index && entry.1 <= r.begin && r.begin as usize + r.length as usize <= end
}

/// Pieces the queued requests span (counting a change of piece as a new
/// one), at least 1 and at most `limit`: the read-ahead follows the
/// remote's queue, so a peer asking for one piece at a time does not hold
/// `limit` pieces of the budget, and a deep queue gets all of `limit`.
fn queued_pieces(queue: &VecDeque<(wire::BlockRef, Instant)>, limit: usize) -> usize {
    let mut n = 0;
    let mut last = None;
    for (r, _) in queue {
        if last != Some(r.index) {
            last = Some(r.index);
            n += 1;
            if n >= limit {
                break;
            }
        }
    }
    n.clamp(1, limit)
}

impl Conn<'_> {
    /// Answers a request we will not serve: a reject with the fast
    /// extension, silence without it (BEP 3 has no way to say no).
    pub(super) fn refuse_request(&mut self, r: wire::BlockRef) {
        if self.fast {
            Message::Reject(r).encode(&mut self.out);
        }
    }

    /// Checks and queues a request from the remote peer. A request we
    /// cannot serve is refused, not fatal (libtorrent rejects it too); only
    /// a flood past the queue we advertised (`reqq`) ends the connection.
    pub(super) fn on_request(&mut self, r: wire::BlockRef) -> Result<(), End> {
        let max = self.ctx.config.max_upload_block;
        let valid = match self.ctx.storage.layout().piece_len(r.index) {
            Ok(piece_len) => {
                r.length > 0
                    && r.length <= max
                    && u64::from(r.begin) + u64::from(r.length) <= piece_len
            }
            Err(_) => false,
        };
        if !valid || !self.have.get(r.index) {
            self.refuse_request(r);
            let why = if valid {
                "a piece we lack"
            } else {
                "no such block"
            };
            self.oddity(&format!(
                "request {}:{}+{} refused: {why}",
                r.index, r.begin, r.length
            ));
            return Ok(());
        }
        if !self.up.peer_interested {
            // libtorrent: be lenient and take the request as interest.
            self.up.peer_interested = true;
            self.oddity("request without interest");
        }
        if self.up.am_choking {
            // Requests crossing our choke are normal: refused, not counted.
            self.refuse_request(r);
            return Ok(());
        }
        if self.up.queue.len() >= self.ctx.config.max_upload_queue {
            return Err(End::refused(format!(
                "request flood: more than {} requests queued",
                self.ctx.config.max_upload_queue
            )));
        }
        self.up.queue.push_back((r, Instant::now()));
        Ok(())
    }

    /// Serves queued requests from the read-ahead cache, starting a read
    /// when the next one is not cached. Stops at a bounded amount of queued
    /// output, so a peer that reads slowly does not pull its whole queue
    /// into memory.
    pub(super) async fn pump(&mut self) -> Result<(), End> {
        let ctx = self.ctx;
        while self.up.throttled.is_none() {
            let Some(&(r, asked)) = self.up.queue.front() else {
                break;
            };
            if self.up.am_choking || self.frames_len >= ctx.config.max_send_queue {
                break;
            }
            let hit = self.up.cache.iter().find_map(|entry| {
                covers(entry, &r).then(|| {
                    let from = (r.begin - entry.1) as usize;
                    entry.2.slice(from..from + r.length as usize)
                })
            });
            let Some(data) = hit else {
                break;
            };
            self.up.queue.pop_front();
            // Under a limit the wait is a branch of the peer loop, not an
            // await here: the tick (rate reports, timeouts) and the other
            // direction go on meanwhile.
            if let Some(wait) = ratelimit::grant(&ctx.up_limits, data.len()) {
                self.up.throttled = Some(Throttled {
                    req: (r, asked),
                    data,
                    wait,
                });
                break;
            }
            self.serve(r, asked, data)?;
        }
        self.prefetch();
        Ok(())
    }

    /// The throttled block's bytes were granted: it goes to the socket.
    pub(super) async fn throttle_done(&mut self) -> Result<(), End> {
        if let Some(t) = self.up.throttled.take() {
            self.serve(t.req.0, t.req.1, t.data)?;
        }
        self.pump().await
    }

    /// Queues block `r`'s frame (the data is not copied).
    fn serve(&mut self, r: wire::BlockRef, asked: Instant, data: Bytes) -> Result<(), End> {
        // Requests were checked against `max_upload_block` on arrival.
        let Some(header) = wire::piece_header(r.index, r.begin, r.length) else {
            return Err(End::protocol(format!(
                "unframable block length {}",
                r.length
            )));
        };
        self.push_frame(Frame {
            head: Bytes::copy_from_slice(&header),
            data,
            asked: Some(asked),
        });
        self.up.bytes_up += u64::from(r.length);
        self.up.meter.record(Instant::now(), u64::from(r.length));
        Ok(())
    }

    /// Keeps reads going for the pieces the queue will need next, so a
    /// piece boundary does not wait on the disk: up to `read_cache_pieces`
    /// pieces cached or in flight. A full cache gives up the entry needed
    /// last (by the queue's order), and only if the read it makes room for
    /// is needed sooner: reads complete out of order with several reader
    /// threads, so evicting by arrival would throw out pieces the queue
    /// still needs and read them again.
    pub(super) fn prefetch(&mut self) {
        if self.up.am_choking {
            return;
        }
        let cap = queued_pieces(&self.up.queue, self.ctx.config.read_cache_pieces.max(1));
        while self.up.reading.len() < cap {
            let up = &self.up;
            let Some((next_at, next)) = up.queue.iter().map(|q| q.0).enumerate().find(|(_, r)| {
                !up.cache.iter().any(|e| covers(e, r))
                    && !up.reading.iter().any(|p| {
                        p.0 == r.index && p.1 <= r.begin && r.begin + r.length <= p.1 + p.2
                    })
            }) else {
                return;
            };
            if up.cache.len() + up.reading.len() >= cap {
                let mut victim: Option<(usize, usize)> = None;
                for (i, e) in up.cache.iter().enumerate() {
                    let need = up
                        .queue
                        .iter()
                        .position(|q| covers(e, &q.0))
                        .unwrap_or(usize::MAX);
                    if victim.is_none_or(|(_, n)| need > n) {
                        victim = Some((i, need));
                    }
                }
                match victim {
                    // Its budget comes back with the last of its blocks
                    // still queued for the socket (`budget::held`).
                    Some((i, need)) if need > next_at => {
                        self.up.cache.remove(i);
                    }
                    _ => return,
                }
            }
            if !self.start_read(next) {
                return;
            }
        }
    }

    /// Reads the whole piece of `r` (read-ahead) if the budget has room,
    /// else just the block.
    pub(super) fn start_read(&mut self, r: wire::BlockRef) -> bool {
        let ctx = self.ctx;
        let piece_len = ctx.storage.layout().piece_len(r.index).unwrap_or(0) as u32;
        let reserved = ctx.budget.reserve(u64::from(piece_len));
        if reserved == Err(crate::budget::Refused::Limit) {
            // Read-ahead refused by the effective limit: block-sized reads
            // cost a pread each, so the limit should grow.
            ctx.budget.starving();
        }
        let (begin, length) = if reserved.is_ok() {
            (0, piece_len)
        } else {
            // One block per connection at a time is bounded by the
            // connection count, whatever the budget says.
            ctx.budget.force_reserve(u64::from(r.length));
            (r.begin, r.length)
        };
        let tx = self.up.reads_tx.clone();
        let job = ReadJob {
            piece: r.index,
            begin,
            length,
            reply: Box::new(move |d| {
                let _ = tx.try_send(d);
            }),
        };
        match ctx.storage.try_read(job) {
            Ok(()) => {
                self.up.reading.push((r.index, begin, length));
                true
            }
            // The device's readers are saturated: give the budget back and
            // try again on the next tick.
            Err(_) => {
                self.release(u64::from(length));
                false
            }
        }
    }

    pub(super) fn read_done(&mut self, done: ReadDone) -> Result<(), End> {
        let reserved = match self
            .up
            .reading
            .iter()
            .position(|p| p.0 == done.piece && p.1 == done.begin)
        {
            Some(pos) => u64::from(self.up.reading.swap_remove(pos).2),
            None => 0,
        };
        if done.result.is_err() {
            self.release(reserved);
        }
        match done.result {
            Ok(data) => {
                let data = crate::budget::held(&self.ctx.budget, data, reserved);
                self.up.cache.push_back((done.piece, done.begin, data));
                Ok(())
            }
            Err(e) => {
                warn!(piece = done.piece, error = %e, "reading a block to upload failed");
                Err(End::network(format!("read for upload failed: {e}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pieces: &[u32]) -> VecDeque<(wire::BlockRef, Instant)> {
        let now = Instant::now();
        pieces
            .iter()
            .map(|&index| {
                let r = wire::BlockRef {
                    index,
                    begin: 0,
                    length: 16384,
                };
                (r, now)
            })
            .collect()
    }

    #[test]
    fn read_ahead_follows_the_queue() {
        assert_eq!(queued_pieces(&q(&[]), 8), 1);
        assert_eq!(queued_pieces(&q(&[3, 3, 3]), 8), 1);
        assert_eq!(queued_pieces(&q(&[3, 3, 4, 4, 9]), 8), 3);
        let deep: Vec<u32> = (0..40).flat_map(|p| [p; 16]).collect();
        assert_eq!(queued_pieces(&q(&deep), 8), 8);
    }
}
