//! Peer wire protocol (BEP 3, BEP 6 fast extension, BEP 10 extension
//! protocol): the handshake, length-prefixed messages and the extended
//! handshake, as an incremental, zero-copy codec.
//!
//! This module owns the byte layout of everything a peer connection sends and
//! receives after the TCP connect, and nothing else: which messages are
//! allowed in which state (for example a fast-extension message from a peer
//! that did not set the reserved bit) is the peer session's decision.
//!
//! # Decoding
//!
//! The peer actor reads the socket into a [`BytesMut`] and calls
//! [`decode_message`] until it returns [`Decoded::NeedMore`]. Like httparse's
//! `Status::Partial`, a partial buffer is a value, not an error: any prefix of
//! a valid stream decodes to `NeedMore(n)` with `n >= 1` the number of bytes
//! still missing before the next step can be taken.
//!
//! - **Bounded before allocated.** The 4-byte length prefix is compared with
//!   [`Limits::max_message_len`] before anything else, and the decoder never
//!   reserves or allocates in the caller's buffer; `NeedMore(n)` is always
//!   bounded by the limit, so `buf.reserve(n)` after it is safe.
//! - **Zero-copy.** A complete frame is cut off the front of the buffer with
//!   `split_to(..).freeze()`, so the `data` of [`Message::Piece`] (and the
//!   payload of `Bitfield` and `Extended`) is a [`Bytes`] view into the very
//!   allocation the socket was read into. The block travels to the hasher and
//!   to `pwritev` without being copied again.
//! - **Validated.** Fixed-size messages must have exactly their size, block
//!   lengths are bounded, bitfields are checked against the piece count when
//!   it is known, and unknown ids are reported as
//!   [`WireError::UnknownMessage`] so the caller decides whether to skip or
//!   disconnect. On any error `buf` is left untouched.
//!
//! # Encoding
//!
//! [`Message::encode`] appends a frame to a `BytesMut`. For the seeding path,
//! [`piece_header`] gives the 13-byte header of a `piece` message so the
//! caller can write `[header, block]` with one vectored write and never copy
//! the block into a send buffer.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::bencode::{self, Bencode};

/// The protocol string every BitTorrent v1 handshake starts with.
pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";

/// Standard block size requested from peers (16 KiB); also the BEP 9
/// metadata piece size.
pub const BLOCK_SIZE: u32 = 16 * 1024;

/// Default [`Limits::max_message_len`]: 64 KiB.
///
/// The largest message a well-behaved peer sends us in normal operation is a
/// `piece` carrying a 16 KiB block (9 + 16384 bytes) or a BEP 9 metadata piece
/// (a 16 KiB chunk after a short bencoded header). Extended handshakes are a
/// few hundred bytes. 64 KiB leaves room for peers that send larger blocks
/// when asked and for generous extension messages while keeping a hostile
/// peer's worst case small. Bitfields of torrents with more than 524 280
/// pieces exceed it; they are still accepted when [`Limits::piece_count`] is
/// known (see [`Limits`]).
pub const DEFAULT_MAX_MESSAGE_LEN: u32 = 64 * 1024;

/// Default [`Limits::max_request_len`]: 128 KiB, the largest block any
/// mainstream client requests or serves.
pub const DEFAULT_MAX_REQUEST_LEN: u32 = 128 * 1024;

/// Message ids (the byte after the length prefix).
#[allow(missing_docs)] // the names are the BEP's
pub mod id {
    pub const CHOKE: u8 = 0;
    pub const UNCHOKE: u8 = 1;
    pub const INTERESTED: u8 = 2;
    pub const NOT_INTERESTED: u8 = 3;
    pub const HAVE: u8 = 4;
    pub const BITFIELD: u8 = 5;
    pub const REQUEST: u8 = 6;
    pub const PIECE: u8 = 7;
    pub const CANCEL: u8 = 8;
    /// BEP 5 DHT port.
    pub const PORT: u8 = 9;
    /// BEP 6 fast extension.
    pub const SUGGEST: u8 = 13;
    pub const HAVE_ALL: u8 = 14;
    pub const HAVE_NONE: u8 = 15;
    pub const REJECT: u8 = 16;
    pub const ALLOWED_FAST: u8 = 17;
    /// BEP 10 extension protocol.
    pub const EXTENDED: u8 = 20;
}

/// Result of an incremental decode step (httparse's `Status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<T> {
    /// A whole value was decoded and its bytes consumed.
    Complete(T),
    /// The input is a valid prefix; at least this many more bytes (always
    /// `>= 1`) are needed before the next call can make progress.
    NeedMore(usize),
}

impl<T> Decoded<T> {
    /// The decoded value, or `None` if more input is needed.
    pub fn complete(self) -> Option<T> {
        match self {
            Decoded::Complete(v) => Some(v),
            Decoded::NeedMore(_) => None,
        }
    }
}

/// Everything that makes a peer's bytes invalid. Each variant is a protocol
/// violation; the connection should be closed with the message logged (except
/// perhaps for [`WireError::UnknownMessage`], which a lenient caller may skip).
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The handshake does not start with `\x13BitTorrent protocol` (a peer
    /// speaking another protocol, or an encrypted MSE stream). Detected as
    /// soon as the first differing byte arrives.
    #[error("handshake: not the BitTorrent protocol (byte {offset} is {found:#04x})")]
    BadProtocol {
        /// Offset of the first wrong byte in the 20-byte header.
        offset: usize,
        /// The byte found there.
        found: u8,
    },
    /// The length prefix exceeds [`Limits::max_message_len`]; nothing was
    /// allocated for it.
    #[error("message length {len} exceeds the limit of {max} bytes")]
    MessageTooLong {
        /// Declared length (excluding the 4-byte prefix).
        len: u32,
        /// The limit in force.
        max: u32,
    },
    /// The message id is not one this codec knows. `len` is the declared
    /// length, so a caller that wants to skip it can `buf.advance(4 + len)`.
    #[error("unknown message id {id} (length {len})")]
    UnknownMessage {
        /// The unknown id.
        id: u8,
        /// Declared length (excluding the 4-byte prefix), id byte included.
        len: u32,
    },
    /// A fixed-size message (everything but bitfield, piece and extended)
    /// declared a length other than its size.
    #[error("message id {id} must have length {expected}, got {len}")]
    WrongLength {
        /// Message id.
        id: u8,
        /// Declared length.
        len: u32,
        /// The only valid length for this id.
        expected: u32,
    },
    /// A variable-size message (piece, extended) is shorter than its header.
    #[error("message id {id} needs length at least {min}, got {len}")]
    TooShort {
        /// Message id.
        id: u8,
        /// Declared length.
        len: u32,
        /// Minimum valid length for this id.
        min: u32,
    },
    /// A bitfield's size is not `ceil(piece_count / 8)` bytes.
    #[error("bitfield is {len} bytes, expected {expected} for {piece_count} pieces")]
    BitfieldLength {
        /// Bytes received.
        len: usize,
        /// Bytes expected.
        expected: usize,
        /// The torrent's piece count.
        piece_count: u32,
    },
    /// A bitfield has bits set past the last piece.
    #[error("bitfield has spare bits set past piece {piece_count}")]
    BitfieldSpareBits {
        /// The torrent's piece count.
        piece_count: u32,
    },
    /// A piece index is not below the torrent's piece count.
    #[error("message id {id}: piece index {index} out of range ({piece_count} pieces)")]
    PieceIndexOutOfRange {
        /// Message id.
        id: u8,
        /// The index received.
        index: u32,
        /// The torrent's piece count.
        piece_count: u32,
    },
    /// A request, cancel or reject names a block of length zero or longer
    /// than [`Limits::max_request_len`].
    #[error("message id {id}: block length {length} not in 1..={max}")]
    BlockLength {
        /// Message id.
        id: u8,
        /// Block length received.
        length: u32,
        /// The limit in force.
        max: u32,
    },
    /// A block's `begin + length` does not fit in 32 bits.
    #[error("message id {id}: block at offset {begin} with length {length} overflows")]
    BlockOverflow {
        /// Message id.
        id: u8,
        /// Block offset received.
        begin: u32,
        /// Block length received.
        length: u32,
    },
    /// The BEP 10 extended handshake payload is not valid bencode.
    #[error("extended handshake: {0}")]
    ExtendedHandshakeBencode(#[from] bencode::DecodeError),
    /// The BEP 10 extended handshake payload is bencode but not a dictionary.
    #[error("extended handshake is not a dictionary")]
    ExtendedHandshakeNotDict,
}

impl WireError {
    /// The message id of an error in a well-framed message's *content*: a
    /// piece index or block length outside what the limits allow
    /// ([`WireError::PieceIndexOutOfRange`], [`WireError::BlockLength`],
    /// [`WireError::BlockOverflow`]). The frame itself is intact (its length
    /// passed every check), so a lenient caller may drop just that message
    /// with [`skip_frame`] and go on, as libtorrent does for a request it
    /// cannot serve. `None` for framing errors, after which the stream
    /// cannot be trusted.
    pub fn content_error_id(&self) -> Option<u8> {
        match self {
            WireError::PieceIndexOutOfRange { id, .. }
            | WireError::BlockLength { id, .. }
            | WireError::BlockOverflow { id, .. } => Some(*id),
            _ => None,
        }
    }
}

/// Decoder limits. Construct with `Limits { piece_count: Some(n),
/// ..Limits::default() }` once the metainfo is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted length prefix (id byte + payload, excluding the prefix
    /// itself). Default [`DEFAULT_MAX_MESSAGE_LEN`]. The one exception is a
    /// bitfield of exactly the right size for a known `piece_count`, which is
    /// accepted even when larger: its size is fixed by the torrent, not by
    /// the peer.
    pub max_message_len: u32,
    /// Largest block length accepted in request, cancel and reject.
    /// Default [`DEFAULT_MAX_REQUEST_LEN`].
    pub max_request_len: u32,
    /// The torrent's piece count, once known (it is not, while fetching
    /// metadata by BEP 9). When set, bitfields must be exactly
    /// `ceil(piece_count / 8)` bytes with zero spare bits, and every piece
    /// index (have, request, piece, cancel, suggest, reject, allowed fast)
    /// must be below it. When `None` indices are not range-checked here.
    pub piece_count: Option<u32>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_len: DEFAULT_MAX_MESSAGE_LEN,
            max_request_len: DEFAULT_MAX_REQUEST_LEN,
            piece_count: None,
        }
    }
}

/// The 68-byte handshake that opens every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Handshake {
    /// Eight reserved bytes; each set bit advertises an extension.
    pub reserved: [u8; 8],
    /// SHA-1 of the torrent's info dictionary.
    pub info_hash: [u8; 20],
    /// The sender's peer id.
    pub peer_id: [u8; 20],
}

impl Handshake {
    /// Size of an encoded handshake.
    pub const LEN: usize = 68;

    /// A handshake with the given reserved bits.
    pub fn new(reserved: [u8; 8], info_hash: [u8; 20], peer_id: [u8; 20]) -> Self {
        Handshake {
            reserved,
            info_hash,
            peer_id,
        }
    }

    /// Whether the BEP 10 extension protocol bit (`reserved[5] & 0x10`) is set.
    pub fn supports_extended(&self) -> bool {
        self.reserved[5] & 0x10 != 0
    }

    /// Whether the BEP 6 fast extension bit (`reserved[7] & 0x04`) is set.
    pub fn supports_fast(&self) -> bool {
        self.reserved[7] & 0x04 != 0
    }

    /// Whether the BEP 5 DHT bit (`reserved[7] & 0x01`) is set.
    pub fn supports_dht(&self) -> bool {
        self.reserved[7] & 0x01 != 0
    }

    /// Sets or clears the BEP 10 extension protocol bit.
    pub fn set_extended(&mut self, on: bool) {
        set_bit(&mut self.reserved[5], 0x10, on);
    }

    /// Sets or clears the BEP 6 fast extension bit.
    pub fn set_fast(&mut self, on: bool) {
        set_bit(&mut self.reserved[7], 0x04, on);
    }

    /// Sets or clears the BEP 5 DHT bit.
    pub fn set_dht(&mut self, on: bool) {
        set_bit(&mut self.reserved[7], 0x01, on);
    }

    /// The 68 encoded bytes.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0] = PROTOCOL.len() as u8;
        out[1..20].copy_from_slice(PROTOCOL);
        out[20..28].copy_from_slice(&self.reserved);
        out[28..48].copy_from_slice(&self.info_hash);
        out[48..68].copy_from_slice(&self.peer_id);
        out
    }

    /// Appends the 68 encoded bytes to `out`.
    pub fn encode(&self, out: &mut impl BufMut) {
        out.put_slice(&self.to_bytes());
    }

    /// Decodes a handshake from the start of `buf`.
    ///
    /// On `Complete` exactly [`Handshake::LEN`] bytes were used; the caller
    /// advances its buffer by that much (bytes after it are the first
    /// messages and are left alone). A short `buf` that matches so far yields
    /// `NeedMore`; a wrong protocol string is an error as soon as its first
    /// wrong byte is seen, so a non-BitTorrent peer is dropped without
    /// waiting for 68 bytes.
    pub fn decode(buf: &[u8]) -> Result<Decoded<Handshake>, WireError> {
        let header_len = 1 + PROTOCOL.len();
        let mut expected = [0u8; 20];
        expected[0] = PROTOCOL.len() as u8;
        expected[1..].copy_from_slice(PROTOCOL);
        for (offset, (&found, &want)) in buf.iter().zip(&expected).enumerate() {
            if found != want {
                return Err(WireError::BadProtocol { offset, found });
            }
        }
        let Some(rest) = buf.get(header_len..Self::LEN) else {
            return Ok(Decoded::NeedMore(Self::LEN - buf.len()));
        };
        let (reserved, rest) = rest.split_at(8);
        let (info_hash, peer_id) = rest.split_at(20);
        Ok(Decoded::Complete(Handshake {
            reserved: to_array(reserved),
            info_hash: to_array(info_hash),
            peer_id: to_array(peer_id),
        }))
    }
}

fn set_bit(byte: &mut u8, mask: u8, on: bool) {
    if on {
        *byte |= mask;
    } else {
        *byte &= !mask;
    }
}

fn to_array<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(s);
    a
}

/// A block within a piece: what request, cancel and reject name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockRef {
    /// Piece index.
    pub index: u32,
    /// Byte offset within the piece.
    pub begin: u32,
    /// Block length in bytes.
    pub length: u32,
}

/// One peer wire message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Zero-length message that keeps the connection open.
    KeepAlive,
    /// The sender will not serve our requests.
    Choke,
    /// The sender will serve our requests.
    Unchoke,
    /// The sender wants pieces we have.
    Interested,
    /// The sender wants nothing we have.
    NotInterested,
    /// The sender completed this piece.
    Have(u32),
    /// The sender's pieces, one bit per piece, high bit of byte 0 is piece 0.
    Bitfield(Bytes),
    /// Asks for a block.
    Request(BlockRef),
    /// A block of data; `data` shares the receive buffer's allocation.
    Piece {
        /// Piece index.
        index: u32,
        /// Byte offset within the piece.
        begin: u32,
        /// The block.
        data: Bytes,
    },
    /// Withdraws a request.
    Cancel(BlockRef),
    /// BEP 5: the sender's DHT port.
    Port(u16),
    /// BEP 6: the sender suggests downloading this piece.
    Suggest(u32),
    /// BEP 6: the sender has every piece (replaces a bitfield).
    HaveAll,
    /// BEP 6: the sender has no pieces (replaces a bitfield).
    HaveNone,
    /// BEP 6: the sender will not serve this request.
    Reject(BlockRef),
    /// BEP 6: this piece may be requested even while choked.
    AllowedFast(u32),
    /// BEP 10: an extension message. `id` 0 is the extended handshake
    /// ([`ExtendedHandshake`]); other ids are those the receiver assigned in
    /// its handshake's `m` dictionary.
    Extended {
        /// Extension message id.
        id: u8,
        /// The extension's payload.
        payload: Bytes,
    },
}

impl Message {
    /// The message id, or `None` for keep-alive.
    pub fn id(&self) -> Option<u8> {
        Some(match self {
            Message::KeepAlive => return None,
            Message::Choke => id::CHOKE,
            Message::Unchoke => id::UNCHOKE,
            Message::Interested => id::INTERESTED,
            Message::NotInterested => id::NOT_INTERESTED,
            Message::Have(_) => id::HAVE,
            Message::Bitfield(_) => id::BITFIELD,
            Message::Request(_) => id::REQUEST,
            Message::Piece { .. } => id::PIECE,
            Message::Cancel(_) => id::CANCEL,
            Message::Port(_) => id::PORT,
            Message::Suggest(_) => id::SUGGEST,
            Message::HaveAll => id::HAVE_ALL,
            Message::HaveNone => id::HAVE_NONE,
            Message::Reject(_) => id::REJECT,
            Message::AllowedFast(_) => id::ALLOWED_FAST,
            Message::Extended { .. } => id::EXTENDED,
        })
    }

    /// Length of the frame after the 4-byte prefix (what the prefix says).
    fn body_len(&self) -> usize {
        match self {
            Message::KeepAlive => 0,
            Message::Choke
            | Message::Unchoke
            | Message::Interested
            | Message::NotInterested
            | Message::HaveAll
            | Message::HaveNone => 1,
            Message::Have(_) | Message::Suggest(_) | Message::AllowedFast(_) => 5,
            Message::Port(_) => 3,
            Message::Request(_) | Message::Cancel(_) | Message::Reject(_) => 13,
            Message::Bitfield(b) => 1 + b.len(),
            Message::Piece { data, .. } => 9 + data.len(),
            Message::Extended { payload, .. } => 2 + payload.len(),
        }
    }

    /// Encoded size in bytes, length prefix included.
    pub fn encoded_len(&self) -> usize {
        4 + self.body_len()
    }

    /// Appends the encoded frame (length prefix included) to `out`.
    ///
    /// # Panics
    ///
    /// If a bitfield, piece or extended payload is so large that the frame
    /// length does not fit the 32-bit prefix (about 4 GiB): such a message
    /// cannot be represented on the wire and is a bug in the caller.
    pub fn encode(&self, out: &mut BytesMut) {
        let body_len = u32::try_from(self.body_len())
            .expect("peer wire message longer than u32::MAX bytes cannot be framed");
        out.reserve(4 + body_len as usize);
        out.put_u32(body_len);
        let Some(id) = self.id() else { return };
        out.put_u8(id);
        match self {
            Message::KeepAlive
            | Message::Choke
            | Message::Unchoke
            | Message::Interested
            | Message::NotInterested
            | Message::HaveAll
            | Message::HaveNone => {}
            Message::Have(i) | Message::Suggest(i) | Message::AllowedFast(i) => out.put_u32(*i),
            Message::Port(p) => out.put_u16(*p),
            Message::Request(b) | Message::Cancel(b) | Message::Reject(b) => {
                out.put_u32(b.index);
                out.put_u32(b.begin);
                out.put_u32(b.length);
            }
            Message::Bitfield(bits) => out.put_slice(bits),
            Message::Piece { index, begin, data } => {
                out.put_u32(*index);
                out.put_u32(*begin);
                out.put_slice(data);
            }
            Message::Extended { id, payload } => {
                out.put_u8(*id);
                out.put_slice(payload);
            }
        }
    }
}

/// The 13-byte header of a `piece` message carrying a block of `len` bytes:
/// length prefix, id 7, index, begin. Write it followed by the block in one
/// vectored write to send a block without copying it.
///
/// `None` if `len > u32::MAX - 9`: no such block can be framed (the
/// length may come from a peer's request, so this is a value, not a panic).
pub fn piece_header(index: u32, begin: u32, len: u32) -> Option<[u8; 13]> {
    let body = len.checked_add(9)?;
    let mut h = [0u8; 13];
    h[0..4].copy_from_slice(&body.to_be_bytes());
    h[4] = id::PIECE;
    h[5..9].copy_from_slice(&index.to_be_bytes());
    h[9..13].copy_from_slice(&begin.to_be_bytes());
    Some(h)
}

/// Decodes one message from the front of `buf`.
///
/// On `Complete` the message's bytes (prefix included) have been removed from
/// `buf`; payload-carrying messages hold `Bytes` slices of the frame, sharing
/// `buf`'s allocation. On `NeedMore(n)` and on any error `buf` is unchanged.
/// The decoder never reserves or allocates in `buf`; after `NeedMore(n)` the
/// caller may `buf.reserve(n)` and read more (`n` is bounded by the limits).
pub fn decode_message(buf: &mut BytesMut, limits: &Limits) -> Result<Decoded<Message>, WireError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(Decoded::NeedMore(4 - buf.len()));
    };
    let len = u32::from_be_bytes(to_array(prefix));
    if len == 0 {
        buf.advance(4);
        return Ok(Decoded::Complete(Message::KeepAlive));
    }
    if len > limits.max_message_len {
        // Only an exactly sized bitfield may exceed the limit; we need its id
        // byte to tell, which costs one more byte and no allocation.
        let Some(&msg_id) = buf.get(4) else {
            return Ok(Decoded::NeedMore(1));
        };
        let exempt = msg_id == id::BITFIELD
            && limits
                .piece_count
                .is_some_and(|n| u64::from(len) == 1 + u64::from(n.div_ceil(8)));
        if !exempt {
            return Err(WireError::MessageTooLong {
                len,
                max: limits.max_message_len,
            });
        }
    }
    // `len` is now bounded by a limit (or by the torrent's bitfield size).
    let frame_len = 4 + len as usize;
    if buf.len() < frame_len {
        return Ok(Decoded::NeedMore(frame_len - buf.len()));
    }
    let body = &buf[4..frame_len];
    let msg_id = body[0];
    let payload = &body[1..];

    let fixed = |expected: u32| -> Result<(), WireError> {
        if len == expected {
            Ok(())
        } else {
            Err(WireError::WrongLength {
                id: msg_id,
                len,
                expected,
            })
        }
    };
    let check_index = |index: u32| -> Result<u32, WireError> {
        match limits.piece_count {
            Some(piece_count) if index >= piece_count => Err(WireError::PieceIndexOutOfRange {
                id: msg_id,
                index,
                piece_count,
            }),
            _ => Ok(index),
        }
    };
    let u32_at = |at: usize| u32::from_be_bytes(to_array(&payload[at..at + 4]));
    let block = || -> Result<BlockRef, WireError> {
        fixed(13)?;
        let b = BlockRef {
            index: check_index(u32_at(0))?,
            begin: u32_at(4),
            length: u32_at(8),
        };
        if b.length == 0 || b.length > limits.max_request_len {
            return Err(WireError::BlockLength {
                id: msg_id,
                length: b.length,
                max: limits.max_request_len,
            });
        }
        if b.begin.checked_add(b.length).is_none() {
            return Err(WireError::BlockOverflow {
                id: msg_id,
                begin: b.begin,
                length: b.length,
            });
        }
        Ok(b)
    };

    // Validate from the borrowed frame first; consume only once it is valid.
    enum Shape {
        Done(Message),
        /// Payload starts this many bytes into the frame.
        Slice(usize),
    }
    let shape = match msg_id {
        id::CHOKE => fixed(1).map(|()| Shape::Done(Message::Choke))?,
        id::UNCHOKE => fixed(1).map(|()| Shape::Done(Message::Unchoke))?,
        id::INTERESTED => fixed(1).map(|()| Shape::Done(Message::Interested))?,
        id::NOT_INTERESTED => fixed(1).map(|()| Shape::Done(Message::NotInterested))?,
        id::HAVE_ALL => fixed(1).map(|()| Shape::Done(Message::HaveAll))?,
        id::HAVE_NONE => fixed(1).map(|()| Shape::Done(Message::HaveNone))?,
        id::HAVE | id::SUGGEST | id::ALLOWED_FAST => {
            fixed(5)?;
            let index = check_index(u32_at(0))?;
            Shape::Done(match msg_id {
                id::HAVE => Message::Have(index),
                id::SUGGEST => Message::Suggest(index),
                _ => Message::AllowedFast(index),
            })
        }
        id::PORT => {
            fixed(3)?;
            Shape::Done(Message::Port(u16::from_be_bytes(to_array(payload))))
        }
        id::REQUEST => Shape::Done(Message::Request(block()?)),
        id::CANCEL => Shape::Done(Message::Cancel(block()?)),
        id::REJECT => Shape::Done(Message::Reject(block()?)),
        id::BITFIELD => {
            if let Some(piece_count) = limits.piece_count {
                check_bitfield(payload, piece_count)?;
            }
            Shape::Slice(5)
        }
        id::PIECE => {
            if len < 9 {
                return Err(WireError::TooShort {
                    id: msg_id,
                    len,
                    min: 9,
                });
            }
            check_index(u32_at(0))?;
            Shape::Slice(13)
        }
        id::EXTENDED => {
            if len < 2 {
                return Err(WireError::TooShort {
                    id: msg_id,
                    len,
                    min: 2,
                });
            }
            Shape::Slice(6)
        }
        _ => return Err(WireError::UnknownMessage { id: msg_id, len }),
    };

    let msg = match shape {
        Shape::Done(msg) => {
            buf.advance(frame_len);
            msg
        }
        Shape::Slice(start) => {
            let frame = buf.split_to(frame_len).freeze();
            let data = frame.slice(start..);
            match msg_id {
                id::BITFIELD => Message::Bitfield(data),
                id::PIECE => Message::Piece {
                    index: u32::from_be_bytes(to_array(&frame[5..9])),
                    begin: u32::from_be_bytes(to_array(&frame[9..13])),
                    data,
                },
                _ => Message::Extended {
                    id: frame[5],
                    payload: data,
                },
            }
        }
    };
    Ok(Decoded::Complete(msg))
}

/// Removes the complete frame at the front of `buf` and returns its message
/// id and payload (the bytes after the id), or `None` (leaving `buf` as it
/// is) when no complete frame with an id is there or its length exceeds
/// `max_len`. For dropping a message [`decode_message`] refused with a
/// content error (see [`WireError::content_error_id`]).
pub fn skip_frame(buf: &mut BytesMut, max_len: u32) -> Option<(u8, Bytes)> {
    let len = u32::from_be_bytes(to_array(buf.get(..4)?));
    if len == 0 || len > max_len || buf.len() < 4 + len as usize {
        return None;
    }
    let frame = buf.split_to(4 + len as usize).freeze();
    Some((frame[4], frame.slice(5..)))
}

/// Checks a bitfield against a known piece count: exact size, zero spare
/// bits in the last byte.
pub fn check_bitfield(bits: &[u8], piece_count: u32) -> Result<(), WireError> {
    let expected = piece_count.div_ceil(8) as usize;
    if bits.len() != expected {
        return Err(WireError::BitfieldLength {
            len: bits.len(),
            expected,
            piece_count,
        });
    }
    let spare = u64::from(piece_count.div_ceil(8)) * 8 - u64::from(piece_count);
    if let Some(&last) = bits.last() {
        // The low `spare` bits of the last byte are past the last piece.
        let mask = ((1u16 << spare) - 1) as u8;
        if last & mask != 0 {
            return Err(WireError::BitfieldSpareBits { piece_count });
        }
    }
    Ok(())
}

/// The BEP 10 extended handshake (payload of `Extended { id: 0, .. }`).
///
/// Decoding is lenient, as every mainstream client is: unknown keys are
/// ignored, and a known key whose value has the wrong type or is out of range
/// is ignored too (treated as absent) rather than failing the handshake, so
/// one odd field from a quirky client does not cost us the peer. The payload
/// itself must be a valid bencoded dictionary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtendedHandshake {
    /// Extension name -> message id the sender wants to receive it under.
    /// Id 0 means the sender disables that extension (BEP 10).
    pub m: BTreeMap<String, u8>,
    /// Client name and version.
    pub v: Option<String>,
    /// How many outstanding requests the sender queues without dropping.
    pub reqq: Option<u32>,
    /// Our address as the sender sees it (4 or 16 bytes on the wire).
    pub yourip: Option<IpAddr>,
    /// The sender's listen port (port 0 is treated as absent).
    pub p: Option<u16>,
    /// BEP 10 `ipv6`: the sender's own IPv6 address (16 bytes on the wire;
    /// any other length is ignored), so a peer met over IPv4 can be
    /// reached over IPv6 too.
    pub ipv6: Option<Ipv6Addr>,
    /// BEP 9: size of the info dictionary in bytes.
    pub metadata_size: Option<u64>,
}

/// Extension message id of the BEP 10 handshake itself.
pub const EXTENDED_HANDSHAKE_ID: u8 = 0;

impl ExtendedHandshake {
    /// The handshake as a ready-to-encode [`Message::Extended`] with id 0.
    pub fn to_message(&self) -> Message {
        Message::Extended {
            id: EXTENDED_HANDSHAKE_ID,
            payload: Bytes::from(self.encode()),
        }
    }

    /// The bencoded payload (without the extended message id byte).
    pub fn encode(&self) -> Vec<u8> {
        let mut dict = BTreeMap::new();
        let m = self
            .m
            .iter()
            .map(|(k, &v)| (k.as_bytes().to_vec(), Bencode::Int(i64::from(v))))
            .collect();
        dict.insert(b"m".to_vec(), Bencode::Dict(m));
        if let Some(v) = &self.v {
            dict.insert(b"v".to_vec(), Bencode::from(v.as_str()));
        }
        if let Some(reqq) = self.reqq {
            dict.insert(b"reqq".to_vec(), Bencode::Int(i64::from(reqq)));
        }
        if let Some(ip) = self.yourip {
            let bytes = match ip {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            };
            dict.insert(b"yourip".to_vec(), Bencode::Bytes(bytes));
        }
        if let Some(p) = self.p {
            dict.insert(b"p".to_vec(), Bencode::Int(i64::from(p)));
        }
        if let Some(ip) = self.ipv6 {
            dict.insert(b"ipv6".to_vec(), Bencode::Bytes(ip.octets().to_vec()));
        }
        if let Some(size) = self.metadata_size {
            // Sizes above i64::MAX cannot be bencoded; saturate (any real
            // info dictionary is many orders of magnitude smaller).
            let size = i64::try_from(size).unwrap_or(i64::MAX);
            dict.insert(b"metadata_size".to_vec(), Bencode::Int(size));
        }
        Bencode::Dict(dict).encode()
    }

    /// Parses a payload. Errors only if it is not a bencoded dictionary; see
    /// the type's docs for how odd fields are treated.
    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let value = bencode::decode(payload)?;
        let dict = value.as_dict().ok_or(WireError::ExtendedHandshakeNotDict)?;
        let int = |key: &[u8]| dict.get(key).and_then(|v| v.as_int());
        let m = dict
            .get(b"m")
            .and_then(|v| v.as_dict())
            .map(|m| {
                m.iter()
                    .filter_map(|(name, id)| {
                        let name = std::str::from_utf8(name).ok()?;
                        let id = u8::try_from(id.as_int()?).ok()?;
                        Some((name.to_owned(), id))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let yourip = dict
            .get(b"yourip")
            .and_then(|v| v.as_bytes())
            .and_then(|b| match b.len() {
                4 => Some(IpAddr::V4(Ipv4Addr::from(to_array::<4>(b)))),
                16 => Some(IpAddr::V6(Ipv6Addr::from(to_array::<16>(b)))),
                _ => None,
            });
        Ok(ExtendedHandshake {
            m,
            // Client names are for display; accept non-UTF-8 lossily.
            v: dict
                .get(b"v")
                .and_then(|v| v.as_bytes())
                .map(|b| String::from_utf8_lossy(b).into_owned()),
            reqq: int(b"reqq").and_then(|n| u32::try_from(n).ok()),
            yourip,
            p: int(b"p")
                .and_then(|n| u16::try_from(n).ok())
                .filter(|&p| p != 0),
            ipv6: dict
                .get(b"ipv6")
                .and_then(|v| v.as_bytes())
                .filter(|b| b.len() == 16)
                .map(|b| Ipv6Addr::from(to_array::<16>(b))),
            metadata_size: int(b"metadata_size").and_then(|n| u64::try_from(n).ok()),
        })
    }
}
