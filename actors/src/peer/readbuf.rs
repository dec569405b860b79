//! The connection's read buffers, reused.
//!
//! Blocks are `Bytes` slices of the buffer the socket was read into, so a
//! buffer stays shared until the last block cut from it is written. When
//! the current buffer runs out of room, it is retired here rather than
//! reallocated, and the oldest retired buffer whose blocks are all gone
//! (the order they are written in, roughly) is taken back in its place:
//! its pages are warm and no allocation is made. A retired buffer that is
//! still shared costs nothing beyond what its blocks hold; one that is free
//! but unused is dropped at the next [`ReadBuffers::trim`] (the peer's
//! tick) if the connection received nothing since, so an idle connection
//! keeps no spare memory.
//!
//! Every buffer is `chunk` bytes (a quarter of `read_buffer`) plus room
//! for a carried partial frame, unless one frame needs more, so a block
//! pins at most that much memory (96 KiB by default). The counts are
//! logged when the connection ends.

use std::collections::VecDeque;

use bytes::BytesMut;

/// Retired buffers kept per connection: about what is in flight between
/// the socket and the disk for a fast peer (64 x 64 KiB = 4 MiB, half the
/// default landed backlog). Those still pinned by blocks are not extra
/// memory; the bound only limits how many handles are kept.
const MAX_RETIRED: usize = 64;

/// Retired buffers looked at from the oldest before allocating.
const PROBE: usize = 4;

/// Spare room in each buffer for the partial frame carried into it (a
/// block message is 16 KiB and 13 bytes).
const CARRY: usize = 32 * 1024;

/// Counters, for the bench and the tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadBufferStats {
    /// Buffers allocated.
    pub allocated: u64,
    /// Buffers taken back from the retired list instead.
    pub reused: u64,
    /// Times the current buffer was reclaimed in place (no block alive).
    pub reclaimed: u64,
}

/// The retired buffers of one connection.
#[derive(Debug)]
pub struct ReadBuffers {
    chunk: usize,
    retired: VecDeque<BytesMut>,
    received: bool,
    stats: ReadBufferStats,
}

impl ReadBuffers {
    /// Buffers of `chunk` bytes (at least 32 KiB: two blocks and a header).
    pub fn new(chunk: usize) -> Self {
        ReadBuffers {
            chunk: chunk.max(32 * 1024),
            retired: VecDeque::new(),
            received: false,
            stats: ReadBufferStats::default(),
        }
    }

    /// The connection's first buffer: one chunk and room for a carried
    /// frame, like every later one, so no block pins more.
    pub fn first(&mut self) -> BytesMut {
        self.stats.allocated += 1;
        BytesMut::with_capacity(self.chunk + CARRY)
    }

    /// What was done so far.
    #[cfg(test)]
    pub fn stats(&self) -> ReadBufferStats {
        self.stats
    }

    /// Retired buffers held now.
    #[cfg(test)]
    pub fn retired(&self) -> usize {
        self.retired.len()
    }

    /// Makes room for at least `need` more bytes after what `buf` holds
    /// (a partial frame), moving that into another buffer if `buf` is
    /// full and shared. Where `reserve` would allocate anew each time.
    pub fn make_room(&mut self, buf: &mut BytesMut, need: usize) {
        self.received = true;
        // A full chunk for every read, as `reserve(read_buffer / 4)` gave:
        // fewer, larger `recvfrom`s.
        let want = need.max(self.chunk);
        if buf.capacity() - buf.len() >= want {
            return;
        }
        // Every block cut from it is gone: reuse it where it is.
        if buf.try_reclaim(want) {
            self.stats.reclaimed += 1;
            return;
        }
        let total = buf.len() + want;
        let mut fresh = None;
        for i in 0..self.retired.len().min(PROBE) {
            if self.retired[i].try_reclaim(total) {
                fresh = self.retired.remove(i);
                break;
            }
        }
        let mut fresh = match fresh {
            Some(b) => {
                self.stats.reused += 1;
                b
            }
            None => {
                self.stats.allocated += 1;
                // Room for a carried partial frame too, so the buffer
                // can be taken back for any later read.
                BytesMut::with_capacity(total.max(self.chunk + CARRY))
            }
        };
        // At most one partial frame is copied, as `reserve` does.
        fresh.extend_from_slice(buf);
        let mut old = std::mem::replace(buf, fresh);
        old.clear();
        if self.retired.len() == MAX_RETIRED {
            self.retired.pop_front();
        }
        self.retired.push_back(old);
    }

    /// On the peer's tick: if nothing was received since the last one,
    /// drop the retired buffers (their blocks keep what they need).
    pub fn trim(&mut self) {
        if !std::mem::take(&mut self.received) {
            self.retired.clear();
        }
    }
}

impl Drop for ReadBuffers {
    fn drop(&mut self) {
        let s = self.stats;
        tracing::debug!(
            allocated = s.allocated,
            reused = s.reused,
            reclaimed = s.reclaimed,
            "read buffers"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `n` bytes into `buf` as a socket read would (spare capacity).
    fn fill(buf: &mut BytesMut, n: usize) {
        assert!(buf.capacity() - buf.len() >= n, "no room for {n}");
        buf.extend(std::iter::repeat_n(7u8, n));
    }

    #[test]
    fn buffers_come_back_once_their_blocks_are_gone() {
        let mut rb = ReadBuffers::new(64 * 1024);
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut live = VecDeque::new();
        // Four 16 KiB blocks per buffer, a partial frame left over each
        // time; the blocks are "written" two buffers later.
        for round in 0..100 {
            fill(&mut buf, 64 * 1024 - 100);
            for _ in 0..3 {
                live.push_back(buf.split_to(16 * 1024).freeze());
            }
            let partial = buf.len();
            rb.make_room(&mut buf, 16 * 1024);
            assert_eq!(buf.len(), partial, "the partial frame moved along");
            assert!(buf.capacity() - buf.len() >= 16 * 1024);
            buf.clear();
            while live.len() > 6 {
                live.pop_front();
            }
            if round > 10 {
                assert!(rb.retired() <= 4, "retired {}", rb.retired());
            }
        }
        let s = rb.stats();
        assert!(s.allocated <= 4, "{s:?}");
        assert!(s.reused >= 90, "{s:?}");
    }

    #[test]
    fn partial_frame_survives_and_large_needs_are_met() {
        let mut rb = ReadBuffers::new(64 * 1024);
        let mut buf = BytesMut::with_capacity(64 * 1024);
        buf.extend_from_slice(&[1u8; 60 * 1024]);
        let block = buf.split_to(50 * 1024).freeze();
        // A bitfield of 1 MiB announced: room for all of it.
        rb.make_room(&mut buf, 1 << 20);
        assert_eq!(&buf[..], &[1u8; 10 * 1024][..]);
        assert!(buf.capacity() - buf.len() >= 1 << 20);
        assert_eq!(block.len(), 50 * 1024);
    }

    #[test]
    fn idle_connection_keeps_no_spares() {
        let mut rb = ReadBuffers::new(64 * 1024);
        let mut buf = BytesMut::with_capacity(64 * 1024);
        fill(&mut buf, 64 * 1024);
        let block = buf.split_to(64 * 1024).freeze();
        rb.make_room(&mut buf, 100);
        assert_eq!(rb.retired(), 1);
        rb.trim();
        assert_eq!(rb.retired(), 1, "received since the last tick");
        rb.trim();
        assert_eq!(rb.retired(), 0);
        drop(block);
    }

    #[test]
    fn unique_buffer_is_reclaimed_in_place() {
        let mut rb = ReadBuffers::new(64 * 1024);
        let mut buf = BytesMut::with_capacity(128 * 1024);
        fill(&mut buf, 128 * 1024);
        drop(buf.split_to(124 * 1024).freeze());
        rb.make_room(&mut buf, 16 * 1024);
        assert_eq!(rb.stats().reclaimed, 1);
        assert_eq!(rb.stats().allocated, 0);
        assert_eq!(buf.len(), 4 * 1024);
    }
}
