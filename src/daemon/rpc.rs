//! The daemon's HTTP server: `/transmission/rpc`, Prometheus `/metrics`
//! and, when a web UI directory is given, its static files at
//! `/transmission/web/`.
//!
//! A request passes, in order: the Host allow-list (421: a DNS-rebinding
//! page names our address under its own host name), Basic auth when set
//! (401; the password compared in constant time, each failure answered
//! only after a pause so guessing is slow; after [`MAX_FAILS`] failures
//! from one IP within [`FAIL_WINDOW`] that IP is answered 429, even with
//! the right password, until [`LOCKOUT`] has passed), the
//! `X-Transmission-Session-Id` handshake (409 with the id: a page on
//! another origin cannot read the header, so cannot forge a request), the
//! body limit (413), then the JSON parser and the method. Connections and
//! request heads are bounded by [`crate::stream::serve`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use sha1::{Digest, Sha1};

use super::methods::{self, Context};

/// Longest request body: a `torrent-add` of a 16 MiB torrent in base64
/// plus its JSON.
pub const MAX_BODY: usize = 22 << 20;

/// Pause before answering a failed login.
const AUTH_FAIL_DELAY: Duration = Duration::from_millis(500);

/// Failed logins from one IP that lock it out.
pub const MAX_FAILS: u32 = 10;
/// Failures further apart than this start the count again.
pub const FAIL_WINDOW: Duration = Duration::from_secs(60);
/// How long a locked-out IP is refused after its last failure.
pub const LOCKOUT: Duration = Duration::from_secs(300);
/// Source IPs tracked at once; when full the stalest is forgotten, so a
/// flood of addresses costs bounded memory.
const MAX_TRACKED: usize = 4096;

/// Failed logins per source IP: bounded, keyed on the address.
#[derive(Default)]
pub struct Strikes {
    // Per HTTP server, touched only under the lock for a few instructions
    // by that server's connection tasks; not shared with any actor.
    map: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Strikes {
    /// Whether `ip` is locked out now.
    fn locked(&self, ip: IpAddr, now: Instant) -> bool {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&ip)
            .is_some_and(|&(n, last)| n >= MAX_FAILS && now.duration_since(last) < LOCKOUT)
    }

    /// Counts a failure from `ip`.
    fn fail(&self, ip: IpAddr, now: Instant) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
            map.retain(|_, &mut (_, last)| now.duration_since(last) < LOCKOUT);
            if map.len() >= MAX_TRACKED
                && let Some(&stalest) = map
                    .iter()
                    .min_by_key(|(_, (_, last))| *last)
                    .map(|(k, _)| k)
            {
                map.remove(&stalest);
            }
        }
        let e = map.entry(ip).or_insert((0, now));
        let since = now.duration_since(e.1);
        if (e.0 < MAX_FAILS && since > FAIL_WINDOW) || since >= LOCKOUT {
            e.0 = 0;
        }
        e.0 = e.0.saturating_add(1);
        e.1 = now;
    }

    /// A good login clears the count.
    fn clear(&self, ip: IpAddr) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&ip);
    }
}

/// Longest web UI file served.
const MAX_WEB_FILE: u64 = 8 << 20;

/// The header of the session-id handshake.
pub const SESSION_HEADER: &str = "x-transmission-session-id";

/// How the server guards itself.
pub struct Guard {
    /// SHA-1 of `user:password`, when auth is on.
    pub auth: Option<[u8; 20]>,
    /// Host names accepted besides IP literals and localhost.
    pub hosts: Vec<String>,
    /// The web UI's directory.
    pub web: Option<PathBuf>,
    /// Failed logins per source IP.
    pub strikes: Strikes,
}

struct Shared {
    ctx: Context,
    guard: Guard,
}

/// The routes.
pub fn router(ctx: Context, guard: Guard) -> Router {
    let shared = Arc::new(Shared { ctx, guard });
    Router::new()
        .route("/transmission/rpc", any(rpc))
        .route("/transmission/rpc/", any(rpc))
        .route("/metrics", any(metrics))
        .route("/", any(web))
        .route("/transmission/web", any(web))
        .route("/transmission/web/", any(web))
        .route("/transmission/web/{*path}", any(web))
        .with_state(shared)
}

/// SHA-1 of `user:password`: what auth compares against.
pub fn auth_digest(user_password: &str) -> [u8; 20] {
    Sha1::digest(user_password.as_bytes()).into()
}

fn plain(code: StatusCode, text: &str) -> Response {
    (code, text.to_owned()).into_response()
}

/// IP literals (a DNS-rebinding page cannot make one mean another host),
/// localhost, and the names configured.
fn host_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        // HTTP/1.0 without Host: nothing to rebind.
        return true;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, _)) => ip,
            None => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let name = name.to_ascii_lowercase();
    name.parse::<std::net::IpAddr>().is_ok()
        || name == "localhost"
        || name == "localhost."
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(&name))
}

/// Whether the Basic credentials match, compared in constant time over
/// digests of equal length.
fn auth_ok(headers: &HeaderMap, want: &[u8; 20]) -> bool {
    use base64::Engine;
    let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
    else {
        return false;
    };
    let Some(b64) = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))
    else {
        return false;
    };
    let Ok(given) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
        return false;
    };
    let got: [u8; 20] = Sha1::digest(&given).into();
    got.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn peer_ip(peer: Option<Extension<ConnectInfo<SocketAddr>>>) -> Option<IpAddr> {
    peer.map(|Extension(ConnectInfo(a))| a.ip().to_canonical())
}

/// Host and auth checks shared by the RPC and the web UI.
async fn admit(g: &Guard, peer: Option<IpAddr>, headers: &HeaderMap) -> Result<(), Response> {
    if !host_allowed(headers, &g.hosts) {
        return Err(plain(
            StatusCode::MISDIRECTED_REQUEST,
            "<h1>421: Misdirected Request</h1><p>Unknown Host header; add it with --rpc-host.</p>",
        ));
    }
    let Some(want) = &g.auth else {
        return Ok(());
    };
    let now = Instant::now();
    if let Some(ip) = peer
        && g.strikes.locked(ip, now)
    {
        tracing::warn!(%ip, "RPC login refused: too many failed attempts");
        tokio::time::sleep(AUTH_FAIL_DELAY).await;
        let mut r = plain(
            StatusCode::TOO_MANY_REQUESTS,
            "<h1>429: Too Many Requests</h1><p>Too many failed logins from this address.</p>",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(LOCKOUT.as_secs()));
        return Err(r);
    }
    if auth_ok(headers, want) {
        if let Some(ip) = peer {
            g.strikes.clear(ip);
        }
    } else {
        if let Some(ip) = peer {
            g.strikes.fail(ip, now);
        }
        tokio::time::sleep(AUTH_FAIL_DELAY).await;
        let mut r = plain(StatusCode::UNAUTHORIZED, "<h1>401: Unauthorized</h1>");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"Transmission\""),
        );
        return Err(r);
    }
    Ok(())
}

async fn rpc(
    State(sh): State<Arc<Shared>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = admit(&sh.guard, peer_ip(peer), &headers).await {
        return r;
    }
    let id = sh.ctx.session_id.as_str();
    if headers.get(SESSION_HEADER).and_then(|h| h.to_str().ok()) != Some(id) {
        let mut r = plain(
            StatusCode::CONFLICT,
            &format!(
                "<h1>409: Conflict</h1><p>Your request had an invalid session-id header.</p><p><code>X-Transmission-Session-Id: {id}</code></p>"
            ),
        );
        if let Ok(v) = HeaderValue::from_str(id) {
            r.headers_mut().insert(SESSION_HEADER, v);
        }
        return r;
    }
    if method != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "POST a JSON request here\n");
    }
    let too_long = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > MAX_BODY as u64);
    if too_long {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
    }
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
    };
    let answer = match protocol::trpc::parse_request(&bytes) {
        Ok(req) => methods::answer(&sh.ctx, req).await,
        Err(e) => methods::refusal(&e).to_string().into_bytes(),
    };
    let mut r = (StatusCode::OK, answer).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    r
}

/// Prometheus metrics: the same host and auth checks, no session id (a
/// scraper cannot do the handshake, and a GET changes nothing).
async fn metrics(
    State(sh): State<Arc<Shared>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&sh.guard, peer_ip(peer), &headers).await {
        return r;
    }
    match sh.ctx.daemon.metrics().await {
        Ok(text) => {
            let mut r = (StatusCode::OK, text).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        Err(e) => plain(StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}

/// The web UI's files; `/` and `/transmission/web` lead to its index.
async fn web(
    State(sh): State<Arc<Shared>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    if let Err(r) = admit(&sh.guard, peer_ip(peer), &headers).await {
        return r;
    }
    let Some(root) = &sh.guard.web else {
        return plain(
            StatusCode::NOT_FOUND,
            "no web UI (start with --web-ui DIR)\n",
        );
    };
    let path = uri.path();
    let Some(rest) = path.strip_prefix("/transmission/web/") else {
        let mut r = StatusCode::MOVED_PERMANENTLY.into_response();
        r.headers_mut().insert(
            header::LOCATION,
            HeaderValue::from_static("/transmission/web/"),
        );
        return r;
    };
    let rest = if rest.is_empty() { "index.html" } else { rest };
    // Plain names only: no `..`, no empty or dot components, no
    // backslashes or NULs; percent-encoded paths are not served.
    let ok = rest
        .split('/')
        .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains(['\\', '\0', '%']));
    if !ok {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    let file = root.join(rest);
    match super::state::read_bounded(&file, MAX_WEB_FILE) {
        Ok(bytes) => {
            let mime = mime_guess::from_path(&file).first_or_octet_stream();
            let mut r = (StatusCode::OK, bytes).into_response();
            if let Ok(v) = HeaderValue::from_str(mime.as_ref()) {
                r.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            r
        }
        Err(_) => plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(host: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        m
    }

    #[test]
    fn host_allow_list() {
        let allowed = vec!["seedbox.lan".to_owned()];
        for ok in [
            "127.0.0.1:9091",
            "localhost:9091",
            "[::1]:9091",
            "SeedBox.lan",
            "10.1.2.3",
        ] {
            assert!(host_allowed(&h(ok), &allowed), "{ok}");
        }
        for bad in ["evil.example:9091", "[::1", "localhost.evil.example"] {
            assert!(!host_allowed(&h(bad), &allowed), "{bad}");
        }
    }

    #[test]
    fn failed_logins_lock_out_one_ip_for_a_while() {
        let s = Strikes::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..MAX_FAILS - 1 {
            s.fail(a, t0);
        }
        assert!(!s.locked(a, t0));
        s.fail(a, t0);
        assert!(s.locked(a, t0));
        assert!(!s.locked(b, t0), "another address is not affected");
        assert!(s.locked(a, t0 + LOCKOUT - Duration::from_secs(1)));
        assert!(!s.locked(a, t0 + LOCKOUT));
        // After the lockout one more failure does not lock again at once.
        s.fail(a, t0 + LOCKOUT);
        assert!(!s.locked(a, t0 + LOCKOUT));
        // Failures spread wider than the window never add up.
        for i in 0..2 * MAX_FAILS {
            s.fail(b, t0 + (FAIL_WINDOW + Duration::from_secs(1)) * i);
        }
        assert!(!s.locked(
            b,
            t0 + (FAIL_WINDOW + Duration::from_secs(1)) * 2 * MAX_FAILS
        ));
        // A flood of addresses stays bounded.
        for i in 0..(MAX_TRACKED as u32 + 100) {
            s.fail(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(s.map.lock().unwrap().len() <= MAX_TRACKED);
    }

    #[test]
    fn basic_auth() {
        use base64::Engine;
        let want = auth_digest("u:p");
        let mut m = HeaderMap::new();
        let good = base64::engine::general_purpose::STANDARD.encode("u:p");
        m.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {good}")).unwrap(),
        );
        assert!(auth_ok(&m, &want));
        let bad = base64::engine::general_purpose::STANDARD.encode("u:q");
        m.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {bad}")).unwrap(),
        );
        assert!(!auth_ok(&m, &want));
        m.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!"));
        assert!(!auth_ok(&m, &want));
    }
}
