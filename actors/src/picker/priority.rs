//! Priorities: which pieces the picker wants, and in which order.
//!
//! Every piece has a level from [`Priority`]: the highest priority of the
//! files it holds bytes of ([`piece_priorities`]), so a piece shared by a
//! high and a low file is high, and a piece is skipped only when every file
//! in it is. The picker starts fresh pieces level by level from the top and
//! keeps rarest-first (or sequential) within a level. Level 0 pieces are
//! never started, count for neither interest nor completion.
//!
//! Above the levels sit the *time-critical* pieces (libtorrent's
//! `set_piece_deadline`): a streaming reader's piece and its read-ahead
//! window. They are picked first, in the order given, whatever their level
//! (a stream of an unselected file fetches what the reader needs, and those
//! bytes go to the part file); clearing them puts each piece back to its
//! level.
//!
//! A change of level moves a fresh piece between buckets in O(1); the
//! per-peer interest counts are adjusted for the pieces whose "wanted"
//! flag flipped, at O(peers) per such piece.

use std::ops::Range;

use super::{NOT_CRITICAL, NOT_FRESH, PeerHas, Picker, PickerError};

/// Number of priority levels (skip, low, normal, high).
pub const LEVELS: usize = 4;

/// How much a file (and so its pieces) is wanted.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Priority {
    /// Not wanted: never requested (unless a stream reads it), not created.
    Skip = 0,
    /// After every normal and high piece.
    Low = 1,
    /// The default.
    #[default]
    Normal = 2,
    /// Before every normal and low piece.
    High = 3,
}

impl Priority {
    /// The level as stored in resume data; values above 3 are refused.
    pub fn from_level(level: u8) -> Option<Priority> {
        Some(match level {
            0 => Priority::Skip,
            1 => Priority::Low,
            2 => Priority::Normal,
            3 => Priority::High,
            _ => return None,
        })
    }

    /// Lowercase name, as the command line and JSON spell it.
    pub fn name(self) -> &'static str {
        match self {
            Priority::Skip => "skip",
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "skip" => Ok(Priority::Skip),
            "low" => Ok(Priority::Low),
            "normal" => Ok(Priority::Normal),
            "high" => Ok(Priority::High),
            other => Err(format!(
                "`{other}` is not a priority (skip, low, normal, high)"
            )),
        }
    }
}

/// The level of each of `pieces` pieces, given each file's range of pieces
/// and priority: the highest priority among the files a piece holds bytes
/// of (pieces of no file at all, only padding, are skipped).
pub fn piece_priorities(
    pieces: u32,
    files: impl IntoIterator<Item = (Range<u32>, Priority)>,
) -> Vec<Priority> {
    let mut out = vec![Priority::Skip; pieces as usize];
    for (range, prio) in files {
        let end = range.end.min(pieces);
        for p in range.start.min(end)..end {
            let slot = &mut out[p as usize];
            *slot = (*slot).max(prio);
        }
    }
    out
}

impl Picker {
    /// Sets every piece's level (one per piece). Pieces already started
    /// stay started whatever their new level: they are finished, so the
    /// buffer budget their blocks hold is always returned.
    pub fn set_piece_priorities(&mut self, levels: &[Priority]) -> Result<(), PickerError> {
        if levels.len() != self.geo.pieces as usize {
            return Err(PickerError::BitfieldLength {
                got: levels.len().min(u32::MAX as usize) as u32,
                expected: self.geo.pieces,
            });
        }
        for (p, level) in levels.iter().enumerate() {
            let p = p as u32;
            if self.prio[p as usize] != *level as u8 {
                self.update_piece(p, *level as u8, self.crit_rank[p as usize]);
            }
        }
        Ok(())
    }

    /// Makes exactly `pieces` time-critical, in this order (earlier first):
    /// they are picked before anything else. Pieces we have, pieces out of
    /// range and repeats are ignored. An empty list clears the set.
    pub fn set_time_critical(&mut self, pieces: &[u32]) {
        let old: Vec<u32> = self.critical.iter().map(|&(_, p)| p).collect();
        for p in old {
            self.update_piece(p, self.prio[p as usize], NOT_CRITICAL);
        }
        for (rank, &p) in pieces.iter().enumerate() {
            let ok = p < self.geo.pieces
                && !self.have.get(p)
                && self.crit_rank[p as usize] == NOT_CRITICAL;
            if ok {
                self.update_piece(p, self.prio[p as usize], rank as u32);
            }
        }
    }

    /// Level of piece `index` (skip past the end).
    pub fn piece_priority(&self, index: u32) -> Priority {
        self.prio
            .get(index as usize)
            .and_then(|l| Priority::from_level(*l))
            .unwrap_or(Priority::Skip)
    }

    /// Whether piece `index` is time-critical now.
    pub fn is_time_critical(&self, index: u32) -> bool {
        self.crit_rank
            .get(index as usize)
            .is_some_and(|r| *r != NOT_CRITICAL)
    }

    /// Pieces above level 0 not verified yet.
    pub fn missing_wanted(&self) -> u32 {
        self.missing_wanted
    }

    /// Whether some piece is wanted and missing: of the selection, or
    /// time-critical for a stream.
    pub fn needs_anything(&self) -> bool {
        !self.need.none()
    }

    /// Whether every piece above level 0 is verified: the download of the
    /// selection is complete.
    pub fn wanted_complete(&self) -> bool {
        self.missing_wanted == 0
    }

    /// A verified piece leaves the time-critical set.
    pub(super) fn uncritical(&mut self, index: u32) {
        let rank = self.crit_rank[index as usize];
        if rank != NOT_CRITICAL {
            self.critical.remove(&(rank, index));
            self.crit_rank[index as usize] = NOT_CRITICAL;
        }
    }

    /// Gives piece `p` level `level` and time-critical rank `rank`, keeping
    /// buckets, the wanted set, the peers' interest counts and the count of
    /// pickable blocks in step.
    fn update_piece(&mut self, p: u32, level: u8, rank: u32) {
        let i = p as usize;
        let fresh = self.pos[i] != NOT_FRESH;
        let old_level = self.prio[i];
        if fresh && old_level != level {
            self.bucket_remove(p);
        }
        let old_rank = self.crit_rank[i];
        if old_rank != NOT_CRITICAL {
            self.critical.remove(&(old_rank, p));
        }
        self.crit_rank[i] = rank;
        if rank != NOT_CRITICAL {
            self.critical.insert((rank, p));
        }
        self.prio[i] = level;
        if fresh && old_level != level {
            self.bucket_insert(p);
        }
        if self.have.get(p) {
            return;
        }
        match (old_level > 0, level > 0) {
            (false, true) => self.missing_wanted += 1,
            (true, false) => self.missing_wanted -= 1,
            _ => {}
        }
        let now_needed = level > 0 || rank != NOT_CRITICAL;
        if self.need.set(p, now_needed) == now_needed {
            return;
        }
        for st in self.peers.values_mut() {
            if let PeerHas::Some(b) = &st.has
                && b.get(p)
            {
                if now_needed {
                    st.wanted += 1;
                } else {
                    st.wanted -= 1;
                }
            }
        }
        if fresh {
            let blocks = u64::from(self.geo.blocks_in(p));
            if now_needed {
                self.unassigned += blocks;
            } else {
                self.unassigned -= blocks;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_piece_takes_the_highest_priority_of_its_files() {
        let levels = piece_priorities(
            6,
            [
                (0..2, Priority::Low),
                (1..3, Priority::High),
                (3..3, Priority::High), // a zero-length file
                (3..5, Priority::Skip),
                (4..9, Priority::Normal), // clipped
            ],
        );
        use Priority::*;
        assert_eq!(levels, vec![Low, High, High, Skip, Normal, Normal]);
        assert_eq!("high".parse::<Priority>(), Ok(High));
        assert!("urgent".parse::<Priority>().is_err());
        for p in [Skip, Low, Normal, High] {
            assert_eq!(Priority::from_level(p as u8), Some(p));
            assert_eq!(p.name().parse::<Priority>(), Ok(p));
        }
        assert_eq!(Priority::from_level(4), None);
    }
}
