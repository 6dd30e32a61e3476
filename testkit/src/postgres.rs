//! A throwaway PostgreSQL cluster in a directory: `initdb`, the server on a unix socket only
//! (no TCP port is opened, so clusters of parallel tests never collide), `psql`, and a fresh
//! database per test. Used by the PostgreSQL store's conformance tests and by the store bench
//! (`server/benches/store.rs`, which adds pgbench).
//!
//! It finds Debian's programs (`initdb` on the `PATH`, followed through its symlink, else the
//! highest `/usr/lib/postgresql/<version>/bin`). Run as root, the cluster runs as the `postgres`
//! user (initdb refuses root) and the base directory gets `o+x` so that user can reach it.
//! `fsync` and `synchronous_commit` are on (set explicitly). A missing PostgreSQL is an error
//! saying what to install, never a silent skip.
//!
//! What it does not do: TLS, passwords (trust authentication on the socket), or keep anything:
//! the cluster is stopped and its directory removed on drop.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// The port number the server's socket file is named after (`.s.PGSQL.5432`); no TCP.
pub const PORT: &str = "5432";
/// The cluster's superuser.
pub const USER: &str = "bench";

/// A running throwaway cluster; stopped (fast shutdown) and removed on drop.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    root: PathBuf,
    /// (uid, gid) to run PostgreSQL's programs as when this process is root.
    user: Option<(u32, u32)>,
    server: Option<Child>,
    /// The temporary directory the cluster lives in, when it made its own.
    _tmp: Option<tempfile::TempDir>,
}

/// The directory with Debian's `initdb`, `postgres`, `pgbench` and `psql`.
pub fn bin_dir() -> Option<PathBuf> {
    let complete = |dir: &Path| {
        ["initdb", "postgres", "pgbench", "psql"]
            .iter()
            .all(|p| dir.join(p).is_file())
    };
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("initdb"))
            .find(|initdb| initdb.is_file())
            .and_then(|initdb| std::fs::canonicalize(initdb).ok())
            .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
            .filter(|dir| complete(dir))
    });
    on_path.or_else(|| {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse().ok()?;
                Some((version, e.path().join("bin")))
            })
            .filter(|(_, dir)| complete(dir))
            .collect();
        versions.sort();
        versions.pop().map(|(_, dir)| dir)
    })
}

/// uid and gid of `name` from /etc/passwd.
fn system_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&name) && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

impl Cluster {
    /// initdb in `<base>/postgres` and start the server with `max_connections` (and the
    /// given extra `-c` settings); waits until it accepts connections.
    pub fn start(base: &Path, max_connections: u32) -> Result<Cluster, String> {
        let bin = bin_dir().ok_or(
            "no PostgreSQL: no `initdb` on the PATH or in /usr/lib/postgresql/<version>/bin \
             (install Debian's `postgresql` package; scripts/conformance.sh does)",
        )?;
        let root_user = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        let user = if root_user {
            Some(system_user("postgres").ok_or(
                "running as root (initdb refuses root) and there is no `postgres` user to run \
                 PostgreSQL as",
            )?)
        } else {
            None
        };
        let root = base.join("postgres");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("sock")).map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = user {
            // The cluster's user must reach and own its directories.
            let mode = std::fs::metadata(base).map_err(|e| e.to_string())?.mode();
            std::fs::set_permissions(base, std::fs::Permissions::from_mode(mode | 0o711))
                .map_err(|e| e.to_string())?;
            for dir in [root.clone(), root.join("sock")] {
                std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
            }
        }
        let mut pg = Cluster {
            bin,
            root,
            user,
            server: None,
            _tmp: None,
        };
        pg.initdb()?;
        pg.spawn_server(max_connections)?;
        pg.wait_ready()?;
        Ok(pg)
    }

    /// A cluster in a temporary directory of its own.
    pub fn start_temp(max_connections: u32) -> Result<Cluster, String> {
        let tmp = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let mut cluster = Cluster::start(tmp.path(), max_connections)?;
        cluster._tmp = Some(tmp);
        Ok(cluster)
    }

    fn initdb(&self) -> Result<(), String> {
        self.run(
            "initdb",
            &[
                "-D",
                &self.data(),
                "-U",
                USER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        )
        .map(drop)
    }

    fn spawn_server(&mut self, max_connections: u32) -> Result<(), String> {
        let log = std::fs::File::create(self.root.join("server.log")).map_err(|e| e.to_string())?;
        let sock = self.sock();
        let max = format!("max_connections={max_connections}");
        let server = self
            .command("postgres")
            .args(["-D", &self.data(), "-k", &sock, "-p", PORT])
            .args(["-c", "listen_addresses=", "-c", &max])
            .args(["-c", "fsync=on", "-c", "synchronous_commit=on"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start postgres: {e}"))?;
        self.server = Some(server);
        Ok(())
    }

    fn wait_ready(&self) -> Result<(), String> {
        // Counted tries rather than a clock (tests may pause tokio's): about 30 s.
        let mut tries = 0;
        while self.psql("postgres", "select 1").is_err() {
            tries += 1;
            if tries > 300 {
                return Err(format!(
                    "postgres did not accept connections within 30 s: {}",
                    std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// The data directory.
    pub fn data(&self) -> String {
        self.root.join("data").display().to_string()
    }

    /// The directory of the server's unix socket.
    pub fn sock(&self) -> String {
        self.root.join("sock").display().to_string()
    }

    /// The directory the cluster lives in (`<base>/postgres`), where programs run.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A libpq connection string for database `db` (what otad's `store` setting takes).
    pub fn url(&self, db: &str) -> String {
        format!("host={} port={PORT} user={USER} dbname={db}", self.sock())
    }

    /// Creates a database with a name no other call in this process got; its name.
    pub fn fresh_database(&self, prefix: &str) -> Result<String, String> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let name = format!("{prefix}_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        self.psql("postgres", &format!("create database {name}"))?;
        Ok(name)
    }

    /// A PostgreSQL program, as the cluster's user, in the cluster's directory, with no
    /// inherited `PG*` settings.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        for var in [
            "PGDATA",
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGOPTIONS",
        ] {
            c.env_remove(var);
        }
        if let Some((uid, gid)) = self.user {
            c.uid(uid).gid(gid);
        }
        c.current_dir(&self.root).stdin(Stdio::null());
        c
    }

    /// Runs a program to completion; its stdout, or its output as the error.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let out = self
            .command(program)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(format!(
                "{program} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Runs `sql` in database `db` with psql; its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let sock = self.sock();
        self.run(
            "psql",
            &[
                "-X",
                "-q",
                "-t",
                "-A",
                "-h",
                &sock,
                "-p",
                PORT,
                "-U",
                USER,
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            // Fast shutdown; SIGKILL only if it does not stop.
            let pid = nix::unistd::Pid::from_raw(server.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            // Up to about 10 s.
            for _ in 0..200 {
                if !matches!(server.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// One cluster shared by the tests of a process while any of them holds it: the first caller
/// starts it, the last holder's drop stops it (a later caller starts a new one). Panics with
/// the reason when PostgreSQL cannot start — a conformance test fails, it never skips.
pub fn shared_cluster() -> Arc<Cluster> {
    static SHARED: Mutex<Weak<Cluster>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(cluster) = shared.upgrade() {
        return cluster;
    }
    let cluster = Arc::new(
        Cluster::start_temp(100)
            .unwrap_or_else(|why| panic!("cannot start a throwaway PostgreSQL cluster: {why}")),
    );
    *shared = Arc::downgrade(&cluster);
    cluster
}
