//! Listening sockets handed over by a service manager (systemd socket activation, or any
//! parent speaking its `LISTEN_FDS` protocol), so that a restarted or `kill -9`ed server
//! leaves the sockets open: connections that arrive while no server runs wait in the
//! kernel's accept queue and are served by the next one instead of being refused.
//!
//! A socket is matched to a listener by its name (`FileDescriptorName=` in a `.socket` unit):
//! `api`, `proxy` or `proxy-tls`. A listener with no inherited socket binds its address.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Context;

/// The names a `.socket` unit gives the sockets it passes, one per listener.
pub const LISTENER_NAMES: [&str; 3] = ["api", "proxy", "proxy-tls"];

/// Sockets received from the service manager, by name, until a listener takes them.
#[derive(Debug, Default)]
pub struct InheritedListeners {
    by_name: BTreeMap<String, std::net::TcpListener>,
}

impl InheritedListeners {
    /// Takes the sockets passed in `LISTEN_FDS` (if `LISTEN_PID` names this process) and
    /// removes the variables so no child inherits them; the descriptors are close-on-exec,
    /// so apps and builds never hold the edge's sockets.
    ///
    /// Must run before any thread starts (it edits the environment).
    pub fn take_from_env() -> anyhow::Result<Self> {
        // SAFETY: called first thing in `gilgal server`, before the async runtime or any
        // other thread exists, so nothing reads the environment concurrently.
        let passed = unsafe { sd_notify::listen_fds_with_names_and_unset_env() }
            .context("cannot read the sockets passed in LISTEN_FDS/LISTEN_FDNAMES")?;
        let mut by_name = BTreeMap::new();
        for (fd, name) in passed {
            if !LISTENER_NAMES.contains(&name.as_str()) {
                anyhow::bail!(
                    "a socket was passed with the name {name:?}; name each socket after the listener it serves ({}), e.g. FileDescriptorName=proxy",
                    LISTENER_NAMES.join(", ")
                );
            }
            // SAFETY: the service manager passed `fd` to this process for it to own; it is
            // read once (the environment variables are gone) so no other owner exists.
            let listener = unsafe { gilgal_edge::listener_from_fd(fd) }
                .with_context(|| format!("the socket passed as {name:?} is not a TCP listener"))?;
            if by_name.insert(name.clone(), listener).is_some() {
                anyhow::bail!("two sockets were passed with the name {name:?}");
            }
        }
        Ok(Self { by_name })
    }

    /// The address of the inherited socket named `name`, if one was passed.
    pub fn addr_of(&self, name: &str) -> Option<SocketAddr> {
        self.by_name.get(name)?.local_addr().ok()
    }

    /// Takes the inherited socket named `name` as it is, if one was passed.
    pub fn take(&mut self, name: &str) -> Option<std::net::TcpListener> {
        self.by_name.remove(name)
    }

    /// The listener named `name`: the inherited socket when one was passed (its address
    /// wins over `addr`), otherwise a new one bound to `addr`.
    pub async fn listen(
        &mut self,
        name: &str,
        addr: SocketAddr,
        what: &str,
    ) -> anyhow::Result<tokio::net::TcpListener> {
        if let Some(listener) = self.by_name.remove(name) {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tracing::info!(listener = name, addr = %listener.local_addr()?, "using the socket the service manager passed");
            return Ok(listener);
        }
        tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} for the {what}; pick another address")
        })
    }
}
