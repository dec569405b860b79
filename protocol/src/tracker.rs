//! HTTP tracker codec: announce URLs (BEP 3), announce responses with
//! compact IPv4 (BEP 23), dictionary and compact IPv6 (BEP 7) peer lists,
//! scrape URLs and scrape responses (BEP 48).
//!
//! This module turns an [`AnnounceRequest`] into the URL to GET and a
//! response body into typed values; the HTTP client, DNS, retries and
//! back-off live in the tracker session actor. The compact peer helpers are
//! shared with the UDP tracker codec.
//!
//! Parsing policy, chosen because tracker responses are untrusted but a
//! half-useful answer is better than none:
//!
//! - `failure reason` wins over everything else and is its own error variant
//!   ([`TrackerError::Failure`]), so the session can tell "the tracker said
//!   no" from "the tracker sent garbage".
//! - Structure is strict: the body must be one bencoded dictionary, `interval`
//!   must be present and a non-negative integer, compact peer strings must be
//!   a whole number of entries, and `peers` / `peers6` must have a valid type.
//! - Individual peers are lenient: a dictionary entry without a usable IP
//!   literal or port (including hostnames, which would need a DNS lookup this
//!   crate cannot do) and any entry with port 0 is skipped and counted in
//!   [`AnnounceResponse::skipped_peers`], not fatal.
//! - Optional informational fields (`min interval`, `complete`, `incomplete`,
//!   `warning message`, `tracker id`) of the wrong type or out of range are
//!   treated as absent.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::bencode::{self, Dict, Value};

/// The `event` of an announce; a regular (periodic) announce has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// First announce of a download.
    Started,
    /// The download just finished (sent once).
    Completed,
    /// The client is leaving the swarm.
    Stopped,
}

impl Event {
    /// The value of the `event` query parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Started => "started",
            Event::Completed => "completed",
            Event::Stopped => "stopped",
        }
    }
}

/// What an announce tells the tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceRequest {
    /// The torrent (raw 20 bytes, percent-encoded in the URL).
    pub info_hash: [u8; 20],
    /// Our peer id (raw 20 bytes, percent-encoded in the URL).
    pub peer_id: [u8; 20],
    /// Our listen port.
    pub port: u16,
    /// Bytes uploaded since `started`.
    pub uploaded: u64,
    /// Bytes downloaded since `started`.
    pub downloaded: u64,
    /// Bytes still needed.
    pub left: u64,
    /// `None` for a regular announce.
    pub event: Option<Event>,
    /// Peers wanted; `None` lets the tracker choose.
    pub numwant: Option<u32>,
    /// Random key identifying us across IP changes; sent as 8 hex digits.
    pub key: Option<u32>,
    /// The `tracker id` from a previous response, echoed back.
    pub trackerid: Option<String>,
    /// Ask for compact peer lists (BEP 23); sent as `compact=1` or
    /// `compact=0`.
    pub compact: bool,
}

/// A successful announce response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnnounceResponse {
    /// Seconds until the next regular announce.
    pub interval: u32,
    /// Seconds the tracker wants at least between announces.
    pub min_interval: Option<u32>,
    /// A warning to show the user; the response is still valid.
    pub warning: Option<String>,
    /// Seeders in the swarm.
    pub complete: Option<u32>,
    /// Leechers in the swarm.
    pub incomplete: Option<u32>,
    /// To send back as `trackerid` in later announces (dropped if not
    /// UTF-8, since it could not be echoed verbatim).
    pub tracker_id: Option<String>,
    /// Peers from `peers` (compact or dictionaries) then `peers6`, IPv4-mapped
    /// IPv6 addresses canonicalised to IPv4.
    pub peers: Vec<SocketAddr>,
    /// Peer entries not returned in `peers`: malformed dictionaries,
    /// hostnames, port 0.
    pub skipped_peers: usize,
}

/// Swarm counts of one torrent in a scrape response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScrapeFile {
    /// Seeders.
    pub complete: u32,
    /// Completed downloads ever reported.
    pub downloaded: u32,
    /// Leechers.
    pub incomplete: u32,
}

/// A scrape response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrapeResponse {
    /// Counts per info hash. Missing counts read as 0.
    pub files: BTreeMap<[u8; 20], ScrapeFile>,
    /// Entries skipped because the key is not 20 bytes or a count is not a
    /// non-negative 32-bit integer.
    pub skipped: usize,
}

/// Why a tracker response could not be used.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum TrackerError {
    /// The tracker refused the request; the string is its `failure reason`.
    #[error("tracker failure: {0}")]
    Failure(String),
    /// The body is not valid bencode.
    #[error("tracker response is not valid bencode: {0}")]
    Bencode(#[from] bencode::DecodeError),
    /// The body is bencode but not a dictionary.
    #[error("tracker response is not a dictionary")]
    NotADict,
    /// A required key is absent.
    #[error("tracker response has no `{0}`")]
    MissingField(&'static str),
    /// A key whose type or range matters is wrong.
    #[error("tracker response field `{field}` is invalid: expected {expected}")]
    InvalidField {
        /// The key.
        field: &'static str,
        /// What it should have been.
        expected: &'static str,
    },
    /// A compact peer string is not a whole number of entries.
    #[error("compact `{field}` is {len} bytes, not a multiple of {entry}")]
    CompactPeers {
        /// `peers` or `peers6`.
        field: &'static str,
        /// Its length.
        len: usize,
        /// Bytes per entry (6 or 18).
        entry: usize,
    },
}

/// Percent-encodes every byte except RFC 3986 unreserved characters.
fn percent_encode(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// The announce URL: `base` plus the request's query parameters, appended
/// with `&` if `base` already has a query and `?` otherwise. A fragment in
/// `base` is dropped (it is never sent to a server).
pub fn announce_url(base: &str, req: &AnnounceRequest) -> String {
    let base = base.split('#').next().unwrap_or(base);
    let mut url = String::with_capacity(base.len() + 256);
    url.push_str(base);
    if !base.contains('?') {
        url.push('?');
    } else if !base.ends_with(['?', '&']) {
        url.push('&');
    }
    url.push_str("info_hash=");
    percent_encode(&mut url, &req.info_hash);
    url.push_str("&peer_id=");
    percent_encode(&mut url, &req.peer_id);
    let _ = write!(
        url,
        "&port={}&uploaded={}&downloaded={}&left={}&compact={}",
        req.port,
        req.uploaded,
        req.downloaded,
        req.left,
        u8::from(req.compact)
    );
    if let Some(event) = req.event {
        let _ = write!(url, "&event={}", event.as_str());
    }
    if let Some(n) = req.numwant {
        let _ = write!(url, "&numwant={n}");
    }
    if let Some(key) = req.key {
        let _ = write!(url, "&key={key:08X}");
    }
    if let Some(id) = &req.trackerid {
        url.push_str("&trackerid=");
        percent_encode(&mut url, id.as_bytes());
    }
    url
}

/// The scrape URL for an announce URL, by the BEP 48 convention: the last
/// path segment must start with `announce`, which is replaced by `scrape`
/// (`/announce.php?x=1` -> `/scrape.php?x=1`). `None` if the URL does not
/// follow the convention, in which case the tracker does not support scrape.
pub fn scrape_url(announce: &str) -> Option<String> {
    let announce = announce.split('#').next().unwrap_or(announce);
    let path_end = announce.find('?').unwrap_or(announce.len());
    let (before_query, query) = announce.split_at(path_end);
    let path_start = before_query.find("://").map_or(0, |i| i + 3);
    let slash = before_query.rfind('/').filter(|&s| s >= path_start)?;
    let rest = before_query[slash + 1..].strip_prefix("announce")?;
    Some(format!("{}scrape{rest}{query}", &before_query[..=slash]))
}

/// Appends one compact peer: 4-byte IPv4 or 16-byte IPv6 address, then the
/// 2-byte port, big-endian.
pub fn encode_compact_peer(peer: &SocketAddr, out: &mut Vec<u8>) {
    match peer.ip() {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
    }
    out.extend_from_slice(&peer.port().to_be_bytes());
}

/// Decodes compact peers: 18-byte entries if `ipv6`, else 6-byte. `None` if
/// the length is not a whole number of entries. Entries with port 0 are
/// dropped (use [`count_compact_peers`] to know how many there were).
pub fn decode_compact_peers(bytes: &[u8], ipv6: bool) -> Option<Vec<SocketAddr>> {
    let entry = if ipv6 { 18 } else { 6 };
    if bytes.len() % entry != 0 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(entry)
            .filter_map(|c| {
                let (ip, port) = c.split_at(entry - 2);
                let port = u16::from_be_bytes([port[0], port[1]]);
                let ip = match <[u8; 4]>::try_from(ip) {
                    Ok(v4) => IpAddr::V4(Ipv4Addr::from(v4)),
                    Err(_) => {
                        let mut v6 = [0u8; 16];
                        v6.copy_from_slice(ip);
                        IpAddr::V6(Ipv6Addr::from(v6))
                    }
                };
                (port != 0).then(|| SocketAddr::new(ip.to_canonical(), port))
            })
            .collect(),
    )
}

/// How many entries a compact peer string of `len` bytes holds.
pub fn count_compact_peers(len: usize, ipv6: bool) -> usize {
    len / if ipv6 { 18 } else { 6 }
}

fn decode_dict(body: &[u8]) -> Result<Value<'_>, TrackerError> {
    let value = bencode::decode(body)?;
    if value.as_dict().is_none() {
        return Err(TrackerError::NotADict);
    }
    Ok(value)
}

fn check_failure(dict: &Dict<'_>) -> Result<(), TrackerError> {
    match dict.get(b"failure reason") {
        Some(reason) => Err(TrackerError::Failure(
            String::from_utf8_lossy(reason.as_bytes().unwrap_or(reason.raw())).into_owned(),
        )),
        None => Ok(()),
    }
}

fn opt_u32(dict: &Dict<'_>, key: &[u8]) -> Option<u32> {
    dict.get(key)
        .and_then(Value::as_int)
        .and_then(|n| u32::try_from(n).ok())
}

/// Parses the body of an HTTP announce response. See the module docs for
/// what is strict and what is lenient.
pub fn parse_announce_response(body: &[u8]) -> Result<AnnounceResponse, TrackerError> {
    let value = decode_dict(body)?;
    let Some(dict) = value.as_dict() else {
        return Err(TrackerError::NotADict);
    };
    check_failure(dict)?;
    let interval = dict
        .get(b"interval")
        .ok_or(TrackerError::MissingField("interval"))?
        .as_int()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or(TrackerError::InvalidField {
            field: "interval",
            expected: "an integer in 0..2^32",
        })?;
    let mut resp = AnnounceResponse {
        interval,
        min_interval: opt_u32(dict, b"min interval"),
        warning: dict
            .get(b"warning message")
            .and_then(Value::as_bytes)
            .map(|b| String::from_utf8_lossy(b).into_owned()),
        complete: opt_u32(dict, b"complete"),
        incomplete: opt_u32(dict, b"incomplete"),
        tracker_id: dict
            .get(b"tracker id")
            .and_then(Value::as_str)
            .map(str::to_owned),
        ..AnnounceResponse::default()
    };

    if let Some(peers) = dict.get(b"peers") {
        if let Some(compact) = peers.as_bytes() {
            add_compact(&mut resp, compact, false, "peers")?;
        } else if let Some(list) = peers.as_list() {
            for entry in list {
                match dict_peer(entry) {
                    Some(addr) => resp.peers.push(addr),
                    None => resp.skipped_peers += 1,
                }
            }
        } else {
            return Err(TrackerError::InvalidField {
                field: "peers",
                expected: "a string or a list",
            });
        }
    }
    if let Some(peers6) = dict.get(b"peers6") {
        let compact = peers6.as_bytes().ok_or(TrackerError::InvalidField {
            field: "peers6",
            expected: "a string",
        })?;
        add_compact(&mut resp, compact, true, "peers6")?;
    }
    Ok(resp)
}

fn add_compact(
    resp: &mut AnnounceResponse,
    bytes: &[u8],
    ipv6: bool,
    field: &'static str,
) -> Result<(), TrackerError> {
    let peers = decode_compact_peers(bytes, ipv6).ok_or(TrackerError::CompactPeers {
        field,
        len: bytes.len(),
        entry: if ipv6 { 18 } else { 6 },
    })?;
    resp.skipped_peers += count_compact_peers(bytes.len(), ipv6) - peers.len();
    resp.peers.extend(peers);
    Ok(())
}

/// One `{ip, port, peer id}` dictionary peer, or `None` if unusable.
fn dict_peer(entry: &Value<'_>) -> Option<SocketAddr> {
    let d = entry.as_dict()?;
    let ip = d.get(b"ip")?.as_str()?;
    // Accept a bracketed IPv6 literal too; hostnames do not parse and are
    // skipped.
    let ip = ip
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(ip);
    let ip: IpAddr = ip.parse().ok()?;
    let port = u16::try_from(d.get(b"port")?.as_int()?).ok()?;
    (port != 0).then(|| SocketAddr::new(ip.to_canonical(), port))
}

/// Parses the body of a scrape response: `files`, a dictionary from 20-byte
/// info hash to `{complete, downloaded, incomplete}`.
pub fn parse_scrape_response(body: &[u8]) -> Result<ScrapeResponse, TrackerError> {
    let value = decode_dict(body)?;
    let Some(dict) = value.as_dict() else {
        return Err(TrackerError::NotADict);
    };
    check_failure(dict)?;
    let files = dict
        .get(b"files")
        .ok_or(TrackerError::MissingField("files"))?
        .as_dict()
        .ok_or(TrackerError::InvalidField {
            field: "files",
            expected: "a dictionary",
        })?;
    let mut resp = ScrapeResponse::default();
    for (hash, stats) in files.iter() {
        match scrape_entry(hash, stats) {
            Some((hash, file)) => {
                resp.files.insert(hash, file);
            }
            None => resp.skipped += 1,
        }
    }
    Ok(resp)
}

fn scrape_entry(hash: &[u8], stats: &Value<'_>) -> Option<([u8; 20], ScrapeFile)> {
    let hash = <[u8; 20]>::try_from(hash).ok()?;
    let d = stats.as_dict()?;
    let count = |key: &[u8]| match d.get(key) {
        None => Some(0),
        Some(v) => u32::try_from(v.as_int()?).ok(),
    };
    Some((
        hash,
        ScrapeFile {
            complete: count(b"complete")?,
            downloaded: count(b"downloaded")?,
            incomplete: count(b"incomplete")?,
        },
    ))
}
