//! The per-request path: route lookup, protection checks, backend choice, forwarding, retries,
//! upgrades and error pages.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Incoming};

use crate::backend::{fast_random, pick_backend, BackendState, InFlightGuard};
use crate::body::{BodyTooLarge, ConnActivity, ProxyBody, RequestGuard, UpstreamBody};
use crate::exchange::{self, OutgoingRequest, ResponseBody};
use crate::h1::{hop_bit, hop_by_hop, ResponseHead, HOP_CONNECTION};
use crate::handle::Shared;
use crate::metrics::RouteMetrics;
use crate::pool::UpstreamError;

fn build_upstream_request(
    method: Method,
    path_and_query: PathAndQuery,
    headers: HeaderMap,
    body: UpstreamBody,
) -> Request<UpstreamBody> {
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = upstream_uri(path_and_query);
    *req.headers_mut() = headers;
    req
}
use crate::table::{strip_port, CompiledRoute, CompiledSplit, CompiledTarget};
use crate::tunnel::{spawn_tunnel, Protocol};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Forwarding headers a request carries, as bits of [`HeaderFacts::forwarding`]: what the
/// peer claims about the hops before it, believed only from a trusted proxy.
const FWD_FOR: u8 = 1;
const FWD_PROTO: u8 = 2;
const FWD_HOST: u8 = 4;
const FWD_REAL_IP: u8 = 8;
/// `Forwarded` or `X-Forwarded-Port`: claims Gilgal does not make itself, so from an untrusted
/// peer they are removed rather than replaced.
const FWD_OTHER: u8 = 16;
/// Hop-by-hop mask of the headers present in `headers`.
fn hop_mask(headers: &HeaderMap) -> u16 {
    headers
        .keys()
        .fold(0, |mask, name| mask | hop_bit(name.as_str()))
}

/// What the request path needs from a request's headers, gathered in one pass over them
/// instead of a hashed lookup per question.
#[derive(Default)]
struct HeaderFacts<'a> {
    /// Sum of name and value lengths.
    bytes: usize,
    host: Option<&'a HeaderValue>,
    request_id: Option<&'a HeaderValue>,
    content_length: Option<&'a HeaderValue>,
    content_lengths: usize,
    transfer_encoding: Option<&'a HeaderValue>,
    transfer_encodings: usize,
    upgrade: Option<&'a HeaderValue>,
    /// Forwarding headers present (`FWD_*` bits).
    forwarding: u8,
    /// Hop-by-hop headers present (see [`hop_by_hop`]).
    hop: u16,
}

impl<'a> HeaderFacts<'a> {
    fn of(headers: &'a HeaderMap) -> Self {
        let mut facts = HeaderFacts::default();
        for (name, value) in headers {
            let name = name.as_str();
            facts.bytes += name.len() + value.len();
            match name {
                "host" => {
                    facts.host.get_or_insert(value);
                }
                "content-length" => {
                    facts.content_lengths += 1;
                    facts.content_length.get_or_insert(value);
                }
                "transfer-encoding" => {
                    facts.transfer_encodings += 1;
                    facts.transfer_encoding.get_or_insert(value);
                }
                "upgrade" => {
                    facts.upgrade.get_or_insert(value);
                }
                "x-request-id" => {
                    facts.request_id.get_or_insert(value);
                }
                "x-forwarded-for" => facts.forwarding |= FWD_FOR,
                "x-forwarded-proto" => facts.forwarding |= FWD_PROTO,
                "x-forwarded-host" => facts.forwarding |= FWD_HOST,
                "x-real-ip" => facts.forwarding |= FWD_REAL_IP,
                "forwarded" | "x-forwarded-port" => facts.forwarding |= FWD_OTHER,
                _ => {}
            }
            facts.hop |= hop_bit(name);
        }
        facts
    }
}

/// What one client connection knows about itself, shared by its requests.
pub(crate) struct ConnContext {
    pub(crate) shared: Arc<Shared>,
    /// The peer's IP, preformatted for `X-Forwarded-For`.
    pub(crate) client_ip: HeaderValue,
    /// The peer is one of [`ProxySettings::trusted_proxies`](crate::ProxySettings): its
    /// forwarding headers are believed.
    pub(crate) trusted_peer: bool,
    pub(crate) https: bool,
    pub(crate) activity: ConnActivity,
}

/// Answer one client request (never fails: errors become pages carrying the request id),
/// and hand an access log entry to the installed sink, if any.
///
/// Everything up to the upstream exchange runs synchronously when hyper hands over the request;
/// the returned future only holds what the exchange needs. (An `async fn` would keep its
/// arguments *and* every moved-out copy in its state, and hyper keeps one such state allocated
/// per connection: this keeps it around 1 KB instead of 4 KB.) Without an access log sink
/// nothing is copied for it.
pub(crate) fn handle(
    ctx: Arc<ConnContext>,
    req: Request<Incoming>,
) -> impl Future<Output = Response<ProxyBody>> + Send {
    let access = ctx
        .shared
        .access_log
        .enabled()
        .then(|| AccessStart::of(&ctx, &req));
    let log_ctx = access.as_ref().map(|_| Arc::clone(&ctx));
    // The smuggling guard stopped reading this connection at a tunnel request: unless the
    // protocol switches, the connection must not carry another request.
    let close_unless_switched = ctx.activity.upgrade_asked.load(Ordering::Acquire);
    let mut route_id = None;
    let mut hsts = None;
    let mut routed = route_request(ctx, req, &mut route_id, &mut hsts);
    async move {
        let mut resp = match &mut routed {
            Routed::Done(resp) => resp
                .take()
                .unwrap_or_else(|| Response::new(ProxyBody::empty())),
            Routed::Static(serve) => serve.as_mut().await,
            Routed::Upstream(forward) => forward.run().await,
        };
        if let Some(hsts) = hsts {
            resp.headers_mut()
                .entry(header::STRICT_TRANSPORT_SECURITY)
                .or_insert(hsts);
        }
        if close_unless_switched && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let (Some(access), Some(ctx), Some(route)) = (access, log_ctx, route_id) {
            ctx.shared.access_log.send(crate::AccessLogEntry {
                route: route.to_string(),
                method: access.method,
                path: access.path,
                host: access.host,
                status: resp.status().as_u16(),
                duration: access.start.elapsed(),
                client: access.client,
            });
        }
        resp
    }
}

/// What an access log entry needs from the request, taken before routing consumes it.
struct AccessStart {
    start: Instant,
    method: String,
    path: String,
    host: String,
    client: String,
}

impl AccessStart {
    fn of(ctx: &ConnContext, req: &Request<Incoming>) -> Self {
        Self {
            start: Instant::now(),
            method: req.method().as_str().to_owned(),
            path: req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| "/".to_owned()),
            host: request_host(req, req.headers().get(header::HOST))
                .map(|h| h.into_owned())
                .unwrap_or_default(),
            client: if ctx.trusted_peer {
                let chain = forwarded_chain(req.headers(), &ctx.client_ip);
                real_client(&ctx.shared.settings.trusted_proxies, &chain)
                    .map(|ip| ip.to_string())
                    .unwrap_or_default()
            } else {
                ctx.client_ip.to_str().unwrap_or_default().to_owned()
            },
        }
    }
}

/// What to do with a request once it was checked and routed.
// One per request, inside the request's future: boxing the common variant would cost an
// allocation per request to save a few hundred bytes that hyper allocates once per connection.
#[allow(clippy::large_enum_variant)]
enum Routed {
    /// Answered already (errors, redirects).
    Done(Option<Response<ProxyBody>>),
    /// Static files (boxed: that future is large and rare).
    Static(Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>),
    /// To an upstream.
    Upstream(Forward),
}

fn route_request(
    ctx: Arc<ConnContext>,
    req: Request<Incoming>,
    route_id: &mut Option<Arc<str>>,
    hsts: &mut Option<HeaderValue>,
) -> Routed {
    let start = Instant::now();
    let mut guard = RequestGuard::new(ctx.clone());
    let facts = HeaderFacts::of(req.headers());
    let request_id = RequestId::of(facts.request_id);
    let unrouted = &ctx.shared.unrouted;
    let done = |resp| Routed::Done(Some(resp));

    let ambiguous = ctx
        .activity
        .smuggling
        .load(Ordering::Acquire)
        .then_some("conflicting Content-Length / Transfer-Encoding framing");
    if let Some(reason) = ambiguous.or_else(|| framing_violation(&facts, req.version())) {
        let mut resp = error_page(StatusCode::BAD_REQUEST, reason, &request_id.value());
        if req.version() <= Version::HTTP_11 {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return done(finish(resp, unrouted, start, guard));
    }
    let Some(host) = request_host(&req, facts.host) else {
        let resp = error_page(
            StatusCode::BAD_REQUEST,
            "missing Host header",
            &request_id.value(),
        );
        return done(finish(resp, unrouted, start, guard));
    };
    let route = {
        let table = ctx.shared.table.load();
        table.lookup(&host, req.uri().path()).cloned()
    };
    let Some(route) = route else {
        let resp = error_page(
            StatusCode::NOT_FOUND,
            "no app is served here",
            &request_id.value(),
        );
        return done(finish(resp, unrouted, start, guard));
    };
    guard.set_route(route.metrics.clone());
    *route_id = Some(Arc::clone(&route.id));
    let metrics = &route.metrics;
    if ctx.https {
        hsts.clone_from(&route.hsts);
    }

    if route.redirect_https && !ctx.https {
        let resp = https_redirect(&host, req.uri(), ctx.shared.settings.https_port);
        return done(finish(resp, metrics, start, guard));
    }
    if let Some(rule) = crate::rate::rule_for(&route.rate, req.uri().path()) {
        if let Err(wait) = rule.limiter.check(client_address(&ctx, req.headers())) {
            metrics.add_rate_limited();
            let mut resp = error_page(
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests from your address; slow down",
                &request_id.value(),
            );
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(crate::rate::retry_after_seconds(wait)),
            );
            return done(finish(resp, metrics, start, guard));
        }
    }
    if let Some((status, reason)) = limit_violation(&route, &req, facts.bytes) {
        let mut resp = error_page(status, reason, &request_id.value());
        if status == StatusCode::PAYLOAD_TOO_LARGE && req.version() <= Version::HTTP_11 {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return done(finish(resp, metrics, start, guard));
    }

    match &route.target {
        CompiledTarget::Static { .. } => {
            let route = route.clone();
            Routed::Static(Box::pin(async move {
                let CompiledTarget::Static { root, fallback } = &route.target else {
                    unreachable!("matched a static route above");
                };
                let request_id = request_id.value();
                let resp = serve_static(root, fallback.as_deref(), &route, req, &request_id).await;
                let status = resp.status();
                route
                    .metrics
                    .record_response(status.as_u16(), start.elapsed());
                let (parts, body) = resp.into_parts();
                Response::from_parts(parts, ProxyBody::boxed(body, guard))
            }))
        }
        CompiledTarget::Upstream { split, .. } => {
            let upgrade = upgrade_protocol(&req, facts.upgrade).cloned();
            let (group, set_cookie) = match split {
                Some(split) => choose_group(split, req.headers()),
                None => (Group::All, None),
            };
            let hop = facts.hop;
            let forwarding = facts.forwarding;
            let host_header = facts.host.cloned();
            let mut forward = Forward {
                ctx,
                route,
                request_id,
                start,
                guard: Some(guard),
                group,
                set_cookie,
                client_upgrade: None,
                upgrade: upgrade.is_some(),
                retry_after_send: false,
                outgoing: Outgoing::Upgrade(None),
            };
            forward.prepare(req, hop, forwarding, host_header, upgrade);
            Routed::Upstream(forward)
        }
    }
}

/// The client a request counts against: the peer, or behind a trusted proxy the address
/// it forwarded for.
fn client_address(ctx: &ConnContext, headers: &HeaderMap) -> std::net::IpAddr {
    let peer = ctx
        .client_ip
        .to_str()
        .ok()
        .and_then(|ip| ip.parse().ok())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    if !ctx.trusted_peer {
        return peer;
    }
    let chain = forwarded_chain(headers, &ctx.client_ip);
    real_client(&ctx.shared.settings.trusted_proxies, &chain).unwrap_or(peer)
}

/// Record the status and latency of a generated response and attach the request guard.
fn finish(
    mut resp: Response<ProxyBody>,
    metrics: &RouteMetrics,
    start: Instant,
    guard: RequestGuard,
) -> Response<ProxyBody> {
    metrics.record_response(resp.status().as_u16(), start.elapsed());
    resp.body_mut().set_guard(guard);
    resp
}

/// Which backends of a route a request may go to.
#[derive(Clone, Copy)]
pub(crate) enum Group {
    All,
    Primary,
    Canary,
}

/// One request on its way to an upstream route, with everything its attempts need.
struct Forward {
    ctx: Arc<ConnContext>,
    route: Arc<CompiledRoute>,
    request_id: RequestId,
    start: Instant,
    /// Taken by the response (or error page) that ends the request.
    guard: Option<RequestGuard>,
    group: Group,
    set_cookie: Option<HeaderValue>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    upgrade: bool,
    /// A bodyless idempotent request: safe to re-send after a failure even if it was sent.
    retry_after_send: bool,
    /// The request as it goes upstream (set by [`Forward::prepare`]).
    outgoing: Outgoing,
}

/// A request ready for its backend.
enum Outgoing {
    /// Ordinary requests: Gilgal's own exchange over pooled connections.
    Plain(OutgoingRequest),
    /// Upgrade requests: hyper's client (handed back when it was never sent).
    Upgrade(Option<Request<UpstreamBody>>),
}

/// What a backend answered.
enum Exchanged {
    Plain(ResponseHead, ResponseBody),
    Upgrade(Response<Incoming>),
}

/// How one try at a backend ended.
// Moved once per attempt: boxing the response would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Attempt {
    Response(Exchanged),
    Failed(UpstreamError),
    TimedOut,
    Cut,
}

impl Forward {
    /// Turn the client request into the upstream request (and a retry template).
    fn prepare(
        &mut self,
        mut req: Request<Incoming>,
        hop: u16,
        forwarding: u8,
        host_header: Option<HeaderValue>,
        upgrade: Option<HeaderValue>,
    ) {
        if upgrade.is_some() {
            self.client_upgrade = Some(hyper::upgrade::on(&mut req));
        }
        let (parts, body) = req.into_parts();
        let method = parts.method;
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let has_host = host_header.is_some();
        let host_value = match (parts.uri.authority(), host_header) {
            (Some(a), _) if parts.version >= Version::HTTP_2 => {
                HeaderValue::from_str(a.as_str()).unwrap_or(HeaderValue::from_static(""))
            }
            (_, Some(host)) => host,
            (_, None) => HeaderValue::from_static(""),
        };
        let mut headers = parts.headers;
        // Hop-by-hop headers are rare in requests: only then is the map edited.
        strip_hop_by_hop(&mut headers, hop);
        // What the peer says about earlier hops is believed only from a trusted proxy.
        let believed = if self.ctx.trusted_peer { forwarding } else { 0 };
        if forwarding & FWD_OTHER != 0 && believed & FWD_OTHER == 0 {
            headers.remove(header::FORWARDED);
            headers.remove(&X_FORWARDED_PORT);
        }
        let body_empty = body.is_end_stream() && !self.upgrade;
        let body = (!body_empty).then(|| {
            UpstreamBody::new(
                body,
                self.route.limits.max_body_bytes,
                self.route.metrics.clone(),
            )
        });
        self.retry_after_send = body_empty && is_idempotent(&method);
        let forwarding = self.forwarding(&headers, believed);
        let proto = HeaderValue::from_static(if self.ctx.https { "https" } else { "http" });
        // A trusted peer's own values of the fields it is believed on stay; every other
        // forwarding field is written by Gilgal, replacing what the client sent.
        let mut set = [(&X_FORWARDED_FOR, &forwarding.forwarded_for); 6];
        set[1] = (&X_REQUEST_ID, &forwarding.request_id);
        let mut len = 2;
        for (bit, name, value) in [
            (FWD_PROTO, &X_FORWARDED_PROTO, &proto),
            (FWD_HOST, &X_FORWARDED_HOST, &host_value),
            (FWD_REAL_IP, &X_REAL_IP, &forwarding.real_ip),
        ] {
            if believed & bit == 0 {
                set[len] = (name, value);
                len += 1;
            }
        }
        // The client's Host is kept; only a request without one (HTTP/2) gets the authority.
        if !has_host {
            set[len] = (&header::HOST, &host_value);
            len += 1;
        }
        let set = &set[..len];
        self.outgoing = if self.upgrade {
            for (name, value) in set.iter() {
                headers.insert((*name).clone(), (*value).clone());
            }
            if let Some(protocol) = upgrade {
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(header::UPGRADE, protocol);
            }
            Outgoing::Upgrade(Some(build_upstream_request(
                method,
                path_and_query,
                headers,
                body.unwrap_or_else(UpstreamBody::empty),
            )))
        } else {
            Outgoing::Plain(OutgoingRequest::new(
                method,
                path_and_query.as_str(),
                &headers,
                set,
                body,
            ))
        };
    }

    /// The backends this request may go to, and the group they belong to (a split group
    /// with no backends left falls back to the other one).
    fn candidates<'r>(&self, route: &'r CompiledRoute) -> (&'r [Arc<BackendState>], Group) {
        let CompiledTarget::Upstream { all, split, .. } = &route.target else {
            return (&[], Group::All);
        };
        let Some(split) = split else {
            return (all, Group::All);
        };
        let (group, other) = match self.group {
            Group::All => return (all, Group::All),
            Group::Primary => (Group::Primary, Group::Canary),
            Group::Canary => (Group::Canary, Group::Primary),
        };
        let members = |g: Group| match g {
            Group::Canary => &split.canary,
            _ => &split.primary,
        };
        if !members(group).is_empty() {
            (members(group), group)
        } else if !members(other).is_empty() {
            (members(other), other)
        } else {
            (all, Group::All)
        }
    }

    /// Count the answer in the route's figures and in those of the release that gave it.
    fn record(&self, status: StatusCode) {
        let latency = self.start.elapsed();
        self.route.metrics.record_response(status.as_u16(), latency);
        if let Some(release) = self.route.release_metrics(self.group) {
            release.record_response(status.as_u16(), latency);
        }
    }

    async fn run(&mut self) -> Response<ProxyBody> {
        let route = self.route.clone();
        let (candidates, group) = self.candidates(&route);
        // From here on `group` says which release answered (a fallback may change it).
        self.group = group;
        let attempts = candidates.len().clamp(1, 3);
        let mut failed: Option<Arc<BackendState>> = None;
        for attempt in 1..=attempts {
            let Some(backend) = pick_backend(candidates, failed.as_deref()).cloned() else {
                break;
            };
            let in_flight = InFlightGuard::new(backend.clone());
            let last = attempt == attempts;
            match self.attempt(&backend, attempt == 1).await {
                Attempt::Response(exchanged) => {
                    return self.relay(exchanged, in_flight);
                }
                Attempt::TimedOut => {
                    return self.fail(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the app did not answer in time",
                    );
                }
                Attempt::Cut => {
                    return self.fail(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the app instance was stopped before answering",
                    );
                }
                Attempt::Failed(err) => {
                    if is_body_too_large(&err) {
                        return self.fail(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
                    }
                    let connect = err.is_connect();
                    if connect {
                        backend.eject(self.ctx.shared.settings.backend_ejection);
                    }
                    tracing::debug!(backend = %backend.id, error = %err, connect, "upstream attempt failed");
                    // Safe to retry: nothing was sent (the request came back), or a bodyless
                    // idempotent request whose answer never arrived.
                    let safe = match &self.outgoing {
                        Outgoing::Plain(req) => !req.sent || self.retry_after_send,
                        Outgoing::Upgrade(req) => req.is_some(),
                    };
                    if last || !safe {
                        let why = if connect {
                            "the app is not accepting connections"
                        } else {
                            "the app closed the connection without answering"
                        };
                        return self.fail(StatusCode::BAD_GATEWAY, why);
                    }
                    failed = Some(backend);
                }
            }
        }
        self.fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "no instance of the app is available",
        )
    }

    async fn attempt(&mut self, backend: &Arc<BackendState>, first: bool) -> Attempt {
        if backend.cut.is_fired() {
            return Attempt::Cut;
        }
        let limits = &self.route.limits;
        // The first attempt starts microseconds after the request: its start time stands in for
        // a clock read (a retry reads the clock for a deadline of its own).
        let now = if first { self.start } else { Instant::now() };
        let connect_timeout = limits.connect_timeout;
        let resend_ok = self.retry_after_send;
        let outgoing = &mut self.outgoing;
        let send = async move {
            match outgoing {
                Outgoing::Plain(req) => {
                    exchange::exchange(backend, now, req, resend_ok, connect_timeout)
                        .await
                        .map(|(head, body)| Exchanged::Plain(head, body))
                }
                Outgoing::Upgrade(req) => backend
                    .pool
                    .send_upgrade(req, connect_timeout, &backend.cut)
                    .await
                    .map(Exchanged::Upgrade),
            }
        };
        // Past the backend's drain deadline a waiting request is answered 504 at once. The
        // signal is registered only once the exchange has to wait.
        let cut = backend.cut.cancelled();
        tokio::pin!(send, cut);
        let mut cut_registered = false;
        let mut exchange = std::future::poll_fn(|cx| match send.as_mut().poll(cx) {
            std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
            std::task::Poll::Pending => {
                let fired = if cut_registered {
                    backend.cut.is_fired()
                } else {
                    cut_registered = true;
                    cut.as_mut().poll(cx).is_ready()
                };
                if fired {
                    std::task::Poll::Ready(None)
                } else {
                    std::task::Poll::Pending
                }
            }
        });
        let activity = &self.ctx.activity;
        let outcome = if activity.http2.load(Ordering::Relaxed) {
            // Several requests share an HTTP/2 connection: a timer each.
            tokio::time::timeout(limits.response_timeout, exchange)
                .await
                .map_err(|_| ())
        } else {
            // One request at a time: the connection task's timer (see `ConnActivity`).
            let _deadline = activity.set_response_deadline(now, limits.response_timeout);
            std::future::poll_fn(|cx| {
                if activity.response_timed_out() {
                    return std::task::Poll::Ready(Err(()));
                }
                std::pin::Pin::new(&mut exchange).poll(cx).map(Ok)
            })
            .await
        };
        match outcome {
            Err(()) => Attempt::TimedOut,
            Ok(None) => Attempt::Cut,
            Ok(Some(Err(_))) if backend.cut.is_fired() => Attempt::Cut,
            Ok(Some(Err(error))) => Attempt::Failed(error),
            Ok(Some(Ok(exchanged))) => Attempt::Response(exchanged),
        }
    }

    fn fail(&mut self, status: StatusCode, why: &str) -> Response<ProxyBody> {
        let mut resp = error_page(status, why, &self.request_id.value());
        self.record(resp.status());
        if let Some(guard) = self.guard.take() {
            resp.body_mut().set_guard(guard);
        }
        resp
    }

    /// Client-facing copy of the upstream response; upgrades become a spliced tunnel.
    fn relay(&mut self, exchanged: Exchanged, in_flight: InFlightGuard) -> Response<ProxyBody> {
        let metrics = &self.route.metrics;
        // The hop-by-hop headers a response carries (the parser leaves most out already).
        let (mut resp, hop) = match exchanged {
            Exchanged::Plain(head, body) => {
                let mut resp = Response::new(ProxyBody::upstream(body));
                *resp.status_mut() = head.status;
                *resp.headers_mut() = head.headers;
                let hop = if head.connection_names_headers {
                    HOP_CONNECTION
                } else {
                    0
                };
                (resp, hop)
            }
            Exchanged::Upgrade(mut resp) => {
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(client_upgrade) = self.client_upgrade.take() {
                        self.record(resp.status());
                        let protocol = Protocol::switched_to(resp.headers().get(header::UPGRADE));
                        let upstream_upgrade = hyper::upgrade::on(&mut resp);
                        spawn_tunnel(
                            client_upgrade,
                            upstream_upgrade,
                            protocol,
                            in_flight,
                            metrics.clone(),
                        );
                        let (mut parts, _) = resp.into_parts();
                        if let Some(cookie) = self.set_cookie.take() {
                            parts.headers.append(header::SET_COOKIE, cookie);
                        }
                        return Response::from_parts(
                            parts,
                            ProxyBody::full(Bytes::new(), self.guard.take()),
                        );
                    }
                }
                let hop = hop_mask(resp.headers());
                (resp.map(ProxyBody::hyper), hop)
            }
        };
        self.record(resp.status());
        strip_hop_by_hop(resp.headers_mut(), hop);
        if let Some(cookie) = self.set_cookie.take() {
            resp.headers_mut().append(header::SET_COOKIE, cookie);
        }
        if let Some(mut guard) = self.guard.take() {
            guard.backend = Some(in_flight);
            resp.body_mut().set_guard(guard);
        }
        // An HTTP/2 stream is reset on its own; an HTTP/1 connection would close.
        if let Outgoing::Plain(req) = &mut self.outgoing {
            if let Some(unread) = req.take_unread_body() {
                if !self.ctx.activity.http2.load(Ordering::Relaxed) {
                    unread.discard_rest();
                }
            }
        }
        resp
    }

    /// The `X-Forwarded-For`, `X-Real-IP` and `X-Request-Id` values for the upstream request.
    /// `X-Forwarded-For` is the peer's address, appended to the list the peer sent only when
    /// that list is `believed` (the `FWD_*` bits of a trusted peer).
    fn forwarding(&self, headers: &HeaderMap, believed: u8) -> Forwarding {
        let client_ip = &self.ctx.client_ip;
        let request_id = self.request_id.value();
        if believed & FWD_FOR == 0 {
            return Forwarding {
                forwarded_for: client_ip.clone(),
                real_ip: client_ip.clone(),
                request_id,
            };
        }
        let chain = forwarded_chain(headers, client_ip);
        let real_ip = if believed & FWD_REAL_IP == 0 {
            real_client(&self.ctx.shared.settings.trusted_proxies, &chain)
                .and_then(|ip| HeaderValue::from_str(&ip.to_string()).ok())
                .unwrap_or_else(|| client_ip.clone())
        } else {
            // Not sent on: the peer's own `X-Real-IP` stays.
            client_ip.clone()
        };
        Forwarding {
            forwarded_for: HeaderValue::from_bytes(&chain).unwrap_or_else(|_| client_ip.clone()),
            real_ip,
            request_id,
        }
    }
}

/// Computed forwarding header values (see [`Forward::forwarding`]).
struct Forwarding {
    forwarded_for: HeaderValue,
    real_ip: HeaderValue,
    request_id: HeaderValue,
}

/// Every `X-Forwarded-For` field of `headers` joined into one list, with `peer` appended.
fn forwarded_chain(headers: &HeaderMap, peer: &HeaderValue) -> Vec<u8> {
    let mut chain = Vec::with_capacity(64);
    for value in headers.get_all(&X_FORWARDED_FOR) {
        chain.extend_from_slice(value.as_bytes());
        chain.extend_from_slice(b", ");
    }
    chain.extend_from_slice(peer.as_bytes());
    chain
}

/// The client behind a chain of trusted proxies: walking `chain` (an `X-Forwarded-For` list)
/// from the right, the first address that is not a trusted proxy; if all are, the left-most
/// (as nginx's `real_ip_recursive`). An entry that is not an address ends the walk: the hop
/// after it is the last one known.
fn real_client(trusted_proxies: &[ipnet::IpNet], chain: &[u8]) -> Option<std::net::IpAddr> {
    let mut client = None;
    for entry in chain.rsplit(|&b| b == b',') {
        let Some(ip) = std::str::from_utf8(entry)
            .ok()
            .and_then(|e| e.trim().parse::<std::net::IpAddr>().ok())
        else {
            break;
        };
        let ip = ip.to_canonical();
        client = Some(ip);
        if !crate::spec::is_trusted_by(trusted_proxies, ip) {
            break;
        }
    }
    client
}

/// The client a request from `peer` came from, by the edge proxy's rule: `peer` itself unless
/// it is one of `trusted_proxies`, else the right-most untrusted address of its
/// `X-Forwarded-For` list (see [`ProxySettings::trusted_proxies`](crate::ProxySettings)).
/// Public so that the API resolves client addresses exactly as the proxy does.
pub fn forwarded_client(
    trusted_proxies: &[ipnet::IpNet],
    peer: std::net::IpAddr,
    headers: &HeaderMap,
) -> std::net::IpAddr {
    let peer = peer.to_canonical();
    if !crate::spec::is_trusted_by(trusted_proxies, peer) {
        return peer;
    }
    let Ok(peer_value) = HeaderValue::from_str(&peer.to_string()) else {
        return peer;
    };
    real_client(trusted_proxies, &forwarded_chain(headers, &peer_value)).unwrap_or(peer)
}

/// Origin-form request target (`/path?query`), as HTTP/1.1 sends it to a backend.
fn upstream_uri(path_and_query: PathAndQuery) -> Uri {
    // Direct: no scheme or authority to validate, unlike `Uri::from_parts`.
    Uri::from(path_and_query)
}

/// Pick the split group: the sticky cookie's group if valid, else a weighted coin flip (and a
/// cookie to remember it).
fn choose_group(split: &CompiledSplit, headers: &HeaderMap) -> (Group, Option<HeaderValue>) {
    let pinned = split
        .sticky_cookie
        .as_deref()
        .and_then(|name| cookie_value(headers, name));
    let (canary, set_cookie) = match pinned {
        Some(v) if v == &*split.canary_group => (true, false),
        Some(v) if v == &*split.primary_group => (false, false),
        _ => (
            fast_random(10_000) < split.canary_basis_points as usize,
            split.sticky_cookie.is_some(),
        ),
    };
    let (group_name, group) = if canary {
        (&split.canary_group, Group::Canary)
    } else {
        (&split.primary_group, Group::Primary)
    };
    let cookie = match (&split.sticky_cookie, set_cookie) {
        (Some(name), true) => HeaderValue::from_str(&format!(
            "{name}={group_name}; Path=/; HttpOnly; SameSite=Lax"
        ))
        .ok(),
        _ => None,
    };
    (group, cookie)
}

/// Value of cookie `name` in the request's `Cookie` headers.
fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v.trim())
        })
}

/// The `Upgrade` protocol of an HTTP/1.1 upgrade request (e.g. `websocket`).
fn upgrade_protocol<'h>(
    req: &'h Request<Incoming>,
    upgrade: Option<&'h HeaderValue>,
) -> Option<&'h HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let upgrade = upgrade?;
    let connection_says_upgrade = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    connection_says_upgrade.then_some(upgrade)
}

/// Remove the hop-by-hop headers in mask `present` (see [`hop_mask`]), including any the
/// `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap, present: u16) {
    if present == 0 {
        return;
    }
    let mut named: Vec<HeaderName> = Vec::new();
    if present & HOP_CONNECTION != 0 {
        for value in headers.get_all(header::CONNECTION) {
            // The usual values need no parsing: `keep-alive` is in the mask already.
            let v = value.as_bytes();
            if v.eq_ignore_ascii_case(b"keep-alive") {
                continue;
            }
            if v.eq_ignore_ascii_case(b"close") {
                named.push(HeaderName::from_static("close"));
                continue;
            }
            for token in value.to_str().unwrap_or("").split(',') {
                let token = token.trim();
                if token.is_empty() || token.eq_ignore_ascii_case("keep-alive") {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    if hop_bit(name.as_str()) == 0 {
                        named.push(name);
                    }
                }
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    for (i, name) in hop_by_hop().into_iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Request smuggling guards: a message must have one unambiguous framing.
fn framing_violation(facts: &HeaderFacts<'_>, version: Version) -> Option<&'static str> {
    let has_te = facts.transfer_encodings > 0;
    if has_te && facts.content_lengths > 0 {
        return Some("both Content-Length and Transfer-Encoding are present");
    }
    if facts.content_lengths > 1 {
        return Some("more than one Content-Length header");
    }
    if let Some(v) = facts.content_length {
        let ok = v
            .to_str()
            .is_ok_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
        if !ok {
            return Some("malformed Content-Length");
        }
    }
    if let Some(te) = facts.transfer_encoding {
        let only_chunked = facts.transfer_encodings == 1
            && te
                .to_str()
                .is_ok_and(|s| s.trim().eq_ignore_ascii_case("chunked"));
        if !only_chunked || version != Version::HTTP_11 {
            return Some("unsupported Transfer-Encoding");
        }
    }
    None
}

fn limit_violation(
    route: &CompiledRoute,
    req: &Request<Incoming>,
    header_bytes: usize,
) -> Option<(StatusCode, &'static str)> {
    let limits = &route.limits;
    if req.headers().len() > limits.max_header_count {
        return Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too many request headers",
        ));
    }
    if header_bytes > limits.max_header_bytes {
        return Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request headers too large",
        ));
    }
    if let (Some(max), Some(len)) = (limits.max_body_bytes, req.body().size_hint().exact()) {
        if len > max {
            return Some((StatusCode::PAYLOAD_TOO_LARGE, "request body too large"));
        }
    }
    None
}

fn is_body_too_large(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.is::<BodyTooLarge>() {
            return true;
        }
        source = e.source();
    }
    false
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Normalized request host (lowercase, no port), from the URI authority (HTTP/2, absolute
/// form) or the Host header.
fn request_host<'h>(
    req: &'h Request<Incoming>,
    host_header: Option<&'h HeaderValue>,
) -> Option<Cow<'h, str>> {
    let (raw, upper) = match req.uri().authority() {
        Some(a) => {
            let host = a.host();
            (host, host.bytes().any(|b| b.is_ascii_uppercase()))
        }
        None => scan_host_header(host_header?)?,
    };
    let raw = raw.strip_suffix('.').unwrap_or(raw);
    if raw.is_empty() {
        return None;
    }
    if upper {
        Some(Cow::Owned(raw.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(raw))
    }
}

/// The host of a `Host` header (port dropped) and whether it has uppercase letters, in one pass
/// over its bytes; `None` unless it is visible ASCII (as `HeaderValue::to_str` requires).
fn scan_host_header(value: &HeaderValue) -> Option<(&str, bool)> {
    let bytes = value.as_bytes();
    let (mut colon, mut upper) = (None, false);
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b':' => colon = Some(i),
            b'A'..=b'Z' => upper = true,
            b'\t' | 0x20..=0x7e => {}
            _ => return None,
        }
    }
    // Checked above to be ASCII, so this is only the (word-at-a-time) UTF-8 check.
    let text = std::str::from_utf8(bytes).ok()?;
    if text.starts_with('[') {
        // IPv6 literal: its colons are not a port separator.
        return Some((strip_port(text), upper));
    }
    Some((colon.map_or(text, |i| &text[..i]), upper))
}

/// A request's id: the client's `X-Request-Id` if sane, otherwise a minted one kept as its
/// counter and turned into a header value only where one is needed (once on the way upstream;
/// again only for an error page). A minted value is copied into its own allocation, and its
/// first clone would allocate again: building it where it is used avoids the clone.
#[derive(Clone)]
enum RequestId {
    Incoming(HeaderValue),
    Minted(u64),
}

impl RequestId {
    /// Keep a sane incoming `X-Request-Id`, otherwise mint a new one.
    fn of(incoming: Option<&HeaderValue>) -> Self {
        if let Some(v) = incoming {
            let b = v.as_bytes();
            if !b.is_empty()
                && b.len() <= 128
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
            {
                return Self::Incoming(v.clone());
            }
        }
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        Self::Minted(COUNTER.fetch_add(1, Ordering::Relaxed))
    }

    fn value(&self) -> HeaderValue {
        match self {
            Self::Incoming(v) => v.clone(),
            Self::Minted(n) => minted_request_id(*n),
        }
    }
}

/// 32 hex digits: a random per-process prefix and the counter `n` (unique, cheap, not
/// guessable across restarts).
fn minted_request_id(n: u64) -> HeaderValue {
    static PREFIX: OnceLock<[u8; 16]> = OnceLock::new();
    let prefix = PREFIX.get_or_init(|| hex16(rand::random::<u64>()));
    let mut buf = [0u8; 32];
    buf[..16].copy_from_slice(prefix);
    buf[16..].copy_from_slice(&hex16(n));
    HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("0"))
}

/// `word` as 16 lowercase hex digits.
fn hex16(word: u64) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = word.to_be_bytes();
    let mut out = [0u8; 16];
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    out
}

/// Small HTML error page that names the request id (for support and log correlation).
pub(crate) fn error_page(
    status: StatusCode,
    why: &str,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    let id = request_id.to_str().unwrap_or("");
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let body = format!(
        "<!doctype html>\n<html><head><title>{title}</title></head><body>\
         <h1>{title}</h1><p>{why}</p><p>Request id: <code>{id}</code></p>\
         <hr><p>gilgal</p></body></html>\n"
    );
    let mut resp = Response::new(ProxyBody::full(body, None));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(X_REQUEST_ID.clone(), request_id.clone());
    resp
}

fn https_redirect(host: &str, uri: &Uri, https_port: u16) -> Response<ProxyBody> {
    let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let location = if https_port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{https_port}{path}")
    };
    let mut resp = Response::new(ProxyBody::full(Bytes::new(), None));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Serve a file from a static route's directory (GET/HEAD only; the prefix is stripped).
async fn serve_static(
    root: &std::path::Path,
    fallback: Option<&std::path::Path>,
    route: &CompiledRoute,
    req: Request<Incoming>,
    request_id: &HeaderValue,
) -> Response<http_body_util::combinators::UnsyncBoxBody<Bytes, crate::body::BoxError>> {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    use tower_http::services::{ServeDir, ServeFile};

    let boxed = |resp: Response<ProxyBody>| resp.map(|b| b.boxed_unsync());
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = error_page(
            StatusCode::METHOD_NOT_ALLOWED,
            "static sites are read-only",
            request_id,
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return boxed(resp);
    }
    let (mut parts, _) = req.into_parts();
    if let Some(prefix) = route.prefix.as_deref() {
        let path = parts.uri.path();
        let rest = path.strip_prefix(prefix).unwrap_or(path);
        let rest = if rest.is_empty() { "/" } else { rest };
        let pq = match parts.uri.query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_string(),
        };
        match Uri::builder().path_and_query(pq).build() {
            Ok(uri) => parts.uri = uri,
            Err(_) => {
                return boxed(error_page(StatusCode::BAD_REQUEST, "bad path", request_id));
            }
        }
    }
    let (root_owned, path, fallback_owned) = (
        root.to_path_buf(),
        parts.uri.path().to_owned(),
        fallback.map(|file| root.join(file)),
    );
    let leaves = tokio::task::spawn_blocking(move || {
        leaves_static_root(&root_owned, &path, fallback_owned.as_deref())
    })
    .await
    .unwrap_or(true);
    if leaves {
        tracing::warn!(
            route = %route.id,
            path = parts.uri.path(),
            "static file refused: its path leads outside the site's directory through a symlink"
        );
        return boxed(error_page(
            StatusCode::NOT_FOUND,
            "file not found",
            request_id,
        ));
    }
    let req = Request::from_parts(parts, http_body_util::Empty::<Bytes>::new());
    let served = match fallback {
        Some(file) => ServeDir::new(root)
            .fallback(ServeFile::new(file))
            .oneshot(req)
            .await
            .map(|r| r.map(|b| b.map_err(Into::into).boxed_unsync())),
        None => ServeDir::new(root)
            .oneshot(req)
            .await
            .map(|r| r.map(|b| b.map_err(Into::into).boxed_unsync())),
    };
    match served {
        Ok(resp) if resp.status() == StatusCode::NOT_FOUND => boxed(error_page(
            StatusCode::NOT_FOUND,
            "file not found",
            request_id,
        )),
        Ok(resp) => resp,
        Err(never) => match never {},
    }
}

/// Whether answering a request for `request_path` from the static `root` would read a file
/// outside `root`: the root no longer resolves to itself (it was replaced by a link), or the
/// file `ServeDir` would open (the path itself, its `index.html`, or the fallback) resolves
/// through a symlink to somewhere else. Paths that do not exist are left to `ServeDir` (404
/// or the fallback). Checked on every request, because links can change after the build
/// checked them; the remaining window between this check and `ServeDir`'s open needs write
/// access to the release tree, which only root has.
fn leaves_static_root(
    root: &std::path::Path,
    request_path: &str,
    fallback: Option<&std::path::Path>,
) -> bool {
    use std::path::{Component, Path};
    let Ok(real_root) = root.canonicalize() else {
        return true;
    };
    if real_root != root {
        return true;
    }
    let resolves_outside = |path: &Path| match path.canonicalize() {
        Ok(real) => !real.starts_with(&real_root),
        Err(err) => {
            err.kind() != std::io::ErrorKind::NotFound && err.raw_os_error() != Some(libc::ENOTDIR)
        }
    };
    if fallback.is_some_and(resolves_outside) {
        return true;
    }
    // The file `ServeDir` maps the path to (it refuses `..`, roots and prefixes itself).
    let trimmed = request_path.trim_start_matches('/');
    let Ok(decoded) = percent_encoding::percent_decode_str(trimmed).decode_utf8() else {
        return false;
    };
    let mut file = real_root.clone();
    for component in Path::new(&*decoded).components() {
        match component {
            Component::Normal(part) => file.push(part),
            Component::CurDir => {}
            Component::Prefix(_) | Component::RootDir | Component::ParentDir => return false,
        }
    }
    resolves_outside(&file) || (file.is_dir() && resolves_outside(&file.join("index.html")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::KEEP_ALIVE;

    #[test]
    fn host_header_scan_drops_ports_and_notes_case() {
        let scan = |v: &'static str| {
            let value = HeaderValue::from_static(v);
            scan_host_header(&value).map(|(h, upper)| (h.to_string(), upper))
        };
        assert_eq!(scan("app.localhost"), Some(("app.localhost".into(), false)));
        assert_eq!(
            scan("App.Localhost:8080"),
            Some(("App.Localhost".into(), true))
        );
        assert_eq!(scan("[::1]:8080"), Some(("[::1]".into(), false)));
        assert_eq!(scan("[::1]"), Some(("[::1]".into(), false)));
        let binary = HeaderValue::from_bytes(b"app\xff.localhost").unwrap();
        assert_eq!(scan_host_header(&binary), None);
    }

    #[test]
    fn hop_by_hop_headers_and_connection_named_ones_are_stripped() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close, X-Hop"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("close", HeaderValue::from_static("1"));
        headers.insert(&KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let mask = hop_mask(&headers);
        strip_hop_by_hop(&mut headers, mask);
        let left: Vec<_> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["content-type"]);

        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        headers.insert("close", HeaderValue::from_static("1"));
        headers.insert(header::SERVER, HeaderValue::from_static("nginx"));
        let mask = hop_mask(&headers);
        strip_hop_by_hop(&mut headers, mask);
        let left: Vec<_> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["server"]);
    }
}
