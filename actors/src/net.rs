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
    /// The SOCKS5 proxy every outgoing peer connection and HTTP announce
    /// goes through, or none.
    pub proxy: Option<Proxy>,
}

/// A SOCKS5 proxy (RFC 1928, with RFC 1929 username/password when given),
/// from `proxy = "socks5://[user:password@]host:port"`.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    /// The proxy's host name or IP address.
    pub host: String,
    /// The proxy's port.
    pub port: u16,
    /// Username and password (percent-decoded), or none.
    pub auth: Option<(String, String)>,
}

// The password stays out of logs and panics.
impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Proxy {
    /// Parses `socks5://[user:password@]host:port` (`socks5h://` is the
    /// same: names are always resolved by the proxy).
    pub fn parse(s: &str) -> Result<Proxy, BindError> {
        let bad = |why: &str| BindError::BadProxy(format!("{why} (in `{}`)", redact_url(s)));
        let url = reqwest::Url::parse(s).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "socks5" | "socks5h") {
            return Err(bad("only socks5:// proxies are supported"));
        }
        let host = match url.host_str() {
            Some(h) if !h.is_empty() => h.trim_start_matches('[').trim_end_matches(']').to_owned(),
            _ => return Err(bad("no host")),
        };
        let port = url.port().ok_or_else(|| bad("no port"))?;
        if url.path() != "" && url.path() != "/" || url.query().is_some() {
            return Err(bad("a path or query after host:port"));
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| bad("username or password is not UTF-8"))
        };
        let auth = match (url.username(), url.password()) {
            ("", None) => None,
            (u, p) => {
                let (u, p) = (decode(u)?, decode(p.unwrap_or(""))?);
                // RFC 1929: each is 1 to 255 bytes.
                if u.is_empty() || u.len() > 255 || p.is_empty() || p.len() > 255 {
                    return Err(bad("username and password must be 1 to 255 bytes each"));
                }
                Some((u, p))
            }
        };
        Ok(Proxy { host, port, auth })
    }

    /// `socks5://host:port`, without the credentials: for logs and stats.
    pub fn redacted(&self) -> String {
        format!("socks5://{}", self.host_port())
    }

    fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL for reqwest: `socks5h`, so tracker names are resolved by
    /// the proxy and no DNS query leaves outside it.
    fn reqwest_url(&self) -> String {
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        match &self.auth {
            Some((u, p)) => format!("socks5h://{}:{}@{}", enc(u), enc(p), self.host_port()),
            None => format!("socks5h://{}", self.host_port()),
        }
    }
}

/// A proxy URL with any password replaced, for error messages.
fn redact_url(s: &str) -> String {
    match (s.find("://"), s.rfind('@')) {
        (Some(i), Some(j)) if j > i => format!("{}://***@{}", &s[..i], &s[j + 1..]),
        _ => s.to_owned(),
    }
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
    /// `proxy` is not a usable SOCKS5 URL.
    #[error("proxy: {0}")]
    BadProxy(String),
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
        let proxy = match config.proxy.as_str() {
            "" => None,
            p => Some(Proxy::parse(p)?),
        };
        Ok(Binding {
            interface,
            address,
            proxy,
        })
    }

    /// Whether anything is bound or proxied.
    pub fn is_set(&self) -> bool {
        self.interface.is_some() || self.address.is_some() || self.proxy.is_some()
    }

    /// Why UDP (trackers, the DHT) must not be used, if it must not: with
    /// a SOCKS5 proxy every datagram would leave outside it (we do not use
    /// UDP ASSOCIATE), so UDP is refused rather than leaked.
    pub fn udp_refused(&self) -> Option<String> {
        self.proxy.as_ref().map(|p| {
            format!(
                "not sent: a SOCKS5 proxy ({}) is set and UDP would bypass it",
                p.redacted()
            )
        })
    }

    /// Applies the binding to a fresh socket that is to reach (or, for a
    /// listener, serve) `peer`'s family. Errors name the interface or
    /// address, so a log line says why nothing went out.
    fn apply(&self, sock: &socket2::Socket, v6: bool, listen: bool) -> std::io::Result<()> {
        self.apply_port(sock, v6, listen, 0)
    }

    /// [`apply`](Self::apply), binding `bind_address` with local `port`.
    fn apply_port(
        &self,
        sock: &socket2::Socket,
        v6: bool,
        listen: bool,
        port: u16,
    ) -> std::io::Result<()> {
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
            sock.bind(&SocketAddr::new(ip, port).into()).map_err(|e| {
                std::io::Error::new(e.kind(), format!("binding to address {ip}: {e}"))
            })?;
        }
        Ok(())
    }

    /// A TCP connection to `addr` from the bound interface and address,
    /// through the proxy when one is set (the connection to the proxy is
    /// the bound one).
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let Some(proxy) = &self.proxy else {
            return self.connect_direct(addr).await;
        };
        let io = |kind: std::io::ErrorKind, e: String| {
            std::io::Error::new(kind, format!("SOCKS5 proxy {}: {e}", proxy.redacted()))
        };
        let proxy_addr = tokio::net::lookup_host((proxy.host.as_str(), proxy.port))
            .await
            .map_err(|e| io(e.kind(), format!("resolving the proxy: {e}")))?
            .next()
            .ok_or_else(|| io(std::io::ErrorKind::NotFound, "no address".into()))?;
        let tcp = self
            .connect_direct(proxy_addr)
            .await
            .map_err(|e| io(e.kind(), e.to_string()))?;
        let socks = match &proxy.auth {
            Some((user, pass)) => {
                tokio_socks::tcp::Socks5Stream::connect_with_password_and_socket(
                    tcp, addr, user, pass,
                )
                .await
            }
            None => tokio_socks::tcp::Socks5Stream::connect_with_socket(tcp, addr).await,
        }
        .map_err(|e| {
            let kind = match &e {
                tokio_socks::Error::Io(e) => e.kind(),
                _ => std::io::ErrorKind::ConnectionRefused,
            };
            io(kind, format!("to {addr}: {e}"))
        })?;
        Ok(socks.into_inner())
    }

    /// A TCP connection to `addr` from the bound interface and address,
    /// never through the proxy.
    pub(crate) async fn connect_direct(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        if self.interface.is_none() && self.address.is_none() {
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
        self.udp_bound(remote, 0)
    }

    /// [`udp_for`](Self::udp_for) from local `port` (0: any), for callers
    /// that choose their source port (the DNS resolver randomises it).
    pub(crate) fn udp_bound(
        &self,
        remote: SocketAddr,
        port: u16,
    ) -> std::io::Result<tokio::net::UdpSocket> {
        use socket2::{Domain, Protocol, Socket, Type};
        let sock = Socket::new(
            Domain::for_address(remote),
            Type::DGRAM,
            Some(Protocol::UDP),
        )?;
        sock.set_nonblocking(true)?;
        self.apply_port(&sock, remote.is_ipv6(), false, port)?;
        if self.address.is_none() {
            let any: SocketAddr = if remote.is_ipv6() {
                (std::net::Ipv6Addr::UNSPECIFIED, port).into()
            } else {
                (std::net::Ipv4Addr::UNSPECIFIED, port).into()
            };
            sock.bind(&any.into())?;
        }
        tokio::net::UdpSocket::from_std(sock.into())
    }

    /// The HTTP client builder, bound the same way (reqwest's
    /// `local_address` and `interface`) and proxied through the SOCKS5
    /// proxy (names resolved by the proxy). Call it after `no_proxy`,
    /// which would clear the proxy.
    pub fn http(
        &self,
        builder: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, reqwest::Error> {
        let mut b = builder;
        if let Some(p) = &self.proxy {
            b = b.proxy(reqwest::Proxy::all(p.reqwest_url())?);
        }
        if let Some(ip) = self.address {
            b = b.local_address(ip);
        }
        if let Some(name) = &self.interface {
            b = b.interface(name);
        }
        Ok(b)
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
    tokio::net::TcpListener::from_std(bind_listener_std(addr, binding)?)
}

/// [`bind_listener`] without a runtime: a non-blocking listening socket that
/// can be bound before the session starts (so a magnet's metadata phase
/// announces the port the session will accept on) and handed to
/// `SessionHandle::listen_on`.
pub fn bind_listener_std(
    addr: SocketAddr,
    binding: &Binding,
) -> std::io::Result<std::net::TcpListener> {
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
    Ok(sock.into())
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
    tune(&stream, config);
    Ok(stream)
}

/// TCP_NODELAY and the configured socket buffers, on a dialled or an
/// accepted connection alike. Failing to tune a socket is not worth losing
/// the peer over.
fn tune(stream: &TcpStream, config: &ClientConfig) {
    let sock = socket2::SockRef::from(stream);
    let _ = sock.set_nodelay(true);
    if let Some(n) = config.socket_recv_buffer {
        let _ = sock.set_recv_buffer_size(n);
    }
    if let Some(n) = config.socket_send_buffer {
        let _ = sock.set_send_buffer_size(n);
    }
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

/// Everything a dial needs, for connections made outside a torrent (the
/// metadata phase of a magnet link), so they follow the same encryption
/// policy, binding and proxy as the torrent's own.
#[derive(Debug, Clone)]
pub struct Dialer {
    config: Arc<ClientConfig>,
    binding: Binding,
    counters: Arc<ConnCounters>,
}

impl Dialer {
    /// A dialer for `config`, counting into `counters`.
    pub fn new(
        config: Arc<ClientConfig>,
        counters: Arc<ConnCounters>,
    ) -> Result<Dialer, BindError> {
        let binding = Binding::from_config(&config)?;
        Ok(Dialer {
            config,
            binding,
            counters,
        })
    }

    /// [`dial`] with this dialer's config, binding and counters.
    pub async fn dial(
        &self,
        addr: SocketAddr,
        info_hash: [u8; 20],
        ours: &Handshake,
    ) -> Result<Dialled, DialError> {
        dial(
            addr,
            info_hash,
            ours,
            &self.config,
            &self.counters,
            &self.binding,
        )
        .await
    }
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
            tune(a.stream.get_ref(), config);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_parse_with_and_without_credentials() {
        let p = Proxy::parse("socks5://127.0.0.1:1080").unwrap();
        assert_eq!((p.host.as_str(), p.port, p.auth), ("127.0.0.1", 1080, None));
        let p = Proxy::parse("socks5h://al%40ice:p%3Ass@proxy.example:9050").unwrap();
        assert_eq!(p.host, "proxy.example");
        assert_eq!(p.auth, Some(("al@ice".into(), "p:ss".into())));
        assert_eq!(p.redacted(), "socks5://proxy.example:9050");
        assert!(!format!("{p:?}").contains("p:ss"));
        let p = Proxy::parse("socks5://[::1]:1080").unwrap();
        assert_eq!(p.host, "::1");
        assert_eq!(p.redacted(), "socks5://[::1]:1080");
        assert!(p.reqwest_url().starts_with("socks5h://[::1]:1080"));
    }

    #[test]
    fn bad_proxy_urls_are_refused_without_showing_the_password() {
        for bad in [
            "http://127.0.0.1:8080",
            "socks4://127.0.0.1:1080",
            "socks5://127.0.0.1",
            "socks5://user:secret@127.0.0.1",
            "socks5://127.0.0.1:1080/path",
            "socks5://user@127.0.0.1:1080",
            "not a url",
        ] {
            let e = Proxy::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("proxy: "), "{bad}: {e}");
            assert!(!e.contains("secret"), "{bad}: {e}");
        }
        let long = format!("socks5://{}:p@h:1", "u".repeat(256));
        assert!(Proxy::parse(&long).is_err());
    }

    #[test]
    fn a_proxy_refuses_udp() {
        let config = ClientConfig {
            proxy: "socks5://127.0.0.1:1080".into(),
            ..ClientConfig::default()
        };
        let b = Binding::from_config(&config).unwrap();
        assert!(b.is_set());
        assert!(b.udp_refused().unwrap().contains("socks5://127.0.0.1:1080"));
        assert!(Binding::default().udp_refused().is_none());
    }
}
