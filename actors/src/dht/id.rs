//! Node ids and the XOR metric of Kademlia (BEP 5): the distance between two
//! ids is their bitwise XOR read as a 160-bit big-endian integer, so
//! comparing distances is comparing byte arrays.

use std::fmt;

use protocol::krpc::ID_LEN;
use rand::Rng;

/// A 160-bit DHT node id (also used for info-hashes and lookup targets,
/// which live in the same space).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NodeId(pub [u8; ID_LEN]);

impl NodeId {
    /// A uniformly random id. (BEP 42 ids derived from the external address
    /// are a follow-up; see the module docs of [`crate::dht`].)
    pub fn random(rng: &mut impl Rng) -> NodeId {
        NodeId(rng.random())
    }

    /// `self XOR other`: the distance, comparable with `Ord`.
    pub fn distance(&self, other: &NodeId) -> Distance {
        let mut d = [0u8; ID_LEN];
        for (i, b) in d.iter_mut().enumerate() {
            *b = self.0[i] ^ other.0[i];
        }
        Distance(d)
    }

    /// How many leading bits `self` and `other` share (160 if equal).
    pub fn common_prefix_len(&self, other: &NodeId) -> usize {
        self.distance(other).leading_zeros()
    }

    /// A random id that shares exactly `prefix_len` leading bits with
    /// `self` (the bit after them differs), for refreshing the bucket at
    /// that depth. `prefix_len` of 160 or more returns `self`.
    pub fn random_with_prefix(&self, prefix_len: usize, rng: &mut impl Rng) -> NodeId {
        if prefix_len >= ID_LEN * 8 {
            return *self;
        }
        let mut out: [u8; ID_LEN] = rng.random();
        let full = prefix_len / 8;
        out[..full].copy_from_slice(&self.0[..full]);
        let bit = prefix_len % 8;
        // Keep `bit` leading bits of this byte from self, flip the next one.
        let keep = if bit == 0 { 0 } else { 0xffu8 << (8 - bit) };
        let flip = 0x80u8 >> bit;
        out[full] = (self.0[full] & keep) | (!self.0[full] & flip) | (out[full] & !(keep | flip));
        NodeId(out)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl From<[u8; ID_LEN]> for NodeId {
    fn from(b: [u8; ID_LEN]) -> Self {
        NodeId(b)
    }
}

/// The XOR distance between two ids; smaller is closer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Distance(pub [u8; ID_LEN]);

impl Distance {
    /// Leading zero bits (160 for distance zero).
    pub fn leading_zeros(&self) -> usize {
        let mut n = 0;
        for b in &self.0 {
            if *b == 0 {
                n += 8;
            } else {
                return n + b.leading_zeros() as usize;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn distance_is_xor_and_orders_like_the_integer() {
        let a = NodeId([0; 20]);
        let mut b = [0; 20];
        b[19] = 1;
        let mut c = [0; 20];
        c[0] = 0x80;
        let (b, c) = (NodeId(b), NodeId(c));
        assert_eq!(a.distance(&a).leading_zeros(), 160);
        assert_eq!(a.distance(&b).leading_zeros(), 159);
        assert_eq!(a.distance(&c).leading_zeros(), 0);
        assert!(a.distance(&b) < a.distance(&c));
        assert_eq!(b.distance(&c), c.distance(&b));
        assert_eq!(a.common_prefix_len(&b), 159);
    }

    #[test]
    fn random_with_prefix_shares_exactly_that_many_bits() {
        let mut rng = SmallRng::seed_from_u64(7);
        let me = NodeId::random(&mut rng);
        for len in 0..160 {
            for _ in 0..4 {
                let id = me.random_with_prefix(len, &mut rng);
                assert_eq!(me.common_prefix_len(&id), len, "prefix {len}");
            }
        }
        assert_eq!(me.random_with_prefix(160, &mut rng), me);
    }
}
