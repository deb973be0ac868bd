//! The pooled HTTP/1.1 client used to reach backends (keep-alive, no Nagle, connect timeout).

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::UpstreamBody;
use crate::spec::ProxySettings;

/// Pooled client shared by every route with the same connect timeout.
pub(crate) type UpstreamClient = Client<HttpConnector, UpstreamBody>;

/// Build a client whose pool keeps connections to backends alive between requests.
pub(crate) fn build_client(connect_timeout: Duration, settings: &ProxySettings) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(settings.upstream_idle_timeout)
        .pool_max_idle_per_host(settings.upstream_max_idle_per_backend)
        .retry_canceled_requests(true)
        .set_host(false)
        .build(connector)
}
