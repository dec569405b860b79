//! One announce to one tracker URL, as a task the tracker actor spawns:
//! the dispatch on the URL's scheme to [`super::http`] or [`super::udp`],
//! with what both share ([`Transport`]). Nothing here touches actor state:
//! the task gets copies of what it needs and returns a value. The
//! parameters, outcome and errors every transport speaks are in
//! [`super::request`], which imports neither transport.

use super::dns::DnsHandle;
use super::request::{
    AnnounceError, AnnounceParams, Announced, TaskExtras, TransportConfig, UdpConnection,
};

/// Everything an announce task needs, owned so the task is `'static`.
#[derive(Clone)]
pub struct Transport {
    /// The shared HTTP client (connection reuse, redirects, timeouts).
    pub http: reqwest::Client,
    /// The shared DNS cache.
    pub dns: DnsHandle,
    /// Limits.
    pub config: TransportConfig,
    /// Where UDP announces are sent from.
    pub binding: crate::net::Binding,
}

/// Announces to `url` once (with UDP retransmissions).
pub async fn announce(
    transport: &Transport,
    url: &str,
    params: &AnnounceParams,
    udp_connection: Option<UdpConnection>,
) -> (Result<Announced, AnnounceError>, TaskExtras) {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("http" | "https") => (
            super::http::announce(&transport.http, url, params, transport.config.max_body_size)
                .await,
            TaskExtras::default(),
        ),
        Some("udp") => {
            super::udp::announce(
                &transport.dns,
                url,
                params,
                udp_connection,
                &transport.config,
                &transport.binding,
            )
            .await
        }
        _ => (
            Err(AnnounceError::BadUrl(url.to_owned())),
            TaskExtras::default(),
        ),
    }
}
