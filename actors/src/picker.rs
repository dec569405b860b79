//! The piece picker of one torrent: which block to request from which peer,
//! and the assembly of received blocks into pieces.
//!
//! It owns:
//!
//! - **availability**: how many connected peers have each piece, from their
//!   bitfields, HAVEs and HAVE ALL / HAVE NONE (BEP 6). Peers that have every
//!   piece are counted once in `seeds` rather than once per piece, so a seed
//!   connecting or leaving costs O(1), not O(pieces).
//! - **block assignment**: every block of a missing piece is in exactly one of
//!   these states: in a *fresh* piece (nothing requested yet), *free* in a
//!   partial piece, *requested* from one peer (from up to
//!   `1 + endgame_extra_requesters` peers in endgame), or *received*.
//! - **piece assembly**: received blocks are kept (as `Bytes`, no copy) until
//!   the piece is complete, then handed back in order for hashing, together
//!   with the record of which peers sent which blocks.
//! - **hash failure strikes and bans**, with smart-ban evidence (as
//!   libtorrent does): a failed piece that one peer sent alone is a strike
//!   against it; a failed piece that several peers sent strikes no one
//!   (an honest peer that shared a piece with a liar must not pay for it):
//!   each block's digest is kept with its sender, the piece's eventual good
//!   copy convicts every sender of a block that differs (banned at once),
//!   and meanwhile every contributor is *on parole*: it gets only whole
//!   pieces to itself (it starts them, no one else takes their blocks), so
//!   its next failure is its own. A piece it completes alone that passes
//!   ends its parole.
//!
//! Picking order for one peer: time-critical pieces first (a streaming
//! reader's window, in the order [`Picker::set_time_critical`] gave), then
//! blocks still free in partial pieces, higher priority first (so pieces
//! complete and can be shared sooner), then a fresh piece of the highest
//! priority level the peer can serve, chosen rarest-first with a random
//! tie-break within the level, or lowest index first in
//! [`Strategy::Sequential`]. Pieces of priority 0 (only unselected files)
//! are never started unless time-critical, and interest counts only the
//! pieces we want; see [`priority`]. When no block anywhere is left unrequested the
//! picker is in *endgame*: it hands out blocks that are already requested
//! from someone else, oldest request first, to at most
//! `endgame_extra_requesters` extra peers per block, and when one copy
//! arrives it names the other requesters so the caller can cancel.
//!
//! Rarest-first without O(pieces) scans: fresh pieces live in buckets indexed
//! by priority level and availability (seeds excluded, they add the same to every piece), with
//! each piece's position in its bucket so a HAVE moves it in O(1). A pick
//! walks the buckets from the rarest, starting each at a random offset (the
//! tie-break), and stops at the first piece the peer has. A peer that is not
//! a seed cannot have a piece of availability 0, so that bucket is skipped
//! for it.
//!
//! Plain struct with time passed in; the randomness is a seeded `SmallRng`
//! given at construction, so tests are deterministic. Every index and block
//! that comes from a remote peer is checked before use: a bad one is an
//! error value or [`Received::Invalid`], never a panic.

mod bitfield;
pub mod priority;
#[cfg(test)]
mod tests;

pub use bitfield::{Bitfield, BitfieldError};
pub use priority::{LEVELS, Priority};

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use rand::Rng;
use rand::rngs::SmallRng;

/// The one peer that sent every block of `partial`, if one did.
fn sole_sender(partial: &Partial) -> Option<PeerId> {
    let mut only = None;
    for slot in &partial.slots {
        match slot {
            Slot::Received { from, .. } if only.is_none_or(|o| o == *from) => only = Some(*from),
            _ => return None,
        }
    }
    only
}

/// SHA-1 of one block, for smart-ban evidence.
fn sha1_of(block: &Bytes) -> [u8; 20] {
    storage::sha1_of(std::slice::from_ref(block))
}

/// Size of every requested block except the last one of a piece.
pub const BLOCK_SIZE: u32 = 16 * 1024;

/// A peer connection, as the caller chooses to name it. Keys should not be
/// reused for different connections: strikes and bans stay attached to the
/// key after the peer is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

/// One block of a piece, as it appears in REQUEST, PIECE and CANCEL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Block {
    /// Piece index.
    pub piece: u32,
    /// Byte offset inside the piece, a multiple of [`BLOCK_SIZE`].
    pub begin: u32,
    /// Length in bytes: [`BLOCK_SIZE`], or less for a piece's last block.
    pub length: u32,
}

/// Order in which fresh pieces are started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Fewest peers first, random among equals (swarm health).
    #[default]
    RarestFirst,
    /// Lowest index first (streaming, or a disk image written in order).
    Sequential,
}

/// Tuning of the picker. These become named config values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PickerConfig {
    /// Order in which fresh pieces are started. Default rarest-first.
    pub strategy: Strategy,
    /// In endgame, how many peers beyond the first may be asked for the same
    /// block. Default 2: enough to route around one stalled peer without
    /// tripling the tail of the download.
    pub endgame_extra_requesters: u32,
    /// Failed pieces a peer may send alone before it is banned (a failed
    /// piece of several senders strikes no one; smart ban judges it).
    /// Default 3. 0 disables banning.
    pub max_strikes: u32,
    /// How many blocks each peer remembers as recently un-requested (timed
    /// out, rejected, choked, cancelled in endgame): such a block arriving
    /// late is accepted or dropped as a duplicate instead of being taken for
    /// an unrequested block. Default 512, twice the largest pipeline.
    pub released_memory: usize,
}

impl Default for PickerConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::RarestFirst,
            endgame_extra_requesters: 2,
            max_strikes: 3,
            released_memory: 512,
        }
    }
}

/// A call the picker cannot carry out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickerError {
    /// Piece count, piece length and total length disagree.
    #[error(
        "{pieces} pieces of {piece_length} bytes cannot make a torrent of {total_length} bytes"
    )]
    Layout {
        /// Piece count given.
        pieces: u32,
        /// Piece length given.
        piece_length: u32,
        /// Total length given.
        total_length: u64,
    },
    /// A bitfield (ours or a peer's) has the wrong number of pieces.
    #[error("bitfield of {got} pieces for a torrent of {expected}")]
    BitfieldLength {
        /// Pieces in the bitfield.
        got: u32,
        /// Pieces in the torrent.
        expected: u32,
    },
    /// A piece index (from a HAVE, say) past the last piece.
    #[error("piece {index} out of range (torrent has {pieces})")]
    PieceOutOfRange {
        /// The index given.
        index: u32,
        /// Pieces in the torrent.
        pieces: u32,
    },
    /// `piece_verified` or `piece_failed` for a piece that was not handed out
    /// for hashing.
    #[error("piece {0} is not awaiting a hash result")]
    NotAwaitingHash(u32),
}

/// What a received block was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// The block was needed and is stored.
    Accepted {
        /// Other peers that had been asked for this block (endgame, or a
        /// late answer to a request already given to someone else): send each
        /// a CANCEL for it.
        cancel: Vec<PeerId>,
        /// Set when this block completed its piece: hash it, then call
        /// [`Picker::piece_verified`] or [`Picker::piece_failed`].
        complete: Option<CompletePiece>,
    },
    /// We already have this block (or its piece): drop it.
    Duplicate,
    /// We never asked this peer for this block (including the same peer
    /// sending a block twice): waste to drop, as libtorrent does, not a
    /// reason to lose the peer.
    Unrequested,
    /// The block does not fit the torrent's layout (bad index, offset or
    /// length, or data of another length): a protocol violation; the caller
    /// disconnects the peer.
    Invalid,
}

/// A piece whose blocks have all arrived, ready for hashing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletePiece {
    /// The piece index, whose expected hash the caller looks up.
    pub index: u32,
    /// The blocks in order; their lengths add up to the piece length.
    pub blocks: Vec<Bytes>,
}

/// The outcome of a failed hash check.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HashFailure {
    /// Every peer that sent a block of the piece. A sole contributor got a
    /// strike; several got none and are on parole.
    pub contributors: Vec<PeerId>,
    /// Contributors that reached `max_strikes` with this failure: disconnect
    /// them and never reconnect.
    pub newly_banned: Vec<PeerId>,
}

/// Piece and block sizes of a torrent.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    pieces: u32,
    piece_length: u32,
    total_length: u64,
}

impl Geometry {
    fn piece_size(&self, piece: u32) -> u32 {
        if piece + 1 == self.pieces {
            // Checked at construction: the last piece is 1..=piece_length.
            (self.total_length - u64::from(piece) * u64::from(self.piece_length)) as u32
        } else {
            self.piece_length
        }
    }

    fn blocks_in(&self, piece: u32) -> u32 {
        self.piece_size(piece).div_ceil(BLOCK_SIZE)
    }

    fn block(&self, piece: u32, i: u32) -> Block {
        let begin = i * BLOCK_SIZE;
        Block {
            piece,
            begin,
            length: BLOCK_SIZE.min(self.piece_size(piece) - begin),
        }
    }

    /// Whether `b` is exactly one of the blocks the picker hands out.
    fn valid(&self, b: Block) -> bool {
        b.piece < self.pieces
            && b.begin % BLOCK_SIZE == 0
            && b.begin / BLOCK_SIZE < self.blocks_in(b.piece)
            && self.block(b.piece, b.begin / BLOCK_SIZE) == b
    }
}

/// What a peer has.
#[derive(Clone, Debug)]
enum PeerHas {
    /// Every piece (HAVE ALL, or a full bitfield): counted in `seeds`.
    All,
    /// These pieces: each counted in `avail`.
    Some(Bitfield),
}

#[derive(Clone, Debug)]
struct PeerState {
    has: PeerHas,
    /// Pieces this peer has that we lack (only kept for `PeerHas::Some`).
    wanted: u32,
    /// Blocks requested from this peer and not yet answered.
    outstanding: BTreeSet<Block>,
    /// Blocks recently taken back from this peer, oldest first, bounded.
    released: VecDeque<Block>,
}

impl PeerState {
    fn has(&self, piece: u32) -> bool {
        match &self.has {
            PeerHas::All => true,
            PeerHas::Some(b) => b.get(piece),
        }
    }

    fn remember_released(&mut self, block: Block, cap: usize) {
        if cap == 0 {
            return;
        }
        while self.released.len() >= cap {
            self.released.pop_front();
        }
        self.released.push_back(block);
    }

    fn forget_released(&mut self, block: Block) -> bool {
        match self.released.iter().position(|b| *b == block) {
            Some(i) => {
                self.released.remove(i);
                true
            }
            None => false,
        }
    }
}

#[derive(Clone, Debug)]
enum Slot {
    /// Not received. `requesters` empty means free.
    Open {
        requesters: Vec<PeerId>,
        /// When the block was first requested from its current requesters.
        since: Option<Instant>,
    },
    /// Received from `from`; `data` is taken when the piece completes.
    Received { from: PeerId, data: Option<Bytes> },
}

#[derive(Clone, Debug)]
struct Partial {
    slots: Vec<Slot>,
    /// Open slots without requesters.
    free: u32,
    /// Received slots.
    received: u32,
    /// Every block received; handed out for hashing.
    hashing: bool,
    /// Started by a peer on parole: only it takes its blocks.
    owner: Option<PeerId>,
}

/// Marks a piece that is not in any availability bucket.
const NOT_FRESH: u32 = u32::MAX;
/// Marks a piece that is not time-critical.
const NOT_CRITICAL: u32 = u32::MAX;

/// The piece picker of one torrent. See the module documentation.
#[derive(Debug)]
pub struct Picker {
    config: PickerConfig,
    rng: SmallRng,
    geo: Geometry,
    /// Verified pieces.
    have: Bitfield,
    /// Per piece: peers with a bitfield that have it (seeds not included).
    avail: Vec<u32>,
    /// Peers that have every piece.
    seeds: u32,
    /// Fresh pieces (missing, nothing requested) by priority level, then
    /// by `avail`.
    buckets: [Vec<Vec<u32>>; LEVELS],
    /// Per piece: its index in `buckets[prio][avail]`, or `NOT_FRESH`.
    pos: Vec<u32>,
    /// Per piece: its priority level, 0 (not wanted) to `LEVELS - 1`.
    prio: Vec<u8>,
    /// Per piece: its rank among the time-critical pieces, or `NOT_CRITICAL`.
    crit_rank: Vec<u32>,
    /// Time-critical pieces by rank.
    critical: BTreeSet<(u32, u32)>,
    /// Pieces we lack and want (priority above 0, or time-critical): what
    /// makes a peer interesting.
    need: Bitfield,
    /// Pieces we lack whose priority is above 0: completion waits for these.
    missing_wanted: u32,
    /// Pieces with at least one block requested or received, not verified.
    partials: BTreeMap<u32, Partial>,
    /// Partials (not hashing) with a free slot.
    open_partials: BTreeSet<u32>,
    /// Blocks that may be picked now: free blocks of partial pieces, and
    /// every block of fresh pieces in `need`.
    unassigned: u64,
    /// Per level: no fresh piece of that level below this index
    /// (sequential strategy).
    seq_cursor: [u32; LEVELS],
    peers: BTreeMap<PeerId, PeerState>,
    /// Hash-failure strikes, kept after a peer is gone.
    strikes: BTreeMap<PeerId, u32>,
    banned: BTreeSet<PeerId>,
    /// Failed pieces that had several contributors: who sent which block,
    /// and its SHA-1, to compare once the piece passes (smart ban).
    evidence: BTreeMap<u32, Vec<(PeerId, u32, [u8; 20])>>,
    /// Contributors to a failed piece of several contributors, until a
    /// piece they sent alone passes: they download whole pieces alone.
    parole: BTreeSet<PeerId>,
    /// Set during a pick that ignores parole (see `pick_with`).
    relaxed: bool,
}

impl Picker {
    /// A picker for a torrent of `pieces` pieces of `piece_length` bytes
    /// (the last one shorter if `total_length` says so), of which the pieces
    /// set in `have` are already verified.
    pub fn new(
        pieces: u32,
        piece_length: u32,
        total_length: u64,
        have: &Bitfield,
        config: PickerConfig,
        rng: SmallRng,
    ) -> Result<Self, PickerError> {
        let layout_ok =
            piece_length > 0 && total_length.div_ceil(u64::from(piece_length)) == u64::from(pieces);
        if !layout_ok {
            return Err(PickerError::Layout {
                pieces,
                piece_length,
                total_length,
            });
        }
        if have.len() != pieces {
            return Err(PickerError::BitfieldLength {
                got: have.len(),
                expected: pieces,
            });
        }
        let geo = Geometry {
            pieces,
            piece_length,
            total_length,
        };
        let mut pos = vec![NOT_FRESH; pieces as usize];
        let mut fresh = Vec::with_capacity((pieces - have.count()) as usize);
        let mut unassigned = 0u64;
        for p in 0..pieces {
            if !have.get(p) {
                pos[p as usize] = fresh.len() as u32;
                fresh.push(p);
                unassigned += u64::from(geo.blocks_in(p));
            }
        }
        let mut need = Bitfield::full(pieces);
        for p in have.iter_ones() {
            need.set(p, false);
        }
        let mut buckets: [Vec<Vec<u32>>; LEVELS] = Default::default();
        buckets[Priority::Normal as usize] = vec![fresh];
        Ok(Self {
            config,
            rng,
            geo,
            have: have.clone(),
            avail: vec![0; pieces as usize],
            seeds: 0,
            buckets,
            pos,
            prio: vec![Priority::Normal as u8; pieces as usize],
            crit_rank: vec![NOT_CRITICAL; pieces as usize],
            critical: BTreeSet::new(),
            missing_wanted: need.count(),
            need,
            partials: BTreeMap::new(),
            open_partials: BTreeSet::new(),
            unassigned,
            seq_cursor: [0; LEVELS],
            peers: BTreeMap::new(),
            strikes: BTreeMap::new(),
            banned: BTreeSet::new(),
            evidence: BTreeMap::new(),
            parole: BTreeSet::new(),
            relaxed: false,
        })
    }

    // ---- availability -------------------------------------------------

    fn check_piece(&self, index: u32) -> Result<(), PickerError> {
        if index < self.geo.pieces {
            Ok(())
        } else {
            Err(PickerError::PieceOutOfRange {
                index,
                pieces: self.geo.pieces,
            })
        }
    }

    fn entry(&mut self, peer: PeerId) -> &mut PeerState {
        let pieces = self.geo.pieces;
        self.peers.entry(peer).or_insert_with(|| PeerState {
            has: PeerHas::Some(Bitfield::new(pieces)),
            wanted: 0,
            outstanding: BTreeSet::new(),
            released: VecDeque::new(),
        })
    }

    fn bucket_insert(&mut self, piece: u32) {
        let a = self.avail[piece as usize] as usize;
        let level = self.prio[piece as usize] as usize;
        let buckets = &mut self.buckets[level];
        if buckets.len() <= a {
            buckets.resize_with(a + 1, Vec::new);
        }
        self.pos[piece as usize] = buckets[a].len() as u32;
        buckets[a].push(piece);
        let cursor = &mut self.seq_cursor[level];
        *cursor = (*cursor).min(piece);
    }

    fn bucket_remove(&mut self, piece: u32) {
        let a = self.avail[piece as usize] as usize;
        let i = self.pos[piece as usize] as usize;
        let bucket = &mut self.buckets[self.prio[piece as usize] as usize][a];
        bucket.swap_remove(i);
        if let Some(&moved) = bucket.get(i) {
            self.pos[moved as usize] = i as u32;
        }
        self.pos[piece as usize] = NOT_FRESH;
    }

    fn avail_change(&mut self, piece: u32, up: bool) {
        let fresh = self.pos[piece as usize] != NOT_FRESH;
        if fresh {
            self.bucket_remove(piece);
        }
        let a = &mut self.avail[piece as usize];
        *a = if up { *a + 1 } else { a.saturating_sub(1) };
        if fresh {
            self.bucket_insert(piece);
        }
    }

    /// Drops what `peer` was known to have from the availability counts,
    /// leaving it with an empty bitfield.
    fn forget_has(&mut self, peer: PeerId) {
        let empty = Bitfield::new(self.geo.pieces);
        let Some(st) = self.peers.get_mut(&peer) else {
            return;
        };
        st.wanted = 0;
        match std::mem::replace(&mut st.has, PeerHas::Some(empty)) {
            PeerHas::All => self.seeds -= 1,
            PeerHas::Some(old) => {
                for p in old.iter_ones() {
                    self.avail_change(p, false);
                }
            }
        }
    }

    /// The peer's BITFIELD message (replaces anything known before). A full
    /// bitfield makes the peer a seed.
    pub fn peer_bitfield(&mut self, peer: PeerId, bitfield: &Bitfield) -> Result<(), PickerError> {
        if bitfield.len() != self.geo.pieces {
            return Err(PickerError::BitfieldLength {
                got: bitfield.len(),
                expected: self.geo.pieces,
            });
        }
        if bitfield.is_full() && !bitfield.is_empty() {
            self.peer_have_all(peer);
            return Ok(());
        }
        self.entry(peer);
        self.forget_has(peer);
        for p in bitfield.iter_ones() {
            self.avail_change(p, true);
        }
        let wanted = bitfield.count_and(&self.need);
        let st = self.entry(peer);
        st.has = PeerHas::Some(bitfield.clone());
        st.wanted = wanted;
        Ok(())
    }

    /// How many pieces the peer has announced.
    pub fn peer_piece_count(&self, peer: PeerId) -> u32 {
        match self.peers.get(&peer).map(|st| &st.has) {
            Some(PeerHas::All) => self.geo.pieces,
            Some(PeerHas::Some(b)) => b.count(),
            None => 0,
        }
    }

    /// The peer's HAVE message; `Ok(false)` if it had announced that piece
    /// already (nothing changes).
    pub fn peer_have(&mut self, peer: PeerId, index: u32) -> Result<bool, PickerError> {
        self.check_piece(index)?;
        let needed = self.need.get(index);
        let st = self.entry(peer);
        let newly = match &mut st.has {
            PeerHas::All => false,
            PeerHas::Some(b) => !b.set(index, true),
        };
        if newly {
            if needed {
                st.wanted += 1;
            }
            self.avail_change(index, true);
        }
        Ok(newly)
    }

    /// The peer's HAVE ALL message (BEP 6).
    pub fn peer_have_all(&mut self, peer: PeerId) {
        self.entry(peer);
        self.forget_has(peer);
        self.entry(peer).has = PeerHas::All;
        self.seeds += 1;
    }

    /// The peer's HAVE NONE message (BEP 6).
    pub fn peer_have_none(&mut self, peer: PeerId) {
        self.entry(peer);
        self.forget_has(peer);
    }

    /// The peer disconnected: its pieces leave the availability counts and
    /// its outstanding blocks go back to the pool. Strikes are kept.
    pub fn peer_gone(&mut self, peer: PeerId) {
        let Some(st) = self.peers.get_mut(&peer) else {
            return;
        };
        let outstanding = std::mem::take(&mut st.outstanding);
        for block in outstanding {
            self.unrequest(peer, block);
        }
        self.forget_has(peer);
        self.peers.remove(&peer);
        self.disown(peer);
    }

    /// Pieces `peer` owned (on parole) are open to everyone again.
    fn disown(&mut self, peer: PeerId) {
        for partial in self.partials.values_mut() {
            if partial.owner == Some(peer) {
                partial.owner = None;
            }
        }
    }

    /// Whether `peer` may take blocks of the started piece `piece`: its
    /// own, or nobody's while it is not on parole.
    fn may_take(&self, peer: PeerId, piece: u32) -> bool {
        if self.relaxed {
            return self.partials.contains_key(&piece);
        }
        match self.partials.get(&piece).map(|p| p.owner) {
            Some(Some(owner)) => owner == peer,
            Some(None) => !self.parole.contains(&peer),
            None => false,
        }
    }

    // ---- picking --------------------------------------------------------

    /// Up to `max` blocks to request from `peer` now, recorded as requested
    /// from it. Empty for an unknown or banned peer.
    pub fn pick(&mut self, peer: PeerId, max: usize, now: Instant) -> Vec<Block> {
        self.pick_with(peer, max, now, true)
    }

    /// Like [`Picker::pick`], but only free blocks of pieces already started:
    /// what a peer may still ask for while the buffer budget is paused, since
    /// finishing those pieces is what frees the budget.
    pub fn pick_partial(&mut self, peer: PeerId, max: usize, now: Instant) -> Vec<Block> {
        self.pick_with(peer, max, now, false)
    }

    fn pick_with(&mut self, peer: PeerId, max: usize, now: Instant, fresh: bool) -> Vec<Block> {
        let out = self.pick_inner(peer, max, now, fresh);
        if out.is_empty() && !self.parole.is_empty() {
            // Parole is a preference, not a lock-out: a peer that finds
            // nothing else (near the end, every missing piece started, some
            // by a peer on parole) may share any piece, or a download whose
            // only peers are on parole would stall.
            self.relaxed = true;
            let shared = self.pick_inner(peer, max, now, fresh);
            self.relaxed = false;
            return shared;
        }
        out
    }

    fn pick_inner(&mut self, peer: PeerId, max: usize, now: Instant, fresh: bool) -> Vec<Block> {
        let mut out = Vec::new();
        if max == 0 || self.banned.contains(&peer) {
            return out;
        }
        let Some(st) = self.peers.get(&peer) else {
            return out;
        };
        // 1. Time-critical pieces, in rank order: free blocks of started
        //    ones, and fresh ones started (partial pieces only while the
        //    budget is paused).
        let critical: Vec<u32> = self
            .critical
            .iter()
            .map(|&(_, p)| p)
            .filter(|&p| st.has(p) && !self.have.get(p))
            .collect();
        for p in critical {
            if self.pos[p as usize] != NOT_FRESH {
                if !fresh {
                    continue;
                }
                self.start_piece(p, peer);
            } else if !self.may_take(peer, p) {
                continue;
            }
            self.take_free(peer, p, max, now, &mut out);
            if out.len() >= max {
                return out;
            }
        }
        let Some(st) = self.peers.get(&peer) else {
            return out;
        };
        // 2. Free blocks of pieces already started, higher priority first.
        let mut started: Vec<u32> = self
            .open_partials
            .iter()
            .copied()
            .filter(|&p| st.has(p) && self.may_take(peer, p))
            .collect();
        started.sort_by_key(|&p| std::cmp::Reverse(self.prio[p as usize]));
        for p in started {
            self.take_free(peer, p, max, now, &mut out);
            if out.len() >= max {
                return out;
            }
        }
        if !fresh {
            return out;
        }
        // 3. Fresh pieces, highest level first; level 0 is never started.
        for level in (1..LEVELS).rev() {
            while out.len() < max {
                let next = match self.config.strategy {
                    Strategy::RarestFirst => self.next_rarest(peer, level),
                    Strategy::Sequential => self.next_sequential(peer, level),
                };
                let Some(p) = next else { break };
                self.start_piece(p, peer);
                self.take_free(peer, p, max, now, &mut out);
            }
        }
        // 4. Endgame duplicates.
        if out.len() < max && self.in_endgame() {
            self.take_endgame(peer, max, now, &mut out);
        }
        out
    }

    /// The rarest fresh piece of priority `level` that `peer` has, random
    /// among equals.
    fn next_rarest(&mut self, peer: PeerId, level: usize) -> Option<u32> {
        let st = self.peers.get(&peer)?;
        let first = match &st.has {
            PeerHas::All => 0,
            PeerHas::Some(_) if st.wanted == 0 => return None,
            // A non-seed's own pieces have availability >= 1.
            PeerHas::Some(_) => 1,
        };
        for bucket in self.buckets[level].iter().skip(first) {
            if bucket.is_empty() {
                continue;
            }
            let len = bucket.len();
            let start = self.rng.random_range(0..len);
            for k in 0..len {
                let p = bucket[(start + k) % len];
                if st.has(p) {
                    return Some(p);
                }
            }
        }
        None
    }

    /// The lowest-index fresh piece of priority `level` that `peer` has.
    fn next_sequential(&mut self, peer: PeerId, level: usize) -> Option<u32> {
        let fresh_at =
            |p: u32| self.pos[p as usize] != NOT_FRESH && self.prio[p as usize] as usize == level;
        let mut cursor = self.seq_cursor[level];
        while cursor < self.geo.pieces && !fresh_at(cursor) {
            cursor += 1;
        }
        self.seq_cursor[level] = cursor;
        let st = self.peers.get(&peer)?;
        if matches!(st.has, PeerHas::Some(_)) && st.wanted == 0 {
            return None;
        }
        (cursor..self.geo.pieces).find(|&p| fresh_at(p) && st.has(p))
    }

    /// Moves a fresh piece to the partials, all its blocks free; owned by
    /// `by` if it is on parole.
    fn start_piece(&mut self, piece: u32, by: PeerId) {
        let owner = (!self.relaxed && self.parole.contains(&by)).then_some(by);
        self.bucket_remove(piece);
        let n = self.geo.blocks_in(piece);
        let slots = (0..n)
            .map(|_| Slot::Open {
                requesters: Vec::new(),
                since: None,
            })
            .collect();
        self.partials.insert(
            piece,
            Partial {
                slots,
                free: n,
                received: 0,
                hashing: false,
                owner,
            },
        );
        self.open_partials.insert(piece);
    }

    fn take_free(
        &mut self,
        peer: PeerId,
        piece: u32,
        max: usize,
        now: Instant,
        out: &mut Vec<Block>,
    ) {
        let (Some(partial), Some(st)) = (self.partials.get_mut(&piece), self.peers.get_mut(&peer))
        else {
            return;
        };
        for (i, slot) in partial.slots.iter_mut().enumerate() {
            if out.len() >= max || partial.free == 0 {
                break;
            }
            if let Slot::Open { requesters, since } = slot {
                if requesters.is_empty() {
                    requesters.push(peer);
                    *since = Some(now);
                    partial.free -= 1;
                    self.unassigned -= 1;
                    let block = self.geo.block(piece, i as u32);
                    st.outstanding.insert(block);
                    out.push(block);
                }
            }
        }
        if partial.free == 0 {
            self.open_partials.remove(&piece);
        }
    }

    fn take_endgame(&mut self, peer: PeerId, max: usize, now: Instant, out: &mut Vec<Block>) {
        let Some(st) = self.peers.get_mut(&peer) else {
            return;
        };
        let limit = 1 + self.config.endgame_extra_requesters as usize;
        let mut candidates = Vec::new();
        let parole = self.parole.contains(&peer);
        for (&p, partial) in &self.partials {
            let allowed = match partial.owner {
                _ if self.relaxed => true,
                Some(owner) => owner == peer,
                None => !parole,
            };
            if partial.hashing || !st.has(p) || !allowed {
                continue;
            }
            for (i, slot) in partial.slots.iter().enumerate() {
                if let Slot::Open { requesters, since } = slot {
                    if !requesters.is_empty()
                        && requesters.len() < limit
                        && !requesters.contains(&peer)
                    {
                        candidates.push((requesters.len(), *since, p, i));
                    }
                }
            }
        }
        candidates.sort_unstable();
        for (_, _, p, i) in candidates.into_iter().take(max - out.len()) {
            if let Some(Slot::Open { requesters, since }) = self
                .partials
                .get_mut(&p)
                .and_then(|partial| partial.slots.get_mut(i))
            {
                requesters.push(peer);
                since.get_or_insert(now);
                let block = self.geo.block(p, i as u32);
                st.outstanding.insert(block);
                out.push(block);
            }
        }
    }

    // ---- answers ------------------------------------------------------------

    /// A PIECE message from `peer`. See [`Received`].
    pub fn block_received(&mut self, peer: PeerId, block: Block, data: Bytes) -> Received {
        if !self.geo.valid(block) || data.len() != block.length as usize {
            return Received::Invalid;
        }
        let Some(st) = self.peers.get_mut(&peer) else {
            return Received::Unrequested;
        };
        if !st.outstanding.remove(&block) && !st.forget_released(block) {
            return Received::Unrequested;
        }
        if self.have.get(block.piece) {
            return Received::Duplicate;
        }
        let Some(partial) = self.partials.get_mut(&block.piece) else {
            // A late block of a piece that failed its hash and went back to
            // fresh: simplest to fetch it again with the rest.
            return Received::Duplicate;
        };
        let i = (block.begin / BLOCK_SIZE) as usize;
        let Some(slot) = partial.slots.get_mut(i) else {
            return Received::Invalid;
        };
        let cancel = match slot {
            Slot::Received { .. } => return Received::Duplicate,
            Slot::Open { requesters, .. } => {
                let was_free = requesters.is_empty();
                requesters.retain(|r| *r != peer);
                let others = std::mem::take(requesters);
                if was_free {
                    // A late answer to a request taken back from this peer.
                    partial.free -= 1;
                    self.unassigned -= 1;
                }
                others
            }
        };
        *slot = Slot::Received {
            from: peer,
            data: Some(data),
        };
        partial.received += 1;
        if partial.free == 0 {
            self.open_partials.remove(&block.piece);
        }
        let cap = self.config.released_memory;
        for other in &cancel {
            if let Some(o) = self.peers.get_mut(other) {
                o.outstanding.remove(&block);
                o.remember_released(block, cap);
            }
        }
        let complete = if partial.received as usize == partial.slots.len() {
            partial.hashing = true;
            let blocks = partial
                .slots
                .iter_mut()
                .filter_map(|s| match s {
                    Slot::Received { data, .. } => data.take(),
                    Slot::Open { .. } => None,
                })
                .collect();
            Some(CompletePiece {
                index: block.piece,
                blocks,
            })
        } else {
            None
        };
        Received::Accepted { cancel, complete }
    }

    /// Takes `block` off `peer`'s requesters; frees the slot if it was the last.
    fn unrequest(&mut self, peer: PeerId, block: Block) {
        let Some(partial) = self.partials.get_mut(&block.piece) else {
            return;
        };
        let i = (block.begin / BLOCK_SIZE) as usize;
        if let Some(Slot::Open { requesters, since }) = partial.slots.get_mut(i) {
            let before = requesters.len();
            requesters.retain(|r| *r != peer);
            if before > 0 && requesters.is_empty() {
                *since = None;
                partial.free += 1;
                self.unassigned += 1;
                self.open_partials.insert(block.piece);
            }
        }
    }

    /// Takes back one outstanding request of `peer`; `false` if it had none
    /// for that block.
    fn release(&mut self, peer: PeerId, block: Block) -> bool {
        let cap = self.config.released_memory;
        let Some(st) = self.peers.get_mut(&peer) else {
            return false;
        };
        if !st.outstanding.remove(&block) {
            return false;
        }
        st.remember_released(block, cap);
        self.unrequest(peer, block);
        true
    }

    /// The request for `block` to `peer` timed out: the block goes back to
    /// the pool (a late answer is still accepted). `false` if it was not
    /// outstanding.
    pub fn request_timed_out(&mut self, peer: PeerId, block: Block) -> bool {
        self.release(peer, block)
    }

    /// `peer` rejected the request for `block` (BEP 6): back to the pool.
    /// `false` if it was not outstanding.
    pub fn request_rejected(&mut self, peer: PeerId, block: Block) -> bool {
        self.release(peer, block)
    }

    /// `peer` choked us: all its outstanding requests go back to the pool
    /// (allowed-fast requests included, for simplicity). Returns them.
    pub fn peer_choked(&mut self, peer: PeerId) -> Vec<Block> {
        let Some(st) = self.peers.get_mut(&peer) else {
            return Vec::new();
        };
        let blocks: Vec<Block> = std::mem::take(&mut st.outstanding).into_iter().collect();
        let cap = self.config.released_memory;
        for &b in &blocks {
            if let Some(st) = self.peers.get_mut(&peer) {
                st.remember_released(b, cap);
            }
            self.unrequest(peer, b);
        }
        // A choked owner would hold its pieces' free blocks from everyone.
        self.disown(peer);
        blocks
    }

    // ---- hash results -----------------------------------------------------

    fn take_hashing(&mut self, index: u32) -> Result<Partial, PickerError> {
        self.check_piece(index)?;
        if !self.partials.get(&index).is_some_and(|p| p.hashing) {
            return Err(PickerError::NotAwaitingHash(index));
        }
        self.partials
            .remove(&index)
            .ok_or(PickerError::NotAwaitingHash(index))
    }

    /// The piece handed out for hashing matched: it is ours. The caller
    /// broadcasts HAVE.
    pub fn piece_verified(&mut self, index: u32) -> Result<(), PickerError> {
        let partial = self.take_hashing(index)?;
        if let Some(only) = sole_sender(&partial) {
            // A whole piece of its own passed: parole is over.
            self.parole.remove(&only);
        }
        self.have.set(index, true);
        if self.prio[index as usize] > 0 {
            self.missing_wanted -= 1;
        }
        if self.need.set(index, false) {
            for st in self.peers.values_mut() {
                if let PeerHas::Some(b) = &st.has {
                    if b.get(index) {
                        st.wanted -= 1;
                    }
                }
            }
        }
        self.uncritical(index);
        Ok(())
    }

    /// The piece handed out for hashing did not match: it goes back to
    /// missing. A peer that sent all of it gets a strike; several senders
    /// go on parole (see the module docs).
    pub fn piece_failed(&mut self, index: u32) -> Result<HashFailure, PickerError> {
        self.piece_failed_inner(index, None)
    }

    /// Like [`Picker::piece_failed`], given the piece's blocks as they were
    /// hashed. When several peers contributed, each block's digest is kept
    /// with its sender; [`Picker::piece_passed`] later tells the culprit
    /// from the innocent.
    pub fn piece_failed_blocks(
        &mut self,
        index: u32,
        blocks: &[Bytes],
    ) -> Result<HashFailure, PickerError> {
        self.piece_failed_inner(index, Some(blocks))
    }

    /// True if an earlier copy of the piece failed its hash: its good copy
    /// must then go through [`Picker::piece_passed`] before it is written.
    pub fn has_evidence(&self, index: u32) -> bool {
        self.evidence.contains_key(&index)
    }

    /// Smart ban: piece `index` passed its hash check with `blocks`. Every
    /// peer that once sent a block of it in a failed attempt is judged: a
    /// block that differs from the good one convicts its sender (banned at
    /// once); the others were never struck for it.
    /// Returns the peers newly banned. Call it when the hash passes, before
    /// [`Picker::piece_verified`].
    pub fn piece_passed(&mut self, index: u32, blocks: &[Bytes]) -> Vec<PeerId> {
        let Some(records) = self.evidence.remove(&index) else {
            return Vec::new();
        };
        let mut convicted = BTreeSet::new();
        for (peer, block, digest) in records {
            let Some(good) = blocks.get(block as usize) else {
                continue;
            };
            if sha1_of(good) != digest {
                convicted.insert(peer);
            }
        }
        let mut newly = Vec::new();
        for peer in convicted {
            self.strikes.insert(peer, self.config.max_strikes.max(1));
            if self.config.max_strikes > 0 && self.banned.insert(peer) {
                newly.push(peer);
            }
        }
        newly
    }

    fn piece_failed_inner(
        &mut self,
        index: u32,
        blocks: Option<&[Bytes]>,
    ) -> Result<HashFailure, PickerError> {
        let partial = self.take_hashing(index)?;
        let senders: Vec<Option<PeerId>> = partial
            .slots
            .iter()
            .map(|s| match s {
                Slot::Received { from, .. } => Some(*from),
                Slot::Open { .. } => None,
            })
            .collect();
        let contributors: BTreeSet<PeerId> = senders.iter().flatten().copied().collect();
        let shared = contributors.len() > 1;
        if shared && let Some(blocks) = blocks {
            let records = self.evidence.entry(index).or_default();
            // Bounded: a few failed attempts' worth per piece.
            if records.len() < senders.len() * 4 {
                for (i, (from, data)) in senders.iter().zip(blocks).enumerate() {
                    if let Some(from) = from {
                        records.push((*from, i as u32, sha1_of(data)));
                    }
                }
            }
        }
        let mut failure = HashFailure::default();
        for peer in contributors {
            failure.contributors.push(peer);
            if shared {
                // No strike: the good copy will tell who lied.
                self.parole.insert(peer);
                continue;
            }
            let strikes = self.strikes.entry(peer).or_insert(0);
            *strikes += 1;
            let limit = self.config.max_strikes;
            if limit > 0 && *strikes >= limit && self.banned.insert(peer) {
                failure.newly_banned.push(peer);
            }
        }
        self.bucket_insert(index);
        if self.need.get(index) {
            self.unassigned += u64::from(self.geo.blocks_in(index));
        }
        Ok(failure)
    }

    // ---- queries ----------------------------------------------------------

    /// Whether piece `index` is verified (false past the end).
    pub fn have(&self, index: u32) -> bool {
        self.have.get(index)
    }

    /// Our verified pieces.
    pub fn have_bitfield(&self) -> &Bitfield {
        &self.have
    }

    /// Pieces not verified yet.
    pub fn missing_count(&self) -> u32 {
        self.geo.pieces - self.have.count()
    }

    /// Whether every piece is verified.
    pub fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    /// Whether `peer` has a piece we lack (send INTERESTED).
    pub fn interesting(&self, peer: PeerId) -> bool {
        match self.peers.get(&peer) {
            None => false,
            Some(PeerState {
                has: PeerHas::All, ..
            }) => !self.need.none(),
            Some(st) => st.wanted > 0,
        }
    }

    /// Whether every missing block is requested or received (and some are
    /// missing): picks now duplicate requests.
    pub fn in_endgame(&self) -> bool {
        self.unassigned == 0 && !self.need.none()
    }

    /// Requests outstanding at `peer`.
    pub fn outstanding_for(&self, peer: PeerId) -> usize {
        self.peers.get(&peer).map_or(0, |st| st.outstanding.len())
    }

    /// Blocks of missing pieces neither requested nor received.
    pub fn unassigned_blocks(&self) -> u64 {
        self.unassigned
    }

    /// Whether `peer` has announced piece `index`.
    pub fn peer_has(&self, peer: PeerId, index: u32) -> bool {
        self.peers.get(&peer).is_some_and(|st| st.has(index))
    }

    /// Peers connected with `index` (0 past the end).
    pub fn availability(&self, index: u32) -> u32 {
        self.avail.get(index as usize).map_or(0, |a| a + self.seeds)
    }

    /// Whether `peer` is on parole: it shared a failed piece and gets only
    /// whole pieces to itself until one passes.
    pub fn on_parole(&self, peer: PeerId) -> bool {
        self.parole.contains(&peer)
    }

    /// Whether `peer` was banned for hash failures.
    pub fn is_banned(&self, peer: PeerId) -> bool {
        self.banned.contains(&peer)
    }

    /// Hash-failure strikes against `peer`.
    pub fn strikes(&self, peer: PeerId) -> u32 {
        self.strikes.get(&peer).copied().unwrap_or(0)
    }

    /// Pieces in the torrent.
    pub fn num_pieces(&self) -> u32 {
        self.geo.pieces
    }

    /// Length of piece `index` in bytes (0 past the end).
    pub fn piece_size(&self, index: u32) -> u32 {
        if index < self.geo.pieces {
            self.geo.piece_size(index)
        } else {
            0
        }
    }

    /// The blocks of piece `index`, in order (empty past the end).
    pub fn blocks_of(&self, index: u32) -> Vec<Block> {
        if index >= self.geo.pieces {
            return Vec::new();
        }
        (0..self.geo.blocks_in(index))
            .map(|i| self.geo.block(index, i))
            .collect()
    }

    /// Checks every internal invariant; panics with a description if one is
    /// broken. For tests.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let n = self.geo.pieces;
        // The wanted set, the completion count and the critical set
        // recomputed from the levels and ranks.
        let mut missing_wanted = 0;
        for p in 0..n {
            let i = p as usize;
            assert!((self.prio[i] as usize) < LEVELS, "level of {p}");
            let critical = self.crit_rank[i] != NOT_CRITICAL;
            if critical {
                assert!(!self.have.get(p), "piece {p} we have is critical");
                assert!(self.critical.contains(&(self.crit_rank[i], p)));
            }
            let needed = !self.have.get(p) && (self.prio[i] > 0 || critical);
            assert_eq!(self.need.get(p), needed, "need of {p}");
            if !self.have.get(p) && self.prio[i] > 0 {
                missing_wanted += 1;
            }
        }
        assert_eq!(missing_wanted, self.missing_wanted, "missing wanted");
        for &(rank, p) in &self.critical {
            assert_eq!(self.crit_rank[p as usize], rank, "rank of {p}");
        }
        // Availability and seeds recomputed from the peers.
        let mut avail = vec![0u32; n as usize];
        let mut seeds = 0;
        for st in self.peers.values() {
            match &st.has {
                PeerHas::All => seeds += 1,
                PeerHas::Some(b) => {
                    for p in b.iter_ones() {
                        avail[p as usize] += 1;
                    }
                    assert_eq!(st.wanted, b.count_and(&self.need), "wanted");
                }
            }
        }
        assert_eq!(avail, self.avail, "availability");
        assert_eq!(seeds, self.seeds, "seeds");
        // Every missing piece is fresh (in its bucket) xor partial.
        let mut fresh = 0usize;
        let mut unassigned = 0u64;
        for p in 0..n {
            let pos = self.pos[p as usize];
            if self.have.get(p) {
                assert_eq!(pos, NOT_FRESH, "have piece {p} fresh");
                assert!(!self.partials.contains_key(&p), "have piece {p} partial");
            } else if let Some(partial) = self.partials.get(&p) {
                assert_eq!(pos, NOT_FRESH, "partial piece {p} fresh");
                assert_eq!(partial.slots.len() as u32, self.geo.blocks_in(p));
                let free = partial
                    .slots
                    .iter()
                    .filter(|s| matches!(s, Slot::Open { requesters, .. } if requesters.is_empty()))
                    .count() as u32;
                let received = partial
                    .slots
                    .iter()
                    .filter(|s| matches!(s, Slot::Received { .. }))
                    .count() as u32;
                assert_eq!(free, partial.free, "free count of {p}");
                assert_eq!(received, partial.received, "received count of {p}");
                assert_eq!(
                    partial.hashing,
                    received as usize == partial.slots.len(),
                    "hashing of {p}"
                );
                assert_eq!(
                    self.open_partials.contains(&p),
                    free > 0,
                    "open_partials of {p}"
                );
                unassigned += u64::from(free);
                for (i, slot) in partial.slots.iter().enumerate() {
                    if let Slot::Open { requesters, .. } = slot {
                        let block = self.geo.block(p, i as u32);
                        assert!(
                            requesters.len() <= 1 + self.config.endgame_extra_requesters as usize
                        );
                        let distinct: BTreeSet<_> = requesters.iter().collect();
                        assert_eq!(distinct.len(), requesters.len(), "duplicate requester");
                        for r in requesters {
                            let st = self.peers.get(r).expect("requester is connected");
                            assert!(
                                st.outstanding.contains(&block),
                                "requester records {block:?}"
                            );
                        }
                    }
                }
            } else {
                assert_ne!(pos, NOT_FRESH, "missing piece {p} lost");
                let level = self.prio[p as usize] as usize;
                assert_eq!(
                    self.buckets[level][self.avail[p as usize] as usize][pos as usize],
                    p
                );
                assert!(self.seq_cursor[level] <= p, "fresh piece {p} below cursor");
                fresh += 1;
                if self.need.get(p) {
                    unassigned += u64::from(self.geo.blocks_in(p));
                }
            }
        }
        let bucketed: usize = self.buckets.iter().flatten().map(Vec::len).sum();
        assert_eq!(bucketed, fresh, "bucket sizes");
        assert_eq!(unassigned, self.unassigned, "unassigned count");
        // Every outstanding request is recorded on its slot.
        for (peer, st) in &self.peers {
            for b in &st.outstanding {
                match self
                    .partials
                    .get(&b.piece)
                    .and_then(|p| p.slots.get((b.begin / BLOCK_SIZE) as usize))
                {
                    Some(Slot::Open { requesters, .. }) => {
                        assert!(requesters.contains(peer), "slot records {peer:?} for {b:?}")
                    }
                    other => panic!("{peer:?} outstanding {b:?} on {other:?}"),
                }
            }
        }
        assert!(self.seq_cursor.iter().all(|c| *c <= n));
    }
}
