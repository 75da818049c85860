//! Pieces of the two-replica runs: a PostgreSQL cluster of a test's own
//! (restarted without disturbing other tests), a TCP proxy that cuts one
//! replica from it, and a replica on another database URL.

use std::net::TcpListener as StdListener;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use super::{Replica, Server, toml_str};

/// Where the CI machines' PostgreSQL 15 server binaries are.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A free TCP port on 127.0.0.1 (free when asked: another process may take
/// it before it is bound again).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A PostgreSQL cluster in a temp dir, on a port of its own, trusting
/// local connections; stopped (immediately) and removed when dropped.
pub struct PgCluster {
    dir: tempfile::TempDir,
    pub port: u16,
    /// Run as the `postgres` user: the server refuses to run as root.
    as_postgres: bool,
}

impl PgCluster {
    /// `initdb` and `pg_ctl start`; `None` (with the reason printed) when
    /// the PostgreSQL 15 binaries are not installed.
    pub fn start() -> Option<Self> {
        if !Path::new(PG_BIN).join("pg_ctl").exists() {
            eprintln!("SKIPPED: no {PG_BIN}/pg_ctl (apt-get install postgresql-15)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("keyward-pg-")
            .tempdir()
            .unwrap();
        let as_postgres = is_root();
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success(), "chown postgres {}", dir.path().display());
        }
        let pg = Self {
            dir,
            port: free_port(),
            as_postgres,
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        // Durability against a machine's crash is not what is tested: a
        // killed server loses nothing the OS holds.
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c full_page_writes=off -c max_connections=60",
            pg.port,
            pg.dir.path().display()
        );
        let log = pg.dir.path().join("pg.log").display().to_string();
        pg.run(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-o", &opts, "-w", "-t", "60", "start",
            ],
        );
        Some(pg)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Runs a PostgreSQL binary (as `postgres` when root), which must
    /// succeed.
    fn run(&self, bin: &str, args: &[&str]) {
        let path = Path::new(PG_BIN).join(bin);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = cmd.args(args).current_dir("/").output().unwrap();
        assert!(
            out.status.success(),
            "{bin} {args:?}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pg.log")).unwrap_or_default()
    }

    /// The superuser's URL of the `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl restart -m fast` (clients told, transactions rolled back)
    /// or `-m immediate` (a crash: recovery from the WAL at start), waiting
    /// until it accepts connections again.
    pub fn restart(&self, immediate: bool) {
        let mode = if immediate { "immediate" } else { "fast" };
        let data = self.data();
        // `-l` again: without it the new server writes to pg_ctl's stdout,
        // which `output()` would read until the server exits.
        let log = self.dir.path().join("pg.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-m", mode, "-w", "-t", "60", "restart",
            ],
        );
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data();
        let path = Path::new(PG_BIN).join("pg_ctl");
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let _ = cmd
            .args(["-D", &data, "-m", "immediate", "stop"])
            .current_dir("/")
            .output();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

/// A TCP proxy to `127.0.0.1:upstream`: while cut, its connections are
/// dropped and new ones closed at once, as a network partition would leave
/// the replica behind it.
pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Proxy {
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (c, list) = (cut.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    continue;
                };
                if c.load(Ordering::SeqCst) {
                    drop(down);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                let mut list = list.lock().unwrap();
                list.retain(|h| !h.is_finished());
                list.push(task.abort_handle());
            }
        })
        .abort_handle();
        Self {
            port,
            cut,
            conns,
            accept,
        }
    }

    /// Drops every connection and refuses new ones until [`Proxy::heal`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

impl Server {
    /// A replica of this installation whose database URL is `url` (the
    /// same database through another route, e.g. a [`Proxy`]): its own
    /// config file, ports and log.
    pub fn replica_via(&self, name: &str, url: &str) -> Replica {
        let config = self.dir.path().join(format!("keyward-{name}.toml"));
        let text = std::fs::read_to_string(&self.config).unwrap();
        let from = toml_str(&self.db.config.url);
        assert!(text.contains(&from), "the config names no database URL");
        std::fs::write(&config, text.replace(&from, &toml_str(url))).unwrap();
        let log = format!("serve-{name}.log");
        let (child, public, admin) = self.spawn_serve_as(&config, &log, &[], &[]);
        Replica {
            child,
            public,
            admin,
            log: self.dir.path().join(log),
        }
    }
}

/// `url` with its port `from` replaced by `to`.
pub fn with_port(url: &str, from: u16, to: u16) -> String {
    let (a, b) = (format!(":{from}/"), format!(":{to}/"));
    assert!(url.contains(&a), "{url} names no port {from}");
    url.replacen(&a, &b, 1)
}
