//! HTTP(S) announces (BEP 3, compact peers BEP 23, `peers6`).
//!
//! This owns building the shared reqwest client (rustls, connection reuse,
//! timeouts, a redirect limit, our DNS cache as its resolver) and one GET
//! whose body is read with a size cap before it is parsed by
//! `protocol::tracker`. Tracker bodies are untrusted: the cap is checked
//! against `Content-Length` first and again while streaming, so a huge or
//! lying body never grows memory past it.

use std::sync::Arc;
use std::time::Duration;

use protocol::tracker::{AnnounceRequest, TrackerError, announce_url, parse_announce_response};

use super::dns::DnsHandle;
use super::request::{AnnounceError, AnnounceParams, Announced};

/// Builds the one HTTP client every HTTP announce shares.
pub fn client(
    binding: &crate::net::Binding,
    dns: DnsHandle,
    timeout: Duration,
    connect_timeout: Duration,
    max_redirects: usize,
    user_agent: &str,
) -> Result<reqwest::Client, reqwest::Error> {
    // Trackers are reached directly or through our own proxy: a proxy from
    // the environment would bypass our resolver and surprise the user.
    // (`no_proxy` first: it would clear the proxy `http` sets.)
    binding
        .http(reqwest::Client::builder().no_proxy())?
        .dns_resolver(Arc::new(dns))
        .timeout(timeout)
        .connect_timeout(connect_timeout)
        // `limited` also catches loops: a loop never ends, so it hits the
        // limit and fails like any too-long chain.
        .redirect(reqwest::redirect::Policy::limited(max_redirects))
        .user_agent(user_agent)
        .build()
}

fn http_error(e: &reqwest::Error) -> AnnounceError {
    // The source chain carries the useful part (connection refused, too
    // many redirects...); Display of the top error alone often does not.
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    if e.is_timeout() {
        return AnnounceError::Timeout;
    }
    AnnounceError::Http(msg)
}

/// One HTTP announce.
pub async fn announce(
    client: &reqwest::Client,
    base: &str,
    params: &AnnounceParams,
    max_body: usize,
) -> Result<Announced, AnnounceError> {
    let req = AnnounceRequest {
        info_hash: params.info_hash,
        peer_id: params.peer_id,
        port: params.port,
        uploaded: params.uploaded,
        downloaded: params.downloaded,
        left: params.left,
        event: params.event,
        numwant: Some(params.numwant),
        key: Some(params.key),
        trackerid: params.trackerid.clone(),
        compact: true,
    };
    let url = announce_url(base, &req);
    let mut resp = match client.get(&url).send().await {
        Ok(r) => r,
        // Trackers such as opentracker answer HTTP/1.1 without
        // `Connection: close` and then close: a request sent on that pooled
        // connection dies with a reset. Sending again (on a fresh
        // connection) is safe, an announce being idempotent; a failed
        // connect or a timeout is not retried.
        Err(e) if !e.is_connect() && !e.is_timeout() && !e.is_builder() && !e.is_redirect() => {
            tracing::debug!(error = %e, "announce failed on a pooled connection; sending again");
            client.get(&url).send().await.map_err(|e| http_error(&e))?
        }
        Err(e) => return Err(http_error(&e)),
    };
    let status = resp.status();
    if resp.content_length().is_some_and(|n| n > max_body as u64) {
        return Err(AnnounceError::BodyTooLarge(max_body));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| http_error(&e))? {
        if body.len() + chunk.len() > max_body {
            return Err(AnnounceError::BodyTooLarge(max_body));
        }
        body.extend_from_slice(&chunk);
    }
    match parse_announce_response(&body) {
        Err(TrackerError::Failure(reason)) => Err(AnnounceError::Failure(reason)),
        _ if !status.is_success() => Err(AnnounceError::Status(status.as_u16())),
        Err(e) => Err(AnnounceError::Response(e)),
        Ok(r) => Ok(Announced {
            interval: r.interval,
            min_interval: r.min_interval,
            peers: r.peers,
            tracker_id: r.tracker_id,
            warning: r.warning,
            seeders: r.complete,
            leechers: r.incomplete,
        }),
    }
}
