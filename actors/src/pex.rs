//! Peer exchange (BEP 11, `ut_pex`): the `[pex]` bounds, and the plain
//! per-connection state that turns the torrent's list of connected peers
//! into added/dropped messages, at most one per interval and at most
//! [`PexConfig::max_added_per_message`] added each. The peer actor owns one
//! [`PexSender`]; the torrent hands it the list ([`crate::peer::PeerCmd::Pex`]).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use protocol::ut_pex::{Pex, flags};

/// `[pex]`: peer exchange bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PexConfig {
    /// Whether peers exchange addresses (`--no-pex` clears it). Private
    /// torrents never do. Default true.
    pub enabled: bool,
    /// Least time between two messages to one peer, and the torrent's
    /// refresh of its list (BEP 11: once a minute). Default 60 s.
    #[serde(rename = "interval_ms", with = "storage::serde_fmt::duration_ms")]
    pub interval: Duration,
    /// Added peers in one message we send. Default 50 (BEP 11).
    pub max_added_per_message: usize,
    /// Entries per list kept from one message we receive. Default 200.
    pub max_peers_per_message: usize,
    /// The address book grows by PEX only up to this many addresses.
    /// Default 2000.
    pub max_known_addrs: usize,
}

impl Default for PexConfig {
    fn default() -> Self {
        PexConfig {
            enabled: true,
            interval: Duration::from_secs(60),
            max_added_per_message: protocol::ut_pex::MAX_ADDED_PER_MESSAGE,
            max_peers_per_message: 200,
            max_known_addrs: 2000,
        }
    }
}

/// What one connection told its remote peer so far.
#[derive(Debug, Default)]
pub struct PexSender {
    /// Addresses the remote has been told of (added and not dropped).
    told: HashSet<SocketAddr>,
    last: Option<Instant>,
}

impl PexSender {
    /// The message to send now, given the torrent's connected peers
    /// (`remote` is the remote's own address, never sent back to it), or
    /// `None` when it is too early or nothing changed. Added peers beyond
    /// the per-message cap wait for the next message.
    pub fn next(
        &mut self,
        current: &[SocketAddr],
        remote: SocketAddr,
        now: Instant,
        cfg: &PexConfig,
    ) -> Option<Pex> {
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < cfg.interval)
        {
            return None;
        }
        let now_set: HashSet<SocketAddr> =
            current.iter().copied().filter(|a| *a != remote).collect();
        let dropped: Vec<SocketAddr> = self.told.difference(&now_set).copied().collect();
        let mut added: Vec<SocketAddr> = now_set.difference(&self.told).copied().collect();
        added.sort();
        added.truncate(cfg.max_added_per_message);
        if added.is_empty() && dropped.is_empty() {
            return None;
        }
        for a in &dropped {
            self.told.remove(a);
        }
        self.told.extend(added.iter().copied());
        self.last = Some(now);
        Some(Pex {
            // We list only peers we dialled: they accept connections.
            added: added.into_iter().map(|a| (a, flags::REACHABLE)).collect(),
            dropped,
            truncated: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], p))
    }

    #[test]
    fn at_most_once_an_interval_capped_and_diffed() {
        let cfg = PexConfig {
            max_added_per_message: 2,
            ..PexConfig::default()
        };
        let mut s = PexSender::default();
        let t0 = Instant::now();
        let remote = addr(9);
        let first = s
            .next(&[addr(1), addr(2), addr(3), remote], remote, t0, &cfg)
            .unwrap();
        assert_eq!(first.added.len(), 2, "capped");
        assert!(first.added.iter().all(|(a, _)| *a != remote));
        assert!(first.dropped.is_empty());
        // Too early for another.
        assert!(
            s.next(
                &[addr(1), addr(3)],
                remote,
                t0 + Duration::from_secs(30),
                &cfg
            )
            .is_none()
        );
        let later = t0 + Duration::from_secs(61);
        let second = s.next(&[addr(1), addr(3)], remote, later, &cfg).unwrap();
        assert_eq!(second.added, vec![(addr(3), flags::REACHABLE)]);
        assert_eq!(second.dropped, vec![addr(2)]);
        // Nothing changed: nothing sent.
        assert!(
            s.next(
                &[addr(1), addr(3)],
                remote,
                later + Duration::from_secs(61),
                &cfg
            )
            .is_none()
        );
    }

    #[test]
    fn ipv6_peers_go_out_in_added6_and_dropped6() {
        let cfg = PexConfig::default();
        let mut s = PexSender::default();
        let v6: SocketAddr = "[2001:db8::7]:6881".parse().unwrap();
        let t0 = Instant::now();
        let first = s.next(&[addr(1), v6], addr(9), t0, &cfg).unwrap();
        let bytes = first.encode();
        let wire = protocol::bencode::decode(&bytes).unwrap();
        let dict = wire.as_dict().unwrap();
        assert_eq!(
            dict.get(&b"added6"[..])
                .and_then(|v| v.as_bytes())
                .map(<[u8]>::len),
            Some(18)
        );
        assert_eq!(
            dict.get(&b"added"[..])
                .and_then(|v| v.as_bytes())
                .map(<[u8]>::len),
            Some(6)
        );
        let later = t0 + Duration::from_secs(61);
        let second = s.next(&[addr(1)], addr(9), later, &cfg).unwrap();
        let bytes = second.encode();
        let wire = protocol::bencode::decode(&bytes).unwrap();
        let dropped6 = wire
            .as_dict()
            .unwrap()
            .get(&b"dropped6"[..])
            .and_then(|v| v.as_bytes())
            .map(<[u8]>::len);
        assert_eq!(dropped6, Some(18));
    }
}
