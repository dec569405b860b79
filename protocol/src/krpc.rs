//! KRPC, the DHT's message format (BEP 5), both directions, sans-IO.
//!
//! One UDP datagram is one bencoded dictionary: a query (`y` = `q`), a
//! response (`r`) or an error (`e`), with a transaction id (`t`) the
//! response echoes. This module turns datagrams into [`Message`]s and back;
//! matching responses to queries, timeouts, tokens and the routing table are
//! the DHT actor's job (they need a clock and state).
//!
//! Remote input is hostile, so [`decode`] checks the datagram's size before
//! anything else ([`Limits::max_packet`]), decodes it with the strict,
//! zero-copy [`crate::bencode`] decoder under a small depth limit, and
//! checks every length (ids are exactly 20 bytes, compact nodes 26, compact
//! peers 6) and every count ([`Limits::max_nodes`], [`Limits::max_values`])
//! before it copies anything out. A response that lists more nodes than a
//! KRPC response should is refused whole rather than truncated: a node that
//! does that is misbehaving, and the caller counts it.
//!
//! Leniencies, chosen to interoperate with what is deployed:
//!
//! - unknown keys are ignored anywhere (BEP 5 extensions add them);
//! - IPv6 entries (`nodes6`, 18-byte `values`) are skipped, not refused,
//!   since this DHT speaks IPv4 only (BEP 32 is a follow-up);
//! - `v` (client version) longer than [`MAX_VERSION_LEN`] and an `ip`
//!   (BEP 42) that is not a 6-byte compact IPv4 address are ignored, since
//!   they are informational;
//! - an unknown query method is decoded ([`Method::Unknown`]) so that the
//!   node can answer it with error 204 as BEP 5 says;
//! - `announce_peer` with `implied_port` = 1 needs no `port`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::bencode::{self, Value, encode_bytes, encode_int};
use crate::tracker::encode_compact_peer;

/// Bytes in a node id or info-hash.
pub const ID_LEN: usize = 20;
/// Bytes of one compact node: id, IPv4 address, port.
pub const COMPACT_NODE_LEN: usize = 26;
/// Bytes of one compact IPv4 peer: address, port.
pub const COMPACT_PEER_LEN: usize = 6;
/// Longest `v` (client version) kept; longer ones are ignored.
pub const MAX_VERSION_LEN: usize = 16;
/// Longest method name kept for an unknown query.
pub const MAX_METHOD_LEN: usize = 32;
/// Longest error message kept (longer ones are cut at a character
/// boundary).
pub const MAX_ERROR_MESSAGE_LEN: usize = 256;

/// Nesting allowed in a datagram. KRPC needs 3 (message, arguments,
/// `values` list); the slack lets extension keys with a little structure
/// through, while a deeply nested datagram is refused cheaply.
const MAX_DEPTH: usize = 8;

/// A node id or info-hash.
pub type Id = [u8; ID_LEN];

/// BEP 5 error codes.
pub mod code {
    /// Generic error.
    pub const GENERIC: i64 = 201;
    /// Server error.
    pub const SERVER: i64 = 202;
    /// Protocol error: malformed packet, invalid arguments, bad token.
    pub const PROTOCOL: i64 = 203;
    /// Method unknown.
    pub const METHOD_UNKNOWN: i64 = 204;
}

/// Bounds applied while decoding a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest datagram decoded. Default 2048 bytes: a full `get_peers`
    /// response (8 nodes and 100 peers) is about 1.1 KB.
    pub max_packet: usize,
    /// Most compact nodes in one response. Default 16 (BEP 5 responses
    /// carry the 8 closest).
    pub max_nodes: usize,
    /// Most peers (`values` entries) in one response. Default 200
    /// (libtorrent sends up to 100).
    pub max_values: usize,
    /// Longest transaction id. Default 16 bytes (clients use 2 to 4).
    pub max_transaction_id: usize,
    /// Longest token. Default 64 bytes (clients use 4 to 20).
    pub max_token: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packet: 2048,
            max_nodes: 16,
            max_values: 200,
            max_transaction_id: 16,
            max_token: 64,
        }
    }
}

/// Why a datagram is not a valid KRPC message.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum KrpcError {
    /// The datagram is longer than [`Limits::max_packet`].
    #[error("datagram of {len} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Bytes received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The datagram is not valid bencode.
    #[error("not bencode: {0}")]
    Bencode(#[from] bencode::DecodeError),
    /// The datagram (or its `a` / `r` part) is not a dictionary.
    #[error("{0} is not a dictionary")]
    NotADict(&'static str),
    /// A required key is absent.
    #[error("missing key `{0}`")]
    MissingKey(&'static str),
    /// A key holds the wrong kind of value.
    #[error("key `{key}` is not {expected}")]
    WrongType {
        /// The key.
        key: &'static str,
        /// What it should hold.
        expected: &'static str,
    },
    /// A fixed-size byte string (id, info-hash, target) of the wrong size.
    #[error("key `{key}` holds {len} bytes, expected {expected}")]
    BadLength {
        /// The key.
        key: &'static str,
        /// Bytes found.
        len: usize,
        /// Bytes required.
        expected: usize,
    },
    /// A variable-size byte string over its limit.
    #[error("key `{key}` holds {len} bytes, over the {max}-byte limit")]
    TooLong {
        /// The key.
        key: &'static str,
        /// Bytes found.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `y` is not `q`, `r` or `e`.
    #[error("unknown message type `{0}`")]
    UnknownType(String),
    /// `nodes` is not a whole number of 26-byte entries.
    #[error("`nodes` of {0} bytes is not a whole number of 26-byte entries")]
    BadNodes(usize),
    /// More compact nodes than [`Limits::max_nodes`].
    #[error("{count} nodes in one response, over the limit of {max}")]
    TooManyNodes {
        /// Nodes in the response.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A `values` entry that is neither a 6-byte IPv4 nor an 18-byte IPv6
    /// compact peer.
    #[error("`values` entry of {0} bytes is not a compact peer")]
    BadPeer(usize),
    /// More `values` entries than [`Limits::max_values`].
    #[error("{count} peers in one response, over the limit of {max}")]
    TooManyValues {
        /// Entries in the response.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// `port` outside 1..=65535 (and no `implied_port`).
    #[error("port {0} is out of range")]
    BadPort(i64),
    /// `e` is not a list starting with an integer code.
    #[error("`e` is not a [code, message] list")]
    BadError,
}

impl KrpcError {
    /// A short fixed name for the kind of error, for counters.
    pub fn reason(&self) -> &'static str {
        match self {
            KrpcError::TooLarge { .. } => "too_large",
            KrpcError::Bencode(_) => "not_bencode",
            KrpcError::NotADict(_) => "not_a_dict",
            KrpcError::MissingKey(_) => "missing_key",
            KrpcError::WrongType { .. } => "wrong_type",
            KrpcError::BadLength { .. } => "bad_length",
            KrpcError::TooLong { .. } => "too_long",
            KrpcError::UnknownType(_) => "unknown_type",
            KrpcError::BadNodes(_) => "bad_nodes",
            KrpcError::TooManyNodes { .. } => "too_many_nodes",
            KrpcError::BadPeer(_) => "bad_peer",
            KrpcError::TooManyValues { .. } => "too_many_values",
            KrpcError::BadPort(_) => "bad_port",
            KrpcError::BadError => "bad_error",
        }
    }
}

/// One KRPC datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// `t`: chosen by the querying node, echoed in the response.
    pub transaction_id: Vec<u8>,
    /// `v`: the sender's client and version (BEP 5 recommends 4 bytes).
    pub version: Option<Vec<u8>>,
    /// `ip`: in a response, the address the responder saw the query come
    /// from (BEP 42): how a node learns its external address.
    pub ip: Option<SocketAddrV4>,
    /// `ro` = 1: the sender is read-only (BEP 43) and must not be put into
    /// routing tables.
    pub read_only: bool,
    /// What the message says.
    pub body: Body,
}

/// The three kinds of KRPC message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// `y` = `q`.
    Query(Query),
    /// `y` = `r`.
    Response(Response),
    /// `y` = `e`.
    Error(ErrorBody),
}

/// A query: the sender's id and the method with its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    /// `a.id`: the querying node.
    pub id: Id,
    /// `q` and the rest of `a`.
    pub method: Method,
}

/// The query methods of BEP 5.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// `ping`.
    Ping,
    /// `find_node`: the closest nodes to `target`.
    FindNode {
        /// The id looked for.
        target: Id,
    },
    /// `get_peers`: peers of `info_hash`, or the closest nodes and a token.
    GetPeers {
        /// The torrent.
        info_hash: Id,
    },
    /// `announce_peer`: the sender is a peer of `info_hash`.
    AnnouncePeer {
        /// The torrent.
        info_hash: Id,
        /// The peer's port (ignored when `implied_port`).
        port: u16,
        /// Use the UDP source port instead of `port`.
        implied_port: bool,
        /// The token from our earlier `get_peers` response.
        token: Vec<u8>,
    },
    /// Any other method (BEP 44 `get`/`put`, BEP 51...), by name (at most
    /// [`MAX_METHOD_LEN`] bytes kept).
    Unknown(Vec<u8>),
}

impl Method {
    /// The `q` value.
    pub fn name(&self) -> &[u8] {
        match self {
            Method::Ping => b"ping",
            Method::FindNode { .. } => b"find_node",
            Method::GetPeers { .. } => b"get_peers",
            Method::AnnouncePeer { .. } => b"announce_peer",
            Method::Unknown(name) => name,
        }
    }
}

/// A response. BEP 5 responses are not self-describing (a `ping` and an
/// `announce_peer` response look alike); the querying node knows which
/// query it answers from the transaction id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    /// `r.id`: the responding node.
    pub id: Id,
    /// `r.nodes`: compact IPv4 nodes (`find_node`, `get_peers`).
    pub nodes: Vec<CompactNode>,
    /// `r.values`: compact IPv4 peers (`get_peers`).
    pub values: Vec<SocketAddrV4>,
    /// `r.token` (`get_peers`), needed for a later `announce_peer`.
    pub token: Option<Vec<u8>>,
}

/// An error: a BEP 5 code and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorBody {
    /// 201 to 204 in BEP 5 ([`code`]).
    pub code: i64,
    /// Human-readable, lossily decoded as UTF-8 and cut at
    /// [`MAX_ERROR_MESSAGE_LEN`] bytes.
    pub message: String,
}

/// A node as it travels in `nodes`: id, then address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CompactNode {
    /// The node's id.
    pub id: Id,
    /// Its UDP address.
    pub addr: SocketAddrV4,
}

/// Decodes one datagram.
pub fn decode(datagram: &[u8], limits: &Limits) -> Result<Message, KrpcError> {
    if datagram.len() > limits.max_packet {
        return Err(KrpcError::TooLarge {
            len: datagram.len(),
            max: limits.max_packet,
        });
    }
    let value = bencode::decode_with(
        datagram,
        &bencode::Limits {
            max_depth: MAX_DEPTH,
            max_input: limits.max_packet,
        },
    )?;
    if value.as_dict().is_none() {
        return Err(KrpcError::NotADict("the message"));
    }
    let transaction_id = bytes(&value, "t")?;
    if transaction_id.len() > limits.max_transaction_id {
        return Err(KrpcError::TooLong {
            key: "t",
            len: transaction_id.len(),
            max: limits.max_transaction_id,
        });
    }
    let version = value
        .get(b"v")
        .and_then(Value::as_bytes)
        .filter(|v| v.len() <= MAX_VERSION_LEN)
        .map(<[u8]>::to_vec);
    let ip = value
        .get(b"ip")
        .and_then(Value::as_bytes)
        .and_then(|b| <&[u8; COMPACT_PEER_LEN]>::try_from(b).ok())
        .map(peer_v4);
    let read_only = value.get(b"ro").and_then(Value::as_int) == Some(1);
    let body = match bytes(&value, "y")? {
        b"q" => Body::Query(decode_query(&value)?),
        b"r" => Body::Response(decode_response(&value, limits)?),
        b"e" => Body::Error(decode_error(&value)?),
        other => {
            return Err(KrpcError::UnknownType(
                String::from_utf8_lossy(&other[..other.len().min(8)]).into_owned(),
            ));
        }
    };
    Ok(Message {
        transaction_id: transaction_id.to_vec(),
        version,
        ip,
        read_only,
        body,
    })
}

fn bytes<'a>(dict: &Value<'a>, key: &'static str) -> Result<&'a [u8], KrpcError> {
    dict.get(key.as_bytes())
        .ok_or(KrpcError::MissingKey(key))?
        .as_bytes()
        .ok_or(KrpcError::WrongType {
            key,
            expected: "a byte string",
        })
}

fn id(dict: &Value<'_>, key: &'static str) -> Result<Id, KrpcError> {
    let b = bytes(dict, key)?;
    Id::try_from(b).map_err(|_| KrpcError::BadLength {
        key,
        len: b.len(),
        expected: ID_LEN,
    })
}

fn peer_v4(b: &[u8; COMPACT_PEER_LEN]) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::new(b[0], b[1], b[2], b[3]),
        u16::from_be_bytes([b[4], b[5]]),
    )
}

fn args<'v, 'a>(msg: &'v Value<'a>, key: &'static str) -> Result<&'v Value<'a>, KrpcError> {
    let a = msg.get(key.as_bytes()).ok_or(KrpcError::MissingKey(key))?;
    if a.as_dict().is_none() {
        return Err(KrpcError::NotADict(key));
    }
    Ok(a)
}

fn decode_query(msg: &Value<'_>) -> Result<Query, KrpcError> {
    let name = bytes(msg, "q")?;
    let a = args(msg, "a")?;
    let id = id(a, "id")?;
    let method = match name {
        b"ping" => Method::Ping,
        b"find_node" => Method::FindNode {
            target: self::id(a, "target")?,
        },
        b"get_peers" => Method::GetPeers {
            info_hash: self::id(a, "info_hash")?,
        },
        b"announce_peer" => {
            let info_hash = self::id(a, "info_hash")?;
            let implied_port = match a.get(b"implied_port") {
                None => false,
                Some(v) => {
                    v.as_int().ok_or(KrpcError::WrongType {
                        key: "implied_port",
                        expected: "an integer",
                    })? != 0
                }
            };
            let port = match a.get(b"port") {
                None if implied_port => 0,
                None => return Err(KrpcError::MissingKey("port")),
                Some(v) => {
                    let p = v.as_int().ok_or(KrpcError::WrongType {
                        key: "port",
                        expected: "an integer",
                    })?;
                    match u16::try_from(p) {
                        Ok(p) if p != 0 || implied_port => p,
                        // With implied_port the given port is ignored, so
                        // it need not be valid.
                        _ if implied_port => 0,
                        _ => return Err(KrpcError::BadPort(p)),
                    }
                }
            };
            let token = bytes(a, "token")?.to_vec();
            Method::AnnouncePeer {
                info_hash,
                port,
                implied_port,
                token,
            }
        }
        other => Method::Unknown(other[..other.len().min(MAX_METHOD_LEN)].to_vec()),
    };
    Ok(Query { id, method })
}

fn decode_response(msg: &Value<'_>, limits: &Limits) -> Result<Response, KrpcError> {
    let r = args(msg, "r")?;
    let id = id(r, "id")?;
    let nodes = match r.get(b"nodes") {
        None => Vec::new(),
        Some(v) => {
            let b = v.as_bytes().ok_or(KrpcError::WrongType {
                key: "nodes",
                expected: "a byte string",
            })?;
            if b.len() % COMPACT_NODE_LEN != 0 {
                return Err(KrpcError::BadNodes(b.len()));
            }
            let count = b.len() / COMPACT_NODE_LEN;
            if count > limits.max_nodes {
                return Err(KrpcError::TooManyNodes {
                    count,
                    max: limits.max_nodes,
                });
            }
            b.chunks_exact(COMPACT_NODE_LEN)
                .map(|c| {
                    // chunks_exact guarantees the sizes these slices need.
                    let mut id = [0; ID_LEN];
                    id.copy_from_slice(&c[..ID_LEN]);
                    let mut addr = [0; COMPACT_PEER_LEN];
                    addr.copy_from_slice(&c[ID_LEN..]);
                    CompactNode {
                        id,
                        addr: peer_v4(&addr),
                    }
                })
                .collect()
        }
    };
    let values = match r.get(b"values") {
        None => Vec::new(),
        Some(v) => {
            let list = v.as_list().ok_or(KrpcError::WrongType {
                key: "values",
                expected: "a list",
            })?;
            if list.len() > limits.max_values {
                return Err(KrpcError::TooManyValues {
                    count: list.len(),
                    max: limits.max_values,
                });
            }
            let mut peers = Vec::with_capacity(list.len());
            for entry in list {
                let b = entry.as_bytes().ok_or(KrpcError::WrongType {
                    key: "values",
                    expected: "a list of byte strings",
                })?;
                match <&[u8; COMPACT_PEER_LEN]>::try_from(b) {
                    Ok(p) => peers.push(peer_v4(p)),
                    // An IPv6 peer (BEP 32): skipped, we speak IPv4.
                    Err(_) if b.len() == 18 => {}
                    Err(_) => return Err(KrpcError::BadPeer(b.len())),
                }
            }
            peers
        }
    };
    let token = match r.get(b"token") {
        None => None,
        Some(v) => {
            let b = v.as_bytes().ok_or(KrpcError::WrongType {
                key: "token",
                expected: "a byte string",
            })?;
            if b.len() > limits.max_token {
                return Err(KrpcError::TooLong {
                    key: "token",
                    len: b.len(),
                    max: limits.max_token,
                });
            }
            Some(b.to_vec())
        }
    };
    Ok(Response {
        id,
        nodes,
        values,
        token,
    })
}

fn decode_error(msg: &Value<'_>) -> Result<ErrorBody, KrpcError> {
    let e = msg.get(b"e").ok_or(KrpcError::MissingKey("e"))?;
    let list = e.as_list().ok_or(KrpcError::BadError)?;
    let code = list
        .first()
        .and_then(Value::as_int)
        .ok_or(KrpcError::BadError)?;
    let message = match list.get(1).and_then(Value::as_bytes) {
        None => String::new(),
        Some(b) => {
            let mut s = String::from_utf8_lossy(b).into_owned();
            if s.len() > MAX_ERROR_MESSAGE_LEN {
                let mut cut = MAX_ERROR_MESSAGE_LEN;
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                s.truncate(cut);
            }
            s
        }
    };
    Ok(ErrorBody { code, message })
}

impl Message {
    /// A query.
    pub fn query(transaction_id: &[u8], id: Id, method: Method) -> Message {
        Message {
            transaction_id: transaction_id.to_vec(),
            version: None,
            ip: None,
            read_only: false,
            body: Body::Query(Query { id, method }),
        }
    }

    /// A response.
    pub fn response(transaction_id: &[u8], response: Response) -> Message {
        Message {
            transaction_id: transaction_id.to_vec(),
            version: None,
            ip: None,
            read_only: false,
            body: Body::Response(response),
        }
    }

    /// An error.
    pub fn error(transaction_id: &[u8], code: i64, message: &str) -> Message {
        Message {
            transaction_id: transaction_id.to_vec(),
            version: None,
            ip: None,
            read_only: false,
            body: Body::Error(ErrorBody {
                code,
                message: message.to_owned(),
            }),
        }
    }

    /// The datagram.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.encode_into(&mut out);
        out
    }

    /// Appends the datagram to `out`. Keys are written in sorted order, as
    /// bencode requires: `a`, `e`, `ip`, `q`, `r`, `ro`, `t`, `v`, `y`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(b'd');
        match &self.body {
            Body::Query(q) => {
                out.extend_from_slice(b"1:a");
                encode_args(q, out);
            }
            Body::Error(e) => {
                out.extend_from_slice(b"1:el");
                encode_int(out, e.code);
                encode_bytes(out, e.message.as_bytes());
                out.push(b'e');
            }
            Body::Response(_) => {}
        }
        if let Some(ip) = &self.ip {
            encode_bytes(out, b"ip");
            let mut compact = Vec::with_capacity(COMPACT_PEER_LEN);
            encode_compact_peer(&SocketAddr::V4(*ip), &mut compact);
            encode_bytes(out, &compact);
        }
        match &self.body {
            Body::Query(q) => {
                out.extend_from_slice(b"1:q");
                encode_bytes(out, q.method.name());
            }
            Body::Response(r) => {
                out.extend_from_slice(b"1:r");
                encode_response(r, out);
            }
            Body::Error(_) => {}
        }
        if self.read_only {
            out.extend_from_slice(b"2:roi1e");
        }
        out.extend_from_slice(b"1:t");
        encode_bytes(out, &self.transaction_id);
        if let Some(v) = &self.version {
            out.extend_from_slice(b"1:v");
            encode_bytes(out, v);
        }
        out.extend_from_slice(match self.body {
            Body::Query(_) => b"1:y1:q",
            Body::Response(_) => b"1:y1:r",
            Body::Error(_) => b"1:y1:e",
        });
        out.push(b'e');
    }
}

/// `a`, keys sorted: `id`, `implied_port`, `info_hash`, `port`, `target`,
/// `token`.
fn encode_args(q: &Query, out: &mut Vec<u8>) {
    out.push(b'd');
    out.extend_from_slice(b"2:id");
    encode_bytes(out, &q.id);
    match &q.method {
        Method::Ping | Method::Unknown(_) => {}
        Method::FindNode { target } => {
            out.extend_from_slice(b"6:target");
            encode_bytes(out, target);
        }
        Method::GetPeers { info_hash } => {
            out.extend_from_slice(b"9:info_hash");
            encode_bytes(out, info_hash);
        }
        Method::AnnouncePeer {
            info_hash,
            port,
            implied_port,
            token,
        } => {
            if *implied_port {
                out.extend_from_slice(b"12:implied_porti1e");
            }
            out.extend_from_slice(b"9:info_hash");
            encode_bytes(out, info_hash);
            out.extend_from_slice(b"4:port");
            encode_int(out, i64::from(*port));
            out.extend_from_slice(b"5:token");
            encode_bytes(out, token);
        }
    }
    out.push(b'e');
}

/// `r`, keys sorted: `id`, `nodes`, `token`, `values`.
fn encode_response(r: &Response, out: &mut Vec<u8>) {
    out.push(b'd');
    out.extend_from_slice(b"2:id");
    encode_bytes(out, &r.id);
    if !r.nodes.is_empty() {
        out.extend_from_slice(b"5:nodes");
        let mut compact = Vec::with_capacity(r.nodes.len() * COMPACT_NODE_LEN);
        for n in &r.nodes {
            compact.extend_from_slice(&n.id);
            encode_compact_peer(&SocketAddr::V4(n.addr), &mut compact);
        }
        encode_bytes(out, &compact);
    }
    if let Some(token) = &r.token {
        out.extend_from_slice(b"5:token");
        encode_bytes(out, token);
    }
    if !r.values.is_empty() {
        out.extend_from_slice(b"6:valuesl");
        let mut compact = Vec::with_capacity(COMPACT_PEER_LEN);
        for p in &r.values {
            compact.clear();
            encode_compact_peer(&SocketAddr::V4(*p), &mut compact);
            encode_bytes(out, &compact);
        }
        out.push(b'e');
    }
    out.push(b'e');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_keys_encode_as_bencode_would() {
        // The hand-written encoder must agree with the generic one, which
        // sorts keys through its BTreeMap.
        let m = Message {
            transaction_id: b"xy".to_vec(),
            version: Some(b"AT01".to_vec()),
            ip: Some(SocketAddrV4::new(Ipv4Addr::new(1, 2, 3, 4), 5)),
            read_only: true,
            body: Body::Query(Query {
                id: [1; 20],
                method: Method::AnnouncePeer {
                    info_hash: [2; 20],
                    port: 6881,
                    implied_port: true,
                    token: b"tok".to_vec(),
                },
            }),
        };
        let bytes = m.encode();
        let generic = bencode::decode(&bytes).unwrap().to_owned_value().encode();
        assert_eq!(bytes, generic);
        assert!(
            bencode::decode(&bytes)
                .unwrap()
                .as_dict()
                .unwrap()
                .is_sorted()
        );
    }
}
