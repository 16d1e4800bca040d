//! An HTTP/1.1 reverse proxy on a free 127.0.0.1 port, in front of a real registry, that
//! injects faults per request and logs every request it sees.
//!
//! Each request is matched against the rules in order; the first rule whose method and
//! path substring match (and whose `first(n)` budget is not spent) applies its [`Fault`];
//! a request no rule matches is forwarded unchanged. Rules can be replaced while the proxy
//! runs. Every request is logged ([`LogEntry`]: method, path, query, status, arrival time,
//! body bytes sent), and connections and body bytes are counted, so tests assert on what
//! the client did rather than on how long it took.
//!
//! ```ignore
//! let proxy = FaultProxy::start(&registry.host());
//! proxy.add_rule(Rule::get(&format!("/blobs/{digest}"), Fault::trickle(1, Duration::from_millis(1500))));
//! proxy.add_rule(Rule::get("/manifests/", Fault::status(429).header("Retry-After", "2")).first(1));
//! proxy.count("GET", |path| path == "/v2/");
//! proxy.connections(); proxy.bytes_sent(); proxy.log();
//! ```
//!
//! Like `fake_http`, the proxy runs on its own thread and runtime and stops on drop, so it
//! works from both `#[test]` and `#[tokio::test]`. Bodies the proxy makes up
//! ([`Fault::OverrideBody`]) are produced lazily in 64 KiB chunks: a 256 MiB body is never
//! held in memory.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;

type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// Size of the chunks of bodies the proxy makes up.
const CHUNK: usize = 64 << 10;

/// What happens to a request a rule matches.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Forward, then send the upstream body `bytes_per_tick` bytes at a time, waiting
    /// `tick` before each piece (headers go out at once).
    Trickle {
        bytes_per_tick: usize,
        tick: Duration,
    },
    /// With `probability` (seeded RNG, see [`FaultProxy::seed`]) close the connection:
    /// before answering when `after_bytes` is `None`, else after that many bytes of the
    /// upstream body. Otherwise forward normally.
    DropConnection {
        probability: f64,
        after_bytes: Option<u64>,
    },
    /// Answer `code` with `headers` and a short body, without contacting upstream.
    Status {
        code: u16,
        headers: Vec<(String, String)>,
    },
    /// Answer `status` (e.g. 307) with `Location: location`, without contacting upstream.
    Redirect { status: u16, location: String },
    /// Forward, keep the upstream status and headers, but replace the body by
    /// `body_size` bytes of `{` made up lazily, announced with `Content-Length:
    /// content_length_header` (which may lie) or sent chunked when `None`.
    OverrideBody {
        content_length_header: Option<u64>,
        body_size: usize,
    },
    /// Wait, then forward normally.
    Delay(Duration),
}

impl Fault {
    /// [`Fault::Trickle`].
    pub fn trickle(bytes_per_tick: usize, tick: Duration) -> Self {
        Fault::Trickle {
            bytes_per_tick,
            tick,
        }
    }

    /// [`Fault::Status`] without headers; add some with [`Fault::header`].
    pub fn status(code: u16) -> Self {
        Fault::Status {
            code,
            headers: Vec::new(),
        }
    }

    /// Adds a header to a [`Fault::Status`] (ignored by other faults).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let Fault::Status { headers, .. } = &mut self {
            headers.push((name.to_owned(), value.to_owned()));
        }
        self
    }

    /// [`Fault::Redirect`].
    pub fn redirect(status: u16, location: &str) -> Self {
        Fault::Redirect {
            status,
            location: location.to_owned(),
        }
    }

    /// [`Fault::DropConnection`] before answering, always.
    pub fn drop_connection() -> Self {
        Fault::DropConnection {
            probability: 1.0,
            after_bytes: None,
        }
    }
}

/// A fault for the requests it matches.
#[derive(Clone, Debug)]
pub struct Rule {
    /// `GET`, `HEAD`, …; `None` matches any method.
    pub method: Option<String>,
    /// A substring of the path (without the query); `""` matches every path.
    pub path_contains: String,
    /// How many more requests this rule applies to; `None`: unlimited.
    pub remaining: Option<usize>,
    /// What it does.
    pub fault: Fault,
}

impl Rule {
    /// A rule for requests of any method whose path contains `path_contains`.
    pub fn any(path_contains: &str, fault: Fault) -> Self {
        Self {
            method: None,
            path_contains: path_contains.to_owned(),
            remaining: None,
            fault,
        }
    }

    /// A rule for `GET` requests whose path contains `path_contains`.
    pub fn get(path_contains: &str, fault: Fault) -> Self {
        Self::any(path_contains, fault).method("GET")
    }

    /// Restricts the rule to `method`.
    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_owned());
        self
    }

    /// Applies only to the first `n` matching requests.
    pub fn first(mut self, n: usize) -> Self {
        self.remaining = Some(n);
        self
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.method.as_deref().is_none_or(|m| m == method)
            && path.contains(&self.path_contains)
            && self.remaining != Some(0)
    }
}

/// One request the proxy received.
#[derive(Clone, Debug)]
pub struct LogEntry {
    /// The request method.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query string ("" if none).
    pub query: String,
    /// The status answered; `None` if the connection was closed before an answer.
    pub status: Option<u16>,
    /// When the request arrived.
    pub at: Instant,
    /// Body bytes sent to the client for this request.
    pub body_bytes: u64,
    /// The fault applied, as `Debug` text, if any.
    pub fault: Option<String>,
}

struct State {
    upstream: String,
    started: Instant,
    rules: Mutex<Vec<Rule>>,
    log: Mutex<Vec<LogEntry>>,
    connections: AtomicUsize,
    bytes_sent: AtomicU64,
    rng: Mutex<u64>,
}

impl State {
    /// The fault for a request, spending one use of its rule.
    fn choose(&self, method: &str, path: &str) -> Option<Fault> {
        let mut rules = self.rules.lock();
        let rule = rules.iter_mut().find(|r| r.matches(method, path))?;
        if let Some(n) = rule.remaining.as_mut() {
            *n -= 1;
        }
        Some(rule.fault.clone())
    }

    /// A uniform number in [0, 1) (splitmix64).
    fn random(&self) -> f64 {
        let mut state = self.rng.lock();
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn set_status(&self, index: usize, status: u16) {
        self.log.lock()[index].status = Some(status);
    }

    fn count_bytes(&self, index: usize, n: usize) {
        self.bytes_sent.fetch_add(n as u64, Ordering::SeqCst);
        self.log.lock()[index].body_bytes += n as u64;
    }
}

/// The proxy; stops when dropped.
pub struct FaultProxy {
    port: u16,
    state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts forwarding from a free 127.0.0.1 port to `upstream` (`host:port`, plain HTTP).
    pub fn start(upstream: &str) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("set_nonblocking");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            upstream: upstream.to_owned(),
            started: Instant::now(),
            rules: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            bytes_sent: AtomicU64::new(0),
            rng: Mutex::new(1),
        });
        let (shutdown, mut shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let shared = state.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    tokio::select! {
                        _ = &mut shutdown_rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            shared.connections.fetch_add(1, Ordering::SeqCst);
                            let state = shared.clone();
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(move |request| {
                                    handle(state.clone(), request)
                                });
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            });
                        }
                    }
                }
            });
            // Dropping the runtime ends every connection task.
        });
        Self {
            port,
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Seeds the RNG of [`Fault::DropConnection`] probabilities.
    pub fn seed(&self, seed: u64) {
        *self.state.rng.lock() = seed;
    }

    /// Appends a rule (rules are tried in order).
    pub fn add_rule(&self, rule: Rule) {
        self.state.rules.lock().push(rule);
    }

    /// Replaces all rules.
    pub fn set_rules(&self, rules: Vec<Rule>) {
        *self.state.rules.lock() = rules;
    }

    /// Removes all rules: every request is forwarded unchanged.
    pub fn clear_rules(&self) {
        self.state.rules.lock().clear();
    }

    /// Every request so far, in arrival order.
    pub fn log(&self) -> Vec<LogEntry> {
        self.state.log.lock().clone()
    }

    /// Requests so far with `method` whose path satisfies `path`.
    pub fn requests(&self, method: &str, path: impl Fn(&str) -> bool) -> Vec<LogEntry> {
        self.state
            .log
            .lock()
            .iter()
            .filter(|e| e.method == method && path(&e.path))
            .cloned()
            .collect()
    }

    /// How many requests with `method` had a path satisfying `path`.
    pub fn count(&self, method: &str, path: impl Fn(&str) -> bool) -> usize {
        self.requests(method, path).len()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Body bytes handed to clients so far (all requests).
    pub fn bytes_sent(&self) -> u64 {
        self.state.bytes_sent.load(Ordering::SeqCst)
    }

    /// When the proxy started (log times are comparable with it).
    pub fn started(&self) -> Instant {
        self.state.started
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn io_error(message: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(message.to_string())
}

fn full(text: &str) -> ProxyBody {
    http_body_util::Full::new(Bytes::from(text.to_owned()))
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

/// A body from a stream of chunks, counting what the client is handed.
fn counted(
    state: Arc<State>,
    index: usize,
    stream: impl Stream<Item = std::io::Result<Bytes>> + Send + 'static,
) -> ProxyBody {
    let stream = stream.map(move |chunk| {
        chunk.map(|bytes| {
            state.count_bytes(index, bytes.len());
            Frame::data(bytes)
        })
    });
    BodyExt::boxed_unsync(StreamBody::new(stream))
}

/// The data chunks of an upstream body.
fn upstream_chunks(body: Incoming) -> impl Stream<Item = std::io::Result<Bytes>> + Send {
    BodyStream::new(body).filter_map(|frame| async move {
        match frame {
            Ok(frame) => frame.into_data().ok().map(Ok),
            Err(e) => Some(Err(io_error(e))),
        }
    })
}

/// Sends `request` to `upstream` on a new connection.
async fn forward(
    upstream: &str,
    request: Request<Incoming>,
) -> std::io::Result<Response<Incoming>> {
    let stream = tokio::net::TcpStream::connect(upstream).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(io_error)?;
    tokio::spawn(connection);
    sender.send_request(request).await.map_err(io_error)
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, std::io::Error> {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let fault = state.choose(&method, &path);
    let index = {
        let mut log = state.log.lock();
        log.push(LogEntry {
            method: method.clone(),
            path: path.clone(),
            query,
            status: None,
            at: Instant::now(),
            body_bytes: 0,
            fault: fault.as_ref().map(|f| format!("{f:?}")),
        });
        log.len() - 1
    };
    // A drop decided now, and how many body bytes go out before it (None: none at all).
    let mut cut_after: Option<u64> = None;
    match &fault {
        Some(Fault::Status { code, headers }) => {
            let mut response = Response::builder().status(*code);
            for (name, value) in headers {
                response = response.header(name, value);
            }
            state.set_status(index, *code);
            return Ok(response
                .body(full(&format!("fault proxy: status {code}\n")))
                .unwrap());
        }
        Some(Fault::Redirect { status, location }) => {
            state.set_status(index, *status);
            return Ok(Response::builder()
                .status(*status)
                .header("Location", location)
                .body(full(""))
                .unwrap());
        }
        Some(Fault::DropConnection {
            probability,
            after_bytes,
        }) if state.random() < *probability => match after_bytes {
            // An error from the service makes hyper close the connection without
            // answering.
            None => return Err(io_error("fault proxy: connection dropped")),
            Some(n) => cut_after = Some(*n),
        },
        Some(Fault::Delay(delay)) => tokio::time::sleep(*delay).await,
        _ => {}
    }
    let response = match forward(&state.upstream, request).await {
        Ok(response) => response,
        Err(e) => {
            state.set_status(index, 502);
            return Ok(Response::builder()
                .status(502)
                .body(full(&format!("fault proxy: upstream failed: {e}\n")))
                .unwrap());
        }
    };
    let (mut parts, body) = response.into_parts();
    state.set_status(index, parts.status.as_u16());
    let body = match fault {
        Some(Fault::OverrideBody {
            content_length_header,
            body_size,
        }) => {
            parts.headers.remove(hyper::header::CONTENT_LENGTH);
            parts.headers.remove(hyper::header::TRANSFER_ENCODING);
            if let Some(length) = content_length_header {
                parts
                    .headers
                    .insert(hyper::header::CONTENT_LENGTH, length.into());
            }
            let chunk = Bytes::from(vec![b'{'; CHUNK]);
            let chunks = futures::stream::iter(
                (0..body_size)
                    .step_by(CHUNK)
                    .map(move |start| Ok(chunk.slice(..CHUNK.min(body_size - start)))),
            );
            counted(state, index, chunks)
        }
        Some(Fault::Trickle {
            bytes_per_tick,
            tick,
        }) => counted(state, index, trickle(body, bytes_per_tick.max(1), tick)),
        _ => match cut_after {
            Some(limit) => counted(state, index, cut(body, limit)),
            None => counted(state, index, upstream_chunks(body)),
        },
    };
    Ok(Response::from_parts(parts, body))
}

/// The upstream body re-cut into `bytes_per_tick` pieces, each sent after `tick`.
fn trickle(
    body: Incoming,
    bytes_per_tick: usize,
    tick: Duration,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send {
    let mut upstream = Box::pin(upstream_chunks(body));
    async_stream::try_stream! {
        loop {
            let Some(chunk) = upstream.next().await else { break };
            let mut chunk = chunk?;
            while !chunk.is_empty() {
                tokio::time::sleep(tick).await;
                let piece = chunk.split_to(bytes_per_tick.min(chunk.len()));
                yield piece;
            }
        }
    }
}

/// The upstream body up to `limit` bytes, then an error (hyper closes the connection).
fn cut(body: Incoming, limit: u64) -> impl Stream<Item = std::io::Result<Bytes>> + Send {
    let mut upstream = Box::pin(upstream_chunks(body));
    async_stream::try_stream! {
        let mut sent = 0u64;
        loop {
            let Some(chunk) = upstream.next().await else { break };
            let mut chunk = chunk?;
            let room = (limit - sent) as usize;
            if chunk.len() >= room {
                let piece = chunk.split_to(room);
                if !piece.is_empty() {
                    yield piece;
                }
                // Let the client read the partial body before the connection goes.
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err(io_error("fault proxy: connection dropped mid-body"))?;
            }
            sent += chunk.len() as u64;
            yield chunk;
        }
    }
}
