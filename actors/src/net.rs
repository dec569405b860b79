//! Connection setup: what happens between "connect to this address" (or
//! "a socket was accepted") and the first BitTorrent message. It owns the
//! outgoing dial (TCP connect with its socket options, then MSE/PE per the
//! `encryption` policy with a plaintext retry), the listener's first
//! exchange (plaintext or MSE told from the first bytes, the torrent found
//! by its SKEY hash in a map the session keeps), and the process-wide
//! counters of connections by kind. The peer actor gets a ready
//! [`MseStream`] and never sees the difference.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use protocol::mse::{MseError, Secrets, req2_hash};
use protocol::wire::{Decoded, Handshake};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::debug;

use crate::config::ClientConfig;
use crate::mse_stream::{self, Encryption, Kind, MseStream, MseStreamError};

/// The SKEY map the listener reads: `HASH('req2', info_hash)` to the
/// info-hash, for every torrent the session runs. The session actor owns
/// the sender and updates it in place (`Arc::make_mut`: copied only while a
/// handshake holds the previous version), so adding a torrent costs one
/// insert, and an incoming MSE connection one lookup, however many torrents
/// there are.
pub type SkeyMap = Arc<HashMap<[u8; 20], [u8; 20]>>;

/// Registers a torrent in the SKEY map.
pub fn skey_insert(map: &watch::Sender<SkeyMap>, info_hash: [u8; 20]) {
    map.send_modify(|m| {
        Arc::make_mut(m).insert(req2_hash(&info_hash), info_hash);
    });
}

/// Removes a torrent from the SKEY map.
pub fn skey_remove(map: &watch::Sender<SkeyMap>, info_hash: [u8; 20]) {
    map.send_modify(|m| {
        Arc::make_mut(m).remove(&req2_hash(&info_hash));
    });
}

/// Which side opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// We dialled.
    Outgoing,
    /// The remote dialled our listener.
    Incoming,
}

/// Process-wide connection counters, shared by reference (atomics, like the
/// buffer budget): every dial and every accepted socket bumps one, nothing
/// waits on them.
#[derive(Debug, Default)]
pub struct ConnCounters {
    established: [[AtomicU64; 3]; 2],
    connect_failures: AtomicU64,
    mse_fallbacks: AtomicU64,
    mse_failures_outgoing: AtomicU64,
    refused_plaintext: AtomicU64,
    refused_encrypted: AtomicU64,
    mse_errors_incoming: AtomicU64,
    unknown_skey: AtomicU64,
    incomplete_incoming: AtomicU64,
    unknown_torrent: AtomicU64,
}

/// A snapshot of [`ConnCounters`], for `--stats-json` and the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConnStats {
    /// BitTorrent handshakes completed on connections we dialled, by kind.
    pub outgoing: KindCounts,
    /// BitTorrent handshakes completed on connections we accepted, by kind.
    pub incoming: KindCounts,
    /// Dials whose TCP connect failed (refused, unreachable, timed out, or
    /// the bound interface down or missing).
    pub connect_failures: u64,
    /// Dials whose MSE handshake failed and that were retried in plaintext
    /// (`encryption = "prefer"`).
    pub mse_fallbacks: u64,
    /// Dials whose MSE handshake failed (each policy; with `prefer` every
    /// one of them is also a fallback).
    pub mse_failures_outgoing: u64,
    /// Incoming plaintext connections refused (`encryption = "require"`).
    pub refused_plaintext: u64,
    /// Incoming MSE connections refused (`encryption = "disable"`).
    pub refused_encrypted: u64,
    /// Incoming MSE handshakes that broke the protocol: garbage for the
    /// key, no sync hash or VC within the padding limit, padding or initial
    /// payload past its limit, no crypto method in common.
    pub mse_errors_incoming: u64,
    /// Incoming MSE handshakes whose SKEY hash names no torrent of ours.
    pub unknown_skey: u64,
    /// Incoming connections that ended before a complete BitTorrent
    /// handshake: closed, timed out, not a BitTorrent handshake, or one
    /// naming another torrent than its SKEY.
    pub incomplete_incoming: u64,
    /// Incoming plaintext handshakes for a torrent we do not run.
    pub unknown_torrent: u64,
}

/// Connections by what they turned out to be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KindCounts {
    /// No MSE at all.
    pub plaintext: u64,
    /// MSE handshake, plaintext payload (`crypto_select` = plaintext).
    pub mse_plaintext: u64,
    /// MSE handshake, RC4 payload.
    pub rc4: u64,
}

fn kind_index(kind: Kind) -> usize {
    match kind {
        Kind::Plaintext => 0,
        Kind::MsePlaintext => 1,
        Kind::MseRc4 => 2,
    }
}

impl ConnCounters {
    /// A BitTorrent handshake completed on a connection of this kind.
    pub fn established(&self, kind: Kind, dir: Direction) {
        let d = match dir {
            Direction::Outgoing => 0,
            Direction::Incoming => 1,
        };
        self.established[d][kind_index(kind)].fetch_add(1, Ordering::Relaxed);
    }

    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> ConnStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let kinds = |row: &[AtomicU64; 3]| KindCounts {
            plaintext: load(&row[0]),
            mse_plaintext: load(&row[1]),
            rc4: load(&row[2]),
        };
        ConnStats {
            outgoing: kinds(&self.established[0]),
            incoming: kinds(&self.established[1]),
            connect_failures: load(&self.connect_failures),
            mse_fallbacks: load(&self.mse_fallbacks),
            mse_failures_outgoing: load(&self.mse_failures_outgoing),
            refused_plaintext: load(&self.refused_plaintext),
            refused_encrypted: load(&self.refused_encrypted),
            mse_errors_incoming: load(&self.mse_errors_incoming),
            unknown_skey: load(&self.unknown_skey),
            incomplete_incoming: load(&self.incomplete_incoming),
            unknown_torrent: load(&self.unknown_torrent),
        }
    }

    /// An incoming plaintext handshake named no torrent of ours.
    pub(crate) fn unknown_torrent(&self) {
        Self::bump(&self.unknown_torrent);
    }
}

/// Where every socket of the process is bound (`bind_interface`,
/// `bind_address`): peers, the listener, HTTP and UDP trackers. With an
/// interface, SO_BINDTODEVICE ties each socket to it, so when the interface
/// is down or gone a connection fails (and is retried later) instead of
/// leaving by another route: the kill switch VPN users rely on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binding {
    /// The interface name (SO_BINDTODEVICE), or any.
    pub interface: Option<String>,
    /// The local address of outgoing sockets, or the OS's choice.
    pub address: Option<std::net::IpAddr>,
}

/// A binding that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// `bind_address` is not an IP address.
    #[error("bind_address `{0}` is not an IP address")]
    BadAddress(String),
    /// `bind_interface` is longer than an interface name can be.
    #[error("bind_interface `{0}` is not an interface name (1 to 15 bytes)")]
    BadInterface(String),
}

impl Binding {
    /// The binding of a config (`""` for either key means none).
    pub fn from_config(config: &ClientConfig) -> Result<Binding, BindError> {
        let interface = match config.bind_interface.as_str() {
            "" => None,
            name if name.len() > 15 || name.contains(['/', ' ', '\0']) => {
                return Err(BindError::BadInterface(name.into()));
            }
            name => Some(name.to_owned()),
        };
        let address = match config.bind_address.as_str() {
            "" => None,
            a => Some(a.parse().map_err(|_| BindError::BadAddress(a.to_owned()))?),
        };
        Ok(Binding { interface, address })
    }

    /// Whether anything is bound.
    pub fn is_set(&self) -> bool {
        self.interface.is_some() || self.address.is_some()
    }

    /// Applies the binding to a fresh socket that is to reach (or, for a
    /// listener, serve) `peer`'s family. Errors name the interface or
    /// address, so a log line says why nothing went out.
    fn apply(&self, sock: &socket2::Socket, v6: bool, listen: bool) -> std::io::Result<()> {
        if let Some(name) = &self.interface {
            sock.bind_device(Some(name.as_bytes())).map_err(|e| {
                std::io::Error::new(e.kind(), format!("binding to interface {name}: {e}"))
            })?;
        }
        if let (Some(ip), false) = (self.address, listen) {
            if ip.is_ipv6() != v6 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrNotAvailable,
                    format!(
                        "bind_address {ip} cannot reach an IPv{} address",
                        if v6 { 6 } else { 4 }
                    ),
                ));
            }
            sock.bind(&SocketAddr::new(ip, 0).into()).map_err(|e| {
                std::io::Error::new(e.kind(), format!("binding to address {ip}: {e}"))
            })?;
        }
        Ok(())
    }

    /// A TCP connection to `addr` from the bound interface and address.
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        if !self.is_set() {
            return TcpStream::connect(addr).await;
        }
        use socket2::{Domain, Protocol, Socket, Type};
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        sock.set_nonblocking(true)?;
        self.apply(&sock, addr.is_ipv6(), false)?;
        let sock = tokio::net::TcpSocket::from_std_stream(sock.into());
        sock.connect(addr).await.map_err(|e| match &self.interface {
            Some(name) => std::io::Error::new(e.kind(), format!("{e} (bound to interface {name})")),
            None => e,
        })
    }

    /// A UDP socket for talking to `remote`, bound per the binding.
    pub fn udp_for(&self, remote: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
        use socket2::{Domain, Protocol, Socket, Type};
        let sock = Socket::new(
            Domain::for_address(remote),
            Type::DGRAM,
            Some(Protocol::UDP),
        )?;
        sock.set_nonblocking(true)?;
        self.apply(&sock, remote.is_ipv6(), false)?;
        if self.address.is_none() {
            let any: SocketAddr = if remote.is_ipv6() {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            };
            sock.bind(&any.into())?;
        }
        tokio::net::UdpSocket::from_std(sock.into())
    }

    /// The HTTP client builder, bound the same way (reqwest's
    /// `local_address` and `interface`).
    pub fn http(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        let mut b = builder;
        if let Some(ip) = self.address {
            b = b.local_address(ip);
        }
        if let Some(name) = &self.interface {
            b = b.interface(name);
        }
        b
    }
}

/// Opens the listening socket for `addr`. An IPv6 wildcard (`[::]`) is
/// made dual-stack (IPV6_V6ONLY off, whatever the system default), so one
/// socket takes both families; IPv4 peers then arrive as IPv4-mapped
/// addresses, which [`canonical`] turns back into IPv4.
pub fn bind_listener(
    addr: SocketAddr,
    binding: &Binding,
) -> std::io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    binding.apply(&sock, addr.is_ipv6(), true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(false)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    tokio::net::TcpListener::from_std(sock.into())
}

/// An address as the address book keeps it: IPv4-mapped IPv6 addresses
/// (what a dual-stack socket reports for IPv4 peers) as plain IPv4, so a
/// peer is one entry however it reached us, and bans by IP hold.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Our BitTorrent handshake: the extension protocol and the fast extension.
pub fn our_handshake(info_hash: [u8; 20], peer_id: [u8; 20]) -> Handshake {
    let mut ours = Handshake::new([0; 8], info_hash, peer_id);
    ours.set_extended(true);
    ours.set_fast(true);
    ours
}

/// Opens a TCP connection to `addr` within `connect_timeout`, from the
/// bound interface and address, with TCP_NODELAY and the configured socket
/// buffers.
pub async fn tcp_connect(
    addr: SocketAddr,
    config: &ClientConfig,
    binding: &Binding,
) -> Result<TcpStream, String> {
    let stream = tokio::time::timeout(config.connect_timeout, binding.connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let sock = socket2::SockRef::from(&stream);
    // Failing to tune a socket is not worth losing the peer over.
    let _ = sock.set_nodelay(true);
    if let Some(n) = config.socket_recv_buffer {
        let _ = sock.set_recv_buffer_size(n);
    }
    if let Some(n) = config.socket_send_buffer {
        let _ = sock.set_send_buffer_size(n);
    }
    Ok(stream)
}

/// A dialled connection, ready for the BitTorrent handshake.
pub struct Dialled {
    /// The stream (RC4 or plaintext underneath).
    pub stream: MseStream<TcpStream>,
    /// What the connection is.
    pub kind: Kind,
    /// Our BitTorrent handshake went out in the MSE initial payload: it
    /// must not be sent again.
    pub handshake_sent: bool,
}

/// Why a dial failed, and whether the remote is to blame.
#[derive(Debug)]
pub struct DialError {
    /// The encrypted handshake broke the protocol (rather than the network
    /// failing or the remote closing).
    pub protocol: bool,
    /// What happened.
    pub reason: String,
}

impl DialError {
    fn network(reason: String) -> DialError {
        DialError {
            protocol: false,
            reason,
        }
    }
}

/// Dials `addr` for the torrent `info_hash` per `config.encryption`:
/// `disable` connects in plaintext; `prefer` runs MSE offering RC4 and
/// plaintext, and on failure connects again in plaintext (a peer that does
/// not speak MSE closes on our key, as libtorrent does on a failed attempt);
/// `require` runs MSE offering RC4 only and fails otherwise.
pub async fn dial(
    addr: SocketAddr,
    info_hash: [u8; 20],
    ours: &Handshake,
    config: &ClientConfig,
    counters: &ConnCounters,
    binding: &Binding,
) -> Result<Dialled, DialError> {
    let policy = config.encryption;
    let tcp = match tcp_connect(addr, config, binding).await {
        Ok(t) => t,
        Err(e) => {
            ConnCounters::bump(&counters.connect_failures);
            return Err(DialError::network(e));
        }
    };
    if policy == Encryption::Disable {
        return Ok(Dialled {
            stream: MseStream::plaintext(tcp),
            kind: Kind::Plaintext,
            handshake_sent: false,
        });
    }
    let secrets = Secrets::generate(&mut rand::rng());
    let ia = ours.to_bytes();
    let err = match mse_stream::initiate(
        tcp,
        info_hash,
        &ia,
        policy,
        secrets,
        config.handshake_timeout,
    )
    .await
    {
        Ok((stream, kind)) => {
            return Ok(Dialled {
                stream,
                kind,
                handshake_sent: true,
            });
        }
        Err(e) => e,
    };
    ConnCounters::bump(&counters.mse_failures_outgoing);
    if policy == Encryption::Require {
        return Err(DialError {
            protocol: matches!(err, MseStreamError::Protocol(_)),
            reason: err.to_string(),
        });
    }
    debug!(%addr, error = %err, "encrypted handshake failed; retrying in plaintext");
    ConnCounters::bump(&counters.mse_fallbacks);
    let tcp = tcp_connect(addr, config, binding)
        .await
        .map_err(DialError::network)?;
    Ok(Dialled {
        stream: MseStream::plaintext(tcp),
        kind: Kind::Plaintext,
        handshake_sent: false,
    })
}

/// An accepted connection whose BitTorrent handshake has been read.
#[derive(Debug)]
pub struct Arrived {
    /// The stream, positioned after the remote's handshake.
    pub stream: MseStream<TcpStream>,
    /// The remote's handshake.
    pub handshake: Handshake,
    /// What the connection is.
    pub kind: Kind,
}

/// The listener's side of a new connection: tells plaintext from MSE by the
/// first bytes, runs the MSE responder (finding the torrent in `skeys`) or
/// refuses per `config.encryption`, then reads the 68-byte BitTorrent
/// handshake, all within `handshake_timeout`. An MSE connection whose
/// handshake names another torrent than its SKEY is refused. Every failure
/// is counted in `counters`; `None` means the socket is to be dropped.
pub async fn accept(
    stream: TcpStream,
    peer: SocketAddr,
    skeys: &watch::Receiver<SkeyMap>,
    config: &ClientConfig,
    counters: &ConnCounters,
) -> Option<Arrived> {
    // Held for this handshake only; the session copies the map if it
    // changes meanwhile.
    let lookup = skeys.borrow().clone();
    let secrets = Secrets::generate(&mut rand::rng());
    let timeout = config.handshake_timeout;
    let exchange = async {
        let accepted = mse_stream::accept(stream, &*lookup, config.encryption, secrets, timeout)
            .await
            .map_err(|e| (e.to_string(), Some(e)))?;
        let mut stream = accepted.stream;
        let mut buf = [0u8; Handshake::LEN];
        stream
            .read_exact(&mut buf)
            .await
            .map_err(|e| (format!("reading handshake: {e}"), None))?;
        let handshake = match Handshake::decode(&buf) {
            Ok(Decoded::Complete(h)) => h,
            _ => return Err(("not a BitTorrent handshake".to_string(), None)),
        };
        if accepted.info_hash.is_some_and(|h| h != handshake.info_hash) {
            return Err(("handshake for another torrent than its SKEY".into(), None));
        }
        Ok(Arrived {
            stream,
            handshake,
            kind: accepted.kind,
        })
    };
    let outcome = tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(("handshake timed out".into(), None)));
    match outcome {
        Ok(a) => {
            let _ = socket2::SockRef::from(a.stream.get_ref()).set_nodelay(true);
            Some(a)
        }
        Err((reason, err)) => {
            let c = match err {
                Some(MseStreamError::PlaintextRefused) => &counters.refused_plaintext,
                Some(MseStreamError::EncryptedRefused) => &counters.refused_encrypted,
                Some(MseStreamError::Protocol(MseError::UnknownSkey)) => &counters.unknown_skey,
                Some(MseStreamError::Protocol(_)) => &counters.mse_errors_incoming,
                _ => &counters.incomplete_incoming,
            };
            ConnCounters::bump(c);
            debug!(%peer, %reason, "incoming connection dropped");
            None
        }
    }
}
