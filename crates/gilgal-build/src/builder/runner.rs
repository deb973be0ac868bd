//! Runs build commands: argument vectors only, a controlled environment, output streamed line
//! by line, a timeout per step, and cancellation that kills the whole process group.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::log::{LogSink, LogStream};
use super::BuildError;

/// How many trailing output lines a failure report carries.
pub const LOG_TAIL_LINES: usize = 40;
/// Longest line forwarded as one log line; longer output is split.
const MAX_LINE_BYTES: usize = 8 * 1024;
/// How long to wait for output pipes after the process group is gone.
const PIPE_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Variables passed through from Gilgal's own environment to build commands; everything else
/// (Gilgal's secrets included, unless named like tool configuration) is withheld.
const INHERITED_VARIABLES: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "CARGO_HOME",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
    "PYENV_ROOT",
    "PYENV_VERSION",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
];

/// Prefixes of operator-level tool configuration (package index mirrors, certificates,
/// timeouts) that is also passed through.
const INHERITED_PREFIXES: &[&str] = &[
    "PIP_",
    "NPM_CONFIG_",
    "npm_config_",
    "CARGO_NET_",
    "CARGO_HTTP_",
    "CARGO_REGISTRY_",
    "CARGO_REGISTRIES_",
];

/// Executes the steps of one build with shared settings.
pub(crate) struct StepRunner {
    pub log: LogSink,
    pub cancel: CancellationToken,
    pub timeout: Duration,
    base_env: Vec<(OsString, OsString)>,
    /// User, namespace and cgroups of every command, when confined.
    confinement: Option<gilgal_runtime::Confinement>,
}

enum Outcome {
    Exited(std::io::Result<ExitStatus>),
    TimedOut,
    Cancelled,
}

impl StepRunner {
    pub fn new(
        log: LogSink,
        cancel: CancellationToken,
        timeout: Duration,
        build_env: &std::collections::BTreeMap<String, String>,
        home: Option<&Path>,
    ) -> Self {
        let mut base_env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(name, _)| {
                name.to_str().is_some_and(|name| {
                    INHERITED_VARIABLES.contains(&name)
                        || INHERITED_PREFIXES
                            .iter()
                            .any(|prefix| name.starts_with(prefix))
                })
            })
            .collect();
        base_env.extend(
            build_env
                .iter()
                .map(|(key, value)| (key.into(), value.into())),
        );
        if let Some(home) = home {
            // The build user cannot write Gilgal's HOME; give it one inside the app's cache.
            base_env.retain(|(key, _)| key != "HOME");
            base_env.insert(0, ("HOME".into(), home.as_os_str().to_owned()));
        }
        Self {
            log,
            cancel,
            timeout,
            base_env,
            confinement: None,
        }
    }

    /// Runs every command of this runner confined (user, namespace, cgroups).
    pub fn confined(mut self, confinement: Option<gilgal_runtime::Confinement>) -> Self {
        self.confinement = confinement;
        self
    }

    /// The value build commands see for `name`, for `$VAR` expansion in build commands.
    pub fn env_value(&self, name: &str) -> Option<String> {
        self.base_env
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.to_string_lossy().into_owned())
    }

    /// Build variables whose names start with `prefix`, sorted; for cache keys.
    pub fn env_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let mut found = std::collections::BTreeMap::new();
        for (key, value) in &self.base_env {
            if let Some(key) = key.to_str().filter(|key| key.starts_with(prefix)) {
                // Later entries (the build's own variables) override inherited ones.
                found.insert(key.to_owned(), value.to_string_lossy().into_owned());
            }
        }
        found.into_iter().collect()
    }

    /// Errors with [`BuildError::Cancelled`] if cancellation was requested between steps.
    pub fn check_cancelled(&self) -> Result<(), BuildError> {
        if self.cancel.is_cancelled() {
            Err(BuildError::Cancelled { command: None })
        } else {
            Ok(())
        }
    }

    fn command(
        &self,
        argv: &[OsString],
        cwd: &Path,
        env: &[(OsString, OsString)],
    ) -> Result<Command, BuildError> {
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .env_clear()
            .envs(self.base_env.iter().map(|(k, v)| (k, v)))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match &self.confinement {
            // The child enters its session (pid = process group), cgroups, namespace, user
            // and directory itself, in that order.
            Some(confinement) => {
                confinement
                    .confine(&mut command, cwd)
                    .map_err(|err| BuildError::Spawn {
                        command: display_argv(argv),
                        source: std::io::Error::other(err.to_string()),
                    })?;
            }
            None => {
                command.current_dir(cwd).process_group(0);
            }
        }
        Ok(command)
    }

    /// Kills whatever the step just finished left running outside its process group
    /// (daemons that called `setsid`), so nothing a build command starts outlives it.
    fn kill_leftovers(&self) {
        if let Some(confinement) = &self.confinement {
            let killed = confinement.kill_all();
            if killed > 0 {
                tracing::info!(killed, "killed processes a build step left running");
            }
        }
    }

    /// Runs one step, streaming its output to the log; fails with the command and log tail.
    pub async fn run(
        &self,
        argv: &[OsString],
        cwd: &Path,
        env: &[(OsString, OsString)],
    ) -> Result<(), BuildError> {
        self.check_cancelled()?;
        let shown = display_argv(argv);
        self.log.system(format!("$ {shown}")).await;
        let mut command = self.command(argv, cwd, env)?;
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|source| BuildError::Spawn {
            command: shown.clone(),
            source,
        })?;
        let group = child.id().and_then(|id| i32::try_from(id).ok());
        // Also covers the build future being dropped mid-step (e.g. by an outer timeout).
        let mut guard = GroupGuard(group);
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_TAIL_LINES)));
        let mut pumps = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            pumps.push(tokio::spawn(pump(
                stdout,
                LogStream::Stdout,
                self.log.clone(),
                Arc::clone(&tail),
            )));
        }
        if let Some(stderr) = child.stderr.take() {
            pumps.push(tokio::spawn(pump(
                stderr,
                LogStream::Stderr,
                self.log.clone(),
                Arc::clone(&tail),
            )));
        }

        let outcome = tokio::select! {
            status = child.wait() => Outcome::Exited(status),
            () = tokio::time::sleep(self.timeout) => Outcome::TimedOut,
            () = self.cancel.cancelled() => Outcome::Cancelled,
        };
        // Whatever happened, nothing started by this step may outlive it.
        guard.kill_now();
        self.kill_leftovers();
        if !matches!(outcome, Outcome::Exited(_)) {
            let _ = child.wait().await;
        }
        for pump in pumps {
            let abort = pump.abort_handle();
            if tokio::time::timeout(PIPE_DRAIN_TIMEOUT, pump)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        let log_tail = || {
            tail.lock()
                .map(|lines| lines.iter().cloned().collect())
                .unwrap_or_default()
        };
        match outcome {
            Outcome::Exited(Ok(status)) if status.success() => Ok(()),
            Outcome::Exited(Ok(status)) => Err(BuildError::CommandFailed {
                command: shown,
                status: describe_status(status),
                log_tail: log_tail(),
            }),
            Outcome::Exited(Err(source)) => Err(BuildError::Spawn {
                command: shown,
                source,
            }),
            Outcome::TimedOut => Err(BuildError::TimedOut {
                command: shown,
                after_secs: self.timeout.as_secs(),
                log_tail: log_tail(),
            }),
            Outcome::Cancelled => Err(BuildError::Cancelled {
                command: Some(shown),
            }),
        }
    }

    /// Runs a short query (tool version, metadata) and returns its stdout; not logged unless
    /// it fails.
    pub async fn capture(
        &self,
        argv: &[OsString],
        cwd: &Path,
        env: &[(OsString, OsString)],
    ) -> Result<String, BuildError> {
        self.check_cancelled()?;
        let shown = display_argv(argv);
        let mut command = self.command(argv, cwd, env)?;
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = command.spawn().map_err(|source| BuildError::Spawn {
            command: shown.clone(),
            source,
        })?;
        let group = child.id().and_then(|id| i32::try_from(id).ok());
        let mut guard = GroupGuard(group);
        let result = tokio::select! {
            output = child.wait_with_output() => Some(output),
            () = tokio::time::sleep(self.timeout) => None,
            () = self.cancel.cancelled() => {
                guard.kill_now();
                self.kill_leftovers();
                return Err(BuildError::Cancelled { command: Some(shown) });
            }
        };
        guard.kill_now();
        self.kill_leftovers();
        match result {
            None => Err(BuildError::TimedOut {
                command: shown,
                after_secs: self.timeout.as_secs(),
                log_tail: Vec::new(),
            }),
            Some(Err(source)) => Err(BuildError::Spawn {
                command: shown,
                source,
            }),
            Some(Ok(output)) if output.status.success() => {
                Ok(String::from_utf8_lossy(&output.stdout).into_owned())
            }
            Some(Ok(output)) => Err(BuildError::CommandFailed {
                command: shown,
                status: describe_status(output.status),
                log_tail: String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .rev()
                    .take(LOG_TAIL_LINES)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .map(str::to_owned)
                    .collect(),
            }),
        }
    }
}

/// Kills a step's process group once: explicitly when the step ends, or when dropped (the
/// build future was dropped mid-step, e.g. by an outer timeout).
struct GroupGuard(Option<i32>);

impl GroupGuard {
    fn kill_now(&mut self) {
        if let Some(group) = self.0.take() {
            kill_group(group);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// SIGKILLs a whole process group; a group that is already gone is fine.
fn kill_group(group: i32) {
    let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// Renders an argument vector for logs and errors, quoted so it could be pasted into a shell.
pub(crate) fn display_argv(argv: &[OsString]) -> String {
    shell_words::join(argv.iter().map(|arg| arg.to_string_lossy().into_owned()))
}

/// Forwards a pipe to the log line by line (`\n` or `\r` end a line), keeping the tail.
async fn pump(
    reader: impl AsyncRead + Unpin,
    stream: LogStream,
    log: LogSink,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    let mut reader = BufReader::new(reader);
    let mut line: Vec<u8> = Vec::new();
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(chunk) => chunk.to_vec(),
        };
        reader.consume(chunk.len());
        for byte in chunk {
            if byte == b'\n' || byte == b'\r' {
                if !line.is_empty() {
                    emit(&mut line, stream, &log, &tail).await;
                }
            } else {
                line.push(byte);
                if line.len() >= MAX_LINE_BYTES {
                    emit(&mut line, stream, &log, &tail).await;
                }
            }
        }
    }
    if !line.is_empty() {
        emit(&mut line, stream, &log, &tail).await;
    }
}

async fn emit(
    line: &mut Vec<u8>,
    stream: LogStream,
    log: &LogSink,
    tail: &Mutex<VecDeque<String>>,
) {
    let text = String::from_utf8_lossy(line).into_owned();
    line.clear();
    if let Ok(mut tail) = tail.lock() {
        if tail.len() == LOG_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(text.clone());
    }
    log.send(stream, text).await;
}
