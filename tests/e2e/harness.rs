//! Starts the real binary on port 0 and talks to it like a user would.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

pub const BINARY: &str = env!("CARGO_BIN_EXE_meridian");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh PostgreSQL database for one test, dropped at the end.
pub struct PgDatabase {
    scratch: Option<meridian_store::ScratchDatabase>,
    pub url: String,
}

impl PgDatabase {
    pub async fn create() -> PgDatabase {
        let admin_url = std::env::var("DATABASE_URL").expect(
            "DATABASE_URL must point at a PostgreSQL server for the end-to-end tests (see README)",
        );
        let scratch = meridian_store::ScratchDatabase::create(&admin_url, "meridian_e2e")
            .await
            .unwrap();
        PgDatabase {
            url: scratch.url(),
            scratch: Some(scratch),
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let Some(scratch) = self.scratch.take() else {
            return;
        };
        // Drop runs outside any runtime guarantee: use a short-lived thread with its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _ = runtime.block_on(scratch.drop_now());
        })
        .join();
    }
}

/// Everything a `meridian` process needs to find its store.
pub struct Environment {
    pub data_dir: tempfile::TempDir,
    pub database: Option<PgDatabase>,
}

impl Environment {
    pub async fn new(backend: Backend) -> Environment {
        let database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(PgDatabase::create().await),
        };
        Environment {
            data_dir: tempfile::tempdir().unwrap(),
            database,
        }
    }

    /// A `meridian` command pointed at this environment's store.
    pub fn command(&self) -> Command {
        let mut command = Command::new(BINARY);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .arg("--data-dir")
            .arg(self.data_dir.path());
        if let Some(database) = &self.database {
            command.env("DATABASE_URL", &database.url);
        }
        command.kill_on_drop(true);
        command
    }

    /// Runs a command to completion: (exit success, stdout, stderr).
    pub async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let output = self.command().args(args).output().await.unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Creates an API key with `meridian keys create-api-key` and returns it.
    pub async fn api_key(&self, workspace: &str, scopes: &str) -> String {
        let (ok, stdout, stderr) = self
            .run(&[
                "keys",
                "create-api-key",
                "--workspace",
                workspace,
                "--scopes",
                scopes,
                "--region",
                "eu",
                "--time-zone",
                "Europe/Paris",
            ])
            .await;
        assert!(ok, "create-api-key failed: {stderr}");
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "the key must be alone on stdout: {stdout:?}"
        );
        lines[0].to_owned()
    }

    pub async fn serve(&self, services: &[&str]) -> Server {
        self.start(services, &[]).await
    }

    /// All services, with extra environment variables.
    pub async fn serve_with_env(&self, vars: &[(&str, &str)]) -> Server {
        self.start(&[], vars).await
    }

    async fn start(&self, services: &[&str], vars: &[(&str, &str)]) -> Server {
        let log_path = self.data_dir.path().join("server.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = self
            .command()
            .arg("serve")
            .args(services)
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .envs(vars.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let (mut grpc, mut http) = (None, None);
        let found = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(addr) = line.strip_prefix("grpc listening on ") {
                    grpc = Some(addr.to_owned());
                } else if let Some(addr) = line.strip_prefix("http listening on ") {
                    http = Some(addr.to_owned());
                }
                if grpc.is_some() && http.is_some() {
                    return;
                }
            }
        })
        .await;
        let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();
        assert!(
            found.is_ok(),
            "server did not print its addresses: {}",
            log_text()
        );
        let (Some(grpc), Some(http)) = (grpc, http) else {
            panic!("server exited before listening: {}", log_text());
        };
        // The addresses are printed as the listeners bind; the start-up log line (which
        // tests read) is written just after: wait for it too.
        let logged = tokio::time::timeout(Duration::from_secs(30), async {
            while !log_text().contains("meridian started") {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(logged.is_ok(), "no start-up log line: {}", log_text());
        let channel = Channel::from_shared(format!("http://{grpc}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Server {
            child,
            http_addr: http,
            channel,
            log_path,
        }
    }
}

pub struct Server {
    pub child: Child,
    pub http_addr: String,
    pub channel: Channel,
    pub log_path: PathBuf,
}

impl Server {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("server still running") as i32;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("server did not stop within 30 s of SIGTERM")
            .unwrap()
    }
}

/// A JetStream of the test's own: `NATS_URL`, plus a stream and subject root no other
/// test (or earlier run) uses. Servers sharing the default streams would share durable
/// consumers too, and take each other's events.
pub fn own_jetstream() -> [(&'static str, String); 3] {
    let nats = std::env::var("NATS_URL")
        .expect("NATS_URL must point at a NATS JetStream server for the end-to-end tests");
    let run = uuid::Uuid::now_v7().simple().to_string();
    [
        ("NATS_URL", nats),
        ("MERIDIAN_NATS_STREAM", format!("E2E_{run}")),
        ("MERIDIAN_NATS_SUBJECT_ROOT", format!("e2e-{run}")),
    ]
}

/// A request with `authorization: Bearer <key>` (or none).
pub fn authorized<T>(message: T, key: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(key) = key {
        let value: MetadataValue<_> = format!("Bearer {key}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    request
}
