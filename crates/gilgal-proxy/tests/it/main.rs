//! Integration tests of the edge proxy with real upstream servers and real sockets.

mod live;
mod protection;
mod routing;
mod support;
mod tls_static;
mod upstream_h1;
mod ws_drain;
