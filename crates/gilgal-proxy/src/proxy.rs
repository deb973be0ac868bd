//! The per-request path: route lookup, protection checks, backend choice, forwarding, retries,
//! upgrades and error pages.

use std::borrow::Cow;
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
use crate::handle::Shared;
use crate::metrics::RouteMetrics;
use crate::pool::{Lease, UpstreamError};

fn build_upstream_request(
    method: &Method,
    path_and_query: &PathAndQuery,
    headers: HeaderMap,
    body: UpstreamBody,
) -> Request<UpstreamBody> {
    let mut req = Request::new(body);
    *req.method_mut() = method.clone();
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
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one hop, never the end-to-end message (RFC 9110 §7.6.1).
fn hop_by_hop() -> [&'static HeaderName; 9] {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
    ]
}

/// What one client connection knows about itself, shared by its requests.
pub(crate) struct ConnContext {
    pub(crate) shared: Arc<Shared>,
    /// Client IP, preformatted for `X-Forwarded-For`.
    pub(crate) client_ip: HeaderValue,
    pub(crate) https: bool,
    pub(crate) activity: Arc<ConnActivity>,
    /// Raised by the connection's framing scanner when a request head was ambiguous.
    pub(crate) smuggling: Arc<std::sync::atomic::AtomicBool>,
}

/// Answer one client request (never fails: errors become pages carrying the request id),
/// and hand an access log entry to the installed sink, if any.
pub(crate) async fn handle(ctx: Arc<ConnContext>, req: Request<Incoming>) -> Response<ProxyBody> {
    if !ctx.shared.access_log.enabled() {
        return handle_request(ctx, req, &mut None).await;
    }
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let host = request_host(&req)
        .map(|h| h.into_owned())
        .unwrap_or_default();
    let client = ctx.client_ip.to_str().unwrap_or_default().to_owned();
    let mut route_id = None;
    let resp = handle_request(Arc::clone(&ctx), req, &mut route_id).await;
    if let Some(route) = route_id {
        ctx.shared.access_log.send(crate::AccessLogEntry {
            route: route.to_string(),
            method,
            path,
            host,
            status: resp.status().as_u16(),
            duration: start.elapsed(),
            client,
        });
    }
    resp
}

async fn handle_request(
    ctx: Arc<ConnContext>,
    req: Request<Incoming>,
    route_id: &mut Option<Arc<str>>,
) -> Response<ProxyBody> {
    let start = Instant::now();
    let mut guard = RequestGuard::new(ctx.activity.clone());
    let request_id = request_id(req.headers());
    let unrouted = &ctx.shared.unrouted;

    let ambiguous = ctx
        .smuggling
        .load(Ordering::Acquire)
        .then_some("conflicting Content-Length / Transfer-Encoding framing");
    if let Some(reason) = ambiguous.or_else(|| framing_violation(&req)) {
        let mut resp = error_page(StatusCode::BAD_REQUEST, reason, &request_id);
        if req.version() <= Version::HTTP_11 {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return finish(resp, unrouted, start, guard);
    }
    let Some(host) = request_host(&req) else {
        let resp = error_page(StatusCode::BAD_REQUEST, "missing Host header", &request_id);
        return finish(resp, unrouted, start, guard);
    };
    let route = {
        let table = ctx.shared.table.load();
        table.lookup(&host, req.uri().path()).cloned()
    };
    let Some(route) = route else {
        let resp = error_page(StatusCode::NOT_FOUND, "no app is served here", &request_id);
        return finish(resp, unrouted, start, guard);
    };
    guard.set_route(route.metrics.clone());
    *route_id = Some(Arc::clone(&route.id));
    let metrics = &route.metrics;

    if route.redirect_https && !ctx.https {
        let resp = https_redirect(&host, req.uri(), ctx.shared.settings.https_port);
        return finish(resp, metrics, start, guard);
    }
    if let Some((status, reason)) = limit_violation(&route, &req) {
        let mut resp = error_page(status, reason, &request_id);
        if status == StatusCode::PAYLOAD_TOO_LARGE && req.version() <= Version::HTTP_11 {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return finish(resp, metrics, start, guard);
    }

    match &route.target {
        CompiledTarget::Static { root, fallback } => {
            let resp = serve_static(root, fallback.as_deref(), &route, req, &request_id).await;
            let status = resp.status();
            metrics.record_response(status.as_u16(), start.elapsed());
            let (parts, body) = resp.into_parts();
            Response::from_parts(parts, ProxyBody::boxed(body, guard))
        }
        CompiledTarget::Upstream { all, split } => {
            let forwarded = Forwarded {
                ctx: &ctx,
                route: &route,
                request_id: &request_id,
                start,
            };
            forwarded.send(all, split.as_ref(), req, guard).await
        }
    }
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

/// One request on its way to an upstream route.
struct Forwarded<'a> {
    ctx: &'a ConnContext,
    route: &'a Arc<CompiledRoute>,
    request_id: &'a HeaderValue,
    start: Instant,
}

enum Attempt {
    Response(Response<Incoming>, Lease),
    Failed(UpstreamError, Option<Request<UpstreamBody>>),
    TimedOut,
    Cut,
}

impl Forwarded<'_> {
    async fn send(
        self,
        all: &[Arc<BackendState>],
        split: Option<&CompiledSplit>,
        mut req: Request<Incoming>,
        guard: RequestGuard,
    ) -> Response<ProxyBody> {
        let metrics = &self.route.metrics;
        let (candidates, set_cookie) = match split {
            Some(split) => choose_group(split, req.headers(), all),
            None => (all, None),
        };
        let upgrade = upgrade_protocol(&req).cloned();
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));

        let (parts, body) = req.into_parts();
        let method = parts.method;
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let host_value = match parts.uri.authority() {
            Some(a) if parts.version >= Version::HTTP_2 => {
                HeaderValue::from_str(a.as_str()).unwrap_or(HeaderValue::from_static(""))
            }
            _ => parts
                .headers
                .get(header::HOST)
                .cloned()
                .unwrap_or(HeaderValue::from_static("")),
        };
        let mut headers = parts.headers;
        self.prepare_headers(&mut headers, &host_value, upgrade.as_ref());

        let body_empty = body.is_end_stream() && upgrade.is_none();
        let body = if body_empty {
            UpstreamBody::empty()
        } else {
            UpstreamBody::new(body, self.route.limits.max_body_bytes, metrics.clone())
        };
        let attempts = candidates.len().clamp(1, 3);
        // A bodyless request can be rebuilt for a retry even after it was sent.
        let template = (body_empty && attempts > 1).then(|| headers.clone());
        let mut request = Some(build_upstream_request(
            &method,
            &path_and_query,
            headers,
            body,
        ));
        let mut failed: Option<Arc<BackendState>> = None;
        for attempt in 1..=attempts {
            let Some(backend) = pick_backend(candidates, failed.as_deref()).cloned() else {
                break;
            };
            let req = match (request.take(), &template) {
                (Some(req), _) => req,
                (None, Some(headers)) => build_upstream_request(
                    &method,
                    &path_and_query,
                    headers.clone(),
                    UpstreamBody::empty(),
                ),
                (None, None) => break,
            };
            let in_flight = InFlightGuard::new(backend.clone());
            let last = attempt == attempts;
            match self.attempt(&backend, req, upgrade.is_some()).await {
                Attempt::Response(resp, lease) => {
                    return self.relay(resp, lease, in_flight, guard, set_cookie, client_upgrade);
                }
                Attempt::TimedOut => {
                    return self.fail(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the app did not answer in time",
                        guard,
                    );
                }
                Attempt::Cut => {
                    return self.fail(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the app instance was stopped before answering",
                        guard,
                    );
                }
                Attempt::Failed(err, unsent) => {
                    if is_body_too_large(&err) {
                        return self.fail(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "request body too large",
                            guard,
                        );
                    }
                    let connect = err.is_connect();
                    if connect {
                        backend.eject(self.ctx.shared.settings.backend_ejection);
                    }
                    tracing::debug!(backend = %backend.id, error = %err, connect, "upstream attempt failed");
                    // Safe to retry: nothing was sent (the request came back), or a bodyless
                    // idempotent request whose answer never arrived.
                    let safe = unsent.is_some() || (body_empty && is_idempotent(&method));
                    if last || !safe {
                        let why = if connect {
                            "the app is not accepting connections"
                        } else {
                            "the app closed the connection without answering"
                        };
                        return self.fail(StatusCode::BAD_GATEWAY, why, guard);
                    }
                    request = unsent;
                    failed = Some(backend);
                }
            }
        }
        self.fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "no instance of the app is available",
            guard,
        )
    }

    async fn attempt(
        &self,
        backend: &BackendState,
        req: Request<UpstreamBody>,
        upgrade: bool,
    ) -> Attempt {
        let limits = &self.route.limits;
        if backend.cut.is_cancelled() {
            return Attempt::Cut;
        }
        let send = backend
            .pool
            .send(req, limits.connect_timeout, upgrade, &backend.cut);
        match tokio::time::timeout(limits.response_timeout, send).await {
            Err(_) => Attempt::TimedOut,
            Ok(Err(_)) if backend.cut.is_cancelled() => Attempt::Cut,
            Ok(Err(failure)) => Attempt::Failed(failure.error, failure.unsent),
            Ok(Ok((resp, lease))) => Attempt::Response(resp, lease),
        }
    }

    fn fail(&self, status: StatusCode, why: &str, guard: RequestGuard) -> Response<ProxyBody> {
        let resp = error_page(status, why, self.request_id);
        finish(resp, &self.route.metrics, self.start, guard)
    }

    /// Client-facing copy of the upstream response; upgrades become a spliced tunnel.
    fn relay(
        &self,
        mut resp: Response<Incoming>,
        lease: Lease,
        in_flight: InFlightGuard,
        mut guard: RequestGuard,
        set_cookie: Option<HeaderValue>,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Response<ProxyBody> {
        let metrics = &self.route.metrics;
        let status = resp.status();
        metrics.record_response(status.as_u16(), self.start.elapsed());
        if let Some(cookie) = set_cookie {
            resp.headers_mut().append(header::SET_COOKIE, cookie);
        }
        if status == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let protocol = Protocol::switched_to(resp.headers().get(header::UPGRADE));
                let upstream_upgrade = hyper::upgrade::on(&mut resp);
                spawn_tunnel(
                    client_upgrade,
                    upstream_upgrade,
                    protocol,
                    in_flight,
                    metrics.clone(),
                );
                let (parts, _) = resp.into_parts();
                return Response::from_parts(parts, ProxyBody::full(Bytes::new(), Some(guard)));
            }
        }
        strip_hop_by_hop(resp.headers_mut());
        guard.backend = Some(in_flight);
        guard.lease = Some(lease);
        let (parts, body) = resp.into_parts();
        Response::from_parts(parts, ProxyBody::upstream(body, guard))
    }

    fn prepare_headers(
        &self,
        headers: &mut HeaderMap,
        host_value: &HeaderValue,
        upgrade: Option<&HeaderValue>,
    ) {
        let upgrade = upgrade.cloned();
        strip_hop_by_hop(headers);
        // Room for the forwarding headers in one growth instead of several.
        headers.reserve(5);
        if let Some(protocol) = upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol);
        }
        let xff = match headers.get(&X_FORWARDED_FOR) {
            Some(prev) => {
                let mut joined = Vec::with_capacity(prev.len() + 2 + self.ctx.client_ip.len());
                joined.extend_from_slice(prev.as_bytes());
                joined.extend_from_slice(b", ");
                joined.extend_from_slice(self.ctx.client_ip.as_bytes());
                HeaderValue::from_bytes(&joined).unwrap_or_else(|_| self.ctx.client_ip.clone())
            }
            None => self.ctx.client_ip.clone(),
        };
        headers.insert(X_FORWARDED_FOR.clone(), xff);
        let proto = if self.ctx.https { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
        headers.insert(X_FORWARDED_HOST.clone(), host_value.clone());
        if !headers.contains_key(header::HOST) {
            headers.insert(header::HOST, host_value.clone());
        }
        headers.insert(X_REQUEST_ID.clone(), self.request_id.clone());
    }
}

/// Origin-form request target (`/path?query`), as HTTP/1.1 sends it to a backend.
fn upstream_uri(path_and_query: &PathAndQuery) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(path_and_query.clone());
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
}

/// Pick the split group: the sticky cookie's group if valid, else a weighted coin flip (and a
/// cookie to remember it).
fn choose_group<'a>(
    split: &'a CompiledSplit,
    headers: &HeaderMap,
    all: &'a [Arc<BackendState>],
) -> (&'a [Arc<BackendState>], Option<HeaderValue>) {
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
    let (group_name, group, other) = if canary {
        (&split.canary_group, &split.canary, &split.primary)
    } else {
        (&split.primary_group, &split.primary, &split.canary)
    };
    let chosen: &[Arc<BackendState>] = if !group.is_empty() {
        group
    } else if !other.is_empty() {
        other
    } else {
        all
    };
    let cookie = match (&split.sticky_cookie, set_cookie) {
        (Some(name), true) => HeaderValue::from_str(&format!(
            "{name}={group_name}; Path=/; HttpOnly; SameSite=Lax"
        ))
        .ok(),
        _ => None,
    };
    (chosen, cookie)
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
fn upgrade_protocol(req: &Request<Incoming>) -> Option<&HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let upgrade = req.headers().get(header::UPGRADE)?;
    let connection_says_upgrade = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    connection_says_upgrade.then_some(upgrade)
}

/// Remove hop-by-hop headers, including any the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Usually none is present: one pass over the keys beats ten hashed removals.
    let hop = hop_by_hop();
    if !headers.keys().any(|k| hop.contains(&k)) {
        return;
    }
    if let Some(connection) = headers.get(header::CONNECTION) {
        let named: Vec<HeaderName> = connection
            .to_str()
            .unwrap_or("")
            .split(',')
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in hop_by_hop() {
        headers.remove(name);
    }
}

/// Request smuggling guards: a message must have one unambiguous framing.
fn framing_violation(req: &Request<Incoming>) -> Option<&'static str> {
    let headers = req.headers();
    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter().peekable();
    let has_te = te.peek().is_some();
    let mut cl = headers.get_all(header::CONTENT_LENGTH).iter();
    let first_cl = cl.next();
    if has_te && first_cl.is_some() {
        return Some("both Content-Length and Transfer-Encoding are present");
    }
    if cl.next().is_some() {
        return Some("more than one Content-Length header");
    }
    if let Some(v) = first_cl {
        let ok = v
            .to_str()
            .is_ok_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
        if !ok {
            return Some("malformed Content-Length");
        }
    }
    if has_te {
        let values: Vec<&HeaderValue> = te.collect();
        let only_chunked = values.len() == 1
            && values[0]
                .to_str()
                .is_ok_and(|s| s.trim().eq_ignore_ascii_case("chunked"));
        if !only_chunked || req.version() != Version::HTTP_11 {
            return Some("unsupported Transfer-Encoding");
        }
    }
    None
}

fn limit_violation(
    route: &CompiledRoute,
    req: &Request<Incoming>,
) -> Option<(StatusCode, &'static str)> {
    let limits = &route.limits;
    let headers = req.headers();
    if headers.len() > limits.max_header_count {
        return Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too many request headers",
        ));
    }
    let header_bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
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
fn request_host(req: &Request<Incoming>) -> Option<Cow<'_, str>> {
    let raw = match req.uri().authority() {
        Some(a) => a.host(),
        None => strip_port(req.headers().get(header::HOST)?.to_str().ok()?),
    };
    let raw = raw.strip_suffix('.').unwrap_or(raw);
    if raw.is_empty() {
        return None;
    }
    if raw.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(raw.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(raw))
    }
}

/// Keep a sane incoming `X-Request-Id`, otherwise mint a new one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
        {
            return v.clone();
        }
    }
    new_request_id()
}

/// 32 hex digits: a random per-process prefix and a counter (unique, cheap, not guessable
/// across restarts).
fn new_request_id() -> HeaderValue {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(rand::random::<u64>);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut buf = [0u8; 32];
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, word) in [prefix, n].into_iter().enumerate() {
        for j in 0..16 {
            buf[i * 16 + j] = HEX[((word >> (60 - 4 * j)) & 0xf) as usize];
        }
    }
    HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("0"))
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
