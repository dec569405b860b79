//! UDP tracker protocol (BEP 15), both directions: the client encodes
//! requests and parses responses, a tracker (our test tracker) parses
//! requests and encodes responses.
//!
//! This module owns the datagram layouts and nothing else: retransmission
//! (15 * 2^n seconds), connection-id expiry (one minute) and matching
//! transaction ids are the tracker session's job, since they need a clock.
//! Every field is big-endian.
//!
//! Sizes are checked exactly, with one exception each way that BEP 15 and
//! BEP 41 call for: an announce request may be followed by BEP 41 option
//! bytes, which are accepted and ignored; responses carrying lists (peers,
//! scrape entries) must be a whole number of entries.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::tracker::{Event, decode_compact_peers, encode_compact_peer};

/// The magic constant that opens a connect request.
pub const PROTOCOL_ID: u64 = 0x0417_2710_1980;

/// Most info hashes one scrape request may carry (BEP 15: about 74 fit in a
/// safe datagram). Callers with more split them over several requests.
pub const MAX_SCRAPE_HASHES: usize = 74;

/// Action codes (request offset 8, response offset 0).
pub mod action {
    pub const CONNECT: u32 = 0;
    pub const ANNOUNCE: u32 = 1;
    pub const SCRAPE: u32 = 2;
    /// Only in responses.
    pub const ERROR: u32 = 3;
}

/// Size of a connect request and of a connect response.
pub const CONNECT_LEN: usize = 16;
/// Size of an announce request without BEP 41 options.
pub const ANNOUNCE_REQUEST_LEN: usize = 98;
/// Size of an announce response header (before the peers).
pub const ANNOUNCE_RESPONSE_HEADER_LEN: usize = 20;

/// Everything that makes a datagram invalid.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum UdpError {
    /// The datagram is too short to hold even an action and transaction id.
    #[error("datagram of {len} bytes is too short for a BEP 15 {packet}")]
    TooShort {
        /// What was being parsed.
        packet: &'static str,
        /// Bytes received.
        len: usize,
    },
    /// The datagram's size does not match the packet's layout.
    #[error("{packet} of {len} bytes: expected {expected} bytes")]
    BadLength {
        /// What was being parsed.
        packet: &'static str,
        /// Bytes received.
        len: usize,
        /// The valid sizes, as a formula (e.g. "20 + 6n").
        expected: &'static str,
    },
    /// A connect request without the BEP 15 magic constant.
    #[error("connect request has protocol id {0:#x}, expected 0x41727101980")]
    BadProtocolId(u64),
    /// The action code is not one BEP 15 defines for this direction.
    #[error("unknown {direction} action {action}")]
    UnknownAction {
        /// "request" or "response".
        direction: &'static str,
        /// The action code received.
        action: u32,
    },
    /// A packet-specific parser was given another packet's action.
    #[error("expected a {packet} (action {expected}), got action {found}")]
    WrongAction {
        /// What was being parsed.
        packet: &'static str,
        /// The action that packet has.
        expected: u32,
        /// The action received.
        found: u32,
    },
    /// An announce request's event is not 0..=3.
    #[error("announce request has unknown event {0}")]
    BadEvent(u32),
    /// A scrape request carries no hashes, or more than
    /// [`MAX_SCRAPE_HASHES`].
    #[error("scrape request carries {0} info hashes, expected 1..=74")]
    ScrapeHashCount(usize),
}

/// Client -> tracker: ask for a connection id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectRequest {
    /// Random, chosen by the client; echoed in the response.
    pub transaction_id: u32,
}

/// Tracker -> client: a connection id valid for about a minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectResponse {
    /// Echo of the request's.
    pub transaction_id: u32,
    /// To be sent with announce and scrape requests.
    pub connection_id: u64,
}

/// Client -> tracker: announce (action 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnounceRequest {
    /// From the connect response.
    pub connection_id: u64,
    /// Random, echoed in the response.
    pub transaction_id: u32,
    /// The torrent.
    pub info_hash: [u8; 20],
    /// Our peer id.
    pub peer_id: [u8; 20],
    /// Bytes downloaded this session.
    pub downloaded: u64,
    /// Bytes still needed.
    pub left: u64,
    /// Bytes uploaded this session.
    pub uploaded: u64,
    /// `None` for a regular announce (wire 0); completed 1, started 2,
    /// stopped 3.
    pub event: Option<Event>,
    /// Address to announce instead of the datagram's source (wire 0 = none).
    /// Only IPv4 fits this field.
    pub ip: Option<Ipv4Addr>,
    /// Random key that lets the tracker recognise us across IP changes.
    pub key: u32,
    /// Peers wanted; `None` lets the tracker choose (wire -1). Any negative
    /// value parses as `None`; values above `i32::MAX` encode as `i32::MAX`.
    pub num_want: Option<u32>,
    /// Our listen port.
    pub port: u16,
}

/// Tracker -> client: announce result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceResponse {
    /// Echo of the request's.
    pub transaction_id: u32,
    /// Seconds to wait before the next regular announce.
    pub interval: u32,
    /// Peers still downloading.
    pub leechers: u32,
    /// Peers with the whole torrent.
    pub seeders: u32,
    /// Peers: IPv4 (6 bytes each) when the request went over IPv4, IPv6
    /// (18 bytes each) when it went over IPv6. Entries with port 0 are
    /// dropped when parsing.
    pub peers: Vec<SocketAddr>,
}

/// Client -> tracker: scrape up to [`MAX_SCRAPE_HASHES`] torrents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeRequest {
    /// From the connect response.
    pub connection_id: u64,
    /// Random, echoed in the response.
    pub transaction_id: u32,
    /// The torrents, 1..=74 of them for the request to be valid.
    pub info_hashes: Vec<[u8; 20]>,
}

/// Swarm counts of one scraped torrent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScrapeStats {
    /// Peers with the whole torrent.
    pub seeders: u32,
    /// Times the torrent was downloaded to completion.
    pub completed: u32,
    /// Peers still downloading.
    pub leechers: u32,
}

/// Tracker -> client: scrape result, one entry per requested hash, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeResponse {
    /// Echo of the request's.
    pub transaction_id: u32,
    /// One entry per requested info hash, in request order.
    pub stats: Vec<ScrapeStats>,
}

/// Tracker -> client: the request failed (action 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    /// Echo of the request's.
    pub transaction_id: u32,
    /// Human-readable reason (decoded lossily if not UTF-8).
    pub message: String,
}

/// Any request, as a tracker receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdpRequest {
    /// Action 0.
    Connect(ConnectRequest),
    /// Action 1.
    Announce(AnnounceRequest),
    /// Action 2.
    Scrape(ScrapeRequest),
}

/// Any response, as a client receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdpResponse {
    /// Action 0.
    Connect(ConnectResponse),
    /// Action 1.
    Announce(AnnounceResponse),
    /// Action 2.
    Scrape(ScrapeResponse),
    /// Action 3.
    Error(ErrorResponse),
}

impl UdpResponse {
    /// The transaction id every response echoes.
    pub fn transaction_id(&self) -> u32 {
        match self {
            UdpResponse::Connect(r) => r.transaction_id,
            UdpResponse::Announce(r) => r.transaction_id,
            UdpResponse::Scrape(r) => r.transaction_id,
            UdpResponse::Error(r) => r.transaction_id,
        }
    }
}

impl UdpRequest {
    /// The transaction id every request carries.
    pub fn transaction_id(&self) -> u32 {
        match self {
            UdpRequest::Connect(r) => r.transaction_id,
            UdpRequest::Announce(r) => r.transaction_id,
            UdpRequest::Scrape(r) => r.transaction_id,
        }
    }
}

/// Reads big-endian integers off the front of a slice whose size the caller
/// has already checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        let mut a = [0u8; N];
        a.copy_from_slice(head);
        a
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take())
    }
    fn rest(self) -> &'a [u8] {
        self.0
    }
}

/// Action code of a response (offset 0) or request (offset 8).
fn action_at(buf: &[u8], at: usize, packet: &'static str) -> Result<u32, UdpError> {
    buf.get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(UdpError::TooShort {
            packet,
            len: buf.len(),
        })
}

fn expect_action(found: u32, expected: u32, packet: &'static str) -> Result<(), UdpError> {
    if found == expected {
        Ok(())
    } else {
        Err(UdpError::WrongAction {
            packet,
            expected,
            found,
        })
    }
}

fn bad_length(packet: &'static str, len: usize, expected: &'static str) -> UdpError {
    UdpError::BadLength {
        packet,
        len,
        expected,
    }
}

fn event_code(event: Option<Event>) -> u32 {
    match event {
        None => 0,
        Some(Event::Completed) => 1,
        Some(Event::Started) => 2,
        Some(Event::Stopped) => 3,
    }
}

impl ConnectRequest {
    /// The 16-byte datagram.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CONNECT_LEN);
        out.extend_from_slice(&PROTOCOL_ID.to_be_bytes());
        out.extend_from_slice(&action::CONNECT.to_be_bytes());
        out.extend_from_slice(&self.transaction_id.to_be_bytes());
        out
    }

    /// Parses exactly 16 bytes with the magic protocol id and action 0.
    pub fn parse(buf: &[u8]) -> Result<Self, UdpError> {
        const P: &str = "connect request";
        expect_action(action_at(buf, 8, P)?, action::CONNECT, P)?;
        if buf.len() != CONNECT_LEN {
            return Err(bad_length(P, buf.len(), "16"));
        }
        let mut r = Reader(buf);
        let protocol_id = r.u64();
        if protocol_id != PROTOCOL_ID {
            return Err(UdpError::BadProtocolId(protocol_id));
        }
        r.u32();
        Ok(ConnectRequest {
            transaction_id: r.u32(),
        })
    }
}

impl ConnectResponse {
    /// The 16-byte datagram.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CONNECT_LEN);
        out.extend_from_slice(&action::CONNECT.to_be_bytes());
        out.extend_from_slice(&self.transaction_id.to_be_bytes());
        out.extend_from_slice(&self.connection_id.to_be_bytes());
        out
    }

    /// Parses exactly 16 bytes with action 0.
    pub fn parse(buf: &[u8]) -> Result<Self, UdpError> {
        const P: &str = "connect response";
        expect_action(action_at(buf, 0, P)?, action::CONNECT, P)?;
        if buf.len() != CONNECT_LEN {
            return Err(bad_length(P, buf.len(), "16"));
        }
        let mut r = Reader(&buf[4..]);
        Ok(ConnectResponse {
            transaction_id: r.u32(),
            connection_id: r.u64(),
        })
    }
}

impl AnnounceRequest {
    /// The 98-byte datagram (no BEP 41 options).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ANNOUNCE_REQUEST_LEN);
        out.extend_from_slice(&self.connection_id.to_be_bytes());
        out.extend_from_slice(&action::ANNOUNCE.to_be_bytes());
        out.extend_from_slice(&self.transaction_id.to_be_bytes());
        out.extend_from_slice(&self.info_hash);
        out.extend_from_slice(&self.peer_id);
        out.extend_from_slice(&self.downloaded.to_be_bytes());
        out.extend_from_slice(&self.left.to_be_bytes());
        out.extend_from_slice(&self.uploaded.to_be_bytes());
        out.extend_from_slice(&event_code(self.event).to_be_bytes());
        out.extend_from_slice(&self.ip.map_or(0, u32::from).to_be_bytes());
        out.extend_from_slice(&self.key.to_be_bytes());
        let num_want = self
            .num_want
            .map_or(-1, |n| i32::try_from(n).unwrap_or(i32::MAX));
        out.extend_from_slice(&num_want.to_be_bytes());
        out.extend_from_slice(&self.port.to_be_bytes());
        out
    }

    /// Parses an announce request: 98 bytes, optionally followed by BEP 41
    /// options, which are ignored.
    pub fn parse(buf: &[u8]) -> Result<Self, UdpError> {
        const P: &str = "announce request";
        expect_action(action_at(buf, 8, P)?, action::ANNOUNCE, P)?;
        if buf.len() < ANNOUNCE_REQUEST_LEN {
            return Err(bad_length(P, buf.len(), "98 (+ BEP 41 options)"));
        }
        let mut r = Reader(buf);
        let connection_id = r.u64();
        r.u32();
        let transaction_id = r.u32();
        let info_hash = r.take();
        let peer_id = r.take();
        let downloaded = r.u64();
        let left = r.u64();
        let uploaded = r.u64();
        let event = match r.u32() {
            0 => None,
            1 => Some(Event::Completed),
            2 => Some(Event::Started),
            3 => Some(Event::Stopped),
            other => return Err(UdpError::BadEvent(other)),
        };
        let ip = match r.u32() {
            0 => None,
            ip => Some(Ipv4Addr::from(ip)),
        };
        let key = r.u32();
        let num_want = u32::try_from(i32::from_be_bytes(r.take())).ok();
        let port = r.u16();
        Ok(AnnounceRequest {
            connection_id,
            transaction_id,
            info_hash,
            peer_id,
            downloaded,
            left,
            uploaded,
            event,
            ip,
            key,
            num_want,
            port,
        })
    }
}

impl AnnounceResponse {
    /// The datagram: 20 bytes then the peers of one address family: IPv6
    /// (18 bytes each) if `ipv6`, else IPv4 (6 bytes each). Peers of the
    /// other family are left out, because a BEP 15 response carries only the
    /// family of the socket the request came in on.
    pub fn encode(&self, ipv6: bool) -> Vec<u8> {
        let entry = if ipv6 { 18 } else { 6 };
        let mut out = Vec::with_capacity(ANNOUNCE_RESPONSE_HEADER_LEN + entry * self.peers.len());
        out.extend_from_slice(&action::ANNOUNCE.to_be_bytes());
        out.extend_from_slice(&self.transaction_id.to_be_bytes());
        out.extend_from_slice(&self.interval.to_be_bytes());
        out.extend_from_slice(&self.leechers.to_be_bytes());
        out.extend_from_slice(&self.seeders.to_be_bytes());
        for peer in &self.peers {
            if peer.is_ipv6() == ipv6 {
                encode_compact_peer(peer, &mut out);
            }
        }
        out
    }

    /// Parses a response whose peers are IPv6 (18 bytes each) if `ipv6`,
    /// else IPv4 (6 bytes each); the client knows which from the socket it
    /// sent the request on. A trailing partial entry is an error.
    pub fn parse(buf: &[u8], ipv6: bool) -> Result<Self, UdpError> {
        const P: &str = "announce response";
        expect_action(action_at(buf, 0, P)?, action::ANNOUNCE, P)?;
        let expected = if ipv6 { "20 + 18n" } else { "20 + 6n" };
        let Some(peers) = buf.get(ANNOUNCE_RESPONSE_HEADER_LEN..) else {
            return Err(bad_length(P, buf.len(), expected));
        };
        let peers = decode_compact_peers(peers, ipv6).ok_or(bad_length(P, buf.len(), expected))?;
        let mut r = Reader(&buf[4..]);
        Ok(AnnounceResponse {
            transaction_id: r.u32(),
            interval: r.u32(),
            leechers: r.u32(),
            seeders: r.u32(),
            peers,
        })
    }
}

impl ScrapeRequest {
    /// The datagram: 16 bytes then 20 per hash. Callers keep to
    /// [`MAX_SCRAPE_HASHES`]; a longer request is encoded as given but will
    /// be rejected by [`ScrapeRequest::parse`] and by real trackers.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 20 * self.info_hashes.len());
        out.extend_from_slice(&self.connection_id.to_be_bytes());
        out.extend_from_slice(&action::SCRAPE.to_be_bytes());
        out.extend_from_slice(&self.transaction_id.to_be_bytes());
        for h in &self.info_hashes {
            out.extend_from_slice(h);
        }
        out
    }

    /// Parses 16 + 20n bytes with 1 <= n <= 74.
    pub fn parse(buf: &[u8]) -> Result<Self, UdpError> {
        const P: &str = "scrape request";
        expect_action(action_at(buf, 8, P)?, action::SCRAPE, P)?;
        let hashes = &buf[16.min(buf.len())..];
        if buf.len() < 16 || hashes.len() % 20 != 0 {
            return Err(bad_length(P, buf.len(), "16 + 20n"));
        }
        let count = hashes.len() / 20;
        if count == 0 || count > MAX_SCRAPE_HASHES {
            return Err(UdpError::ScrapeHashCount(count));
        }
        let mut r = Reader(buf);
        let connection_id = r.u64();
        r.u32();
        let transaction_id = r.u32();
        let info_hashes = hashes
            .chunks_exact(20)
            .map(|c| {
                let mut h = [0u8; 20];
                h.copy_from_slice(c);
                h
            })
            .collect();
        Ok(ScrapeRequest {
            connection_id,
            transaction_id,
            info_hashes,
        })
    }
}

impl ScrapeResponse {
    /// The datagram: 8 bytes then 12 per torrent (seeders, completed,
    /// leechers).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 12 * self.stats.len());
        out.extend_from_slice(&action::SCRAPE.to_be_bytes());
        out.extend_from_slice(&self.transaction_id.to_be_bytes());
        for s in &self.stats {
            out.extend_from_slice(&s.seeders.to_be_bytes());
            out.extend_from_slice(&s.completed.to_be_bytes());
            out.extend_from_slice(&s.leechers.to_be_bytes());
        }
        out
    }

    /// Parses 8 + 12n bytes. The caller matches entries to the hashes it
    /// asked about, in order (a tracker may answer fewer than asked).
    pub fn parse(buf: &[u8]) -> Result<Self, UdpError> {
        const P: &str = "scrape response";
        expect_action(action_at(buf, 0, P)?, action::SCRAPE, P)?;
        let entries = buf.get(8..).unwrap_or_default();
        if buf.len() < 8 || entries.len() % 12 != 0 {
            return Err(bad_length(P, buf.len(), "8 + 12n"));
        }
        let transaction_id = Reader(&buf[4..]).u32();
        let stats = entries
            .chunks_exact(12)
            .map(|c| {
                let mut r = Reader(c);
                ScrapeStats {
                    seeders: r.u32(),
                    completed: r.u32(),
                    leechers: r.u32(),
                }
            })
            .collect();
        Ok(ScrapeResponse {
            transaction_id,
            stats,
        })
    }
}

impl ErrorResponse {
    /// The datagram: 8 bytes then the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.message.len());
        out.extend_from_slice(&action::ERROR.to_be_bytes());
        out.extend_from_slice(&self.transaction_id.to_be_bytes());
        out.extend_from_slice(self.message.as_bytes());
        out
    }

    /// Parses 8 bytes then a message of any length (possibly empty).
    pub fn parse(buf: &[u8]) -> Result<Self, UdpError> {
        const P: &str = "error response";
        expect_action(action_at(buf, 0, P)?, action::ERROR, P)?;
        if buf.len() < 8 {
            return Err(bad_length(P, buf.len(), "8 + message"));
        }
        let mut r = Reader(&buf[4..]);
        let transaction_id = r.u32();
        Ok(ErrorResponse {
            transaction_id,
            message: String::from_utf8_lossy(r.rest()).into_owned(),
        })
    }
}

/// Parses any tracker response, dispatching on the action at offset 0.
/// `ipv6` selects the peer format of announce responses (see
/// [`AnnounceResponse::parse`]).
pub fn parse_response(buf: &[u8], ipv6: bool) -> Result<UdpResponse, UdpError> {
    match action_at(buf, 0, "response")? {
        action::CONNECT => ConnectResponse::parse(buf).map(UdpResponse::Connect),
        action::ANNOUNCE => AnnounceResponse::parse(buf, ipv6).map(UdpResponse::Announce),
        action::SCRAPE => ScrapeResponse::parse(buf).map(UdpResponse::Scrape),
        action::ERROR => ErrorResponse::parse(buf).map(UdpResponse::Error),
        other => Err(UdpError::UnknownAction {
            direction: "response",
            action: other,
        }),
    }
}

/// Parses any client request (the tracker side), dispatching on the action
/// at offset 8.
pub fn parse_request(buf: &[u8]) -> Result<UdpRequest, UdpError> {
    match action_at(buf, 8, "request")? {
        action::CONNECT => ConnectRequest::parse(buf).map(UdpRequest::Connect),
        action::ANNOUNCE => AnnounceRequest::parse(buf).map(UdpRequest::Announce),
        action::SCRAPE => ScrapeRequest::parse(buf).map(UdpRequest::Scrape),
        other => Err(UdpError::UnknownAction {
            direction: "request",
            action: other,
        }),
    }
}

/// The address family a response's peers use when the request was sent to
/// `tracker`: IPv6 exactly when the tracker's address is IPv6.
pub fn peers_are_ipv6(tracker: &SocketAddr) -> bool {
    matches!(tracker.ip(), IpAddr::V6(a) if a.to_ipv4_mapped().is_none())
}
