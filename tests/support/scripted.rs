//! Scripted seeds: test-side peers that listen on 127.0.0.1, speak the peer
//! wire protocol through the protocol crate's codec, follow a [`Script`]
//! (serve normally, corrupt, stall, disconnect, choke in cycles, break the
//! protocol on purpose, serve slowly, hold only some pieces) and record every
//! message each connection received and sent, so a test can assert what the
//! client did after the run.
//!
//! Each seed is plain std threads with blocking sockets and short read
//! timeouts: one accept thread, one thread per connection. Dropping the
//! [`Seed`] stops and joins them all, so nothing outlives the test. Faults in
//! what the client sent (a bad handshake, a request outside the torrent) are
//! recorded as [`ConnLog::problems`] rather than panicking on a thread nobody
//! joins; tests assert that list is empty.

use std::collections::{HashSet, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use protocol::wire::{
    BlockRef, Decoded, ExtendedHandshake, Handshake, Limits, Message, decode_message,
};

use super::torrent::TestTorrent;

/// How long a connection waits for the client's handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Read timeout of a connection's loop: how often it checks the clock (for
/// delayed blocks, choke cycles) and the stop flag.
const TICK: Duration = Duration::from_millis(10);
/// A write that cannot finish in this long means the client stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which pieces a seed announces and serves.
#[derive(Debug, Clone)]
pub enum Holding {
    /// Every piece, announced with a full bitfield.
    All,
    /// Every piece, announced with BEP 6 `have all` (needs the fast bit).
    HaveAll,
    /// Only these pieces, announced with a bitfield.
    Pieces(Vec<u32>),
}

/// Which blocks a seed sends with one byte flipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Corrupt {
    /// None: every block is correct.
    None,
    /// Every block.
    Every,
    /// Every block of these pieces.
    Pieces(Vec<u32>),
}

/// The misbehaviour a seed follows; counters are per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Serve every valid request.
    None,
    /// After sending this many blocks, stop answering but keep the socket
    /// open and keep reading (a peer that went silent).
    StallAfter(usize),
    /// After sending this many blocks, close the connection.
    DisconnectAfter(usize),
    /// After every `every` blocks sent, choke for `choked_for`, then unchoke.
    /// Queued requests are rejected at the choke (fast extension) or dropped
    /// (BEP 3); requests that arrive while choked are treated the same way.
    ChokeCycle {
        /// Blocks sent between chokes.
        every: usize,
        /// How long each choke lasts.
        choked_for: Duration,
    },
    /// Right after the handshake, send a malformed frame (a `have` whose
    /// length prefix says 3 where it must say 5) followed by random junk,
    /// then only read.
    GarbageAfterHandshake,
    /// After the bitfield, send a length prefix of 16 MiB - 1 (far above any
    /// sane message limit) and a few bytes of it, then only read.
    OversizeLength,
    /// Send a bitfield one byte longer than the piece count allows, then
    /// only read.
    WrongSizeBitfield,
    /// After the bitfield, while the client is still choked (so it cannot
    /// have asked for anything), send block 0 of piece 0, then only read.
    UnrequestedPiece,
    /// After the pieces announcement, send these frames as they are, then
    /// only read (for inputs that must cost the connection).
    Raw(Vec<Bytes>),
}

/// Opens a seed's unchoke: a gated seed announces its pieces but keeps the
/// client choked until the test opens the gate.
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<AtomicBool>);

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Gate::default()
    }
    /// Lets the seed unchoke.
    pub fn open(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    fn is_open(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What a seed does. Start from [`Script::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct Script {
    /// Set the BEP 6 fast extension bit in our handshake.
    pub fast: bool,
    /// Set the BEP 10 extension protocol bit (and send an extended
    /// handshake when the client sets it too).
    pub extended: bool,
    /// Which pieces we hold.
    pub holding: Holding,
    /// Which blocks go out corrupted.
    pub corrupt: Corrupt,
    /// Delay between two blocks sent (a slow link); zero for none.
    pub block_delay: Duration,
    /// The misbehaviour.
    pub fault: Fault,
    /// When set, stay choked until the gate opens.
    pub gate: Option<Gate>,
    /// The `reqq` of our extended handshake: how many requests we queue.
    /// The seed still queues any number; a client should not exceed it.
    pub reqq: u32,
    /// Frames sent as they are in place of the pieces announcement
    /// (bitfield, have all or have none), after the extended handshake.
    pub hello: Option<Vec<Bytes>>,
    /// Frames sent as they are this long after the announcement, while
    /// serving normally (odd but tolerable input), in time order.
    pub inject: Vec<(Duration, Vec<Bytes>)>,
}

impl Script {
    /// A well-behaved seed holding every piece, advertising both fast and
    /// extension protocol bits.
    pub fn new() -> Self {
        Script {
            fast: true,
            extended: true,
            holding: Holding::All,
            corrupt: Corrupt::None,
            block_delay: Duration::ZERO,
            fault: Fault::None,
            gate: None,
            reqq: 250,
            hello: None,
            inject: Vec::new(),
        }
    }

    /// This script with `fault`.
    pub fn fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    /// This script holding only `pieces`.
    pub fn pieces(mut self, pieces: impl IntoIterator<Item = u32>) -> Self {
        self.holding = Holding::Pieces(pieces.into_iter().collect());
        self
    }

    fn holds(&self, index: u32) -> bool {
        match &self.holding {
            Holding::All | Holding::HaveAll => true,
            Holding::Pieces(p) => p.contains(&index),
        }
    }

    fn corrupts(&self, index: u32) -> bool {
        match &self.corrupt {
            Corrupt::None => false,
            Corrupt::Every => true,
            Corrupt::Pieces(p) => p.contains(&index),
        }
    }
}

impl Default for Script {
    fn default() -> Self {
        Script::new()
    }
}

/// One logged message, in the order the connection saw them.
#[derive(Debug, Clone)]
pub enum Event {
    /// The client sent this.
    Recv(Message),
    /// We sent this. Raw faults (garbage, oversize prefix) are logged as
    /// [`Event::SentRaw`].
    Sent(Message),
    /// We sent these bytes that are not a valid message.
    SentRaw(Bytes),
    /// We discarded this request unanswered, as BEP 3 does on a choke
    /// (without the fast extension there is no reject to send).
    Dropped(BlockRef),
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed it (EOF) or reset it.
    ClientClosed,
    /// The script closed it (disconnect fault, or a client fault).
    SeedClosed,
    /// The seed was stopped by the test while the connection was open.
    Stopped,
}

/// Everything one accepted connection saw.
#[derive(Debug, Clone)]
pub struct ConnLog {
    /// When it was accepted.
    pub accepted_at: Instant,
    /// The client's handshake, once received and checked.
    pub handshake: Option<Handshake>,
    /// Every message, timestamped, in order.
    pub events: Vec<(Instant, Event)>,
    /// When and how it ended; `None` while open.
    pub end: Option<(Instant, End)>,
    /// Protocol faults on the client's side, in words. Tests assert empty.
    pub problems: Vec<String>,
}

impl ConnLog {
    fn new() -> Self {
        ConnLog {
            accepted_at: Instant::now(),
            handshake: None,
            events: Vec::new(),
            end: None,
            problems: Vec::new(),
        }
    }

    /// Messages the client sent.
    pub fn received(&self) -> impl Iterator<Item = (Instant, &Message)> {
        self.events.iter().filter_map(|(t, e)| match e {
            Event::Recv(m) => Some((*t, m)),
            _ => None,
        })
    }

    /// Messages we sent.
    pub fn sent(&self) -> impl Iterator<Item = (Instant, &Message)> {
        self.events.iter().filter_map(|(t, e)| match e {
            Event::Sent(m) => Some((*t, m)),
            _ => None,
        })
    }

    /// Every block the client requested, with when.
    pub fn requests(&self) -> Vec<(Instant, BlockRef)> {
        self.received()
            .filter_map(|(t, m)| match m {
                Message::Request(b) => Some((t, *b)),
                _ => None,
            })
            .collect()
    }

    /// Every block the client cancelled.
    pub fn cancels(&self) -> Vec<BlockRef> {
        self.received()
            .filter_map(|(_, m)| match m {
                Message::Cancel(b) => Some(*b),
                _ => None,
            })
            .collect()
    }

    /// Every block we sent (as the request it answered).
    pub fn blocks_sent(&self) -> Vec<BlockRef> {
        self.sent()
            .filter_map(|(_, m)| match m {
                Message::Piece { index, begin, data } => Some(BlockRef {
                    index: *index,
                    begin: *begin,
                    length: data.len() as u32,
                }),
                _ => None,
            })
            .collect()
    }

    /// Requests this seed never answered with a block or a reject (whether
    /// or not the client cancelled them later).
    pub fn unserved(&self) -> Vec<(Instant, BlockRef)> {
        let mut open: Vec<(Instant, BlockRef)> = Vec::new();
        for (t, e) in &self.events {
            match e {
                Event::Recv(Message::Request(b)) => open.push((*t, *b)),
                Event::Sent(Message::Reject(b)) => {
                    if let Some(i) = open.iter().position(|(_, o)| o == b) {
                        open.remove(i);
                    }
                }
                Event::Sent(Message::Piece { index, begin, data }) => {
                    let b = BlockRef {
                        index: *index,
                        begin: *begin,
                        length: data.len() as u32,
                    };
                    if let Some(i) = open.iter().position(|(_, o)| *o == b) {
                        open.remove(i);
                    }
                }
                _ => {}
            }
        }
        open
    }

    /// Whether the client closed this connection.
    pub fn closed_by_client(&self) -> bool {
        matches!(self.end, Some((_, End::ClientClosed)))
    }
}

/// State shared between a seed's threads and the test: the logs (one per
/// accepted connection) and the stop flag. A Mutex is fine here: this is
/// test scaffolding, not the client's actors.
struct Shared {
    logs: Mutex<Vec<ConnLog>>,
    stop: AtomicBool,
}

/// A running scripted seed; stops and joins its threads when dropped.
pub struct Seed {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Seed {
    /// Starts a seed of `torrent` on 127.0.0.1 with an ephemeral port.
    pub fn start(torrent: &TestTorrent, script: Script) -> Seed {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind scripted seed");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            logs: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let torrent = Arc::new(torrent.clone());
        let script = Arc::new(script);
        let sh = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name(format!("seed-{}", addr.port()))
            .spawn(move || accept_loop(listener, sh, torrent, script))
            .expect("spawn seed thread");
        Seed {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// The address to pass as `--peer`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A copy of every connection's log so far, in accept order.
    pub fn logs(&self) -> Vec<ConnLog> {
        self.shared.logs.lock().unwrap().clone()
    }

    /// How many connections were accepted.
    pub fn connections(&self) -> usize {
        self.shared.logs.lock().unwrap().len()
    }

    /// Stops accepting, ends every connection and joins all threads.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }

    /// A short account of every connection, for failure messages.
    pub fn summary(&self) -> String {
        let mut out = format!("seed {}:\n", self.addr);
        for (i, log) in self.logs().iter().enumerate() {
            let t0 = log.accepted_at;
            out += &format!(
                "  conn {i}: end {:?}, {} requests, {} blocks sent, {} cancels, problems {:?}\n",
                log.end.map(|(t, e)| (e, t - t0)),
                log.requests().len(),
                log.blocks_sent().len(),
                log.cancels().len(),
                log.problems
            );
            let n = log.events.len();
            for (t, e) in &log.events[n.saturating_sub(12)..] {
                let e = match e {
                    Event::Recv(Message::Piece { index, begin, data })
                    | Event::Sent(Message::Piece { index, begin, data }) => {
                        format!("piece {index}/{begin}/{}", data.len())
                    }
                    other => format!("{other:?}"),
                };
                out += &format!("    {:>8.3}s {e}\n", (*t - t0).as_secs_f64());
            }
        }
        out
    }

    /// Asserts no connection recorded a client-side protocol fault.
    pub fn assert_no_problems(&self, who: &str) {
        for (i, log) in self.logs().iter().enumerate() {
            assert!(
                log.problems.is_empty(),
                "{who} connection {i}: client faults {:?}",
                log.problems
            );
        }
    }
}

impl Drop for Seed {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    torrent: Arc<TestTorrent>,
    script: Arc<Script>,
) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                if !speaks_plaintext(&stream) {
                    continue;
                }
                let slot = {
                    let mut logs = shared.logs.lock().unwrap();
                    logs.push(ConnLog::new());
                    logs.len() - 1
                };
                let (sh, t, s) = (
                    Arc::clone(&shared),
                    Arc::clone(&torrent),
                    Arc::clone(&script),
                );
                conns.push(std::thread::spawn(move || {
                    let mut conn = Conn {
                        stream,
                        shared: sh,
                        slot,
                        torrent: t,
                        script: s,
                        buf: BytesMut::new(),
                    };
                    let end = conn.run();
                    conn.log(|l| l.end = Some((Instant::now(), end)));
                }));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(TICK),
            Err(_) => std::thread::sleep(TICK),
        }
    }
    for c in conns {
        let _ = c.join();
    }
}

/// These seeds speak no MSE/PE, like a plaintext-only client: a connection
/// whose first byte is not the handshake's 19 is an encrypted attempt,
/// closed unlogged (the client then dials again in plaintext). A silent or
/// closed connection counts as plaintext, to be logged as before.
fn speaks_plaintext(stream: &TcpStream) -> bool {
    use protocol::mse::{Detected, detect};
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut first = [0u8; 20];
    // An MSE key starts with 19 once in 256 tries: look at 20 bytes.
    let plain = loop {
        match stream.peek(&mut first) {
            Ok(0) | Err(_) => break true,
            Ok(n) => match detect(&first[..n]) {
                Detected::Plaintext => break true,
                Detected::Encrypted => break false,
                Detected::NeedMore(_) if Instant::now() >= deadline => break true,
                Detected::NeedMore(_) => std::thread::sleep(Duration::from_millis(5)),
            },
        }
    };
    let _ = stream.set_read_timeout(None);
    plain
}

/// Accepts on `listener` until a connection opens in plaintext, closing
/// the MSE attempts before it (a client with `encryption = "prefer"` dials
/// again in plaintext after one). At most 8 connections are tried.
pub fn accept_plaintext(listener: &TcpListener) -> TcpStream {
    for _ in 0..8 {
        let (stream, _) = listener.accept().expect("accept");
        if speaks_plaintext(&stream) {
            return stream;
        }
    }
    panic!("8 connections in a row opened with an MSE handshake");
}

/// A step of a connection's loop; `Err` ends the connection that way.
type Step<T> = Result<T, End>;

struct Conn {
    stream: TcpStream,
    shared: Arc<Shared>,
    slot: usize,
    torrent: Arc<TestTorrent>,
    script: Arc<Script>,
    buf: BytesMut,
}

impl Conn {
    fn log(&self, f: impl FnOnce(&mut ConnLog)) {
        let mut logs = self.shared.logs.lock().unwrap();
        f(&mut logs[self.slot]);
    }

    fn problem(&self, what: String) {
        self.log(|l| l.problems.push(what));
    }

    fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    fn limits(&self) -> Limits {
        Limits {
            piece_count: Some(self.torrent.piece_count()),
            ..Limits::default()
        }
    }

    /// Reads what is available within one tick into `buf`.
    fn read_some(&mut self) -> Step<()> {
        if self.stopped() {
            return Err(End::Stopped);
        }
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(End::ClientClosed),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(()),
            // Reset or aborted by the client.
            Err(_) => Err(End::ClientClosed),
        }
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Step<()> {
        match self.stream.write_all(bytes) {
            Ok(()) => Ok(()),
            Err(_) => Err(End::ClientClosed),
        }
    }

    fn send(&mut self, msgs: Vec<Message>) -> Step<()> {
        if msgs.is_empty() {
            return Ok(());
        }
        let mut out = BytesMut::new();
        for m in &msgs {
            m.encode(&mut out);
        }
        // Log before writing: the client may react (and we may read its
        // reaction) before write_all returns.
        let now = Instant::now();
        self.log(|l| {
            l.events
                .extend(msgs.into_iter().map(|m| (now, Event::Sent(m))))
        });
        self.write_raw(&out)
    }

    fn dropped(&self, blocks: &[BlockRef]) {
        let now = Instant::now();
        self.log(|l| {
            l.events
                .extend(blocks.iter().map(|b| (now, Event::Dropped(*b))))
        });
    }

    fn send_raw(&mut self, bytes: Bytes) -> Step<()> {
        let now = Instant::now();
        let copy = bytes.clone();
        self.log(|l| l.events.push((now, Event::SentRaw(copy))));
        self.write_raw(&bytes)
    }

    /// Decodes every complete message in `buf`. A client message we cannot
    /// decode is a fault on its side: recorded, and the connection closed.
    fn decode_all(&mut self) -> Step<Vec<Message>> {
        let limits = self.limits();
        let mut out = Vec::new();
        loop {
            match decode_message(&mut self.buf, &limits) {
                Ok(Decoded::Complete(m)) => out.push(m),
                Ok(Decoded::NeedMore(_)) => break,
                Err(e) => {
                    self.problem(format!("undecodable message from the client: {e}"));
                    return Err(End::SeedClosed);
                }
            }
        }
        let now = Instant::now();
        let logged = out.clone();
        self.log(|l| {
            l.events
                .extend(logged.into_iter().map(|m| (now, Event::Recv(m))))
        });
        Ok(out)
    }

    fn run(&mut self) -> End {
        let _ = self.stream.set_nodelay(true);
        let _ = self.stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let _ = self.stream.set_read_timeout(Some(TICK));
        let end = match self.session() {
            Ok(()) => End::Stopped,
            Err(end) => end,
        };
        if end == End::SeedClosed {
            let _ = self.stream.shutdown(Shutdown::Both);
        }
        end
    }

    fn handshake(&mut self) -> Step<Handshake> {
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        loop {
            match Handshake::decode(&self.buf) {
                Ok(Decoded::Complete(h)) => {
                    let _ = self.buf.split_to(Handshake::LEN);
                    return Ok(h);
                }
                Ok(Decoded::NeedMore(_)) => {}
                Err(e) => {
                    self.problem(format!("bad handshake: {e}"));
                    return Err(End::SeedClosed);
                }
            }
            if Instant::now() >= deadline {
                self.problem("no handshake within the timeout".into());
                return Err(End::SeedClosed);
            }
            self.read_some()?;
        }
    }

    fn session(&mut self) -> Step<()> {
        let theirs = self.handshake()?;
        if theirs.info_hash != self.torrent.info_hash {
            self.problem("handshake names another info-hash".into());
            return Err(End::SeedClosed);
        }
        self.log(|l| l.handshake = Some(theirs));
        let script = Arc::clone(&self.script);
        // Peer ids must differ between seeds: clients drop a second
        // connection to a peer id they already know.
        let port = self.stream.local_addr().map_or(0, |a| a.port());
        let mut peer_id = [0u8; 20];
        peer_id.copy_from_slice(format!("-SC0001-{port:012}").as_bytes());
        let mut ours = Handshake::new([0; 8], self.torrent.info_hash, peer_id);
        ours.set_fast(script.fast);
        ours.set_extended(script.extended);
        self.write_raw(&ours.to_bytes())?;
        let fast = script.fast && theirs.supports_fast();

        if script.fault == Fault::GarbageAfterHandshake {
            let mut g = vec![0, 0, 0, 3, 4, 0xde, 0xad];
            g.extend((0u8..64).map(|i| i.wrapping_mul(37) ^ 0x5a));
            self.send_raw(Bytes::from(g))?;
            return self.passive();
        }
        let mut hello = Vec::new();
        if script.extended && theirs.supports_extended() {
            let ext = ExtendedHandshake {
                v: Some("scripted seed".into()),
                reqq: Some(script.reqq),
                ..ExtendedHandshake::default()
            };
            hello.push(ext.to_message());
        }
        let n = self.torrent.piece_count();
        let bitfield = |held: &dyn Fn(u32) -> bool| {
            let mut bits = vec![0u8; n.div_ceil(8) as usize];
            for i in (0..n).filter(|&i| held(i)) {
                bits[i as usize / 8] |= 0x80 >> (i % 8);
            }
            bits
        };
        match (&script.fault, &script.holding) {
            _ if script.hello.is_some() => {}
            (Fault::WrongSizeBitfield, _) => {
                let mut bits = bitfield(&|i| script.holds(i));
                bits.push(0xff);
                hello.push(Message::Bitfield(Bytes::from(bits)));
            }
            (_, Holding::HaveAll) => hello.push(Message::HaveAll),
            (_, Holding::Pieces(p)) if p.is_empty() && fast => hello.push(Message::HaveNone),
            _ => hello.push(Message::Bitfield(Bytes::from(bitfield(&|i| {
                script.holds(i)
            })))),
        }
        self.send(hello)?;
        for frame in script.hello.iter().flatten() {
            self.send_raw(frame.clone())?;
        }
        match &script.fault {
            Fault::WrongSizeBitfield => return self.passive(),
            Fault::OversizeLength => {
                let mut g = vec![0x00, 0xff, 0xff, 0xff, 7];
                g.extend_from_slice(&[0u8; 1024]);
                self.send_raw(Bytes::from(g))?;
                return self.passive();
            }
            Fault::UnrequestedPiece => {
                let b = BlockRef {
                    index: 0,
                    begin: 0,
                    length: self.torrent.piece_len(0).min(protocol::wire::BLOCK_SIZE),
                };
                let data = self.torrent.block(&b).unwrap();
                self.send(vec![Message::Piece {
                    index: 0,
                    begin: 0,
                    data,
                }])?;
                return self.passive();
            }
            Fault::Raw(frames) => {
                for frame in frames {
                    self.send_raw(frame.clone())?;
                }
                return self.passive();
            }
            _ => {}
        }
        self.serve(fast)
    }

    /// After a deliberate protocol violation: only read and log, until the
    /// client closes the connection or the test stops the seed.
    fn passive(&mut self) -> Step<()> {
        loop {
            self.read_some()?;
            // The client may legitimately send anything before it notices;
            // decode leniently and stop decoding at the first error.
            let limits = self.limits();
            while let Ok(Decoded::Complete(m)) = decode_message(&mut self.buf, &limits) {
                let now = Instant::now();
                self.log(|l| l.events.push((now, Event::Recv(m))));
            }
        }
    }

    /// The normal serving loop, with the script's timing faults.
    fn serve(&mut self, fast: bool) -> Step<()> {
        let script = Arc::clone(&self.script);
        let mut choked = true;
        let mut unchoke_at: Option<Instant> = None;
        let mut queue: VecDeque<BlockRef> = VecDeque::new();
        let mut sent_blocks = 0usize;
        let mut stalled = false;
        let mut next_block_at = Instant::now();
        let started = Instant::now();
        let mut injected = 0;
        loop {
            while let Some((at, frames)) = script.inject.get(injected) {
                if started.elapsed() < *at {
                    break;
                }
                injected += 1;
                for frame in frames {
                    self.send_raw(frame.clone())?;
                }
            }
            // Unchoke when the gate and any choke cycle allow it.
            let gate_open = script.gate.as_ref().is_none_or(Gate::is_open);
            if choked && gate_open && unchoke_at.is_none_or(|t| Instant::now() >= t) {
                choked = false;
                unchoke_at = None;
                self.send(vec![Message::Unchoke])?;
            }

            // Wait for input no longer than until the next block is due.
            let wait = if queue.is_empty() || choked || stalled {
                TICK
            } else {
                next_block_at
                    .saturating_duration_since(Instant::now())
                    .clamp(Duration::from_millis(1), TICK)
            };
            let _ = self.stream.set_read_timeout(Some(wait));
            self.read_some()?;
            let msgs = self.decode_all()?;
            if stalled {
                // A silent peer: it reads (so the log shows what the client
                // does about it) but answers nothing, not even cancels.
                continue;
            }
            let mut replies = Vec::new();
            for m in msgs {
                match m {
                    Message::Request(b) => {
                        if self.torrent.block(&b).is_none() || !script.holds(b.index) {
                            self.problem(format!("request for a block we do not have: {b:?}"));
                            if fast {
                                replies.push(Message::Reject(b));
                            }
                        } else if choked {
                            // BEP 6: reject; BEP 3: silently drop.
                            if fast {
                                replies.push(Message::Reject(b));
                            } else {
                                self.dropped(&[b]);
                            }
                        } else if !queue.contains(&b) {
                            queue.push_back(b);
                        }
                    }
                    Message::Cancel(b) => {
                        if let Some(i) = queue.iter().position(|q| *q == b) {
                            queue.remove(i);
                            // BEP 6: every request gets exactly one answer,
                            // a cancelled one included.
                            if fast {
                                replies.push(Message::Reject(b));
                            }
                        }
                    }
                    _ => {}
                }
            }
            self.send(replies)?;

            // Serve queued blocks, one per `block_delay`.
            while !choked && !stalled && Instant::now() >= next_block_at {
                let Some(b) = queue.pop_front() else { break };
                let mut data = self.torrent.block(&b).expect("checked when queued");
                if script.corrupts(b.index) {
                    let mut v = data.to_vec();
                    v[0] ^= 0xff;
                    data = Bytes::from(v);
                }
                self.send(vec![Message::Piece {
                    index: b.index,
                    begin: b.begin,
                    data,
                }])?;
                sent_blocks += 1;
                next_block_at = Instant::now() + script.block_delay;
                match script.fault {
                    Fault::StallAfter(n) if sent_blocks >= n => stalled = true,
                    Fault::DisconnectAfter(n) if sent_blocks >= n => {
                        return Err(End::SeedClosed);
                    }
                    Fault::ChokeCycle { every, choked_for } if sent_blocks % every == 0 => {
                        choked = true;
                        unchoke_at = Some(Instant::now() + choked_for);
                        let mut msgs = vec![Message::Choke];
                        if fast {
                            msgs.extend(queue.drain(..).map(Message::Reject));
                        } else {
                            let dropped: Vec<BlockRef> = queue.drain(..).collect();
                            self.dropped(&dropped);
                        }
                        self.send(msgs)?;
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Checks the handshake the client sent: our reserved bits and peer id
/// prefix, per the client's spec. Returns the problems found.
pub fn check_client_handshake(h: &Handshake) -> Vec<String> {
    let mut p = Vec::new();
    if !h.supports_extended() {
        p.push("extension protocol bit not set".to_owned());
    }
    if !h.supports_fast() {
        p.push("fast extension bit not set".to_owned());
    }
    if !h.peer_id.starts_with(b"-AR0001-") {
        p.push(format!(
            "peer id {:?} does not start with -AR0001-",
            String::from_utf8_lossy(&h.peer_id)
        ));
    }
    p
}

/// Blocks requested from this seed while it had the client choked after it
/// had already rejected (BEP 6) or dropped (BEP 3) them in that same choke:
/// a client that re-requests before the unchoke. A client asks again for a
/// block it had outstanding here only once it knows the request is dead,
/// that is after the choke or reject reached it, so such a request is no
/// wire race. Requests that merely crossed the choke on the wire are not
/// counted (they were sent before the client could know).
pub fn rerequested_while_choked(log: &ConnLog) -> Vec<BlockRef> {
    let mut choked = false;
    let mut rejected: HashSet<BlockRef> = HashSet::new();
    let mut bad = Vec::new();
    for (_, e) in &log.events {
        match e {
            Event::Sent(Message::Choke) => {
                choked = true;
                rejected.clear();
            }
            Event::Sent(Message::Unchoke) => {
                choked = false;
                rejected.clear();
            }
            Event::Sent(Message::Reject(b)) | Event::Dropped(b) if choked => {
                rejected.insert(*b);
            }
            Event::Recv(Message::Request(b)) if choked && rejected.contains(b) => bad.push(*b),
            _ => {}
        }
    }
    bad
}

/// Decodes the extended handshake the client sent on this connection, if any.
pub fn client_extended_handshake(log: &ConnLog) -> Option<ExtendedHandshake> {
    log.received().find_map(|(_, m)| match m {
        Message::Extended { id: 0, payload } => ExtendedHandshake::decode(payload).ok(),
        _ => None,
    })
}
