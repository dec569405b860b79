//! Tokens for `announce_peer` (BEP 5): a `get_peers` answer carries a token
//! bound to the asker's IP address, and only an `announce_peer` from that
//! address with that token may store a peer. This stops a host from
//! announcing other hosts' addresses, and makes a flood of announces with
//! made-up tokens store nothing.
//!
//! A token is the first 8 bytes of SHA-1(secret, IP). The secret rotates
//! every `rotation` (BEP 5 suggests 5 minutes) and tokens of the current
//! and the previous secret are accepted, so a token lives between one and
//! two rotations (5 to 10 minutes), as BEP 5 says. Nothing is stored per
//! asker: the table costs two secrets however many nodes ask.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use rand::Rng;
use sha1::{Digest, Sha1};

/// Bytes of a token we hand out.
pub const TOKEN_LEN: usize = 8;

/// The two secrets and when the current one was made.
#[derive(Debug, Clone)]
pub struct TokenSecrets {
    current: [u8; 20],
    previous: [u8; 20],
    rotated_at: Instant,
    rotation: Duration,
}

impl TokenSecrets {
    /// Fresh secrets (the previous one random too, so nothing it "signed"
    /// exists).
    pub fn new(rotation: Duration, rng: &mut impl Rng, now: Instant) -> TokenSecrets {
        TokenSecrets {
            current: rng.random(),
            previous: rng.random(),
            rotated_at: now,
            rotation: rotation.max(Duration::from_millis(1)),
        }
    }

    /// Rotates if the current secret is older than `rotation`; after two
    /// rotations' worth of idleness both secrets are replaced, so no token
    /// outlives two rotations.
    pub fn rotate_if_due(&mut self, now: Instant, rng: &mut impl Rng) {
        let age = now.saturating_duration_since(self.rotated_at);
        if age < self.rotation {
            return;
        }
        self.previous = if age >= 2 * self.rotation {
            rng.random()
        } else {
            self.current
        };
        self.current = rng.random();
        self.rotated_at = now;
    }

    /// When the next rotation is due.
    pub fn next_rotation(&self) -> Instant {
        self.rotated_at + self.rotation
    }

    /// The token for `ip` under the current secret.
    pub fn issue(&self, ip: IpAddr) -> [u8; TOKEN_LEN] {
        token(&self.current, ip)
    }

    /// Whether `token` was issued to `ip` under the current or the previous
    /// secret. Callers rotate first (`rotate_if_due`).
    pub fn check(&self, ip: IpAddr, token: &[u8]) -> bool {
        token.len() == TOKEN_LEN
            && (token == self::token(&self.current, ip) || token == self::token(&self.previous, ip))
    }
}

fn token(secret: &[u8; 20], ip: IpAddr) -> [u8; TOKEN_LEN] {
    let mut h = Sha1::new();
    h.update(secret);
    match ip {
        IpAddr::V4(a) => h.update(a.octets()),
        IpAddr::V6(a) => h.update(a.octets()),
    }
    let digest = h.finalize();
    let mut out = [0u8; TOKEN_LEN];
    out.copy_from_slice(&digest[..TOKEN_LEN]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;
    use std::net::Ipv4Addr;

    const FIVE_MIN: Duration = Duration::from_secs(300);

    #[test]
    fn tokens_live_five_to_ten_minutes_and_are_bound_to_the_ip() {
        let mut rng = SmallRng::seed_from_u64(1);
        let t0 = Instant::now();
        let mut s = TokenSecrets::new(FIVE_MIN, &mut rng, t0);
        let ip = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
        let other = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 4));
        let tok = s.issue(ip);
        assert!(s.check(ip, &tok));
        assert!(!s.check(other, &tok), "bound to the asker's address");
        assert!(!s.check(ip, &tok[..4]));
        assert!(!s.check(ip, &[0; TOKEN_LEN]));
        // Still valid after one rotation (5 min)...
        s.rotate_if_due(t0 + FIVE_MIN, &mut rng);
        assert!(s.check(ip, &tok));
        // ...and not after the second (10 min).
        s.rotate_if_due(t0 + 2 * FIVE_MIN, &mut rng);
        assert!(!s.check(ip, &tok));
    }

    #[test]
    fn a_long_idle_gap_drops_both_secrets() {
        let mut rng = SmallRng::seed_from_u64(2);
        let t0 = Instant::now();
        let mut s = TokenSecrets::new(FIVE_MIN, &mut rng, t0);
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let tok = s.issue(ip);
        s.rotate_if_due(t0 + Duration::from_secs(3600), &mut rng);
        assert!(!s.check(ip, &tok));
        assert!(s.check(ip, &s.issue(ip)));
    }

    #[test]
    fn no_rotation_before_it_is_due() {
        let mut rng = SmallRng::seed_from_u64(3);
        let t0 = Instant::now();
        let mut s = TokenSecrets::new(FIVE_MIN, &mut rng, t0);
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let tok = s.issue(ip);
        s.rotate_if_due(t0 + Duration::from_secs(299), &mut rng);
        assert_eq!(s.issue(ip), tok);
        assert_eq!(s.next_rotation(), t0 + FIVE_MIN);
    }
}
