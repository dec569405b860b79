//! MSE/PE over a byte stream: runs the handshake of [`protocol::mse`] on a
//! socket, bounded by a timeout, and then wraps the socket in
//! [`MseStream`], which RC4-encrypts and decrypts the payload (or passes it
//! through) behind `AsyncRead + AsyncWrite`, so the peer code above it reads
//! and writes the BitTorrent protocol as if the connection were plaintext.
//!
//! - [`initiate`] dials: our BitTorrent handshake rides in the initial
//!   payload, so encryption costs one round trip more than plaintext.
//! - [`accept`] takes an incoming connection, tells plaintext from MSE by its
//!   first bytes ([`protocol::mse::detect`]) and, for MSE, learns the torrent
//!   from the SKEY hash through a [`SkeyLookup`]. Either way the bytes it
//!   read are served again by the returned stream, so the caller reads the
//!   remote's 68-byte handshake from it as from a plaintext socket.
//!
//! The hot path copies nothing on the way in: bytes are decrypted in place
//! in the caller's buffer, right after the inner read filled it. On the way
//! out they are encrypted into one reusable buffer per connection (the
//! caller's buffers are borrowed immutably), written with one inner write per
//! [`WRITE_CHUNK`]. Like a `BufWriter` or a TLS stream, a write may return
//! before all of its ciphertext reached the socket: call `flush` after the
//! last write of a batch.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use protocol::mse::{
    Ciphers, Crypto, CryptoSet, Detected, Established, Initiator, MseError, Responder, Secrets,
    SkeyLookup, detect,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Plaintext bytes encrypted per inner write: large enough that a seed's
/// 16 KiB blocks go out several per syscall, small enough to keep the
/// per-connection buffer modest.
pub const WRITE_CHUNK: usize = 64 * 1024;

/// Bytes read per socket read during the handshake. Messages 1 and 2 are at
/// most 608 bytes, message 3 at most 1.6 KiB; what arrives past the end is
/// kept as payload.
const HANDSHAKE_READ: usize = 4096;

/// The `encryption` setting: how connections use MSE/PE.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encryption {
    /// Dial with MSE offering RC4 and plaintext payload (a failed attempt is
    /// retried in plaintext by the caller); accept plaintext and MSE, and
    /// select RC4 whenever the remote offers it.
    #[default]
    Prefer,
    /// RC4 only: dial offering RC4 alone; refuse plaintext connections and
    /// MSE connections that do not offer RC4.
    Require,
    /// No MSE: dial in plaintext; refuse incoming MSE connections.
    Disable,
}

impl Encryption {
    /// What we offer when dialing, or `None` to dial in plaintext.
    pub fn provide(self) -> Option<CryptoSet> {
        match self {
            Encryption::Prefer => Some(CryptoSet::BOTH),
            Encryption::Require => Some(CryptoSet::RC4),
            Encryption::Disable => None,
        }
    }

    /// What we accept from an incoming MSE connection, or `None` to refuse.
    pub fn accept(self) -> Option<CryptoSet> {
        self.provide()
    }

    /// Whether an incoming plaintext BitTorrent handshake is accepted.
    pub fn allows_plaintext(self) -> bool {
        self != Encryption::Require
    }
}

/// What a connection turned out to be: the "connections by kind" counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// No MSE: a plain BitTorrent connection.
    Plaintext,
    /// MSE handshake, plaintext payload.
    MsePlaintext,
    /// MSE handshake, RC4 payload.
    MseRc4,
}

impl Kind {
    fn of(crypto: Crypto) -> Kind {
        match crypto {
            Crypto::Plaintext => Kind::MsePlaintext,
            Crypto::Rc4 => Kind::MseRc4,
        }
    }
}

/// Why an encrypted handshake failed.
#[derive(thiserror::Error, Debug)]
pub enum MseStreamError {
    /// The peer broke the protocol (see [`MseError`]).
    #[error("encrypted handshake: {0}")]
    Protocol(#[from] MseError),
    /// The handshake did not complete within the timeout.
    #[error("encrypted handshake timed out")]
    Timeout,
    /// The peer closed the connection before the handshake completed (the
    /// usual answer of a peer that does not speak MSE).
    #[error("peer closed the connection during the encrypted handshake")]
    Closed,
    /// Reading or writing the socket failed.
    #[error("encrypted handshake: {0}")]
    Io(#[from] io::Error),
    /// An incoming plaintext connection while encryption is required.
    #[error("plaintext connection refused: encryption is required")]
    PlaintextRefused,
    /// An incoming MSE connection while encryption is disabled.
    #[error("encrypted connection refused: encryption is disabled")]
    EncryptedRefused,
    /// [`initiate`] with [`Encryption::Disable`]: dial in plaintext instead.
    #[error("encryption is disabled")]
    Disabled,
}

/// A connection after its handshake: decrypts what it reads and encrypts
/// what it writes when RC4 was selected, and passes bytes through
/// otherwise. Bytes read during the handshake past its end come first.
pub struct MseStream<S> {
    inner: S,
    /// Payload read with the handshake, already decrypted; served first.
    head: Vec<u8>,
    head_pos: usize,
    /// RC4 both ways, or `None` for plaintext payload.
    /// Boxed: the two RC4 states are half a KiB, and the stream travels in
    /// messages (an accepted connection on its way to its torrent).
    ciphers: Option<Box<Ciphers>>,
    /// Ciphertext accepted from the caller and not yet written to `inner`.
    wbuf: Vec<u8>,
    wpos: usize,
    kind: Kind,
}

impl<S> std::fmt::Debug for MseStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MseStream")
            .field("kind", &self.kind)
            .field("head", &(self.head.len() - self.head_pos))
            .field("unwritten", &(self.wbuf.len() - self.wpos))
            .finish_non_exhaustive()
    }
}

impl<S> MseStream<S> {
    /// A plaintext connection (dialed without MSE): every byte passes.
    pub fn plaintext(inner: S) -> MseStream<S> {
        MseStream::new(inner, Vec::new(), None, Kind::Plaintext)
    }

    fn new(inner: S, head: Vec<u8>, ciphers: Option<Box<Ciphers>>, kind: Kind) -> MseStream<S> {
        MseStream {
            inner,
            head,
            head_pos: 0,
            ciphers,
            wbuf: Vec::new(),
            wpos: 0,
            kind,
        }
    }

    /// What the connection turned out to be.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The wrapped stream (for socket options and addresses; reading or
    /// writing it directly would desynchronise the ciphers).
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncWrite + Unpin> MseStream<S> {
    /// Writes the ciphertext still waiting in `wbuf`.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.wbuf[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        self.wbuf.clear();
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }

    /// Encrypts the caller's slices (up to [`WRITE_CHUNK`] bytes) into
    /// `wbuf` and starts writing them: the bytes are ours from here on.
    fn poll_encrypt_write(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_drain(cx))?;
        let mut taken = 0;
        for b in bufs {
            let n = b.len().min(WRITE_CHUNK - taken);
            self.wbuf.extend_from_slice(&b[..n]);
            taken += n;
            if taken == WRITE_CHUNK {
                break;
            }
        }
        if taken == 0 {
            return Poll::Ready(Ok(0));
        }
        if let Some(c) = &mut self.ciphers {
            c.encrypt.apply(&mut self.wbuf);
        }
        // Accepted whether or not the socket takes it now; a Pending here only
        // leaves the rest for the next write or flush.
        match self.poll_drain(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(taken)),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for MseStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.head_pos < this.head.len() {
            let n = buf.remaining().min(this.head.len() - this.head_pos);
            buf.put_slice(&this.head[this.head_pos..this.head_pos + n]);
            this.head_pos += n;
            if this.head_pos == this.head.len() {
                this.head = Vec::new();
                this.head_pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Some(c) = &mut this.ciphers {
            c.decrypt.apply(&mut buf.filled_mut()[before..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MseStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.ciphers.is_none() {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        this.poll_encrypt_write(cx, &[io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.ciphers.is_none() {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        this.poll_encrypt_write(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        // Encrypting coalesces the slices into one buffer anyway.
        self.ciphers.is_some() || self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Builds the stream from a finished handshake: the initial payload and
/// whatever followed the handshake in the last read become its head.
fn established<S>(inner: S, est: Established, mut rest: Vec<u8>) -> MseStream<S> {
    let Established {
        crypto,
        mut ciphers,
        initial_payload: mut head,
        ..
    } = est;
    if let Some(c) = &mut ciphers {
        c.decrypt.apply(&mut rest);
    }
    head.append(&mut rest);
    MseStream::new(inner, head, ciphers.map(Box::new), Kind::of(crypto))
}

async fn read_some<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
) -> Result<usize, MseStreamError> {
    match stream.read(buf).await? {
        0 => Err(MseStreamError::Closed),
        n => Ok(n),
    }
}

/// Dials side: runs the MSE handshake for `info_hash` over `stream`, with
/// `ia` (our 68-byte BitTorrent handshake, so the remote can answer at once;
/// or empty, to send it afterwards) as the initial payload. Returns the
/// stream, on which the remote's BitTorrent handshake is the next thing to
/// read, and whether the payload is RC4 or plaintext. `secrets` come from
/// [`Secrets::generate`]. With [`Encryption::Prefer`] a failure is the
/// caller's cue to reconnect in plaintext, as libtorrent does.
pub async fn initiate<S>(
    mut stream: S,
    info_hash: [u8; 20],
    ia: &[u8],
    policy: Encryption,
    secrets: Secrets,
    timeout: Duration,
) -> Result<(MseStream<S>, Kind), MseStreamError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let provide = policy.provide().ok_or(MseStreamError::Disabled)?;
    let mut hs = Initiator::new(info_hash, provide, ia, secrets)?;
    let exchange = async {
        let mut buf = vec![0u8; HANDSHAKE_READ];
        loop {
            while let Some(out) = hs.poll_transmit() {
                stream.write_all(&out).await?;
            }
            stream.flush().await?;
            let n = read_some(&mut stream, &mut buf).await?;
            let used = hs.handle_input(&buf[..n])?;
            if let Some(est) = hs.take_established() {
                return Ok::<_, MseStreamError>((est, buf[used..n].to_vec()));
            }
        }
    };
    let (est, rest) = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| MseStreamError::Timeout)??;
    let stream = established(stream, est, rest);
    let kind = stream.kind();
    Ok((stream, kind))
}

/// An accepted connection, ready for the BitTorrent handshake.
#[derive(Debug)]
pub struct Accepted<S> {
    /// The stream; the remote's 68-byte handshake is the next thing to read.
    pub stream: MseStream<S>,
    /// Plaintext or MSE, and which payload.
    pub kind: Kind,
    /// For MSE, the torrent the SKEY hash named: the remote's BitTorrent
    /// handshake must carry the same info-hash. `None` for plaintext.
    pub info_hash: Option<[u8; 20]>,
    /// Bytes at the head of the stream that came in the MSE initial
    /// payload: 68 when the initiator put its BitTorrent handshake there, as
    /// libtorrent and Transmission do; 0 when it sends it afterwards.
    pub ia_len: usize,
}

/// How an incoming connection's first exchange ended.
enum Outcome {
    /// A plaintext handshake began with these bytes.
    Plaintext(Vec<u8>),
    /// MSE completed (boxed: the ciphers are half a KiB); the bytes after
    /// it, still as received.
    Mse(Box<Established>, Vec<u8>),
}

/// Listening side: reads the first bytes of an incoming connection; serves
/// plaintext as it is (if `policy` allows) and runs the MSE responder
/// otherwise, finding the torrent through `lookup` (`HASH('req2',
/// info_hash)` to info-hash, see [`protocol::mse::req2_hash`]). The whole
/// exchange is bounded by `timeout`.
pub async fn accept<S, L>(
    mut stream: S,
    lookup: &L,
    policy: Encryption,
    secrets: Secrets,
    timeout: Duration,
) -> Result<Accepted<S>, MseStreamError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    L: SkeyLookup + ?Sized,
{
    let exchange = async {
        let mut buf = vec![0u8; HANDSHAKE_READ];
        let mut len = 0;
        loop {
            len += read_some(&mut stream, &mut buf[len..]).await?;
            match detect(&buf[..len]) {
                Detected::NeedMore(_) => continue,
                Detected::Plaintext if policy.allows_plaintext() => {
                    buf.truncate(len);
                    return Ok(Outcome::Plaintext(buf));
                }
                Detected::Plaintext => return Err(MseStreamError::PlaintextRefused),
                Detected::Encrypted => break,
            }
        }
        let accept = policy.accept().ok_or(MseStreamError::EncryptedRefused)?;
        let mut hs = Responder::new(accept, secrets)?;
        loop {
            let used = hs.handle_input(&buf[..len], lookup)?;
            while let Some(out) = hs.poll_transmit() {
                stream.write_all(&out).await?;
            }
            stream.flush().await?;
            if let Some(est) = hs.take_established() {
                return Ok(Outcome::Mse(Box::new(est), buf[used..len].to_vec()));
            }
            len = read_some(&mut stream, &mut buf).await?;
        }
    };
    let outcome = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| MseStreamError::Timeout)??;
    Ok(match outcome {
        Outcome::Mse(est, rest) => {
            let info_hash = Some(est.info_hash);
            let ia_len = est.initial_payload.len();
            let stream = established(stream, *est, rest);
            Accepted {
                kind: stream.kind(),
                stream,
                info_hash,
                ia_len,
            }
        }
        Outcome::Plaintext(first_bytes) => Accepted {
            stream: MseStream::new(stream, first_bytes, None, Kind::Plaintext),
            kind: Kind::Plaintext,
            info_hash: None,
            ia_len: 0,
        },
    })
}
