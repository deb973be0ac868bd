//! The PostgreSQL add-on: one cluster for the whole server (Debian's `postgresql` binaries),
//! or an external server the administrator names by URL; a database + login role per add-on.
//!
//! The managed cluster lives in `ADDONS/postgres/data`, owned by the `postgres` system user
//! when Gilgal is root (PostgreSQL refuses root). `pg_ctl` starts it detached, so it keeps
//! serving while Gilgal restarts; [`PostgresServer::ensure_running`] is idempotent and is
//! what the supervisor calls every few seconds: after a crash or a `kill -9` it starts the
//! server again and PostgreSQL's WAL recovery brings back every committed transaction
//! (`fsync` stays on). The superuser `gilgal_admin` has a random password kept beside the
//! cluster in a 0600 file Gilgal owns; apps only ever get their own role's credentials.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Row};

use crate::command::{run, RunAs};
use crate::{check_identifier, checksum, random_password, AddonError, BackupFile};

const ADMIN_ROLE: &str = "gilgal_admin";
const COMMAND_LIMIT: Duration = Duration::from_secs(120);
const DUMP_LIMIT: Duration = Duration::from_secs(3600);

/// Where the databases live.
#[derive(Debug, Clone)]
enum Location {
    /// Gilgal's own cluster.
    Managed {
        /// `ADDONS/postgres`.
        root: PathBuf,
        /// Who runs it.
        run_as: Option<RunAs>,
        /// Addresses it listens on besides loopback (the Docker bridge gateway, so
        /// containers reach it).
        extra_listen: Vec<std::net::IpAddr>,
    },
    /// An administrator's server: Gilgal only creates databases and roles on it.
    External,
}

/// A PostgreSQL server Gilgal creates add-on databases on.
#[derive(Debug, Clone)]
pub struct PostgresServer {
    bin_dir: PathBuf,
    host: String,
    port: u16,
    admin_user: String,
    admin_password: String,
    location: Location,
}

/// The directory holding Debian's PostgreSQL server programs (`initdb`, `pg_ctl`,
/// `pg_dump`…): `GILGAL_POSTGRES_BIN` when set, else the newest `/usr/lib/postgresql/<N>/bin`.
pub fn find_binaries() -> Result<PathBuf, AddonError> {
    if let Some(dir) = std::env::var_os("GILGAL_POSTGRES_BIN") {
        // An explicit choice is authoritative: a wrong one is an error, not a fallback.
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").is_file() {
            Ok(dir)
        } else {
            Err(AddonError::MissingBinary {
                binary: "initdb",
                package: "postgresql",
            })
        };
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or(AddonError::MissingBinary {
            binary: "initdb",
            package: "postgresql",
        })
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn free_port() -> Result<u16, AddonError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| AddonError::io("choosing a port for PostgreSQL", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| AddonError::io("choosing a port for PostgreSQL", e))
}

/// Writes `content` to `path` with mode 0600 (temp file + fsync + rename).
fn write_private(path: &Path, content: &str) -> Result<(), AddonError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| AddonError::io(format!("writing {}", tmp.display()), e))?;
    file.write_all(content.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| AddonError::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| AddonError::io(format!("writing {}", path.display()), e))
}

impl PostgresServer {
    /// Gilgal's managed cluster under `addons_dir` (created on first use by
    /// [`PostgresServer::ensure_running`]). Chooses and keeps a loopback port and the admin
    /// password on first call.
    pub fn managed(
        addons_dir: &Path,
        run_as: Option<RunAs>,
        extra_listen: Vec<std::net::IpAddr>,
    ) -> Result<Self, AddonError> {
        let bin_dir = find_binaries()?;
        let root = addons_dir.join("postgres");
        std::fs::create_dir_all(addons_dir)
            .map_err(|e| AddonError::io(format!("creating {}", addons_dir.display()), e))?;
        let port_file = addons_dir.join("postgres.port");
        let port = match std::fs::read_to_string(&port_file) {
            Ok(text) => text.trim().parse().map_err(|_| {
                AddonError::InvalidName(format!("port file {}", port_file.display()))
            })?,
            Err(_) => {
                let port = free_port()?;
                write_private(&port_file, &port.to_string())?;
                port
            }
        };
        let password_file = addons_dir.join("postgres-admin.password");
        let admin_password = match std::fs::read_to_string(&password_file) {
            Ok(text) => text.trim().to_owned(),
            Err(_) => {
                let password = random_password();
                write_private(&password_file, &password)?;
                password
            }
        };
        Ok(Self {
            bin_dir,
            host: "127.0.0.1".to_owned(),
            port,
            admin_user: ADMIN_ROLE.to_owned(),
            admin_password,
            location: Location::Managed {
                root,
                run_as,
                extra_listen,
            },
        })
    }

    /// An external server, by a superuser (or `CREATEROLE` + `CREATEDB`) URL
    /// `postgres://user:password@host:port/db`. Gilgal runs nothing; backups use the
    /// client programs.
    pub fn external(admin_url: &str) -> Result<Self, AddonError> {
        let options: PgConnectOptions = admin_url
            .parse()
            .map_err(|_| AddonError::InvalidName("the PostgreSQL admin URL".to_owned()))?;
        let password = admin_url
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .and_then(|(userinfo, _)| userinfo.split_once(':'))
            .map(|(_, p)| p.to_owned())
            .unwrap_or_default();
        let bin_dir = find_binaries().unwrap_or_else(|_| PathBuf::from("/usr/bin"));
        Ok(Self {
            bin_dir,
            host: options.get_host().to_owned(),
            port: options.get_port(),
            admin_user: options.get_username().to_owned(),
            admin_password: password,
            location: Location::External,
        })
    }

    /// The port it listens on (loopback).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host apps connect to.
    pub fn host(&self) -> &str {
        &self.host
    }

    fn data_dir(&self) -> Option<PathBuf> {
        match &self.location {
            Location::Managed { root, .. } => Some(root.join("data")),
            Location::External => None,
        }
    }

    /// The managed server's log file.
    pub fn log_path(&self) -> Option<PathBuf> {
        match &self.location {
            Location::Managed { root, .. } => Some(root.join("postgres.log")),
            Location::External => None,
        }
    }

    /// The postmaster's process id, when the managed server is running (from its lock file).
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir()?.join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            .is_ok()
            .then_some(pid)
    }

    fn program(&self, name: &'static str) -> Result<PathBuf, AddonError> {
        let path = self.bin_dir.join(name);
        if path.is_file() {
            return Ok(path);
        }
        let fallback = Path::new("/usr/bin").join(name);
        if fallback.is_file() {
            return Ok(fallback);
        }
        Err(AddonError::MissingBinary {
            binary: name,
            package: if name.starts_with("pg_") || name == "psql" {
                "postgresql-client"
            } else {
                "postgresql"
            },
        })
    }

    /// Initialises the managed cluster if it has no data yet, and starts it if it is not
    /// running; waits until it accepts connections. Idempotent; a no-op for an external
    /// server.
    pub async fn ensure_running(&self) -> Result<(), AddonError> {
        let (
            Some(data),
            Location::Managed {
                root,
                run_as,
                extra_listen,
            },
        ) = (self.data_dir(), &self.location)
        else {
            return Ok(());
        };
        if !data.join("PG_VERSION").is_file() {
            self.initialise(root, &data, *run_as).await?;
        }
        let changed = Self::configure_listen(&data, extra_listen, *run_as)?;
        if self.postmaster_pid().is_some() && self.accepts_connections().await {
            if !changed {
                return Ok(());
            }
            // listen_addresses only changes with a restart (fast: sessions are cut).
            let pg_ctl = self.program("pg_ctl")?;
            run(
                &pg_ctl,
                &[
                    OsStr::new("stop"),
                    OsStr::new("-w"),
                    OsStr::new("-m"),
                    OsStr::new("fast"),
                    OsStr::new("-s"),
                    OsStr::new("-D"),
                    data.as_os_str(),
                ],
                &BTreeMap::new(),
                *run_as,
                COMMAND_LIMIT,
            )
            .await?;
        }
        let log = root.join("postgres.log");
        let pg_ctl = self.program("pg_ctl")?;
        let started = run(
            &pg_ctl,
            &[
                OsStr::new("start"),
                OsStr::new("-w"),
                OsStr::new("-t"),
                OsStr::new("60"),
                OsStr::new("-s"),
                OsStr::new("-D"),
                data.as_os_str(),
                OsStr::new("-l"),
                log.as_os_str(),
            ],
            &BTreeMap::new(),
            *run_as,
            COMMAND_LIMIT,
        )
        .await;
        if let Err(e) = started {
            // Another start (or a server still shutting down) may have raced us.
            if self.postmaster_pid().is_none() || !self.accepts_connections().await {
                tracing::warn!(error = %e, "managed PostgreSQL did not start");
                return Err(AddonError::not_started("PostgreSQL", log));
            }
        }
        Ok(())
    }

    /// Writes `gilgal.conf` (included last by `postgresql.conf`) with the listen addresses,
    /// and lets password-authenticated connections in from the extra addresses' networks;
    /// returns whether anything changed.
    fn configure_listen(
        data: &Path,
        extra_listen: &[std::net::IpAddr],
        run_as: Option<RunAs>,
    ) -> Result<bool, AddonError> {
        let io = |e| AddonError::io("configuring the cluster's addresses", e);
        let mut addresses = vec!["127.0.0.1".to_owned()];
        addresses.extend(extra_listen.iter().map(|ip| ip.to_string()));
        let wanted = format!(
            "# Written by Gilgal on every start.\nlisten_addresses = '{}'\n",
            addresses.join(",")
        );
        let path = data.join("gilgal.conf");
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        let main = data.join("postgresql.conf");
        let main_text = std::fs::read_to_string(&main).map_err(io)?;
        use std::io::Write;
        if !main_text.contains("include_if_exists = 'gilgal.conf'") {
            std::fs::OpenOptions::new()
                .append(true)
                .open(&main)
                .and_then(|mut f| f.write_all(b"\ninclude_if_exists = 'gilgal.conf'\n"))
                .map_err(io)?;
        }
        if !extra_listen.is_empty() {
            let hba = data.join("pg_hba.conf");
            let hba_text = std::fs::read_to_string(&hba).map_err(io)?;
            let line = "host all all 0.0.0.0/0 scram-sha-256 # Gilgal: containers";
            if !hba_text.contains(line) {
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&hba)
                    .and_then(|mut f| f.write_all(format!("\n{line}\n").as_bytes()))
                    .map_err(io)?;
            }
        }
        if current == wanted {
            return Ok(false);
        }
        std::fs::write(&path, &wanted).map_err(io)?;
        if let Some(user) = run_as {
            user.own(&path)?;
        }
        Ok(true)
    }

    async fn initialise(
        &self,
        root: &Path,
        data: &Path,
        run_as: Option<RunAs>,
    ) -> Result<(), AddonError> {
        std::fs::create_dir_all(root)
            .map_err(|e| AddonError::io(format!("creating {}", root.display()), e))?;
        if let Some(user) = run_as {
            user.own(root)?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| AddonError::io(format!("chmod {}", root.display()), e))?;
        if data.exists() {
            // A half-made cluster from an interrupted first start.
            std::fs::remove_dir_all(data)
                .map_err(|e| AddonError::io(format!("removing {}", data.display()), e))?;
        }
        let pwfile = root.join("initdb.pw");
        write_private(&pwfile, &self.admin_password)?;
        if let Some(user) = run_as {
            user.own(&pwfile)?;
        }
        let initdb = self.program("initdb")?;
        let result = run(
            &initdb,
            &[
                OsStr::new("-D"),
                data.as_os_str(),
                OsStr::new("-U"),
                OsStr::new(ADMIN_ROLE),
                OsStr::new("--pwfile"),
                pwfile.as_os_str(),
                OsStr::new("--auth-local=scram-sha-256"),
                OsStr::new("--auth-host=scram-sha-256"),
                OsStr::new("-E"),
                OsStr::new("UTF8"),
                OsStr::new("--no-locale"),
            ],
            &BTreeMap::new(),
            run_as,
            COMMAND_LIMIT,
        )
        .await;
        let _ = std::fs::remove_file(&pwfile);
        result?;
        let settings = format!(
            "\n# Gilgal's managed cluster\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nmax_connections = 200\n",
            self.port,
            root.display().to_string().replace('\'', "''")
        );
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| f.write_all(settings.as_bytes()))
            .map_err(|e| AddonError::io("configuring the cluster", e))?;
        tracing::info!(
            port = self.port,
            "initialised the managed PostgreSQL cluster"
        );
        Ok(())
    }

    async fn accepts_connections(&self) -> bool {
        self.admin().await.is_ok()
    }

    /// A one-connection pool as the admin role (a pool rather than a bare connection keeps
    /// callers' futures `Send`).
    async fn admin(&self) -> Result<sqlx::PgPool, AddonError> {
        let options = PgConnectOptions::new()
            .host(&self.host)
            .port(self.port)
            .username(&self.admin_user)
            .password(&self.admin_password)
            .database("postgres")
            .disable_statement_logging();
        Ok(sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?)
    }

    /// Creates (or, after an interrupted attempt, completes) database `name` owned by login
    /// role `name` with `password`; nobody else may connect to it.
    pub async fn create_database(&self, name: &str, password: &str) -> Result<(), AddonError> {
        check_identifier(name)?;
        let admin = self.admin().await?;
        let role_exists = sqlx::query("SELECT 1 FROM pg_roles WHERE rolname = $1")
            .bind(name)
            .fetch_optional(&admin)
            .await?
            .is_some();
        let verb = if role_exists { "ALTER" } else { "CREATE" };
        sqlx::raw_sql(&format!(
            "{verb} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}",
            quote_ident(name),
            quote_literal(password)
        ))
        .execute(&admin)
        .await?;
        let db_exists = sqlx::query("SELECT 1 FROM pg_database WHERE datname = $1")
            .bind(name)
            .fetch_optional(&admin)
            .await?
            .is_some();
        if !db_exists {
            // On an external server the admin may not be superuser: it must be a member of
            // the role to make it the owner.
            let _ = sqlx::raw_sql(&format!(
                "GRANT {} TO {}",
                quote_ident(name),
                quote_ident(&self.admin_user)
            ))
            .execute(&admin)
            .await;
            sqlx::raw_sql(&format!(
                "CREATE DATABASE {} OWNER {}",
                quote_ident(name),
                quote_ident(name)
            ))
            .execute(&admin)
            .await?;
        }
        sqlx::raw_sql(&format!(
            "REVOKE ALL ON DATABASE {db} FROM PUBLIC; GRANT ALL ON DATABASE {db} TO {db}",
            db = quote_ident(name)
        ))
        .execute(&admin)
        .await?;
        Ok(())
    }

    /// Drops database and role `name` (connections are terminated). Idempotent.
    pub async fn drop_database(&self, name: &str) -> Result<(), AddonError> {
        check_identifier(name)?;
        let admin = self.admin().await?;
        sqlx::raw_sql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(name)
        ))
        .execute(&admin)
        .await?;
        sqlx::raw_sql(&format!("DROP ROLE IF EXISTS {}", quote_ident(name)))
            .execute(&admin)
            .await?;
        Ok(())
    }

    /// Whether database `name` exists.
    pub async fn database_exists(&self, name: &str) -> Result<bool, AddonError> {
        let admin = self.admin().await?;
        let row = sqlx::query("SELECT count(*) AS n FROM pg_database WHERE datname = $1")
            .bind(name)
            .fetch_one(&admin)
            .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    /// The URL an app connects with.
    pub fn url(&self, name: &str, password: &str) -> String {
        format!(
            "postgresql://{name}:{password}@{}:{}/{name}",
            self.host, self.port
        )
    }

    fn client_env(&self, name: &str, password: &str) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("PGHOST", self.host.clone()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", name.to_owned()),
            ("PGDATABASE", name.to_owned()),
            ("PGPASSWORD", password.to_owned()),
            ("PGCONNECT_TIMEOUT", "10".to_owned()),
        ])
    }

    /// A logical backup of database `name` (`pg_dump`, custom format) written to `dest`
    /// through a temporary file, so a failed dump never leaves a partial backup behind.
    pub async fn dump(
        &self,
        name: &str,
        password: &str,
        dest: &Path,
    ) -> Result<BackupFile, AddonError> {
        check_identifier(name)?;
        let pg_dump = self.program("pg_dump")?;
        let partial = dest.with_extension("partial");
        let result = run(
            &pg_dump,
            &[
                OsStr::new("--format=custom"),
                OsStr::new("--no-owner"),
                OsStr::new("--no-privileges"),
                OsStr::new("--file"),
                partial.as_os_str(),
            ],
            &self.client_env(name, password),
            None,
            DUMP_LIMIT,
        )
        .await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
        let file = tokio::fs::File::open(&partial)
            .await
            .map_err(|e| AddonError::io("opening the dump", e))?;
        file.sync_all()
            .await
            .map_err(|e| AddonError::io("syncing the dump", e))?;
        tokio::fs::rename(&partial, dest)
            .await
            .map_err(|e| AddonError::io(format!("saving {}", dest.display()), e))?;
        checksum(dest).await
    }

    /// Restores a [`PostgresServer::dump`] into database `name` (which may be the one it
    /// came from: existing objects are replaced) in one transaction: a failed restore
    /// changes nothing.
    pub async fn restore(&self, name: &str, password: &str, file: &Path) -> Result<(), AddonError> {
        check_identifier(name)?;
        let pg_restore = self.program("pg_restore")?;
        run(
            &pg_restore,
            &[
                OsStr::new("--clean"),
                OsStr::new("--if-exists"),
                OsStr::new("--no-owner"),
                OsStr::new("--no-privileges"),
                OsStr::new("--single-transaction"),
                OsStr::new("--exit-on-error"),
                OsStr::new("--dbname"),
                OsStr::new(name),
                file.as_os_str(),
            ],
            &self.client_env(name, password),
            None,
            DUMP_LIMIT,
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_server_names_the_package_to_install() {
        let empty = std::env::temp_dir().join(format!("gilgal-no-pg-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        // SAFETY: nextest runs each test in its own process; nothing else reads the
        // environment concurrently in this one.
        unsafe { std::env::set_var("GILGAL_POSTGRES_BIN", &empty) };
        let err = PostgresServer::managed(&empty, None, Vec::new()).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("apt-get install postgresql") && message.contains("initdb"),
            "{message}"
        );
        let _ = std::fs::remove_dir_all(&empty);
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert!(check_identifier("addon_0123").is_ok());
        for bad in ["", "Addon", "1abc", "a-b", "a;drop", &"a".repeat(64)] {
            assert!(check_identifier(bad).is_err(), "{bad}");
        }
    }
}
