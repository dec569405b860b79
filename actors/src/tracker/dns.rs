//! The DNS cache shared by every tracker announce (HTTP and UDP).
//!
//! This owns one hickory resolver and a cache of host name -> addresses
//! that honours the records' TTL (capped by config), so two trackers on one
//! host and every re-announce resolve once. It is a small actor: lookups
//! arrive on a bounded mailbox with a oneshot reply; a miss starts one
//! query as a task in the actor's `JoinSet`, and requests for a host whose
//! query is already out wait for that query instead of starting another.
//! The actor never sends to anyone but oneshot repliers, so it cannot take
//! part in an await cycle.
//!
//! [`DnsHandle`] implements reqwest's `Resolve`, which is how the HTTP
//! client uses the same cache.
//!
//! Queries leave through the session's [`Binding`]: every UDP and TCP
//! socket the resolver opens is made by [`BoundRuntime`], tied to
//! `bind_interface` (SO_BINDTODEVICE) and `bind_address` like the peer and
//! tracker sockets, so a name lookup cannot leak by another route when the
//! bound interface is down.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;

use hickory_resolver::Resolver;
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::GenericConnector;
use hickory_resolver::proto::runtime::iocompat::AsyncIoTokioAsStd;
use hickory_resolver::proto::runtime::{
    RuntimeProvider, TokioHandle, TokioRuntimeProvider, TokioTime,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::net::Binding;

/// Tunables of the DNS cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Capacity of the DNS actor's mailbox.
    pub mailbox_capacity: usize,
    /// Longest a cached answer is kept, whatever its TTL says.
    #[serde(rename = "max_ttl_ms", with = "storage::serde_fmt::duration_ms")]
    pub max_ttl: Duration,
    /// Most host names cached; expired entries are dropped first when full.
    pub max_entries: usize,
    /// Longest one lookup may take before it fails.
    #[serde(rename = "lookup_timeout_ms", with = "storage::serde_fmt::duration_ms")]
    pub lookup_timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            mailbox_capacity: 256,
            max_ttl: Duration::from_secs(3600),
            max_entries: 4096,
            lookup_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a name could not be resolved.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// The resolver answered with an error (no such name, no records...).
    #[error("cannot resolve {host}: {reason}")]
    Lookup {
        /// The name.
        host: String,
        /// The resolver's message.
        reason: String,
    },
    /// The lookup took longer than the configured timeout.
    #[error("resolving {0} timed out")]
    Timeout(String),
    /// The name resolved to no address.
    #[error("{0} has no address")]
    NoAddress(String),
    /// The DNS actor has stopped.
    #[error("the DNS actor has stopped")]
    Stopped,
}

/// Cache counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsStats {
    /// Lookups answered without a new query: from the cache, or by joining
    /// a query already under way for the same name.
    pub hits: u64,
    /// Lookups that started a query.
    pub misses: u64,
    /// Queries that failed.
    pub failures: u64,
}

type Addrs = Arc<[IpAddr]>;
type Reply = oneshot::Sender<Result<Addrs, DnsError>>;

enum Request {
    Lookup { host: String, reply: Reply },
    Stats(oneshot::Sender<DnsStats>),
}

/// Cheap handle to the DNS actor.
#[derive(Clone, Debug)]
pub struct DnsHandle {
    tx: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Lookup { host, .. } => write!(f, "Lookup({host})"),
            Request::Stats(_) => f.write_str("Stats"),
        }
    }
}

impl DnsHandle {
    /// The addresses of `host`, IPv4 first. An IP literal is returned as is
    /// without a lookup.
    pub async fn lookup(&self, host: &str) -> Result<Addrs, DnsError> {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Arc::from([ip]));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Lookup {
                host: host.to_ascii_lowercase(),
                reply,
            })
            .await
            .map_err(|_| DnsError::Stopped)?;
        rx.await.map_err(|_| DnsError::Stopped)?
    }

    /// A snapshot of the counters.
    pub async fn stats(&self) -> Result<DnsStats, DnsError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Stats(reply))
            .await
            .map_err(|_| DnsError::Stopped)?;
        rx.await.map_err(|_| DnsError::Stopped)
    }
}

impl reqwest::dns::Resolve for DnsHandle {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let handle = self.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = handle.lookup(&host).await?;
            // Port 0: reqwest puts the URL's port in.
            let list: Vec<SocketAddr> = addrs.iter().map(|&ip| SocketAddr::new(ip, 0)).collect();
            Ok(Box::new(list.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

struct Entry {
    addrs: Addrs,
    valid_until: Instant,
}

type LookupResult = (String, Result<(Addrs, Duration), DnsError>);

/// hickory's tokio runtime with every socket opened through a [`Binding`]
/// (its proxy aside: names are resolved here, not by the SOCKS5 proxy,
/// only for UDP trackers and the DHT, which a proxy turns off anyway).
#[derive(Clone)]
pub struct BoundRuntime {
    inner: TokioRuntimeProvider,
    binding: Arc<Binding>,
}

impl BoundRuntime {
    /// A runtime whose sockets follow `binding`.
    pub fn new(binding: Binding) -> BoundRuntime {
        BoundRuntime {
            inner: TokioRuntimeProvider::default(),
            binding: Arc::new(binding),
        }
    }

    fn unbound(&self) -> bool {
        self.binding.interface.is_none() && self.binding.address.is_none()
    }
}

type BoxIo<T> = Pin<Box<dyn Send + Future<Output = std::io::Result<T>>>>;

impl RuntimeProvider for BoundRuntime {
    type Handle = TokioHandle;
    type Timer = TokioTime;
    type Udp = tokio::net::UdpSocket;
    type Tcp = AsyncIoTokioAsStd<tokio::net::TcpStream>;

    fn create_handle(&self) -> Self::Handle {
        self.inner.create_handle()
    }

    fn connect_tcp(
        &self,
        server_addr: SocketAddr,
        bind_addr: Option<SocketAddr>,
        timeout: Option<Duration>,
    ) -> BoxIo<Self::Tcp> {
        if self.unbound() {
            return self.inner.connect_tcp(server_addr, bind_addr, timeout);
        }
        let binding = self.binding.clone();
        // hickory's own default for a TCP connect.
        let wait = timeout.unwrap_or(Duration::from_secs(5));
        Box::pin(async move {
            match tokio::time::timeout(wait, binding.connect_direct(server_addr)).await {
                Ok(Ok(stream)) => {
                    stream.set_nodelay(true)?;
                    Ok(AsyncIoTokioAsStd(stream))
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("DNS over TCP to {server_addr} timed out after {wait:?}"),
                )),
            }
        })
    }

    fn bind_udp(&self, local_addr: SocketAddr, server_addr: SocketAddr) -> BoxIo<Self::Udp> {
        if self.unbound() {
            return self.inner.bind_udp(local_addr, server_addr);
        }
        // hickory picks the random source port (and retries when it is
        // taken); the binding decides the device and the address.
        let socket = self.binding.udp_bound(server_addr, local_addr.port());
        Box::pin(std::future::ready(socket))
    }
}

type BoundResolver = Resolver<GenericConnector<BoundRuntime>>;

struct DnsActor {
    config: DnsConfig,
    resolver: BoundResolver,
    cache: HashMap<String, Entry>,
    /// Names with a query under way, and who waits for it.
    pending: HashMap<String, Vec<Reply>>,
    lookups: JoinSet<LookupResult>,
    stats: DnsStats,
}

/// Builds the resolver from the system configuration (`/etc/resolv.conf`),
/// or, if that cannot be read, one with no name servers that still answers
/// `localhost` and `/etc/hosts` names.
fn system_resolver(binding: Binding) -> BoundResolver {
    let provider = GenericConnector::new(BoundRuntime::new(binding));
    match BoundResolver::builder(provider.clone()) {
        Ok(b) => b.build(),
        Err(e) => {
            tracing::warn!(error = %e, "no system DNS configuration; only hosts-file names resolve");
            BoundResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), NameServerConfigGroup::new()),
                provider,
            )
            .build()
        }
    }
}

/// Starts the DNS actor; it stops when `cancel` fires or every handle is
/// dropped.
pub fn spawn(
    config: DnsConfig,
    binding: Binding,
    cancel: CancellationToken,
) -> (DnsHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(config.mailbox_capacity.max(1));
    let actor = DnsActor {
        config,
        resolver: system_resolver(binding),
        cache: HashMap::new(),
        pending: HashMap::new(),
        lookups: JoinSet::new(),
        stats: DnsStats::default(),
    };
    let join = tokio::spawn(tracing::Instrument::instrument(
        actor.run(rx, cancel),
        tracing::info_span!("dns"),
    ));
    (DnsHandle { tx }, join)
}

impl DnsActor {
    async fn run(mut self, mut rx: mpsc::Receiver<Request>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                req = rx.recv() => match req {
                    Some(Request::Lookup { host, reply }) => self.on_lookup(host, reply),
                    Some(Request::Stats(reply)) => {
                        let _ = reply.send(self.stats);
                    }
                    None => break,
                },
                Some(done) = self.lookups.join_next(), if !self.lookups.is_empty() => {
                    // A lookup task cannot panic short of a hickory bug; its
                    // waiters then see `Stopped` when their sender drops.
                    if let Ok((host, result)) = done {
                        self.on_answer(host, result);
                    }
                }
            }
        }
        self.lookups.abort_all();
    }

    fn on_lookup(&mut self, host: String, reply: Reply) {
        let now = Instant::now();
        if let Some(entry) = self.cache.get(&host) {
            if entry.valid_until > now {
                self.stats.hits += 1;
                let _ = reply.send(Ok(entry.addrs.clone()));
                return;
            }
        }
        if let Some(waiters) = self.pending.get_mut(&host) {
            self.stats.hits += 1;
            waiters.push(reply);
            return;
        }
        self.stats.misses += 1;
        self.pending.insert(host.clone(), vec![reply]);
        let resolver = self.resolver.clone();
        let timeout = self.config.lookup_timeout;
        self.lookups.spawn(async move {
            let result =
                match tokio::time::timeout(timeout, resolver.lookup_ip(host.as_str())).await {
                    Err(_) => Err(DnsError::Timeout(host.clone())),
                    Ok(Err(e)) => Err(DnsError::Lookup {
                        host: host.clone(),
                        reason: e.to_string(),
                    }),
                    Ok(Ok(lookup)) => {
                        let ttl = lookup
                            .valid_until()
                            .saturating_duration_since(std::time::Instant::now());
                        let mut ips: Vec<IpAddr> = lookup.iter().collect();
                        // IPv4 first: a tracker on a v4-only host must not wait
                        // out a v6 attempt, and UDP uses the first address.
                        ips.sort_by_key(|ip| ip.is_ipv6());
                        ips.dedup();
                        if ips.is_empty() {
                            Err(DnsError::NoAddress(host.clone()))
                        } else {
                            Ok((Addrs::from(ips), ttl))
                        }
                    }
                };
            (host, result)
        });
    }

    fn on_answer(&mut self, host: String, result: Result<(Addrs, Duration), DnsError>) {
        let waiters = self.pending.remove(&host).unwrap_or_default();
        let result = match result {
            Ok((addrs, ttl)) => {
                self.insert(host, addrs.clone(), ttl.min(self.config.max_ttl));
                Ok(addrs)
            }
            Err(e) => {
                // Failures are not cached: the tracker's backoff already
                // spaces out the retries.
                self.stats.failures += 1;
                Err(e)
            }
        };
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }

    fn insert(&mut self, host: String, addrs: Addrs, ttl: Duration) {
        let now = Instant::now();
        if self.cache.len() >= self.config.max_entries {
            self.cache.retain(|_, e| e.valid_until > now);
        }
        if self.cache.len() >= self.config.max_entries {
            // Still full of live entries: drop the one expiring first.
            if let Some(victim) = self
                .cache
                .iter()
                .min_by_key(|(_, e)| e.valid_until)
                .map(|(h, _)| h.clone())
            {
                self.cache.remove(&victim);
            }
        }
        if self.config.max_entries > 0 {
            self.cache.insert(
                host,
                Entry {
                    addrs,
                    valid_until: now + ttl,
                },
            );
        }
    }
}
