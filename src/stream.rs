//! The HTTP side of streaming: `GET`/`HEAD /stream/<info-hash>/<file-index>`
//! answered from a [`FileStream`], with `Range` requests (RFC 9110), so a
//! player can start in the middle and seek while the torrent downloads.
//!
//! [`router`] is an axum `Router` over any [`Catalog`] (the one torrent of
//! `download --stream`, or the daemon's session), so the daemon mounts the
//! same routes in its own server. [`serve`] is the connection loop with the
//! bounds a server reachable by anyone needs: connections at once, request
//! head size and time. Request bodies are never read (only GET and HEAD
//! are routed). Each response body is pulled chunk by chunk from the
//! stream's reads, so one response holds at most one chunk
//! (`stream.chunk_size`) beyond what the socket buffers.

use std::sync::Arc;

use actors::stream::{FileStream, StreamConfig, StreamError};
use actors::torrent::TorrentHandle;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use protocol::http_range::{ByteRange, resolve};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Finds a torrent by its info-hash (40 lowercase hex digits).
pub trait Catalog: Clone + Send + Sync + 'static {
    /// The torrent, if this server serves it.
    fn torrent(&self, info_hash: &str) -> Option<TorrentHandle>;
}

/// One torrent: what `download --stream` serves.
#[derive(Clone)]
pub struct OneTorrent {
    /// Its info-hash, lowercase hex.
    pub info_hash: String,
    /// Its handle.
    pub handle: TorrentHandle,
}

impl Catalog for OneTorrent {
    fn torrent(&self, info_hash: &str) -> Option<TorrentHandle> {
        (info_hash == self.info_hash).then(|| self.handle.clone())
    }
}

/// The stream URL path of file `index` of a torrent.
pub fn path_of(info_hash: &str, index: usize) -> String {
    format!("/stream/{info_hash}/{index}")
}

/// The routes: `/stream/{info_hash}/{file_index}`, GET and HEAD.
pub fn router<C: Catalog>(catalog: C) -> Router {
    Router::new()
        .route("/stream/{hash}/{index}", get(answer::<C>))
        .with_state(catalog)
}

fn status(code: StatusCode, text: &str) -> Response {
    (code, text.to_string()).into_response()
}

async fn answer<C: Catalog>(
    State(catalog): State<C>,
    Path((hash, index)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let not_found = || status(StatusCode::NOT_FOUND, "no such file\n");
    // Only the canonical spellings name a file: 40 lowercase hex digits,
    // a decimal index without sign or leading zeros.
    let hash_ok = hash.len() == 40 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let index_ok = !index.is_empty()
        && index.len() <= 10
        && index.bytes().all(|b| b.is_ascii_digit())
        && (index == "0" || !index.starts_with('0'));
    if !hash_ok || !index_ok {
        return not_found();
    }
    let Ok(index) = index.parse::<usize>() else {
        return not_found();
    };
    let Some(torrent) = catalog.torrent(&hash) else {
        return not_found();
    };
    let stream = match FileStream::open(&torrent, index).await {
        Ok(s) => s,
        Err(StreamError::NoSuchFile(_)) => return not_found(),
        Err(e @ StreamError::TooManyReaders(_)) => {
            let mut r = status(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n"));
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
        Err(e) => return status(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n")),
    };
    let len = stream.len();
    let mime = mime_guess::from_path(stream.name()).first_or_octet_stream();
    let range = resolve(headers.get(header::RANGE).map(HeaderValue::as_bytes), len);
    let mut builder = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, mime.as_ref());
    let (code, start, end) = match range {
        ByteRange::Whole => (StatusCode::OK, 0, len),
        ByteRange::Partial { start, end } => {
            builder = builder.header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{len}", end - 1),
            );
            (StatusCode::PARTIAL_CONTENT, start, end)
        }
        ByteRange::Unsatisfiable => {
            return builder
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .body(Body::empty())
                .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR, ""));
        }
    };
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from_stream(futures_util::stream::unfold(
            (stream, start, end),
            |(mut stream, pos, end)| async move {
                if pos >= end {
                    return None;
                }
                let want = (end - pos).min(stream.chunk_size() as u64) as usize;
                match stream.read_at(pos, want).await {
                    Ok(b) if b.is_empty() => None,
                    Ok(b) => {
                        let next = pos + b.len() as u64;
                        Some((Ok::<Bytes, StreamError>(b), (stream, next, end)))
                    }
                    // The connection is cut: the player sees a short body.
                    Err(e) => {
                        tracing::info!(error = %e, "stream read failed");
                        Some((Err(e), (stream, end, end)))
                    }
                }
            },
        ))
    };
    builder
        .status(code)
        .header(header::CONTENT_LENGTH, end - start)
        .body(body)
        .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR, ""))
}

/// Serves `router` on `listener` until the task is dropped: at most
/// `http_max_connections` connections at once (more wait in the accept
/// queue), request heads of at most `http_max_header_bytes` (hyper's
/// floor is 8 KiB), sent within `http_header_timeout`.
pub async fn serve(listener: TcpListener, router: Router, cfg: StreamConfig) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let slots = Arc::new(Semaphore::new(cfg.http_max_connections.max(1)));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((socket, peer)) = listener.accept().await else {
            continue;
        };
        // The peer's address, for handlers that key on it (failed logins).
        let service = TowerToHyperService::new(
            router
                .clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(peer))),
        );
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(cfg.http_header_timeout)
                .max_buf_size(cfg.http_max_header_bytes.max(8192))
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
}
