//! UDP announces (BEP 15) over `tokio::net::UdpSocket`.
//!
//! This owns one exchange with a UDP tracker: resolve its host through the
//! shared DNS cache, connect (or reuse a connection id younger than its
//! lifetime), announce, each request retransmitted on the spec's
//! `base * 2^n` schedule up to a configured count. The datagram layouts are
//! `protocol::udp_tracker`'s.
//!
//! Datagrams are untrusted. One from another address than the tracker's,
//! or shorter than a header, or carrying another transaction id, is ignored
//! and counted (it may be a stale answer to an earlier retransmission, or
//! spoofed). One from the tracker with our transaction id but the wrong
//! action or size fails the announce.
//!
//! Each announce binds its own ephemeral socket, so concurrent announces
//! never read each other's answers and need no demultiplexer.

use std::net::SocketAddr;

use protocol::udp_tracker::{
    AnnounceRequest, ConnectRequest, UdpResponse, parse_response, peers_are_ipv6,
};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::dns::DnsHandle;
use super::request::{
    AnnounceError, AnnounceParams, Announced, TaskExtras, TransportConfig, UdpConnection,
};

/// Largest UDP payload: a buffer this size never truncates a datagram.
const MAX_DATAGRAM: usize = 65536;

/// Host and port of a `udp://host:port/...` URL.
fn host_port(url: &str) -> Result<(String, u16), AnnounceError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| AnnounceError::BadUrl(format!("{url}: {e}")))?;
    let port = parsed
        .port()
        .ok_or_else(|| AnnounceError::BadUrl(format!("{url}: no port")))?;
    // An IPv6 literal keeps its brackets; the DNS handle strips them.
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| AnnounceError::BadUrl(format!("{url}: no host")))?
        .to_owned();
    Ok((host, port))
}

/// One UDP announce. Returns the connection id to cache (if the exchange
/// got one) with the outcome.
pub async fn announce(
    dns: &DnsHandle,
    url: &str,
    params: &AnnounceParams,
    cached: Option<UdpConnection>,
    config: &TransportConfig,
    binding: &crate::net::Binding,
) -> (Result<Announced, AnnounceError>, TaskExtras) {
    let mut extras = TaskExtras::default();
    let result = run(dns, url, params, cached, config, binding, &mut extras).await;
    (result, extras)
}

async fn run(
    dns: &DnsHandle,
    url: &str,
    params: &AnnounceParams,
    cached: Option<UdpConnection>,
    config: &TransportConfig,
    binding: &crate::net::Binding,
    extras: &mut TaskExtras,
) -> Result<Announced, AnnounceError> {
    // Before the name lookup: with a proxy, not even DNS may leave.
    if let Some(why) = binding.udp_refused() {
        return Err(AnnounceError::Refused(why));
    }
    let (host, port) = host_port(url)?;
    let addrs = dns.lookup(&host).await?;
    // IPv4 sorts first; one address is enough for UDP (no happy eyeballs).
    let ip = addrs[0];
    let tracker = SocketAddr::new(ip, port);
    // Bound to `bind_interface` / `bind_address` when set (else the
    // family's wildcard).
    let socket = binding
        .udp_for(tracker)
        .map_err(|e| AnnounceError::Io(e.to_string()))?;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let ipv6 = peers_are_ipv6(&tracker);

    let connection_id = match cached {
        Some((id, at)) if at.elapsed() < config.udp_connection_lifetime => id,
        _ => {
            let tid = rand::random();
            let req = ConnectRequest {
                transaction_id: tid,
            }
            .encode();
            match exchange(&socket, tracker, &req, tid, ipv6, config, &mut buf, extras).await? {
                UdpResponse::Connect(c) => {
                    extras.udp_connection = Some((c.connection_id, Instant::now()));
                    c.connection_id
                }
                other => return Err(unexpected("connect", &other)),
            }
        }
    };

    let tid = rand::random();
    let req = AnnounceRequest {
        connection_id,
        transaction_id: tid,
        info_hash: params.info_hash,
        peer_id: params.peer_id,
        downloaded: params.downloaded,
        left: params.left,
        uploaded: params.uploaded,
        event: params.event,
        ip: None,
        key: params.key,
        num_want: Some(params.numwant),
        port: params.port,
    }
    .encode();
    match exchange(&socket, tracker, &req, tid, ipv6, config, &mut buf, extras).await? {
        UdpResponse::Announce(a) => {
            if extras.udp_connection.is_none() {
                extras.udp_connection = cached;
            }
            Ok(Announced {
                interval: a.interval,
                min_interval: None,
                peers: a.peers,
                tracker_id: None,
                warning: None,
                seeders: Some(a.seeders),
                leechers: Some(a.leechers),
            })
        }
        other => Err(unexpected("announce", &other)),
    }
}

fn unexpected(expected: &str, got: &UdpResponse) -> AnnounceError {
    match got {
        UdpResponse::Error(e) => AnnounceError::Failure(e.message.clone()),
        UdpResponse::Connect(_) => AnnounceError::Udp(format!("expected {expected}, got connect")),
        UdpResponse::Announce(_) => {
            AnnounceError::Udp(format!("expected {expected}, got announce"))
        }
        UdpResponse::Scrape(_) => AnnounceError::Udp(format!("expected {expected}, got scrape")),
    }
}

/// Sends `req` and waits for the datagram from `tracker` echoing `tid`,
/// retransmitting after `base * 2^n`.
#[allow(clippy::too_many_arguments)]
async fn exchange(
    socket: &UdpSocket,
    tracker: SocketAddr,
    req: &[u8],
    tid: u32,
    ipv6: bool,
    config: &TransportConfig,
    buf: &mut [u8],
    extras: &mut TaskExtras,
) -> Result<UdpResponse, AnnounceError> {
    let attempts = config.udp_max_retransmits.saturating_add(1);
    for n in 0..attempts {
        socket
            .send_to(req, tracker)
            .await
            .map_err(|e| AnnounceError::Io(e.to_string()))?;
        let wait = config.udp_base_timeout.saturating_mul(1 << n.min(16));
        let deadline = Instant::now() + wait;
        loop {
            let received = tokio::time::timeout_at(deadline, socket.recv_from(buf)).await;
            let (len, from) = match received {
                Err(_) => break, // retransmit
                Ok(Err(e)) => {
                    // ICMP port unreachable shows up here on Linux: the
                    // tracker is not listening, as good as no answer.
                    tracing::debug!(%tracker, error = %e, "UDP receive error");
                    continue_after_error(deadline).await;
                    break;
                }
                Ok(Ok(r)) => r,
            };
            let datagram = &buf[..len];
            if from != tracker || len < 8 || datagram[4..8] != tid.to_be_bytes() {
                extras.ignored_datagrams += 1;
                tracing::debug!(%tracker, %from, len, "ignoring UDP datagram");
                continue;
            }
            return parse_response(datagram, ipv6).map_err(|e| AnnounceError::Udp(e.to_string()));
        }
    }
    Err(AnnounceError::UdpTimeout(attempts))
}

/// After a receive error (e.g. ICMP unreachable), waits out the rest of
/// this attempt's timeout rather than retransmitting in a tight loop.
async fn continue_after_error(deadline: Instant) {
    tokio::time::sleep_until(deadline).await;
}
