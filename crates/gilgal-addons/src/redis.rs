//! The Redis add-on: one `redis-server` (Debian's package) per add-on, on its own loopback
//! port with a password, AOF (`everysec`) plus RDB snapshots under `ADDONS/redis/<name>`,
//! started detached (so it outlives a Gilgal restart) and restarted by the supervisor when
//! it dies. Backups are RDB snapshots fetched with `redis-cli --rdb`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::command::{run, RunAs};
use crate::{check_identifier, checksum, AddonError, BackupFile};

const LIMIT: Duration = Duration::from_secs(60);

/// One managed Redis server.
#[derive(Debug, Clone)]
pub struct RedisServer {
    dir: PathBuf,
    port: u16,
    password: String,
    run_as: Option<RunAs>,
    extra_bind: Option<std::net::IpAddr>,
}

fn program(name: &'static str) -> Result<PathBuf, AddonError> {
    let path = Path::new("/usr/bin").join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(AddonError::MissingBinary {
            binary: name,
            package: if name == "redis-server" {
                "redis-server"
            } else {
                "redis-tools"
            },
        })
    }
}

/// Whether `redis-server` is installed (an actionable error naming the package if not).
pub fn check_installed() -> Result<(), AddonError> {
    program("redis-server").map(|_| ())
}

/// A free loopback port for a new Redis add-on.
pub fn free_port() -> Result<u16, AddonError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| AddonError::io("choosing a port for Redis", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| AddonError::io("choosing a port for Redis", e))
}

impl RedisServer {
    /// The server of add-on `name` (a generated identifier) under `addons_dir`.
    pub fn new(
        addons_dir: &Path,
        name: &str,
        port: u16,
        password: &str,
        run_as: Option<RunAs>,
        extra_bind: Option<std::net::IpAddr>,
    ) -> Result<Self, AddonError> {
        check_identifier(name)?;
        check_installed()?;
        Ok(Self {
            dir: addons_dir.join("redis").join(name),
            port,
            password: password.to_owned(),
            run_as,
            extra_bind,
        })
    }

    /// The URL an app connects with.
    pub fn url(&self) -> String {
        format!("redis://:{}@127.0.0.1:{}/0", self.password, self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its process id when it runs.
    pub fn pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.dir.join("redis.pid")).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            .is_ok()
            .then_some(pid)
    }

    fn client_env(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([("REDISCLI_AUTH", self.password.clone())])
    }

    async fn cli(&self, args: &[&OsStr], limit: Duration) -> Result<String, AddonError> {
        let port = self.port.to_string();
        let mut argv: Vec<&OsStr> = vec![
            OsStr::new("-h"),
            OsStr::new("127.0.0.1"),
            OsStr::new("-p"),
            OsStr::new(&port),
            OsStr::new("--no-auth-warning"),
        ];
        argv.extend_from_slice(args);
        run(
            &program("redis-cli")?,
            &argv,
            &self.client_env(),
            None,
            limit,
        )
        .await
    }

    async fn answers(&self) -> bool {
        self.cli(&[OsStr::new("PING")], Duration::from_secs(5))
            .await
            .is_ok_and(|out| out.trim() == "PONG")
    }

    /// Writes its configuration if missing and starts it unless it already answers; waits
    /// until it does. Idempotent.
    pub async fn ensure_running(&self) -> Result<(), AddonError> {
        if self.pid().is_some() && self.answers().await {
            return Ok(());
        }
        let conf = self.dir.join("redis.conf");
        if !conf.is_file() {
            std::fs::create_dir_all(&self.dir)
                .map_err(|e| AddonError::io(format!("creating {}", self.dir.display()), e))?;
            let dir = self.dir.display().to_string();
            let bind = match self.extra_bind {
                Some(ip) => format!("127.0.0.1 {ip}"),
                None => "127.0.0.1".to_owned(),
            };
            let text = format!(
                "bind {bind}\nport {port}\nprotected-mode yes\nrequirepass {password}\n\
                 daemonize yes\npidfile {dir}/redis.pid\nlogfile {dir}/redis.log\ndir {dir}\n\
                 appendonly yes\nappendfsync everysec\ndbfilename dump.rdb\n\
                 save 3600 1 300 100 60 10000\n",
                port = self.port,
                password = self.password,
            );
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&conf)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .map_err(|e| AddonError::io(format!("writing {}", conf.display()), e))?;
            if let Some(user) = self.run_as {
                user.own(&self.dir)?;
                user.own(&conf)?;
            }
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| AddonError::io(format!("chmod {}", self.dir.display()), e))?;
        }
        run(
            &program("redis-server")?,
            &[conf.as_os_str()],
            &BTreeMap::new(),
            self.run_as,
            LIMIT,
        )
        .await?;
        for _ in 0..100 {
            if self.answers().await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(AddonError::not_started("Redis", self.dir.join("redis.log")))
    }

    /// Stops it (saving nothing more: AOF already has every write) and removes its files.
    pub async fn destroy(&self) -> Result<(), AddonError> {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            for _ in 0..50 {
                if self.pid().is_none() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(AddonError::io(
                format!("removing {}", self.dir.display()),
                e,
            )),
        }
    }

    /// An RDB snapshot of the live dataset written to `dest` (through a temporary file).
    pub async fn snapshot(&self, dest: &Path) -> Result<BackupFile, AddonError> {
        let partial = dest.with_extension("partial");
        let result = self
            .cli(
                &[OsStr::new("--rdb"), partial.as_os_str()],
                Duration::from_secs(3600),
            )
            .await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
        tokio::fs::rename(&partial, dest)
            .await
            .map_err(|e| AddonError::io(format!("saving {}", dest.display()), e))?;
        checksum(dest).await
    }
}
