//! Scripted leechers: a test-side peer that dials a seed on loopback, speaks
//! the peer wire protocol through the protocol crate's codec, and does
//! exactly what the test says, one step at a time: download everything and
//! check each block against the payload, flood the seed with requests, send
//! requests no seed may honour, cancel what it asked for (and what it never
//! asked for). Each call has a timeout, so a seed that hangs fails the test
//! instead of hanging it.
//!
//! Unlike the scripted seeds (one thread per connection), a leecher runs on
//! the test's own thread with a blocking socket: the test is the script.

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use protocol::wire::{
    BlockRef, Decoded, ExtendedHandshake, Handshake, Limits, Message, decode_message,
};

use super::torrent::TestTorrent;

/// How long a read waits before the loop checks its deadline again.
const TICK: Duration = Duration::from_millis(20);
/// A write that cannot finish in this long means the seed stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a leecher step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeechError {
    /// The seed closed the connection (EOF or reset).
    Closed,
    /// The deadline passed first.
    Timeout(String),
    /// The seed broke the protocol or sent wrong data, in words.
    Protocol(String),
}

/// What the seed told us about itself so far.
#[derive(Debug, Clone, Default)]
pub struct PeerState {
    /// The seed's handshake.
    pub handshake: Option<Handshake>,
    /// Its BEP 10 handshake, if it sent one.
    pub extended: Option<ExtendedHandshake>,
    /// Whether it announced every piece (have-all, or a full bitfield).
    pub has_all: bool,
    /// Pieces it announced, one flag per piece.
    pub have: Vec<bool>,
    /// Whether it chokes us now.
    pub choking: bool,
    /// Blocks it rejected (BEP 6).
    pub rejected: Vec<BlockRef>,
    /// Messages other than blocks, in order (blocks are checked and counted
    /// instead of kept: a 64 MiB download would otherwise be kept twice).
    pub messages: Vec<Message>,
    /// Blocks received and found identical to the payload.
    pub good_blocks: usize,
}

/// One connection to a seed.
pub struct Leecher {
    stream: TcpStream,
    buf: BytesMut,
    limits: Limits,
    torrent: TestTorrent,
    /// What the seed said so far.
    pub peer: PeerState,
}

impl Leecher {
    /// Connects to `addr`, exchanges handshakes for `torrent` (our
    /// handshake sets the fast and extension bits when `fast`), and reads
    /// until the seed has said which pieces it has.
    pub fn connect(
        addr: SocketAddr,
        torrent: &TestTorrent,
        fast: bool,
        timeout: Duration,
    ) -> Result<Leecher, LeechError> {
        Self::connect_with(addr, torrent, fast, None, timeout)
    }

    /// As [`Leecher::connect`], but `hello` (when given) replaces what we
    /// send after the handshake (by default: have none and an extended
    /// handshake with the fast bit, nothing without it).
    pub fn connect_with(
        addr: SocketAddr,
        torrent: &TestTorrent,
        fast: bool,
        hello: Option<Vec<Message>>,
        timeout: Duration,
    ) -> Result<Leecher, LeechError> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| LeechError::Protocol(format!("connect {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let _ = stream.set_read_timeout(Some(TICK));
        let mut l = Leecher {
            stream,
            buf: BytesMut::new(),
            limits: Limits {
                piece_count: Some(torrent.piece_count()),
                ..Limits::default()
            },
            torrent: torrent.clone(),
            peer: PeerState {
                choking: true,
                have: vec![false; torrent.piece_count() as usize],
                ..PeerState::default()
            },
        };
        let mut peer_id = [0u8; 20];
        peer_id[..8].copy_from_slice(b"-SL0001-");
        let port = l.stream.local_addr().map_or(0, |a| a.port());
        peer_id[8..].copy_from_slice(format!("{port:012}").as_bytes());
        let mut ours = Handshake::new([0; 8], torrent.info_hash, peer_id);
        ours.set_fast(fast);
        ours.set_extended(fast);
        l.write(&ours.to_bytes())?;

        let deadline = Instant::now() + timeout;
        let theirs = loop {
            match Handshake::decode(&l.buf) {
                Ok(Decoded::Complete(h)) => {
                    let _ = l.buf.split_to(Handshake::LEN);
                    break h;
                }
                Ok(Decoded::NeedMore(_)) => {}
                Err(e) => return Err(LeechError::Protocol(format!("bad handshake: {e}"))),
            }
            l.fill(deadline, "the seed's handshake")?;
        };
        if theirs.info_hash != torrent.info_hash {
            return Err(LeechError::Protocol(
                "handshake names another info-hash".into(),
            ));
        }
        l.peer.handshake = Some(theirs);
        if let Some(hello) = hello {
            l.send(&hello)?;
            l.wait_for(deadline - Instant::now(), "the seed's pieces", |p| {
                p.has_all || p.have.iter().any(|&h| h)
            })?;
            return Ok(l);
        }
        let mut hello = Vec::new();
        // BEP 6: with the fast extension on both sides the first message
        // says what we have (here nothing); BEP 3 lets us stay silent.
        if fast && theirs.supports_fast() {
            hello.push(Message::HaveNone);
        }
        if fast && theirs.supports_extended() {
            let ext = ExtendedHandshake {
                v: Some("scripted leecher".into()),
                reqq: Some(10_000),
                ..ExtendedHandshake::default()
            };
            hello.push(ext.to_message());
        }
        l.send(&hello)?;
        l.wait_for(deadline - Instant::now(), "the seed's pieces", |p| {
            p.has_all || p.have.iter().any(|&h| h)
        })?;
        Ok(l)
    }

    /// Our end's port: how the seed's log names this connection.
    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().map_or(0, |a| a.port())
    }

    /// Sends `msgs` in one write.
    pub fn send(&mut self, msgs: &[Message]) -> Result<(), LeechError> {
        let mut out = BytesMut::new();
        for m in msgs {
            m.encode(&mut out);
        }
        self.write(&out)
    }

    /// Sends bytes as they are (frames the codec would not encode).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), LeechError> {
        self.write(bytes)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), LeechError> {
        // The seed answers while we write (a flood is 85 KB): a write that
        // blocks on a full socket must not wedge us, so write in slices and
        // read (into our buffer) between them.
        let mut rest = bytes;
        while !rest.is_empty() {
            match self.stream.write(rest) {
                Ok(0) => return Err(LeechError::Closed),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(LeechError::Timeout("writing to the seed".into()));
                }
                Err(_) => return Err(LeechError::Closed),
            }
        }
        Ok(())
    }

    /// Reads what arrives within one tick; fails on EOF or the deadline.
    fn fill(&mut self, deadline: Instant, what: &str) -> Result<(), LeechError> {
        if Instant::now() >= deadline {
            return Err(LeechError::Timeout(format!("waiting for {what}")));
        }
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(LeechError::Closed),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                Ok(())
            }
            Err(_) => Err(LeechError::Closed),
        }
    }

    /// Decodes and applies every complete message in the buffer; returns
    /// the blocks among them (already checked against the payload).
    fn drain(&mut self) -> Result<Vec<BlockRef>, LeechError> {
        let mut blocks = Vec::new();
        loop {
            let m = match decode_message(&mut self.buf, &self.limits) {
                Ok(Decoded::Complete(m)) => m,
                Ok(Decoded::NeedMore(_)) => return Ok(blocks),
                // A reject echoes the request it answers, however invalid.
                Err(e) if e.content_error_id() == Some(protocol::wire::id::REJECT) => {
                    match protocol::wire::skip_frame(&mut self.buf, self.limits.max_message_len) {
                        Some((_, p)) if p.len() == 12 => {
                            let at = |i: usize| u32::from_be_bytes(p[i..i + 4].try_into().unwrap());
                            self.peer.rejected.push(BlockRef {
                                index: at(0),
                                begin: at(4),
                                length: at(8),
                            });
                            continue;
                        }
                        _ => return Err(LeechError::Protocol(format!("undecodable message: {e}"))),
                    }
                }
                Err(e) => return Err(LeechError::Protocol(format!("undecodable message: {e}"))),
            };
            match &m {
                Message::Piece { index, begin, data } => {
                    let b = BlockRef {
                        index: *index,
                        begin: *begin,
                        length: data.len() as u32,
                    };
                    self.check_block(&b, data)?;
                    self.peer.good_blocks += 1;
                    blocks.push(b);
                    continue;
                }
                Message::HaveAll => self.peer.has_all = true,
                Message::Bitfield(bits) => {
                    for (i, h) in self.peer.have.iter_mut().enumerate() {
                        *h = bits[i / 8] & (0x80 >> (i % 8)) != 0;
                    }
                    self.peer.has_all = self.peer.have.iter().all(|&h| h);
                }
                Message::Have(i) => self.peer.have[*i as usize] = true,
                Message::Choke => self.peer.choking = true,
                Message::Unchoke => self.peer.choking = false,
                Message::Reject(b) => self.peer.rejected.push(*b),
                Message::Extended { id: 0, payload } => {
                    self.peer.extended = ExtendedHandshake::decode(payload).ok();
                }
                _ => {}
            }
            self.peer.messages.push(m);
        }
    }

    fn check_block(&self, b: &BlockRef, data: &Bytes) -> Result<(), LeechError> {
        match self.torrent.block(b) {
            None => Err(LeechError::Protocol(format!(
                "block outside the torrent: {b:?}"
            ))),
            Some(want) if want != *data => Err(LeechError::Protocol(format!(
                "block {b:?} differs from the payload"
            ))),
            Some(_) => Ok(()),
        }
    }

    /// Reads until `cond` holds on what the seed said.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&PeerState) -> bool,
    ) -> Result<(), LeechError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain()?;
            if cond(&self.peer) {
                return Ok(());
            }
            self.fill(deadline, what)?;
        }
    }

    /// Says we are interested and waits for the unchoke.
    pub fn interested_until_unchoked(&mut self, timeout: Duration) -> Result<(), LeechError> {
        self.send(&[Message::Interested])?;
        self.wait_for(timeout, "the unchoke", |p| !p.choking)
    }

    /// Requests `blocks` (at most `depth` outstanding at a time) and waits
    /// for every one of them, each checked against the payload. Fails if
    /// the seed rejects or chokes us, sends a block twice or one we did not
    /// ask for.
    pub fn fetch(
        &mut self,
        blocks: &[BlockRef],
        depth: usize,
        timeout: Duration,
    ) -> Result<(), LeechError> {
        self.fetch_tolerating(blocks, depth, timeout, &mut HashSet::new())
    }

    /// As [`Leecher::fetch`], but blocks in `stray` (requests the test
    /// cancelled earlier) may still arrive, or be rejected, once each
    /// without failing; each is removed from `stray` when it does.
    pub fn fetch_tolerating(
        &mut self,
        blocks: &[BlockRef],
        depth: usize,
        timeout: Duration,
        stray: &mut HashSet<BlockRef>,
    ) -> Result<(), LeechError> {
        let deadline = Instant::now() + timeout;
        let mut next = 0;
        let mut open: HashSet<BlockRef> = HashSet::new();
        let rejected_before = self.peer.rejected.len();
        while next < blocks.len() || !open.is_empty() {
            if open.len() < depth && next < blocks.len() {
                let end = (next + depth - open.len()).min(blocks.len());
                let batch: Vec<Message> = blocks[next..end]
                    .iter()
                    .map(|b| Message::Request(*b))
                    .collect();
                open.extend(&blocks[next..end]);
                next = end;
                self.send(&batch)?;
            }
            for b in self.drain()? {
                if !open.remove(&b) && !stray.remove(&b) {
                    return Err(LeechError::Protocol(format!(
                        "block {b:?} was not requested (or came twice)"
                    )));
                }
            }
            for b in self.peer.rejected.split_off(rejected_before) {
                if !stray.remove(&b) {
                    return Err(LeechError::Protocol(format!("the seed rejected {b:?}")));
                }
            }
            if self.peer.choking {
                return Err(LeechError::Protocol(
                    "the seed choked us mid-download".into(),
                ));
            }
            if open.is_empty() && next >= blocks.len() {
                break;
            }
            self.fill(
                deadline,
                &format!("blocks ({} open, {next} requested)", open.len()),
            )?;
        }
        Ok(())
    }

    /// Reads (checking any blocks) until the seed closes the connection;
    /// `Ok` if it did within `timeout`. Blocks and other messages that
    /// arrive first are fine: the seed may answer part of a flood before it
    /// notices.
    pub fn wait_closed(&mut self, timeout: Duration) -> Result<(), LeechError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.drain() {
                Ok(_) => {}
                // A frame cut short by the close is not the seed's fault.
                Err(LeechError::Protocol(p)) if p.starts_with("undecodable") => {}
                Err(e) => return Err(e),
            }
            match self.fill(deadline, "the seed to close the connection") {
                Err(LeechError::Closed) => return Ok(()),
                Err(e) => return Err(e),
                Ok(()) => {}
            }
        }
    }
}

/// A request message for `b`, as raw bytes: for lengths and indices the
/// codec is not meant to produce.
pub fn raw_request(index: u32, begin: u32, length: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(17);
    v.extend_from_slice(&13u32.to_be_bytes());
    v.push(6);
    v.extend_from_slice(&index.to_be_bytes());
    v.extend_from_slice(&begin.to_be_bytes());
    v.extend_from_slice(&length.to_be_bytes());
    v
}
