//! Shared pieces of the tracker tests: scripted HTTP and UDP trackers on
//! 127.0.0.1, a registration builder, a stats poller, and an opentracker
//! process guard (`opentracker.rs`, shared with the whole-client tests).
//!
//! The scripted trackers answer each request by calling the test's script
//! with the request and how many requests that path (HTTP) or that action
//! (UDP) saw before; they log every request so tests can assert what the
//! client sent. Their tasks are aborted when the value is dropped.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actors::tracker::{
    AnnounceProgress, TorrentRegistration, TrackerConfig, TrackerHandle, TrackerStats,
    TrackerUrlStats,
};
use protocol::metainfo::InfoHash;
use protocol::udp_tracker::UdpRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Short timeouts so failure paths run in well under a second each.
pub fn fast_config() -> TrackerConfig {
    let mut c = TrackerConfig {
        http_timeout: Duration::from_secs(5),
        http_connect_timeout: Duration::from_secs(2),
        max_body_size: 64 * 1024,
        udp_base_timeout: Duration::from_millis(200),
        udp_max_retransmits: 2,
        min_retry_delay: Duration::from_millis(20),
        min_announce_interval: Duration::ZERO,
        stop_timeout: Duration::from_secs(1),
        ..TrackerConfig::default()
    };
    c.breaker.backoff_base = Duration::from_millis(10);
    c.breaker.backoff_cap = Duration::from_millis(50);
    c.breaker.cool_down = Duration::from_secs(600);
    c
}

/// A registration plus the ends the test keeps.
pub struct Registered {
    pub progress: watch::Sender<AnnounceProgress>,
    pub peers: mpsc::Receiver<Vec<SocketAddr>>,
}

pub fn info_hash(n: u8) -> InfoHash {
    InfoHash([n; 20])
}

pub fn registration(
    info_hash: InfoHash,
    tiers: Vec<Vec<String>>,
    port: u16,
) -> (TorrentRegistration, Registered) {
    let (progress_tx, progress) = watch::channel(AnnounceProgress {
        uploaded: 0,
        downloaded: 0,
        left: 1000,
    });
    let (peers, peers_rx) = mpsc::channel(16);
    let mut peer_id = *b"-AT0001-000000000000";
    peer_id[19] = (port % 256) as u8;
    (
        TorrentRegistration {
            info_hash,
            tiers,
            peer_id,
            port,
            progress,
            peers,
        },
        Registered {
            progress: progress_tx,
            peers: peers_rx,
        },
    )
}

/// Polls `stats()` until `pred` holds; panics with the last snapshot after
/// `limit`.
pub async fn wait_stats(
    handle: &TrackerHandle,
    limit: Duration,
    what: &str,
    pred: impl Fn(&TrackerStats) -> bool,
) -> TrackerStats {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let s = handle.stats().await.expect("tracker actor alive");
        if pred(&s) {
            return s;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting for {what}; stats: {s:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The stats of `url`, or zeros if it was never used.
pub fn url_stats(s: &TrackerStats, url: &str) -> TrackerUrlStats {
    s.trackers.get(url).cloned().unwrap_or_default()
}

/// Waits for the next batch of peers.
pub async fn next_peers(r: &mut Registered, limit: Duration) -> Vec<SocketAddr> {
    tokio::time::timeout(limit, r.peers.recv())
        .await
        .expect("peers within the limit")
        .expect("peers channel open")
}

// ---------------------------------------------------------------- bencode

/// A compact announce response; keys in bencode's sorted order.
pub fn announce_body(interval: u32, min_interval: Option<u32>, peers: &[SocketAddr]) -> Vec<u8> {
    let mut compact = Vec::new();
    for p in peers {
        protocol::tracker::encode_compact_peer(p, &mut compact);
    }
    let mut out = format!("d8:intervali{interval}e").into_bytes();
    if let Some(m) = min_interval {
        out.extend_from_slice(format!("12:min intervali{m}e").as_bytes());
    }
    out.extend_from_slice(format!("5:peers{}:", compact.len()).as_bytes());
    out.extend_from_slice(&compact);
    out.push(b'e');
    out
}

pub fn failure_body(reason: &str) -> Vec<u8> {
    format!("d14:failure reason{}:{reason}e", reason.len()).into_bytes()
}

pub fn peer(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), port))
}

// ------------------------------------------------------------ fake HTTP

/// One request the scripted HTTP tracker received.
#[derive(Clone, Debug)]
pub struct HttpRequest {
    pub path: String,
    pub params: HashMap<String, Vec<u8>>,
    pub at: Instant,
}

impl HttpRequest {
    pub fn param(&self, key: &str) -> Option<String> {
        self.params
            .get(key)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
    pub fn event(&self) -> Option<String> {
        self.param("event")
    }
}

/// How the scripted HTTP tracker answers.
pub enum HttpReply {
    /// 200 with this body.
    Body(Vec<u8>),
    /// This status with this body.
    Status(u16, Vec<u8>),
    /// 302 to this location.
    Redirect(String),
    /// 200 announcing `Content-Length: n`, then streaming zeros.
    HugeWithLength(u64),
    /// 200 chunked, streaming zeros until the client hangs up (bounded).
    HugeChunked,
    /// Never answer; keep the connection open.
    Hang,
    /// 200 with this body on a connection left open (HTTP/1.1 keep-alive,
    /// as opentracker answers), then reset that connection when the next
    /// request arrives on it; the reset is logged as a request to
    /// `(reset)`.
    KeepAliveThenReset(Vec<u8>),
}

type HttpScript = dyn Fn(&HttpRequest, usize) -> HttpReply + Send + Sync;

pub struct FakeHttp {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<HttpRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

impl FakeHttp {
    pub async fn start(
        script: impl Fn(&HttpRequest, usize) -> HttpReply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<HttpScript> = Arc::new(script);
        let task_log = log.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                conns.spawn(serve_http(stream, script.clone(), task_log.clone()));
                while conns.try_join_next().is_some() {}
            }
        });
        FakeHttp { addr, log, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<HttpRequest> {
        self.log.lock().unwrap().clone()
    }

    pub fn requests_to(&self, path: &str) -> Vec<HttpRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
}

async fn serve_http(
    mut stream: TcpStream,
    script: Arc<HttpScript>,
    log: Arc<Mutex<Vec<HttpRequest>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > 16 * 1024 {
            return;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let params = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect();
    let req = HttpRequest {
        path: path.to_owned(),
        params,
        at: Instant::now(),
    };
    let n = {
        let mut log = log.lock().unwrap();
        let n = log.iter().filter(|r| r.path == req.path).count();
        log.push(req.clone());
        n
    };
    let reply = script(&req, n);
    let head = |status: u16, extra: &str| {
        format!("HTTP/1.1 {status} X\r\nConnection: close\r\n{extra}\r\n").into_bytes()
    };
    let _ = match reply {
        HttpReply::Body(body) => {
            write_all(
                &mut stream,
                head(200, &format!("Content-Length: {}\r\n", body.len())),
                &body,
            )
            .await
        }
        HttpReply::Status(code, body) => {
            write_all(
                &mut stream,
                head(code, &format!("Content-Length: {}\r\n", body.len())),
                &body,
            )
            .await
        }
        HttpReply::Redirect(to) => {
            write_all(
                &mut stream,
                head(302, &format!("Location: {to}\r\nContent-Length: 0\r\n")),
                &[],
            )
            .await
        }
        HttpReply::HugeWithLength(n) => {
            let _ = stream
                .write_all(&head(200, &format!("Content-Length: {n}\r\n")))
                .await;
            stream_zeros(&mut stream, false).await
        }
        HttpReply::HugeChunked => {
            let _ = stream
                .write_all(&head(200, "Transfer-Encoding: chunked\r\n"))
                .await;
            stream_zeros(&mut stream, true).await
        }
        HttpReply::Hang => {
            std::future::pending::<()>().await;
            Ok(())
        }
        HttpReply::KeepAliveThenReset(body) => {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            if write_all(&mut stream, head.into_bytes(), &body)
                .await
                .is_ok()
            {
                let mut next = [0u8; 4096];
                if matches!(stream.read(&mut next).await, Ok(n) if n > 0) {
                    log.lock().unwrap().push(HttpRequest {
                        path: "(reset)".into(),
                        params: HashMap::new(),
                        at: Instant::now(),
                    });
                    // Linger 0: closing sends RST instead of FIN.
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                }
            }
            Ok(())
        }
    };
}

async fn write_all(stream: &mut TcpStream, head: Vec<u8>, body: &[u8]) -> std::io::Result<()> {
    stream.write_all(&head).await?;
    stream.write_all(body).await?;
    stream.flush().await
}

/// Streams up to 64 MiB of zeros, stopping when the client hangs up.
async fn stream_zeros(stream: &mut TcpStream, chunked: bool) -> std::io::Result<()> {
    let block = vec![b'0'; 16 * 1024];
    for _ in 0..4096 {
        if chunked {
            stream
                .write_all(format!("{:x}\r\n", block.len()).as_bytes())
                .await?;
            stream.write_all(&block).await?;
            stream.write_all(b"\r\n").await?;
        } else {
            stream.write_all(&block).await?;
        }
    }
    Ok(())
}

// ------------------------------------------------------------- fake UDP

/// One datagram the scripted UDP tracker sends.
pub enum UdpReply {
    /// From the tracker's own socket.
    Main(Vec<u8>),
    /// From another socket (a different source port).
    Other(Vec<u8>),
}

type UdpScript = dyn Fn(&UdpRequest, usize) -> Vec<UdpReply> + Send + Sync;

pub struct FakeUdp {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<(UdpRequest, Instant)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeUdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn action_of(r: &UdpRequest) -> u8 {
    match r {
        UdpRequest::Connect(_) => 0,
        UdpRequest::Announce(_) => 1,
        UdpRequest::Scrape(_) => 2,
    }
}

impl FakeUdp {
    /// `script` gets the request and how many requests of that action came
    /// before it.
    pub async fn start(
        script: impl Fn(&UdpRequest, usize) -> Vec<UdpReply> + Send + Sync + 'static,
    ) -> Self {
        Self::start_on("127.0.0.1:0", script).await
    }

    /// As [`start`](Self::start), on `bind` (`[::1]:0` for IPv6).
    pub async fn start_on(
        bind: &str,
        script: impl Fn(&UdpRequest, usize) -> Vec<UdpReply> + Send + Sync + 'static,
    ) -> Self {
        let socket = UdpSocket::bind(bind).await.unwrap();
        let other = UdpSocket::bind(bind).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<UdpScript> = Arc::new(script);
        let task_log = log.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let Ok(req) = protocol::udp_tracker::parse_request(&buf[..len]) else {
                    continue;
                };
                let n = {
                    let mut log = task_log.lock().unwrap();
                    let n = log
                        .iter()
                        .filter(|(r, _)| action_of(r) == action_of(&req))
                        .count();
                    log.push((req.clone(), Instant::now()));
                    n
                };
                for reply in script(&req, n) {
                    let _ = match reply {
                        UdpReply::Main(d) => socket.send_to(&d, from).await,
                        UdpReply::Other(d) => other.send_to(&d, from).await,
                    };
                }
            }
        });
        FakeUdp { addr, log, task }
    }

    pub fn url(&self) -> String {
        format!("udp://{}/announce", self.addr)
    }

    pub fn requests(&self) -> Vec<(UdpRequest, Instant)> {
        self.log.lock().unwrap().clone()
    }

    pub fn announces(&self) -> Vec<protocol::udp_tracker::AnnounceRequest> {
        self.requests()
            .into_iter()
            .filter_map(|(r, _)| match r {
                UdpRequest::Announce(a) => Some(a),
                _ => None,
            })
            .collect()
    }
}

// ----------------------------------------------------------- opentracker

mod opentracker;
#[allow(unused_imports)] // only the opentracker test binary uses it
pub use opentracker::OpenTracker;
