//! [`DockerRuntime`]: the [`Runtime`](gilgal_runtime::Runtime) trait over dockerd, held to the process runtime's
//! semantics by sharing its skeleton: the registry, log tail, broadcasts, recovery decision
//! and supervisor loop (restart policy, backoff, stops, one-off runs) come from
//! [`gilgal_runtime::host`]; this module is the Docker driver (`DockerDriver`) and what only
//! Docker has (container bodies, labels, the log pump with its cursors, stats).
//!
//! - **One container per instance**, created with Gilgal's labels (see [`crate::labels`]) and
//!   Docker's restart policy `no`: Gilgal supervises itself, because Docker's own backoff
//!   (100 ms doubling to 1 min, reset after 10 s up) does not match Gilgal's (1 s doubling to
//!   5 min, reset after 10 min up). A restart is `docker start` of the *same* container, so
//!   the instance id (= the full container id) never changes.
//! - **Supervision** waits on the wait API (`condition=not-running`) per instance; exits are
//!   read from `inspect` (exit code, OOM flag, start/finish times).
//! - **Stop** is the stop API with `t = grace` (rounded up to whole seconds): Docker sends
//!   SIGTERM (or the image's STOPSIGNAL), waits, then SIGKILLs. Containers run with Docker's
//!   init (tini) as PID 1, so apps get signals as they would outside a container.
//! - **Logs** are followed through the logs API with Docker's timestamps; the container's log
//!   driver keeps them (`local` driver, rotated), so nothing is lost while the server is down.
//! - **Ports:** a web instance listens on `$PORT` inside the container, and the same port is
//!   published on `127.0.0.1:$PORT` of the host, where the proxy connects. See the crate docs
//!   about TCP health checks through Docker's userland proxy.
//! - **Re-adoption:** [`DockerRuntime::new`] lists containers by label; running ones are
//!   adopted (same id, no restart), stopped ones are classified from the small record kept in
//!   the state dir ([`crate::record`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, HostConfig, HostConfigLogConfig, Mount,
    MountType, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptions, KillContainerOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, StatsOptions, StopContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use gilgal_runtime::host::{
    check_working_dir, create_state_dir, lock, lock_state_dir, lost_exit, Begin, ControlReceiver,
    Hosted, HostedRuntime, InstanceCore, InstanceDriver, InstanceHub, Lifecycle, OneoffSinks,
    RunEnd, StartFailure,
};
use gilgal_runtime::{
    BackoffPolicy, ExitInfo, InstanceId, InstanceLabels, InstanceSpec, InstanceState,
    InstanceStatus, LogLine, ResourceStats, RestartPolicy, RuntimeError, RuntimeEventKind,
};
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::sleep;

use crate::error::{is_conflict, is_not_found, runtime_error};
use crate::image::render_image_template;
use crate::labels::{self, container_labels, container_name, parse_labels, Kind};
use crate::logs::LineSplitter;
use crate::record::{self, Record};

type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// How long to wait for the log stream of a just-exited container to end, so the crash
/// reason is in `log_tail` before the exit is reported.
const LOG_DRAIN_WAIT: Duration = Duration::from_secs(3);
/// Pause before asking dockerd again after it failed to answer (e.g. while it restarts).
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How often the log cursor is persisted (at most).
const CURSOR_SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// Where an instance's working directory comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WorkingDirMode {
    /// The image's `WORKDIR` (where a Dockerfile put the app); `InstanceSpec::working_dir` is
    /// ignored. For images built from the app's source (the Docker pipeline).
    #[default]
    Image,
    /// `InstanceSpec::working_dir` is bind-mounted read-only at the same path and used as the
    /// working directory: runs a natively built release inside a base image (and the tests'
    /// fixtures).
    BindMount,
}

/// Tunables of the Docker runtime; `Default` gives the production values.
#[derive(Debug, Clone)]
pub struct DockerRuntimeConfig {
    /// Separates runtimes sharing one dockerd (two servers, parallel tests): only containers
    /// labelled with this namespace are listed, adopted or swept. `[a-z0-9-]`, 1-32 chars.
    pub namespace: String,
    /// The image an instance runs, with `{app}`, `{env}`, `{release}` and `{process_type}`
    /// replaced from its labels. Default [`crate::DEFAULT_IMAGE_TEMPLATE`]
    /// (`gilgal/app-{app}-{env}:v{release}`), the tag [`crate::app_image_tag`] builds. A
    /// template without placeholders runs every instance in one image.
    pub image_template: String,
    /// Working directory of instances.
    pub working_dir: WorkingDirMode,
    /// Host address ports are published on; loopback, because only the proxy on this host
    /// should reach apps.
    pub publish_ip: IpAddr,
    /// Restart backoff for crashed instances (same policy as the process runtime).
    pub backoff: BackoffPolicy,
    /// Log lines kept in memory per instance for [`Runtime::log_tail`](gilgal_runtime::Runtime::log_tail).
    pub log_ring_lines: usize,
    /// Capacity of the log and event broadcast channels.
    pub channel_capacity: usize,
    /// Docker network to attach containers to (a user-defined network shared with add-on
    /// containers); `None` is Docker's default bridge.
    pub network: Option<String>,
    /// `/etc/hosts` additions; the default makes `host.docker.internal` the host, so apps
    /// reach add-ons listening on the host.
    pub extra_hosts: Vec<String>,
    /// Run containers with `no-new-privileges` (setuid binaries cannot raise privileges).
    pub no_new_privileges: bool,
    /// Log driver options: each instance keeps at most `max-file` files of `max-size` in
    /// Docker's `local` log driver.
    pub log_max_size: String,
    /// See `log_max_size`.
    pub log_max_files: u32,
}

impl Default for DockerRuntimeConfig {
    fn default() -> Self {
        DockerRuntimeConfig {
            namespace: "default".to_owned(),
            image_template: crate::image::DEFAULT_IMAGE_TEMPLATE.to_owned(),
            working_dir: WorkingDirMode::Image,
            publish_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            backoff: BackoffPolicy::default(),
            log_ring_lines: 500,
            channel_capacity: 4096,
            network: None,
            extra_hosts: vec!["host.docker.internal:host-gateway".to_owned()],
            no_new_privileges: true,
            log_max_size: "20m".to_owned(),
            log_max_files: 5,
        }
    }
}

/// Mutable state of one instance.
#[derive(Debug)]
struct Shared {
    record: Record,
    pid: Option<u32>,
    started_at: Option<OffsetDateTime>,
    adopted: bool,
    cursor_saved_at: Option<Instant>,
}

/// One container the runtime knows (public only as the runtime's
/// [`gilgal_runtime::host::HostedRuntime::Entry`]).
pub struct Entry {
    core: InstanceCore,
    port: Option<u16>,
    shared: Mutex<Shared>,
    /// Bumped after every successful `docker start`; the log pump follows each run.
    log_generation: watch::Sender<u64>,
    /// The last generation whose log stream ended (all its lines delivered).
    log_drained: watch::Sender<u64>,
    /// The log pump task, aborted on `remove`.
    pump: Mutex<Option<AbortHandle>>,
}

impl Hosted for Entry {
    fn core(&self) -> &InstanceCore {
        &self.core
    }

    fn status(&self) -> InstanceStatus {
        let shared = lock(&self.shared);
        let lifecycle = &shared.record.lifecycle;
        let pid = shared
            .pid
            .filter(|_| lifecycle.state == InstanceState::Running);
        self.core
            .status(lifecycle, pid, self.port, shared.started_at, shared.adopted)
    }
}

/// State shared by the runtime handle and its tasks.
struct Inner {
    docker: Docker,
    state_dir: PathBuf,
    config: DockerRuntimeConfig,
    /// The instances, their log tails and the log/event broadcasts.
    hub: Arc<InstanceHub<Entry>>,
}

impl Inner {
    /// Changes an instance's record and persists it (instances only; one-off runs are swept
    /// by label after a crash and need no record).
    fn update(&self, entry: &Entry, change: impl FnOnce(&mut Record)) {
        let mut shared = lock(&entry.shared);
        change(&mut shared.record);
        if entry.core.kind == Kind::Instance {
            if let Err(err) = record::save(&self.state_dir, &shared.record) {
                tracing::error!(instance = %entry.core.id, error = %err, "cannot persist container record");
            }
        }
    }

    /// Removes an instance from memory, disk and dockerd.
    async fn forget(&self, id: &InstanceId) {
        if let Some(entry) = self.hub.remove(id) {
            if let Some(pump) = lock(&entry.pump).take() {
                pump.abort();
            }
        }
        record::delete(&self.state_dir, id);
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match self
            .docker
            .remove_container(id.as_str(), Some(options))
            .await
        {
            Ok(()) => {}
            Err(err) if is_not_found(&err) => {}
            Err(err) => tracing::warn!(instance = %id, error = %err, "cannot remove container"),
        }
    }

    /// `docker start`, then reads the pid and start time; bumps the log generation.
    async fn start_container(&self, entry: &Entry) -> Result<(), BollardError> {
        self.docker
            .start_container(entry.core.id.as_str(), None)
            .await?;
        let (pid, started_at) = match self
            .docker
            .inspect_container(entry.core.id.as_str(), None)
            .await
        {
            Ok(info) => (container_pid(&info), container_started_at(&info)),
            Err(err) => {
                tracing::warn!(instance = %entry.core.id, error = %err, "cannot inspect started container");
                (None, Some(OffsetDateTime::now_utc()))
            }
        };
        {
            let mut shared = lock(&entry.shared);
            shared.pid = pid;
            shared.started_at = started_at.or_else(|| Some(OffsetDateTime::now_utc()));
            shared.adopted = false;
        }
        self.update(entry, |record| {
            record.lifecycle.state = InstanceState::Running;
            record.lifecycle.stop_deadline = None;
        });
        entry
            .log_generation
            .send_modify(|generation| *generation += 1);
        let restarts = lock(&entry.shared).record.lifecycle.restarts;
        self.hub.emit(
            &entry.core,
            RuntimeEventKind::Started {
                pid: pid.unwrap_or(0),
                restarts,
            },
        );
        Ok(())
    }

    /// How the container's last run ended, from `inspect`.
    async fn read_exit(&self, entry: &Entry, stop_requested: bool) -> ExitInfo {
        match self
            .docker
            .inspect_container(entry.core.id.as_str(), None)
            .await
        {
            Ok(info) => exit_from_inspect(&info, stop_requested),
            Err(err) => lost_exit(&format!("exit status unknown: {err}")),
        }
    }

    /// Waits (briefly) until the log stream of the current run has ended, so its last lines
    /// are delivered before the exit is reported.
    async fn drain_logs(&self, entry: &Entry) {
        let generation = *entry.log_generation.borrow();
        let mut drained = entry.log_drained.subscribe();
        let _ = tokio::time::timeout(LOG_DRAIN_WAIT, drained.wait_for(|done| *done >= generation))
            .await;
    }
}

/// The Docker [`Runtime`](gilgal_runtime::Runtime). Dropping it detaches: supervision stops, containers keep running,
/// exactly as if the server had been killed; a new `DockerRuntime` with the same state dir
/// and namespace re-adopts them. [`Runtime::shutdown`](gilgal_runtime::Runtime::shutdown) stops them instead.
pub struct DockerRuntime {
    inner: Arc<Inner>,
    /// Exclusive `flock` on `<state_dir>/runtime.lock`: two servers must never supervise the
    /// same containers.
    _lock: std::fs::File,
}

impl std::fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRuntime")
            .field("state_dir", &self.inner.state_dir)
            .field("namespace", &self.inner.config.namespace)
            .finish_non_exhaustive()
    }
}

impl Drop for DockerRuntime {
    fn drop(&mut self) {
        self.inner.hub.abort_tasks();
        for entry in self.inner.hub.entries() {
            if let Some(pump) = lock(&entry.pump).take() {
                pump.abort();
            }
        }
    }
}

impl DockerRuntime {
    /// Opens the runtime: `state_dir` (created 0700) holds one small record per container;
    /// containers of `config.namespace` found in dockerd are re-adopted (running), restarted
    /// (died while the server was down, per their restart policy), finished stopping, or
    /// removed (one-off runs nobody waits for any more). Must be called inside Tokio.
    pub async fn new(
        docker: Docker,
        state_dir: impl Into<PathBuf>,
        config: DockerRuntimeConfig,
    ) -> Result<Self> {
        validate_namespace(&config.namespace)?;
        let state_dir = state_dir.into();
        create_state_dir(&record::records_dir(&state_dir))?;
        let lock_file = lock_state_dir(&state_dir).await?;
        // Ports are published on `publish_ip`: that is where the edge reaches containers.
        let hub = Arc::new(InstanceHub::new(
            config.channel_capacity,
            config.log_ring_lines,
            config.publish_ip,
        ));
        let runtime = DockerRuntime {
            inner: Arc::new(Inner {
                docker,
                state_dir,
                config,
                hub,
            }),
            _lock: lock_file,
        };
        runtime.recover().await?;
        Ok(runtime)
    }

    /// The directory holding container records.
    pub fn state_dir(&self) -> &Path {
        &self.inner.state_dir
    }

    /// The dockerd client, e.g. to build images with [`crate::build_image`].
    pub fn docker(&self) -> &Docker {
        &self.inner.docker
    }

    /// The image an instance with these labels runs (the configured template filled in).
    pub fn image_for(&self, labels: &InstanceLabels) -> String {
        render_image_template(&self.inner.config.image_template, labels)
    }

    /// The container's own address on its Docker network (`<container ip>:<port>`), which
    /// answers TCP connects only once the app listens. Prefer it over the published
    /// `127.0.0.1:<port>` for TCP health probes when dockerd runs its userland proxy (the
    /// default), which accepts connections on the published port before the app is up.
    pub async fn container_addr(&self, id: &InstanceId) -> Result<Option<SocketAddr>> {
        let entry = self.inner.hub.get(id)?;
        let Some(port) = entry.port else {
            return Ok(None);
        };
        let info = self
            .inner
            .docker
            .inspect_container(id.as_str(), None)
            .await
            .map_err(|err| runtime_error(format!("inspecting container {id}"), err))?;
        let networks = info
            .network_settings
            .and_then(|settings| settings.networks)
            .unwrap_or_default();
        let ip = networks
            .values()
            .filter_map(|network| network.ip_address.as_deref())
            .find_map(|ip| ip.parse::<IpAddr>().ok());
        Ok(ip.map(|ip| SocketAddr::new(ip, port)))
    }

    fn new_entry(
        &self,
        id: InstanceId,
        parsed: &labels::ParsedLabels,
        record: Record,
        adopted: bool,
    ) -> (Arc<Entry>, ControlReceiver) {
        let (core, control) = InstanceCore::new(
            id,
            parsed.kind,
            parsed.labels.clone(),
            parsed.restart,
            self.inner.hub.edge_ip(),
        );
        let (log_generation, _) = watch::channel(0);
        let (log_drained, _) = watch::channel(0);
        let entry = Arc::new(Entry {
            core,
            port: parsed.port,
            shared: Mutex::new(Shared {
                record,
                pid: None,
                started_at: None,
                adopted,
                cursor_saved_at: None,
            }),
            log_generation,
            log_drained,
            pump: Mutex::new(None),
        });
        (entry, control)
    }

    /// Starts the instance's log pump and its supervisor.
    fn launch(
        &self,
        entry: Arc<Entry>,
        control: ControlReceiver,
        begin: Begin<()>,
        oneoff: Option<OneoffSinks>,
    ) {
        let (oneoff_lines, oneoff_exit) = OneoffSinks::split(oneoff);
        let pump = tokio::spawn(pump_logs(self.inner.clone(), entry.clone(), oneoff_lines));
        *lock(&entry.pump) = Some(pump.abort_handle());
        let driver = DockerDriver {
            inner: self.inner.clone(),
            entry: entry.clone(),
        };
        let backoff = self.inner.config.backoff;
        let supervisor = self
            .inner
            .hub
            .supervisor(driver, entry, backoff, control, oneoff_exit);
        self.inner.hub.launch(supervisor, begin);
    }

    /// Lists this namespace's containers and takes each over.
    async fn recover(&self) -> Result<()> {
        let mut filters = HashMap::new();
        filters.insert(
            "label".to_owned(),
            vec![
                format!("{}=true", labels::LABEL_MANAGED),
                format!(
                    "{}={}",
                    labels::LABEL_NAMESPACE,
                    self.inner.config.namespace
                ),
            ],
        );
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let containers = self
            .inner
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|err| runtime_error("listing Gilgal's containers", err))?;
        let mut seen = Vec::new();
        for summary in containers {
            let Some(id) = summary
                .id
                .as_deref()
                .and_then(|id| InstanceId::parse(id).ok())
            else {
                continue;
            };
            let Some(parsed) = summary.labels.as_ref().and_then(parse_labels) else {
                tracing::warn!(container = %id, "container has malformed Gilgal labels; left alone");
                continue;
            };
            seen.push(id.clone());
            if let Err(err) = self.recover_one(id.clone(), parsed).await {
                tracing::error!(instance = %id, error = %err, "cannot recover container");
            }
        }
        // Records whose container is gone (removed outside Gilgal): nothing to supervise.
        for id in record::list(&self.inner.state_dir) {
            if !seen.contains(&id) {
                tracing::warn!(instance = %id, "container of this record is gone; record dropped");
                record::delete(&self.inner.state_dir, &id);
            }
        }
        Ok(())
    }

    async fn recover_one(&self, id: InstanceId, parsed: labels::ParsedLabels) -> Result<()> {
        if parsed.kind == Kind::Oneoff {
            // Nobody is waiting for its output any more: end it.
            let options = RemoveContainerOptions {
                force: true,
                ..Default::default()
            };
            if let Err(err) = self
                .inner
                .docker
                .remove_container(id.as_str(), Some(options))
                .await
            {
                if !is_not_found(&err) {
                    return Err(runtime_error(
                        format!("removing one-off container {id}"),
                        err,
                    ));
                }
            }
            tracing::info!(instance = %id, "removed one-off container left by a previous server");
            return Ok(());
        }
        let info = self
            .inner
            .docker
            .inspect_container(id.as_str(), None)
            .await
            .map_err(|err| runtime_error(format!("inspecting container {id}"), err))?;
        let running = info
            .state
            .as_ref()
            .and_then(|state| state.running)
            .unwrap_or(false);
        let record =
            record::load(&self.inner.state_dir, &id)?.unwrap_or_else(|| Record::new(id.clone()));
        let lifecycle = record.lifecycle.clone();
        let (entry, control) = self.new_entry(id.clone(), &parsed, record, running);
        {
            let mut shared = lock(&entry.shared);
            shared.pid = container_pid(&info);
            shared.started_at = container_started_at(&info);
        }
        // The log stream of the current (or last) run is delivered from the saved cursor.
        entry.log_generation.send_replace(1);
        self.inner.hub.insert(entry.clone());
        let pid = container_pid(&info).unwrap_or(0);
        let lost = || {
            let exit = exit_from_inspect(&info, false);
            let reason = format!(
                "container was not running when the server restarted ({})",
                exit.describe()
            );
            (reason, exit)
        };
        let mark_running = || {
            self.inner.update(&entry, |record| {
                record.lifecycle.state = InstanceState::Running;
            });
        };
        let live = running.then_some(());
        match self
            .inner
            .hub
            .recover(&entry, &lifecycle, live, pid, lost, mark_running)
        {
            Ok(begin) => self.launch(entry, control, begin, None),
            Err(Some(())) => {
                // Someone started it behind our back; it should not run.
                tracing::warn!(instance = %id, "stopped instance was running again; stopping it");
                let stop = Begin::FinishStop(Some(()), Duration::from_secs(10));
                self.launch(entry, control, stop, None);
            }
            Err(None) => {
                // Nothing to supervise; keep it listed, with its log tail.
                let pump = tokio::spawn(pump_logs(self.inner.clone(), entry.clone(), None));
                *lock(&entry.pump) = Some(pump.abort_handle());
            }
        }
        Ok(())
    }

    /// Builds the container creation body from a spec.
    fn create_body(&self, spec: &InstanceSpec, kind: Kind, image: String) -> ContainerCreateBody {
        let config = &self.inner.config;
        let mut env: Vec<String> = spec
            .env
            .iter()
            .filter(|(key, _)| key.as_str() != "PORT")
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        if let Some(port) = spec.port {
            env.push(format!("PORT={port}"));
        }
        let mut host = HostConfig {
            init: Some(true),
            log_config: Some(HostConfigLogConfig {
                typ: Some("local".to_owned()),
                config: Some(HashMap::from([
                    ("max-size".to_owned(), config.log_max_size.clone()),
                    ("max-file".to_owned(), config.log_max_files.to_string()),
                ])),
            }),
            extra_hosts: (!config.extra_hosts.is_empty()).then(|| config.extra_hosts.clone()),
            network_mode: config.network.clone(),
            security_opt: config
                .no_new_privileges
                .then(|| vec!["no-new-privileges:true".to_owned()]),
            ..Default::default()
        };
        let limits = &spec.limits;
        if let Some(mb) = limits.memory_mb {
            let bytes = i64::try_from(mb.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX);
            host.memory = Some(bytes);
            // No swap on top: the limit is the limit, as with the process runtime's cgroup.
            host.memory_swap = Some(bytes);
        }
        if let Some(shares) = limits.cpu_shares {
            host.cpu_shares = Some(i64::try_from(shares).unwrap_or(i64::MAX));
        }
        if let Some(millicores) = limits.cpu_millicores {
            host.nano_cpus =
                Some(i64::try_from(millicores.saturating_mul(1_000_000)).unwrap_or(i64::MAX));
        }
        if let Some(pids) = limits.max_pids {
            host.pids_limit = Some(i64::try_from(pids).unwrap_or(i64::MAX));
        }
        let mut exposed = None;
        if let Some(port) = spec.port {
            let key = format!("{port}/tcp");
            host.port_bindings = Some(HashMap::from([(
                key.clone(),
                Some(vec![PortBinding {
                    host_ip: Some(config.publish_ip.to_string()),
                    host_port: Some(port.to_string()),
                }]),
            )]));
            exposed = Some(vec![key]);
        }
        let mut working_dir = None;
        if config.working_dir == WorkingDirMode::BindMount {
            let path = spec.working_dir.to_string_lossy().into_owned();
            host.mounts = Some(vec![Mount {
                target: Some(path.clone()),
                source: Some(path.clone()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            }]);
            working_dir = Some(path);
        }
        ContainerCreateBody {
            image: Some(image),
            cmd: Some(spec.argv.clone()),
            env: Some(env),
            working_dir,
            labels: Some(container_labels(
                &config.namespace,
                kind,
                &spec.labels,
                spec.port,
                spec.restart,
            )),
            exposed_ports: exposed,
            tty: Some(false),
            open_stdin: Some(false),
            attach_stdin: Some(false),
            attach_stdout: Some(false),
            attach_stderr: Some(false),
            host_config: Some(host),
            ..Default::default()
        }
    }

    /// Creates and starts a container; on failure nothing is left behind.
    async fn create_and_start(
        &self,
        spec: InstanceSpec,
        kind: Kind,
        oneoff: Option<OneoffSinks>,
    ) -> Result<Arc<Entry>> {
        spec.validate()?;
        if self.inner.config.working_dir == WorkingDirMode::BindMount {
            check_working_dir(&spec.working_dir)?;
        }
        let image = spec
            .image
            .clone()
            .unwrap_or_else(|| self.image_for(&spec.labels));
        let program = spec.argv.first().cloned().unwrap_or_default();
        let spawn_error = |message: String| RuntimeError::Spawn {
            program: program.clone(),
            working_dir: spec.working_dir.clone(),
            source: std::io::Error::other(message),
        };
        let name = container_name(&self.inner.config.namespace, kind, &spec.labels);
        let body = self.create_body(&spec, kind, image.clone());
        let options = CreateContainerOptions {
            name: Some(name),
            ..Default::default()
        };
        let created = match self
            .inner
            .docker
            .create_container(Some(options), body)
            .await
        {
            Ok(created) => created,
            Err(err) if is_not_found(&err) => {
                return Err(spawn_error(format!(
                    "image {image} does not exist on this Docker host; build it first \
                     (gilgal_docker::build_image) or check the runtime's image template ({err})"
                )))
            }
            Err(err) => return Err(spawn_error(format!("creating the container failed: {err}"))),
        };
        let id = InstanceId::parse(&created.id).map_err(|_| {
            spawn_error(format!(
                "dockerd returned an unusable container id {:?}",
                created.id
            ))
        })?;
        let parsed = labels::ParsedLabels {
            kind,
            labels: spec.labels.clone(),
            port: spec.port,
            restart: spec.restart,
        };
        let (entry, control) = self.new_entry(id.clone(), &parsed, Record::new(id.clone()), false);
        // Record first (state Starting), so a crash between here and `start` leaves a record
        // the next server run reads as "should run".
        self.inner.update(&entry, |_| {});
        self.inner.hub.insert(entry.clone());
        if let Err(err) = self.inner.start_container(&entry).await {
            self.inner.forget(&id).await;
            return Err(spawn_error(format!("starting the container failed: {err}")));
        }
        self.launch(entry.clone(), control, Begin::Watch(()), oneoff);
        Ok(entry)
    }
}

fn validate_namespace(namespace: &str) -> Result<()> {
    let ok = !namespace.is_empty()
        && namespace.len() <= 32
        && namespace
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidSpec(format!(
            "docker runtime namespace {namespace:?} must be 1-32 characters of [a-z0-9-]"
        )))
    }
}

fn container_pid(info: &ContainerInspectResponse) -> Option<u32> {
    info.state
        .as_ref()
        .and_then(|state| state.pid)
        .and_then(|pid| u32::try_from(pid).ok())
        .filter(|pid| *pid > 0)
}

fn parse_docker_time(text: Option<&str>) -> Option<OffsetDateTime> {
    let text = text?;
    let at = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    // Docker's "never" is year 1.
    (at.year() > 1970).then_some(at)
}

fn container_started_at(info: &ContainerInspectResponse) -> Option<OffsetDateTime> {
    parse_docker_time(
        info.state
            .as_ref()
            .and_then(|state| state.started_at.as_deref()),
    )
}

/// Exit details from `inspect`. Docker reports a death by signal N as exit code 128 + N
/// (from the shell convention, also what Docker's init returns); codes 129-159 are read as
/// signals.
fn exit_from_inspect(info: &ContainerInspectResponse, stop_requested: bool) -> ExitInfo {
    let state = info.state.clone().unwrap_or_default();
    let raw = state.exit_code.and_then(|code| i32::try_from(code).ok());
    let (code, signal) = match raw {
        Some(code) if (129..160).contains(&code) => (None, Some(code - 128)),
        other => (other, None),
    };
    let started = parse_docker_time(state.started_at.as_deref());
    let finished = parse_docker_time(state.finished_at.as_deref());
    let uptime = started
        .zip(finished)
        .and_then(|(start, end)| Duration::try_from(end - start).ok());
    let oom_killed = state.oom_killed.unwrap_or(false) && !(stop_requested && signal == Some(9));
    let note = state
        .error
        .filter(|error| !error.is_empty())
        .map(|error| format!("docker: {error}"));
    ExitInfo {
        code,
        signal,
        oom_killed,
        at: finished.unwrap_or_else(OffsetDateTime::now_utc),
        uptime,
        note,
    }
}

/// Follows an instance's logs run after run, delivering each line once to the broadcast
/// channel, the ring buffer and (for one-off runs) the handle.
async fn pump_logs(
    inner: Arc<Inner>,
    entry: Arc<Entry>,
    oneoff: Option<mpsc::UnboundedSender<LogLine>>,
) {
    let mut generations = entry.log_generation.subscribe();
    loop {
        let generation = *generations.borrow_and_update();
        if generation == 0 {
            // Not started yet.
            if generations.changed().await.is_err() {
                return;
            }
            continue;
        }
        let cursor = lock(&entry.shared).record.resume_since();
        let since = cursor
            .map(|at| i32::try_from(at.unix_timestamp()).unwrap_or(0))
            .unwrap_or(0);
        let options = LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            since,
            timestamps: true,
            ..Default::default()
        };
        let mut stream = inner.docker.logs(entry.core.id.as_str(), Some(options));
        let mut splitter = LineSplitter::default();
        let mut failed = false;
        while let Some(item) = stream.next().await {
            match item {
                Ok(frame) => deliver(&inner, &entry, oneoff.as_ref(), splitter.push(frame)),
                Err(err) if is_not_found(&err) => {
                    entry.log_drained.send_replace(u64::MAX);
                    return;
                }
                Err(err) => {
                    tracing::debug!(instance = %entry.core.id, error = %err, "log stream broke");
                    failed = true;
                    break;
                }
            }
        }
        deliver(&inner, &entry, oneoff.as_ref(), splitter.flush());
        save_cursor(&inner, &entry, true);
        if failed {
            sleep(RETRY_PAUSE).await;
            continue;
        }
        // The stream ends when the container stops; if it still runs, something else ended
        // it: follow again from the cursor.
        let running = matches!(
            inner.docker.inspect_container(entry.core.id.as_str(), None).await,
            Ok(info) if info.state.as_ref().and_then(|state| state.running).unwrap_or(false)
        );
        if running && *generations.borrow() == generation {
            sleep(RETRY_PAUSE / 4).await;
            continue;
        }
        entry.log_drained.send_replace(generation);
        if generations.changed().await.is_err() {
            return;
        }
    }
}

fn deliver(
    inner: &Inner,
    entry: &Entry,
    oneoff: Option<&mpsc::UnboundedSender<LogLine>>,
    lines: Vec<crate::logs::RawLine>,
) {
    if lines.is_empty() {
        return;
    }
    for raw in lines {
        {
            let mut shared = lock(&entry.shared);
            let cursor = shared.record.cursor(raw.stream);
            if cursor.is_some_and(|cursor| raw.at <= cursor) {
                continue; // delivered before a restart of the stream or of the server
            }
            *cursor = Some(raw.at);
        }
        inner
            .hub
            .deliver(&entry.core, oneoff, raw.stream, raw.at, raw.text);
    }
    save_cursor(inner, entry, false);
}

/// Persists the log cursor, at most once per [`CURSOR_SAVE_INTERVAL`] unless `force`.
fn save_cursor(inner: &Inner, entry: &Entry, force: bool) {
    if entry.core.kind != Kind::Instance {
        return;
    }
    let mut shared = lock(&entry.shared);
    let due = force
        || shared
            .cursor_saved_at
            .is_none_or(|at| at.elapsed() >= CURSOR_SAVE_INTERVAL);
    if !due {
        return;
    }
    shared.cursor_saved_at = Some(Instant::now());
    if let Err(err) = record::save(&inner.state_dir, &shared.record) {
        tracing::warn!(instance = %entry.core.id, error = %err, "cannot persist log cursor");
    }
}

/// Result of one wait on the wait API.
enum Waited {
    NotRunning,
    Gone,
    Broken(String),
}

async fn wait_not_running(docker: &Docker, id: &InstanceId) -> Waited {
    let options = WaitContainerOptions {
        condition: "not-running".to_owned(),
    };
    let mut stream = docker.wait_container(id.as_str(), Some(options));
    match stream.next().await {
        Some(Ok(_)) | Some(Err(BollardError::DockerContainerWaitError { .. })) => {
            Waited::NotRunning
        }
        Some(Err(err)) if is_not_found(&err) => Waited::Gone,
        Some(Err(err)) => Waited::Broken(err.to_string()),
        None => Waited::Broken("wait stream ended without an answer".to_owned()),
    }
}

/// Runs one container for its [`Supervisor`]: `docker start`, the wait API, Docker's stop,
/// exits read from `inspect`. A run has no handle of its own: the container id says it all.
struct DockerDriver {
    inner: Arc<Inner>,
    entry: Arc<Entry>,
}

impl DockerDriver {
    /// Docker's stop: SIGTERM (or the image's STOPSIGNAL), `grace`, SIGKILL.
    async fn stop_container(&mut self, grace: Duration) -> ExitInfo {
        self.inner.update(&self.entry, |record| {
            record.lifecycle.state = InstanceState::Stopping;
            record.lifecycle.stop_deadline = Some(OffsetDateTime::now_utc() + grace);
        });
        let began = Instant::now();
        let seconds = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let options = StopContainerOptions {
            t: Some(i32::try_from(seconds).unwrap_or(i32::MAX)),
            signal: None,
        };
        // The stop request lasts up to the grace period: give it a matching client timeout.
        let docker = self
            .inner
            .docker
            .clone()
            .with_timeout(Duration::from_secs(seconds.saturating_add(60)));
        match docker
            .stop_container(self.entry.core.id.as_str(), Some(options))
            .await
        {
            Ok(()) => {}
            Err(err) if is_not_found(&err) => {
                return lost_exit("container was removed outside Gilgal");
            }
            Err(err) => {
                tracing::warn!(instance = %self.entry.core.id, error = %err, "stop failed; killing");
                let kill = KillContainerOptions {
                    signal: "SIGKILL".to_owned(),
                };
                if let Err(err) = self
                    .inner
                    .docker
                    .kill_container(self.entry.core.id.as_str(), Some(kill))
                    .await
                {
                    if !is_conflict(&err) && !is_not_found(&err) {
                        tracing::error!(instance = %self.entry.core.id, error = %err, "kill failed");
                    }
                }
            }
        }
        // Make sure it is down before reading the exit (the stop API returns once it is).
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            wait_not_running(&self.inner.docker, &self.entry.core.id),
        )
        .await;
        self.inner.drain_logs(&self.entry).await;
        let mut exit = self.inner.read_exit(&self.entry, true).await;
        if exit.signal == Some(libc::SIGKILL) && began.elapsed() >= grace && exit.note.is_none() {
            exit.note = Some(format!("killed after the {grace:?} grace period"));
        }
        exit
    }
}

#[async_trait]
impl InstanceDriver for DockerDriver {
    type Entry = Entry;
    type Run = ();
    type Ended = Waited;

    fn update_lifecycle(&self, change: impl FnOnce(&mut Lifecycle) + Send) {
        self.inner
            .update(&self.entry, |record| change(&mut record.lifecycle));
    }

    async fn start(&mut self) -> Result<(), StartFailure> {
        match self.inner.start_container(&self.entry).await {
            Ok(()) => Ok(()),
            Err(err) if is_not_found(&err) => Err(StartFailure::Gone),
            Err(err) => Err(StartFailure::Failed(err.to_string())),
        }
    }

    async fn wait(&mut self, _run: &mut ()) -> Waited {
        loop {
            match wait_not_running(&self.inner.docker, &self.entry.core.id).await {
                Waited::Broken(error) => {
                    // dockerd restarting or a dropped connection: ask again shortly.
                    tracing::warn!(instance = %self.entry.core.id, %error, "waiting on container failed; retrying");
                    sleep(RETRY_PAUSE).await;
                }
                waited => return waited,
            }
        }
    }

    async fn collect_exit(&mut self, _run: (), waited: Waited) -> RunEnd {
        if matches!(waited, Waited::Gone) {
            return RunEnd::Gone;
        }
        self.inner.drain_logs(&self.entry).await;
        RunEnd::Exited(self.inner.read_exit(&self.entry, false).await)
    }

    async fn stop(&mut self, _run: Option<()>, grace: Duration) -> ExitInfo {
        self.stop_container(grace).await
    }

    /// Removes the finished one-off container; its lines are already delivered, and the
    /// output channel closes with the aborted log pump.
    fn forget(&self) {
        let inner = self.inner.clone();
        let id = self.entry.core.id.clone();
        tokio::spawn(async move { inner.forget(&id).await });
    }
}

#[async_trait]
impl HostedRuntime for DockerRuntime {
    type Entry = Entry;

    fn runtime_name(&self) -> &'static str {
        "docker"
    }

    fn hub(&self) -> &InstanceHub<Entry> {
        &self.inner.hub
    }

    async fn start_instance(&self, spec: InstanceSpec) -> Result<InstanceId> {
        let entry = self.create_and_start(spec, Kind::Instance, None).await?;
        Ok(entry.core.id.clone())
    }

    async fn start_oneoff(&self, mut spec: InstanceSpec, sinks: OneoffSinks) -> Result<Arc<Entry>> {
        spec.restart = RestartPolicy::Never;
        self.create_and_start(spec, Kind::Oneoff, Some(sinks)).await
    }

    async fn forget_instance(&self, id: &InstanceId) {
        self.inner.forget(id).await;
    }

    async fn instance_stats(&self, id: &InstanceId) -> Result<ResourceStats> {
        self.inner.hub.get(id)?;
        let options = StatsOptions {
            stream: false,
            one_shot: true,
        };
        let mut stream = self.inner.docker.stats(id.as_str(), Some(options));
        let stats = match stream.next().await {
            Some(Ok(stats)) => stats,
            Some(Err(err)) => return Err(runtime_error(format!("reading stats of {id}"), err)),
            None => {
                return Err(RuntimeError::Io {
                    context: format!("reading stats of {id}"),
                    source: std::io::Error::other("dockerd sent no stats"),
                })
            }
        };
        let cpu_ns = stats
            .cpu_stats
            .as_ref()
            .and_then(|cpu| cpu.cpu_usage.as_ref())
            .and_then(|usage| usage.total_usage)
            .unwrap_or(0);
        let memory = stats.memory_stats.clone().unwrap_or_default();
        let detail = memory.stats.clone().unwrap_or_default();
        // cgroup v1 reports `rss` (+ `total_rss`), v2 `anon`.
        let rss = detail
            .get("total_rss")
            .or_else(|| detail.get("rss"))
            .or_else(|| detail.get("anon"))
            .copied()
            .unwrap_or(0);
        let spec_limit = self
            .inner
            .docker
            .inspect_container(id.as_str(), None)
            .await
            .ok()
            .and_then(|info| info.host_config)
            .and_then(|host| host.memory)
            .filter(|bytes| *bytes > 0)
            .and_then(|bytes| u64::try_from(bytes).ok());
        Ok(ResourceStats {
            cpu_time: Duration::from_nanos(cpu_ns),
            rss_bytes: rss,
            memory_cgroup_bytes: memory.usage,
            memory_limit_bytes: spec_limit,
            processes: stats
                .pids_stats
                .as_ref()
                .and_then(|pids| pids.current)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
        })
    }

    /// The container's own address when it has one: a published port may accept
    /// connections before the app listens (userland proxy), the container address never does.
    async fn instance_probe_addr(&self, id: &InstanceId, published: SocketAddr) -> SocketAddr {
        match self.container_addr(id).await {
            Ok(Some(addr)) => addr,
            _ => published,
        }
    }
}
