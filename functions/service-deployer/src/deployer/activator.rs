//! One revision's front on one machine: Knative's activator and queue-proxy in one. The
//! revision's URL is this listener's; behind it the revision has from zero to `maxScale`
//! processes, each on a port of its own.
//!
//! - A request takes a free slot of a ready process (fewer than `concurrency` requests on it,
//!   any when the function sets no limit) and is forwarded to that process.
//! - With no free slot it is held, in arrival order, until a slot frees or a process started
//!   for it is ready (at most [`Activator`]'s hold time, then `503`); it is never refused
//!   for being early. When the held requests outnumber what starting processes will take,
//!   another process starts at once, up to `maxScale`.
//! - A request that found no ready process at all is a cold start: counted, timed (start to
//!   first healthy answer), reported in the answer's [`COLD_START_HEADER`] and to the
//!   platform's metrics.
//! - Once per [`autoscale::TICK`] the [`Autoscaler`] decides how many processes the revision
//!   wants; idle processes beyond that stop (never one serving a request), down to zero after
//!   `scaleToZeroAfterSeconds` without requests.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use klambda_events::status::{ColdStart, Scale};
use klambda_harness::problem::ProblemDetails;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::BoxFuture;
use super::autoscale::{Autoscaler, Bounds, TICK};

/// Set on an answer whose request waited for a process to start: the milliseconds it waited.
pub const COLD_START_HEADER: &str = "klambda-cold-start-ms";

/// Requests held at once per revision; past this, `503` at once.
const MAX_QUEUED: usize = 10_000;

/// Starts one process of the revision on the given port and returns once it answers its
/// health check, with what stops it (dropped or sent: it stops); `Err` says why it did not.
pub type Start =
    Arc<dyn Fn(u16) -> BoxFuture<'static, Result<oneshot::Sender<()>, String>> + Send + Sync>;

/// Told of every cold start: its duration.
pub type OnColdStart = Arc<dyn Fn(Duration) + Send + Sync>;

/// Reads a revision's processes and requests.
#[derive(Clone)]
pub struct ScaleGauge(Arc<Shared>);

impl ScaleGauge {
    /// The revision's processes and requests now.
    pub fn scale(&self) -> Scale {
        let pool = Pool::lock(&self.0);
        Scale {
            replicas: u32::try_from(pool.replicas.len()).unwrap_or(u32::MAX),
            starting: pool.starting,
            in_flight: pool.in_flight(),
            queued: u32::try_from(pool.waiters.len()).unwrap_or(u32::MAX),
            panicking: pool.scaler.panicking(),
            cold_starts: pool.cold_starts,
            last_cold_start: pool.last_cold_start.clone(),
        }
    }
}

impl std::fmt::Debug for ScaleGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ScaleGauge").field(&self.0.revision).finish()
    }
}

/// A running front of one revision; stops everything it started when dropped.
pub struct Activator {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Activator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activator")
            .field("revision", &self.shared.revision)
            .finish_non_exhaustive()
    }
}

struct Shared {
    revision: String,
    bounds: Bounds,
    /// How long a request is held waiting for a slot.
    hold: Duration,
    start: Start,
    on_cold_start: Option<OnColdStart>,
    pool: Mutex<Pool>,
    client: Client<HttpConnector, Body>,
}

struct Pool {
    replicas: Vec<Replica>,
    starting: u32,
    waiters: VecDeque<oneshot::Sender<Result<Slot, String>>>,
    last_request: Option<Instant>,
    cold_starts: u64,
    last_cold_start: Option<ColdStart>,
    next_id: u64,
    closed: bool,
    scaler: Autoscaler,
    /// Concurrency × seconds since the last tick, and when it was last added to: the
    /// autoscaler's sample is the average over the tick (as Knative's queue-proxy reports it),
    /// not the count at the instant of the tick, which a burst can fall between.
    load: f64,
    load_since: Instant,
    tick_began: Instant,
}

struct Replica {
    id: u64,
    port: u16,
    in_flight: u32,
    /// Dropped with the replica: its process stops.
    _stop: oneshot::Sender<()>,
}

/// A place on a process for one request.
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: u64,
    port: u16,
    /// The request waited for a process started from zero.
    cold: bool,
}

impl Pool {
    fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Self> {
        shared
            .pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The ready process with the fewest requests that can take one more.
    fn free(&self, limit: u32) -> Option<usize> {
        self.replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| limit == 0 || r.in_flight < limit)
            .min_by_key(|(_, r)| r.in_flight)
            .map(|(index, _)| index)
    }

    /// A ready process on `port`, stopped by dropping `stop`, joins the pool.
    fn add(&mut self, port: u16, stop: oneshot::Sender<()>) {
        let id = self.next_id;
        self.next_id += 1;
        self.replicas.push(Replica {
            id,
            port,
            in_flight: 0,
            _stop: stop,
        });
    }

    /// Adds the load since the last change; call before every change of requests.
    fn account(&mut self) {
        let now = Instant::now();
        let concurrency = f64::from(self.in_flight()) + self.waiters.len() as f64;
        self.load += concurrency * now.duration_since(self.load_since).as_secs_f64();
        self.load_since = now;
    }

    /// The average concurrency since the last call.
    fn average_load(&mut self) -> f64 {
        self.account();
        let span = self
            .load_since
            .duration_since(self.tick_began)
            .as_secs_f64();
        let average = if span > 0.0 { self.load / span } else { 0.0 };
        self.load = 0.0;
        self.tick_began = self.load_since;
        average
    }

    fn take(&mut self, index: usize, cold: bool) -> Slot {
        let replica = &mut self.replicas[index];
        replica.in_flight += 1;
        Slot {
            id: replica.id,
            port: replica.port,
            cold,
        }
    }

    /// Gives free slots to held requests, first come first served.
    fn dispatch(&mut self, limit: u32, cold: bool) {
        self.account();
        while !self.waiters.is_empty() {
            let Some(index) = self.free(limit) else {
                return;
            };
            let Some(waiter) = self.waiters.pop_front() else {
                return;
            };
            let slot = self.take(index, cold);
            if waiter.send(Ok(slot)).is_err() {
                // It gave up waiting meanwhile.
                self.replicas[index].in_flight -= 1;
            }
        }
    }

    fn release(&mut self, id: u64, limit: u32) {
        self.account();
        if let Some(replica) = self.replicas.iter_mut().find(|r| r.id == id) {
            replica.in_flight = replica.in_flight.saturating_sub(1);
        }
        self.dispatch(limit, false);
    }

    fn in_flight(&self) -> u32 {
        self.replicas.iter().map(|r| r.in_flight).sum()
    }
}

impl Activator {
    /// Serves `revision` on `port`: binds it, starts the first process and returns once that one
    /// is ready (a revision that cannot start one is not served: `Err` says why).
    pub async fn start(
        revision: String,
        port: u16,
        bounds: Bounds,
        hold: Duration,
        start: Start,
        on_cold_start: Option<OnColdStart>,
    ) -> Result<Self, String> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| format!("the revision's port {port} could not be bound: {e}"))?;
        let now = Instant::now();
        let shared = Arc::new(Shared {
            revision,
            bounds,
            hold,
            start,
            on_cold_start,
            pool: Mutex::new(Pool {
                replicas: Vec::new(),
                starting: 0,
                waiters: VecDeque::new(),
                // A new revision counts as just used: it stays up for the idle time.
                last_request: Some(now),
                cold_starts: 0,
                last_cold_start: None,
                next_id: 0,
                closed: false,
                scaler: Autoscaler::new(bounds, now),
                load: 0.0,
                load_since: now,
                tick_began: now,
            }),
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build_http(),
        });
        let port = super::local::free_port().map_err(|e| e.message)?;
        let first = (shared.start)(port).await?;
        {
            Pool::lock(&shared).add(port, first);
        }
        let router = axum::Router::new()
            .fallback(proxy)
            .with_state(Arc::clone(&shared));
        let serve = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(%error, "a revision's activator stopped serving");
            }
        });
        let scale = tokio::spawn(autoscale(Arc::clone(&shared)));
        Ok(Self {
            shared,
            tasks: vec![serve, scale],
        })
    }

    /// What reads the revision's processes and requests (kept by whoever routes to it).
    pub fn gauge(&self) -> ScaleGauge {
        ScaleGauge(Arc::clone(&self.shared))
    }

    /// Stops taking requests, waits (up to `grace`) for those in flight or held, then stops
    /// every process.
    pub async fn stop(self, grace: Duration) {
        for task in &self.tasks {
            task.abort();
        }
        let deadline = Instant::now() + grace;
        loop {
            let busy = {
                let pool = Pool::lock(&self.shared);
                pool.in_flight() > 0 || !pool.waiters.is_empty()
            };
            if !busy || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Dropping `self` closes the pool and stops the processes.
    }
}

impl Drop for Activator {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let mut pool = Pool::lock(&self.shared);
        pool.closed = true;
        pool.replicas.clear();
        for waiter in pool.waiters.drain(..) {
            let _ = waiter.send(Err(format!(
                "the revision {} stopped serving",
                self.shared.revision
            )));
        }
    }
}

/// Starts one more process; `cold`: a held request found none ready.
fn launch(shared: &Arc<Shared>, pool: &mut Pool, cold: bool) {
    pool.starting += 1;
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let began = Instant::now();
        let started = match super::local::free_port() {
            Ok(port) => (shared.start)(port).await.map(|stop| (port, stop)),
            Err(not_ready) => Err(not_ready.message),
        };
        let took = began.elapsed();
        let mut pool = Pool::lock(&shared);
        pool.starting -= 1;
        match started {
            Ok((port, stop)) => {
                if pool.closed {
                    return;
                }
                pool.add(port, stop);
                if cold {
                    pool.cold_starts += 1;
                    pool.last_cold_start = Some(ColdStart {
                        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                        duration_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                    });
                    if let Some(on_cold_start) = &shared.on_cold_start {
                        on_cold_start(took);
                    }
                }
                pool.dispatch(shared.bounds.concurrency, cold);
            }
            Err(message) => {
                tracing::error!(revision = %shared.revision, %message, "a process of the revision did not start");
                if pool.replicas.is_empty() && pool.starting == 0 {
                    // Nothing will serve them: they are told why now, not at the hold time.
                    for waiter in pool.waiters.drain(..) {
                        let _ = waiter.send(Err(message.clone()));
                    }
                }
            }
        }
    });
}

/// Starts processes while held requests outnumber what starting ones will take.
fn scale_up_for_waiters(shared: &Arc<Shared>, pool: &mut Pool) {
    let limit = shared.bounds.concurrency;
    loop {
        let total = pool.replicas.len() + pool.starting as usize;
        let covered = match limit {
            0 if pool.starting > 0 => usize::MAX,
            0 => 0,
            limit => pool.starting as usize * limit as usize,
        };
        if pool.waiters.len() <= covered || total >= shared.bounds.max as usize {
            return;
        }
        let cold = pool.replicas.is_empty();
        launch(shared, pool, cold);
    }
}

/// Why a request was not forwarded.
enum Refused {
    /// Held past the hold time, or the queue is full.
    Busy(String),
    /// No process could start, or the revision stopped.
    Unavailable(String),
}

/// Takes a free slot, or waits in line for one.
async fn acquire(shared: &Arc<Shared>) -> Result<Slot, Refused> {
    let receiver = {
        let mut pool = Pool::lock(shared);
        if pool.closed {
            return Err(Refused::Unavailable(format!(
                "the revision {} stopped serving",
                shared.revision
            )));
        }
        pool.last_request = Some(Instant::now());
        pool.account();
        if let Some(index) = pool.free(shared.bounds.concurrency) {
            return Ok(pool.take(index, false));
        }
        if pool.waiters.len() >= MAX_QUEUED {
            return Err(Refused::Busy(format!(
                "{MAX_QUEUED} requests are already waiting for the revision {}",
                shared.revision
            )));
        }
        let (sender, receiver) = oneshot::channel();
        pool.waiters.push_back(sender);
        scale_up_for_waiters(shared, &mut pool);
        receiver
    };
    let mut held = Held {
        receiver: Some(receiver),
        shared: Arc::clone(shared),
    };
    let Some(receiver) = held.receiver.as_mut() else {
        return Err(Refused::Unavailable("no place in line".to_owned()));
    };
    match tokio::time::timeout(shared.hold, receiver).await {
        Ok(Ok(Ok(slot))) => {
            held.receiver = None;
            Ok(slot)
        }
        Ok(Ok(Err(reason))) => Err(Refused::Unavailable(reason)),
        Ok(Err(_)) => Err(Refused::Unavailable(format!(
            "the revision {} stopped serving",
            shared.revision
        ))),
        Err(_) => Err(Refused::Busy(format!(
            "no process of the revision {} was free within {:?} (scaling.maxScale {}, scaling.concurrency {})",
            shared.revision, shared.hold, shared.bounds.max, shared.bounds.concurrency
        ))),
    }
}

/// A request's place in line; gives back a slot it was handed but did not take.
struct Held {
    receiver: Option<oneshot::Receiver<Result<Slot, String>>>,
    shared: Arc<Shared>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(mut receiver) = self.receiver.take() {
            receiver.close();
            if let Ok(Ok(slot)) = receiver.try_recv() {
                Pool::lock(&self.shared).release(slot.id, self.shared.bounds.concurrency);
            }
        }
    }
}

/// A taken slot, given back when dropped.
struct Ticket {
    slot: Slot,
    shared: Arc<Shared>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        Pool::lock(&self.shared).release(self.slot.id, self.shared.bounds.concurrency);
    }
}

fn problem(status: StatusCode, slug: &str, title: &str, detail: String) -> Response<Body> {
    axum::response::IntoResponse::into_response(ProblemDetails::new(status, slug, title, detail))
}

/// Forwards one request to a process of the revision.
async fn proxy(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    request: Request<Body>,
) -> Response<Body> {
    let began = Instant::now();
    let slot = match acquire(&shared).await {
        Ok(slot) => slot,
        Err(Refused::Busy(detail)) => {
            let mut response = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "revision-busy",
                "No process free",
                detail,
            );
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
            return response;
        }
        Err(Refused::Unavailable(detail)) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "revision-unavailable",
                "Revision unavailable",
                detail,
            );
        }
    };
    let ticket = Ticket {
        slot,
        shared: Arc::clone(&shared),
    };
    let (mut parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    parts.uri = match format!("http://127.0.0.1:{}{path}", slot.port).parse() {
        Ok(uri) => uri,
        Err(error) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "bad-path",
                "Bad path",
                error.to_string(),
            );
        }
    };
    parts.headers.remove(http::header::HOST);
    strip_hop_by_hop(&mut parts.headers);
    let answer = match shared
        .client
        .request(Request::from_parts(parts, body))
        .await
    {
        Ok(answer) => answer,
        Err(error) => {
            return problem(
                StatusCode::BAD_GATEWAY,
                "process-unreachable",
                "The function's process did not answer",
                format!("{}: {error}", shared.revision),
            );
        }
    };
    let (mut parts, body) = answer.into_parts();
    // Read whole while the slot is held: the request is in flight until its answer is.
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            return problem(
                StatusCode::BAD_GATEWAY,
                "process-unreachable",
                "The function's process broke off its answer",
                format!("{}: {error}", shared.revision),
            );
        }
    };
    drop(ticket);
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(http::header::CONTENT_LENGTH);
    if slot.cold
        && let Ok(value) = http::HeaderValue::from_str(&began.elapsed().as_millis().to_string())
    {
        parts.headers.insert(COLD_START_HEADER, value);
    }
    Response::from_parts(parts, Body::from(body))
}

/// Removes what describes one connection, not the message (RFC 9110 §7.6.1): each hop frames
/// its own.
fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let named: Vec<http::HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| http::HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        http::header::CONNECTION,
        http::header::TRANSFER_ENCODING,
        http::header::TE,
        http::header::TRAILER,
        http::header::UPGRADE,
        http::header::PROXY_AUTHORIZATION,
        http::header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
}

/// The autoscaler's loop: samples, decides, starts or stops processes.
async fn autoscale(shared: Arc<Shared>) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let mut pool = Pool::lock(&shared);
        if pool.closed {
            return;
        }
        let now = Instant::now();
        let concurrency = pool.average_load();
        pool.scaler.observe(now, concurrency);
        let current = u32::try_from(pool.replicas.len()).unwrap_or(u32::MAX) + pool.starting;
        let last_request = pool.last_request;
        let desired = pool.scaler.desired(now, current, last_request);
        if desired > current {
            for _ in current..desired {
                launch(&shared, &mut pool, false);
            }
        } else {
            let mut excess = current - desired;
            // The newest idle processes go first; never one serving a request.
            let mut index = pool.replicas.len();
            while excess > 0 && index > 0 {
                index -= 1;
                if pool.replicas[index].in_flight == 0 {
                    pool.replicas.remove(index);
                    excess -= 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "process": an HTTP server on `port` answering every request after `delay` with the
    /// port; it stops when the returned sender is dropped.
    async fn process(port: u16, delay: Duration) -> Result<oneshot::Sender<()>, String> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let (stop, stopped) = oneshot::channel::<()>();
        let app = axum::Router::new().fallback(move || async move {
            tokio::time::sleep(delay).await;
            port.to_string()
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(stop)
    }

    /// Waits (at most 5 s) until the activator shows `in_flight` and `queued` calls.
    async fn until(activator: &Activator, in_flight: u32, queued: u32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let scale = activator.gauge().scale();
            if (scale.in_flight, scale.queued) == (in_flight, queued) {
                return;
            }
            assert!(Instant::now() < deadline, "{scale:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn bounds(max: u32, concurrency: u32) -> Bounds {
        Bounds {
            min: 0,
            max,
            concurrency,
            idle: Duration::from_secs(60),
        }
    }

    async fn activator(bounds: Bounds, hold: Duration, start: Start) -> (Activator, String) {
        let port = super::super::local::free_port().unwrap_or_else(|e| panic!("{}", e.message));
        let activator = Activator::start("f-00001".into(), port, bounds, hold, start, None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (activator, format!("http://127.0.0.1:{port}/"))
    }

    async fn get(url: &str) -> (StatusCode, String) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
        let uri: http::Uri = url.parse().unwrap_or_else(|e| panic!("{e}"));
        let response = client.get(uri).await.unwrap_or_else(|e| panic!("{e}"));
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn calls_beyond_concurrency_wait_in_line_and_are_served_by_one_process() {
        let start: Start = Arc::new(|port| Box::pin(process(port, Duration::from_millis(100))));
        let (activator, url) = activator(bounds(1, 1), Duration::from_secs(5), start).await;
        let began = Instant::now();
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { get(&url).await })
            })
            .collect();
        until(&activator, 1, 2).await;
        assert_eq!(activator.gauge().scale().replicas, 1);
        let mut ports = std::collections::BTreeSet::new();
        for call in calls {
            let (status, port) = call.await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(status, StatusCode::OK);
            ports.insert(port);
        }
        // One at a time on the one process maxScale allows: three 100 ms calls in a row.
        assert_eq!(ports.len(), 1);
        assert!(began.elapsed() >= Duration::from_millis(300));
        let idle = activator.gauge().scale();
        assert_eq!((idle.in_flight, idle.queued), (0, 0));
    }

    #[tokio::test]
    async fn a_call_held_past_the_hold_time_is_answered_503_busy() {
        let start: Start = Arc::new(|port| Box::pin(process(port, Duration::from_millis(800))));
        let (activator, url) = activator(bounds(1, 1), Duration::from_millis(200), start).await;
        let first = {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await })
        };
        until(&activator, 1, 0).await;
        let (status, body) = get(&url).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            body.contains("revision-busy") && body.contains("maxScale 1"),
            "{body}"
        );
        let (status, _) = first.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, StatusCode::OK);
        // The call that gave up holds nothing.
        let after = activator.gauge().scale();
        assert_eq!((after.in_flight, after.queued), (0, 0));
    }

    #[tokio::test]
    async fn held_calls_are_told_at_once_when_no_process_can_start() {
        // The first process starts (the revision is ready); every later start fails.
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let start: Start = {
            let started = Arc::clone(&started);
            Arc::new(move |port| {
                let first = started.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
                Box::pin(async move {
                    if first {
                        process(port, Duration::ZERO).await
                    } else {
                        Err("the interpreter is gone".to_owned())
                    }
                })
            })
        };
        let idle = Bounds {
            idle: Duration::from_secs(1),
            ..bounds(2, 1)
        };
        let (activator, url) = activator(idle, Duration::from_secs(30), start).await;
        // Idle past scaleToZeroAfterSeconds: the process goes.
        let deadline = Instant::now() + Duration::from_secs(5);
        while activator.gauge().scale().replicas > 0 {
            assert!(Instant::now() < deadline, "never scaled to zero");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let began = Instant::now();
        let (status, body) = get(&url).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("the interpreter is gone"), "{body}");
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "told only at the hold time"
        );
    }
}
