//! The edge process's life: `gilgal edge` runs [`run_edge`] on the listening sockets the
//! server handed it; the server starts it with [`spawn_edge`] in its own session, so
//! signals and the death of the server never reach it.

use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gilgal_proxy::{ProxyHandle, ProxySettings};
use tokio_util::sync::CancellationToken;

use crate::admin::{serve_admin, EdgeStatus, EDGE_PROTOCOL};
use crate::{EdgeClient, EdgeError};

/// Names the descriptors of the listening sockets passed to `gilgal edge`:
/// `proxy=3` or `proxy=3,proxy-tls=4`.
pub const LISTENERS_ENV: &str = "GILGAL_EDGE_LISTENERS";

/// The proxy settings passed to `gilgal edge`, as JSON.
pub const SETTINGS_ENV: &str = "GILGAL_EDGE_SETTINGS";

/// How long a new edge holds connections at most before accepting them unasked (the
/// server opens it once recovery routed what runs; a server gone meanwhile must not leave
/// the edge closed).
const HOLD_LIMIT: Duration = Duration::from_secs(15);

/// How long a starting edge may take to answer on its admin socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Where an edge keeps its files, in one directory only root may enter.
#[derive(Debug, Clone)]
pub struct EdgePaths {
    dir: PathBuf,
}

impl EdgePaths {
    /// The edge files under `dir` (`DATA_DIR/edge`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The admin API's Unix socket.
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    /// The running edge's process id, for whoever must stop it by pid.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("edge.pid")
    }

    /// The edge's own log (its stdout and stderr).
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("edge.log")
    }

    /// A client of the edge these paths belong to.
    pub fn client(&self) -> EdgeClient {
        EdgeClient::new(self.admin_socket())
    }

    fn create_dir(&self) -> Result<(), EdgeError> {
        std::fs::create_dir_all(&self.dir)?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(())
    }
}

/// The listening sockets an edge serves.
#[derive(Debug)]
pub struct EdgeListeners {
    /// Plain HTTP.
    pub proxy: TcpListener,
    /// HTTPS, when configured.
    pub tls: Option<TcpListener>,
}

impl EdgeListeners {
    /// In `gilgal edge`: the sockets and settings the server passed. Removes both variables.
    ///
    /// Must run before any thread starts (it edits the environment).
    pub fn take_from_env() -> Result<(Self, ProxySettings), EdgeError> {
        let start = |reason: String| EdgeError::Start(reason);
        let named = std::env::var(LISTENERS_ENV).map_err(|_| {
            start(format!(
                "{LISTENERS_ENV} is not set; `gilgal edge` is started by `gilgal server`"
            ))
        })?;
        let settings =
            std::env::var(SETTINGS_ENV).map_err(|_| start(format!("{SETTINGS_ENV} is not set")))?;
        let settings: ProxySettings = serde_json::from_str(&settings)
            .map_err(|e| start(format!("{SETTINGS_ENV} is not valid settings: {e}")))?;
        // SAFETY: the caller runs this before any other thread exists.
        unsafe {
            std::env::remove_var(LISTENERS_ENV);
            std::env::remove_var(SETTINGS_ENV);
        }
        let (mut proxy, mut tls) = (None, None);
        for pair in named.split(',') {
            let (name, fd) = pair
                .split_once('=')
                .ok_or_else(|| start(format!("{LISTENERS_ENV}: {pair:?} is not name=fd")))?;
            let fd: RawFd = fd
                .parse()
                .map_err(|_| start(format!("{LISTENERS_ENV}: {fd:?} is not a descriptor")))?;
            // SAFETY: the server passed `fd` to this process for it to own, named once in
            // the variable just removed, so no other owner exists.
            let listener = unsafe { listener_from_fd(fd) }
                .map_err(|e| start(format!("descriptor {fd} ({name}): {e}")))?;
            let listener = Some(listener);
            match name {
                "proxy" => proxy = listener,
                "proxy-tls" => tls = listener,
                other => {
                    return Err(start(format!(
                        "{LISTENERS_ENV}: unknown listener {other:?}"
                    )))
                }
            }
        }
        let proxy =
            proxy.ok_or_else(|| start(format!("{LISTENERS_ENV} names no proxy listener")))?;
        Ok((Self { proxy, tls }, settings))
    }
}

/// This process's executable as `device:inode` (of the file it was started from, even if it
/// was since replaced on disk): equal for the server and an edge started from the same
/// binary, different after an upgrade.
pub fn binary_identity() -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata("/proc/self/exe") {
        Ok(meta) => format!("{}:{}", meta.dev(), meta.ino()),
        Err(_) => String::from("unknown"),
    }
}

/// Takes ownership of a passed descriptor after checking it is a listening TCP socket: the
/// one check both the server (sockets from a service manager) and the edge (sockets from
/// the server) make before serving on an inherited descriptor.
///
/// # Safety
///
/// `fd` must be open and owned by nobody else in this process: the returned listener
/// closes it when dropped.
pub unsafe fn listener_from_fd(fd: RawFd) -> std::io::Result<TcpListener> {
    let mut accepting: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `accepting`, which outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut accepting as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if accepting == 0 {
        return Err(std::io::Error::other("the socket is not listening"));
    }
    // SAFETY: the caller guarantees `fd` is open and has no other owner.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    listener.local_addr()?;
    Ok(listener)
}

/// Runs the edge until `stop` is cancelled or the admin API is asked to shut down: serves
/// the admin socket at once and the listeners once opened (`POST /v1/open`, or after 15 s),
/// then stops accepting and drains what is in flight (up to the settings' shutdown grace).
pub async fn run_edge(
    paths: &EdgePaths,
    listeners: EdgeListeners,
    settings: ProxySettings,
    stop: CancellationToken,
) -> Result<(), EdgeError> {
    paths.create_dir()?;
    let socket = paths.admin_socket();
    if paths.client().status().await.is_ok() {
        return Err(EdgeError::Start(format!(
            "another edge already answers on {}",
            socket.display()
        )));
    }
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    listeners.proxy.set_nonblocking(true)?;
    let proxy_listener = tokio::net::TcpListener::from_std(listeners.proxy)?;
    let tls_listener = match listeners.tls {
        Some(listener) => {
            listener.set_nonblocking(true)?;
            Some(tokio::net::TcpListener::from_std(listener)?)
        }
        None => None,
    };
    let status = EdgeStatus {
        protocol: EDGE_PROTOCOL,
        pid: std::process::id(),
        proxy_addr: proxy_listener.local_addr()?,
        tls_addr: tls_listener.as_ref().map(|l| l.local_addr()).transpose()?,
        settings: settings.clone(),
        binary: binary_identity(),
    };
    let proxy = ProxyHandle::new(settings);
    let (open_tx, open_rx) = tokio::sync::watch::channel(false);
    let opened = move || {
        let mut open = open_rx.clone();
        async move {
            let _ = tokio::time::timeout(HOLD_LIMIT, open.wait_for(|open| *open)).await;
        }
    };
    let mut serving = tokio::task::JoinSet::new();
    {
        let (proxy, stop, opened) = (proxy.clone(), stop.clone(), opened());
        serving.spawn(async move {
            opened.await;
            gilgal_proxy::serve(proxy_listener, proxy, stop.cancelled_owned()).await
        });
    }
    if let Some(listener) = tls_listener {
        let (proxy, stop, opened) = (proxy.clone(), stop.clone(), opened());
        serving.spawn(async move {
            opened.await;
            gilgal_proxy::serve_tls(listener, proxy, stop.cancelled_owned()).await
        });
    }
    let admin_listener = tokio::net::UnixListener::bind(&socket)?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    write_pid_file(&paths.pid_file())?;
    tracing::info!(
        proxy = %status.proxy_addr,
        tls = ?status.tls_addr,
        admin = %socket.display(),
        "gilgal edge ready"
    );
    // The admin API keeps answering while the edge drains; its streams (the access log)
    // never end on their own, so it is cut once the listeners have drained.
    let admin = tokio::spawn(serve_admin(
        admin_listener,
        proxy,
        status,
        stop.clone(),
        open_tx,
    ));
    stop.cancelled().await;
    // No new server may adopt an edge that is going away.
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(paths.pid_file());
    tracing::info!("gilgal edge stopping: draining requests in flight");
    while let Some(joined) = serving.join_next().await {
        if let Ok(Err(e)) = joined {
            tracing::warn!(error = %e, "a listener ended with an error");
        }
    }
    admin.abort();
    tracing::info!("gilgal edge stopped");
    Ok(())
}

fn write_pid_file(path: &Path) -> Result<(), EdgeError> {
    use std::io::Write;
    let temp = path.with_extension("pid.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    writeln!(file, "{}", std::process::id())?;
    file.sync_all()?;
    std::fs::rename(&temp, path)?;
    Ok(())
}

/// Starts `exe edge` in its own session on `listeners` (passed as descriptors 3 and 4),
/// logging to the edge's log file, and waits until its admin API answers. Returns the
/// client, what the edge says about itself, and the child (to reap it).
pub async fn spawn_edge(
    exe: &Path,
    paths: &EdgePaths,
    listeners: &EdgeListeners,
    settings: &ProxySettings,
) -> Result<(EdgeClient, EdgeStatus, tokio::process::Child), EdgeError> {
    paths.create_dir()?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(paths.log_file())?;
    let mut passed: Vec<RawFd> = vec![listeners.proxy.as_raw_fd()];
    let mut names = String::from("proxy=3");
    if let Some(tls) = &listeners.tls {
        passed.push(tls.as_raw_fd());
        names.push_str(",proxy-tls=4");
    }
    let settings_json =
        serde_json::to_string(settings).map_err(|e| EdgeError::Start(e.to_string()))?;
    let mut command = tokio::process::Command::new(exe);
    command
        .arg("edge")
        .arg("--dir")
        .arg(paths.dir())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env(LISTENERS_ENV, names)
        .env(SETTINGS_ENV, settings_json)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if let Ok(filter) = std::env::var("GILGAL_LOG") {
        command.env("GILGAL_LOG", filter);
    }
    // SAFETY: between fork and exec only async-signal-safe calls (setsid, fcntl, dup2) run,
    // over descriptors collected before the fork.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Out of the way first, so moving one to 3 cannot overwrite the other.
            let mut high: [RawFd; 2] = [-1, -1];
            for (slot, fd) in high.iter_mut().zip(passed.iter()) {
                *slot = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10);
                if *slot < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (target, fd) in (3..).zip(high.iter().take(passed.len())) {
                // dup2 clears close-on-exec on the copy: the edge inherits it.
                if libc::dup2(*fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| EdgeError::Start(format!("cannot run {} edge: {e}", exe.display())))?;
    let client = paths.client();
    let started = Instant::now();
    loop {
        if let Ok(status) = client.status().await {
            if Some(status.pid) == child.id() {
                return Ok((client, status, child));
            }
        }
        if let Ok(Some(exit)) = child.try_wait() {
            return Err(EdgeError::Start(format!(
                "the edge process exited ({exit}) before it answered; see {}",
                paths.log_file().display()
            )));
        }
        if started.elapsed() > START_TIMEOUT {
            let _ = child.start_kill();
            return Err(EdgeError::Start(format!(
                "the edge did not answer within {START_TIMEOUT:?}; see {}",
                paths.log_file().display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
