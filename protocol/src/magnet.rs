//! Magnet links (BEP 9 `magnet:?xt=urn:btih:...`): parsing and formatting.
//!
//! A magnet link is how a user hands the client a torrent it has no
//! metainfo for yet: the info-hash to look for, optionally a display name,
//! trackers to ask and peers to try directly (`x.pe`). It is typed or pasted
//! by a person and copied from web pages, so parsing is forgiving where
//! links in the wild differ harmlessly and strict where a mistake would send
//! the client after the wrong torrent:
//!
//! - `xt=urn:btih:` takes 40 hex digits or 32 base32 characters (RFC 4648,
//!   no padding), either case. Several `xt` (also the numbered `xt.1` form)
//!   are fine if they name the same hash; two different v1 hashes are an
//!   error. A v2 `urn:btmh:` is ignored beside a v1 hash and is an error on
//!   its own, since this client speaks v1 only. Other `urn:` kinds are
//!   ignored.
//! - Values are percent-decoded and must then be UTF-8; `+` means a space in
//!   `dn` only (in tracker URLs it is a literal `+`).
//! - `tr` may repeat (order kept, exact duplicates dropped); `x.pe` peers
//!   must be `host:port` with a non-zero port and IPv6 literals in brackets.
//! - Unknown parameters (`xl`, `ws`, `so`, `as`, `kt`...) are ignored.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::metainfo::InfoHash;

/// A parsed magnet link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Magnet {
    /// The v1 info-hash from `xt=urn:btih:`.
    pub info_hash: InfoHash,
    /// `dn`, the suggested name, percent-decoded. Only a hint: the real name
    /// comes from the metadata once fetched.
    pub display_name: Option<String>,
    /// `tr` tracker URLs, percent-decoded, in order, without duplicates.
    pub trackers: Vec<String>,
    /// `x.pe` peer addresses (`host:port`, `[v6]:port`), validated, without
    /// duplicates.
    pub peers: Vec<String>,
}

/// Why a string is not a usable magnet link.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum MagnetError {
    /// The string does not start with `magnet:?`.
    #[error("not a magnet link: expected it to start with `magnet:?`")]
    NotMagnet,
    /// No `xt=urn:btih:` (nor `urn:btmh:`) parameter.
    #[error("magnet link has no `xt=urn:btih:` info-hash")]
    MissingInfoHash,
    /// Only a BitTorrent v2 hash (`urn:btmh:`), which this client cannot use.
    #[error("magnet link has only a BitTorrent v2 (`urn:btmh:`) hash; v2 is not supported")]
    OnlyV2,
    /// The btih hash is neither 40 (hex) nor 32 (base32) characters long.
    #[error("info-hash `{hash}` has {len} characters; expected 40 (hex) or 32 (base32)")]
    BadHashLength {
        /// The hash as given.
        hash: String,
        /// Its length in characters.
        len: usize,
    },
    /// A 40-character hash with a non-hex character.
    #[error("info-hash `{hash}` is not valid hex")]
    BadHex {
        /// The hash as given.
        hash: String,
    },
    /// A 32-character hash with a character outside the RFC 4648 base32
    /// alphabet (`A`-`Z`, `2`-`7`).
    #[error("info-hash `{hash}` is not valid base32")]
    BadBase32 {
        /// The hash as given.
        hash: String,
    },
    /// Two `xt=urn:btih:` parameters naming different torrents.
    #[error("magnet link names two different info-hashes, {first} and {second}")]
    ConflictingHashes {
        /// The first hash.
        first: InfoHash,
        /// The conflicting one.
        second: InfoHash,
    },
    /// A `%` not followed by two hex digits.
    #[error("bad percent-escape in `{param}` at character {at}")]
    BadPercentEncoding {
        /// The parameter name.
        param: String,
        /// Position of the `%` within the raw value.
        at: usize,
    },
    /// A value that is not UTF-8 once percent-decoded.
    #[error("value of `{param}` is not valid UTF-8 once percent-decoded")]
    NotUtf8 {
        /// The parameter name.
        param: String,
    },
    /// An `x.pe` value that is not `host:port` / `[ipv6]:port` with a
    /// non-zero port.
    #[error("bad peer address `{value}` in x.pe: {reason}")]
    BadPeer {
        /// The decoded value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl Magnet {
    /// Parses a magnet link.
    pub fn parse(uri: &str) -> Result<Magnet, MagnetError> {
        let query =
            strip_prefix_ignore_case(uri.trim(), "magnet:?").ok_or(MagnetError::NotMagnet)?;
        let mut info_hash: Option<InfoHash> = None;
        let mut saw_v2 = false;
        let mut display_name = None;
        let mut trackers: Vec<String> = Vec::new();
        let mut peers: Vec<String> = Vec::new();

        for param in query.split('&').filter(|p| !p.is_empty()) {
            let (key, raw) = param.split_once('=').unwrap_or((param, ""));
            match base_key(key) {
                "xt" => {
                    let value = percent_decode(key, raw, false)?;
                    if let Some(hash) = strip_prefix_ignore_case(&value, "urn:btih:") {
                        let hash = parse_btih(hash)?;
                        match info_hash {
                            Some(first) if first != hash => {
                                return Err(MagnetError::ConflictingHashes {
                                    first,
                                    second: hash,
                                });
                            }
                            _ => info_hash = Some(hash),
                        }
                    } else if strip_prefix_ignore_case(&value, "urn:btmh:").is_some() {
                        saw_v2 = true;
                    }
                }
                "dn" => {
                    let value = percent_decode(key, raw, true)?;
                    display_name.get_or_insert(value);
                }
                "tr" => {
                    let value = percent_decode(key, raw, false)?;
                    if !value.is_empty() && !trackers.contains(&value) {
                        trackers.push(value);
                    }
                }
                "x.pe" => {
                    let value = percent_decode(key, raw, false)?;
                    validate_peer(&value)?;
                    if !peers.contains(&value) {
                        peers.push(value);
                    }
                }
                _ => {}
            }
        }
        let info_hash = match info_hash {
            Some(h) => h,
            None if saw_v2 => return Err(MagnetError::OnlyV2),
            None => return Err(MagnetError::MissingInfoHash),
        };
        Ok(Magnet {
            info_hash,
            display_name,
            trackers,
            peers,
        })
    }

    /// Formats the link: `magnet:?xt=urn:btih:<hex>` then `dn`, each `tr`
    /// and each `x.pe`, every value percent-encoded (all but RFC 3986
    /// unreserved characters), so [`Magnet::parse`] gives back the same
    /// `Magnet`.
    pub fn to_uri(&self) -> String {
        let mut uri = format!("magnet:?xt=urn:btih:{}", self.info_hash.to_hex());
        let params = self
            .display_name
            .iter()
            .map(|dn| ("dn", dn))
            .chain(self.trackers.iter().map(|t| ("tr", t)))
            .chain(self.peers.iter().map(|p| ("x.pe", p)));
        for (key, value) in params {
            uri.push('&');
            uri.push_str(key);
            uri.push('=');
            percent_encode_into(&mut uri, value);
        }
        uri
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// `xt.1` → `xt`: the numbered forms (`xt.1`, `tr.2`) mean the same key.
/// `x.pe` is not numbered and passes through.
fn base_key(key: &str) -> &str {
    match key.split_once('.') {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => key,
    }
}

/// Parses a btih hash: 40 hex or 32 base32 characters.
fn parse_btih(hash: &str) -> Result<InfoHash, MagnetError> {
    match hash.len() {
        40 => InfoHash::from_hex(hash).ok_or_else(|| MagnetError::BadHex {
            hash: hash.to_owned(),
        }),
        32 => base32_decode(hash.as_bytes())
            .map(InfoHash)
            .ok_or_else(|| MagnetError::BadBase32 {
                hash: hash.to_owned(),
            }),
        _ => Err(MagnetError::BadHashLength {
            hash: hash.to_owned(),
            len: hash.chars().count(),
        }),
    }
}

/// RFC 4648 base32 of exactly 32 characters (160 bits, no padding), either
/// case.
fn base32_decode(s: &[u8]) -> Option<[u8; 20]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 20];
    // 8 characters (40 bits) make 5 bytes.
    for (chunk, bytes) in s.chunks_exact(8).zip(out.chunks_exact_mut(5)) {
        let mut bits: u64 = 0;
        for &c in chunk {
            let v = match c.to_ascii_uppercase() {
                c @ b'A'..=b'Z' => c - b'A',
                c @ b'2'..=b'7' => c - b'2' + 26,
                _ => return None,
            };
            bits = (bits << 5) | u64::from(v);
        }
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = (bits >> (32 - 8 * i)) as u8;
        }
    }
    Some(out)
}

/// Decodes `%XX` escapes (and `+` as space when `plus_is_space`), then
/// requires UTF-8.
fn percent_decode(param: &str, raw: &str, plus_is_space: bool) -> Result<String, MagnetError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|&c| hex_value(c));
                let lo = bytes.get(i + 2).and_then(|&c| hex_value(c));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(MagnetError::BadPercentEncoding {
                        param: param.to_owned(),
                        at: i,
                    });
                };
                out.push((hi << 4) | lo);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| MagnetError::NotUtf8 {
        param: param.to_owned(),
    })
}

fn hex_value(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode_into(out: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
    }
}

/// Checks an `x.pe` value: `host:port` or `[ipv6]:port`, port 1-65535, host
/// an IPv4 address or a DNS name (letters, digits, `-`, `.`).
fn validate_peer(value: &str) -> Result<(), MagnetError> {
    let bad = |reason| MagnetError::BadPeer {
        value: value.to_owned(),
        reason,
    };
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (v6, port) = rest
            .split_once("]:")
            .ok_or_else(|| bad("expected `[ipv6]:port`"))?;
        v6.parse::<Ipv6Addr>()
            .map_err(|_| bad("invalid IPv6 address"))?;
        (None, port)
    } else {
        let (host, port) = value
            .rsplit_once(':')
            .ok_or_else(|| bad("expected `host:port`"))?;
        (Some(host), port)
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("port is not a number"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(bad("port out of range 1-65535")),
    }
    if let Some(host) = host {
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        if host.contains(':') {
            return Err(bad("IPv6 addresses must be in brackets"));
        }
        let looks_numeric = host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        if looks_numeric {
            host.parse::<Ipv4Addr>()
                .map_err(|_| bad("invalid IPv4 address"))?;
        } else if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(bad("invalid host name"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_keys() {
        assert_eq!(base_key("xt"), "xt");
        assert_eq!(base_key("xt.1"), "xt");
        assert_eq!(base_key("tr.12"), "tr");
        assert_eq!(base_key("x.pe"), "x.pe");
        assert_eq!(base_key("xt."), "xt.");
    }

    #[test]
    fn base32_rejects_padding_and_bad_chars() {
        assert!(base32_decode(&[b'A'; 32]).is_some());
        let mut s = [b'A'; 32];
        s[31] = b'=';
        assert!(base32_decode(&s).is_none());
        s[31] = b'1';
        assert!(base32_decode(&s).is_none());
        s[31] = b'8';
        assert!(base32_decode(&s).is_none());
        assert!(base32_decode(&[b'A'; 31]).is_none());
    }
}
