//! The announce-list tiers of one torrent (BEP 12).
//!
//! This owns the order in which a torrent's trackers are tried: each tier is
//! shuffled once when the torrent is registered, an announce walks the URLs
//! tier by tier in order, and the URL that answers is moved to the front of
//! its tier so the next announce starts there. The walk moves to the next
//! tier only when every URL of a tier has failed (or is refused by its
//! breaker). A plain value: the caller passes the random source.

use rand::Rng;
use rand::seq::SliceRandom;

/// A position in the walk: index into the tiers flattened in order.
pub type Cursor = usize;

/// The tiers of one torrent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tiers {
    tiers: Vec<Vec<String>>,
}

impl Tiers {
    /// Shuffles each tier once. Empty tiers and URLs already seen earlier
    /// (a tracker listed twice would be announced to twice) are dropped.
    pub fn new(tiers: Vec<Vec<String>>, rng: &mut impl Rng) -> Self {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(tiers.len());
        for tier in tiers {
            let mut tier: Vec<String> = tier
                .into_iter()
                .filter(|u| !u.is_empty() && seen.insert(u.clone()))
                .collect();
            if tier.is_empty() {
                continue;
            }
            tier.shuffle(rng);
            out.push(tier);
        }
        Self { tiers: out }
    }

    /// The tiers in their current order.
    pub fn tiers(&self) -> &[Vec<String>] {
        &self.tiers
    }

    /// How many URLs there are over all tiers.
    pub fn len(&self) -> usize {
        self.tiers.iter().map(Vec::len).sum()
    }

    /// Whether there is no URL at all.
    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }

    /// The URL at `cursor` in walk order, or `None` past the end.
    pub fn get(&self, cursor: Cursor) -> Option<&str> {
        let (t, i) = self.locate(cursor)?;
        Some(&self.tiers[t][i])
    }

    /// The tier index of `cursor`.
    pub fn tier_of(&self, cursor: Cursor) -> Option<usize> {
        self.locate(cursor).map(|(t, _)| t)
    }

    /// Every URL in walk order.
    pub fn urls(&self) -> impl Iterator<Item = &str> {
        self.tiers.iter().flatten().map(String::as_str)
    }

    fn locate(&self, mut cursor: Cursor) -> Option<(usize, usize)> {
        for (t, tier) in self.tiers.iter().enumerate() {
            if cursor < tier.len() {
                return Some((t, cursor));
            }
            cursor -= tier.len();
        }
        None
    }

    /// The URL at `cursor` answered: move it to the front of its tier
    /// (BEP 12), so the next walk starts with it.
    pub fn promote(&mut self, cursor: Cursor) {
        if let Some((t, i)) = self.locate(cursor) {
            let url = self.tiers[t].remove(i);
            self.tiers[t].insert(0, url);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn tiers(spec: &[&[&str]]) -> Vec<Vec<String>> {
        spec.iter()
            .map(|t| t.iter().map(|s| (*s).to_owned()).collect())
            .collect()
    }

    fn walk(t: &Tiers) -> Vec<String> {
        (0..).map_while(|c| t.get(c)).map(str::to_owned).collect()
    }

    #[test]
    fn tiers_are_walked_in_order_and_shuffled_within() {
        let mut rng = SmallRng::seed_from_u64(7);
        let t = Tiers::new(tiers(&[&["a", "b", "c"], &["d"], &["e", "f"]]), &mut rng);
        let order = walk(&t);
        assert_eq!(order.len(), 6);
        let mut first = order[..3].to_vec();
        first.sort_unstable();
        assert_eq!(first, ["a", "b", "c"]);
        assert_eq!(order[3], "d");
        let mut last = order[4..].to_vec();
        last.sort_unstable();
        assert_eq!(last, ["e", "f"]);
        assert_eq!(t.tier_of(0), Some(0));
        assert_eq!(t.tier_of(3), Some(1));
        assert_eq!(t.tier_of(5), Some(2));
        assert_eq!(t.tier_of(6), None);
    }

    #[test]
    fn shuffle_mixes_a_tier_for_some_seed() {
        let spec = tiers(&[&["a", "b", "c", "d", "e"]]);
        let orders: std::collections::HashSet<Vec<String>> = (0..20)
            .map(|seed| {
                let t = Tiers::new(spec.clone(), &mut SmallRng::seed_from_u64(seed));
                walk(&t)
            })
            .collect();
        assert!(orders.len() > 1, "shuffle never changed the order");
    }

    #[test]
    fn order_is_stable_between_walks_until_a_promotion() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut t = Tiers::new(tiers(&[&["a", "b", "c"], &["d", "e"]]), &mut rng);
        let before = walk(&t);
        assert_eq!(walk(&t), before);
        // The third URL of tier 0 answers: it moves to the front of tier 0.
        t.promote(2);
        let after = walk(&t);
        assert_eq!(after[0], before[2]);
        assert_eq!(after[1], before[0]);
        assert_eq!(after[2], before[1]);
        assert_eq!(after[3..], before[3..]);
        // Promoting in the second tier never moves it into the first.
        t.promote(4);
        let again = walk(&t);
        assert_eq!(again[3], before[4]);
        assert_eq!(again[4], before[3]);
        assert_eq!(again[..3], after[..3]);
    }

    #[test]
    fn empty_tiers_and_duplicates_are_dropped() {
        let mut rng = SmallRng::seed_from_u64(3);
        let t = Tiers::new(tiers(&[&[], &["a", "a", ""], &["a", "b"]]), &mut rng);
        assert_eq!(t.tiers(), &tiers(&[&["a"], &["b"]])[..]);
        assert_eq!(t.len(), 2);
        assert!(!t.is_empty());
        assert!(Tiers::new(vec![vec![]], &mut rng).is_empty());
        // Out-of-range promotion is a no-op.
        let mut t2 = t.clone();
        t2.promote(9);
        assert_eq!(t2, t);
    }
}
