//! The real `tidings` binary as a child process, for tests that need to kill it or run
//! its commands. Each is pointed at a [`TestStore`], so the same test runs on either backend.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::TestStore;

pub const BIN: &str = env!("CARGO_BIN_EXE_tidings");

pub struct ServerProcess {
    pub child: Child,
    pub public: String,
    pub ingest: String,
}

impl ServerProcess {
    /// Starts `tidings serve` on `store` with ephemeral ports and waits for its
    /// "listening" line.
    pub fn start(store: &TestStore) -> Self {
        Self::start_with(store, &[])
    }

    /// Like [`ServerProcess::start`], with more `serve` flags.
    pub fn start_with(store: &TestStore, extra: &[&str]) -> Self {
        let mut child = command()
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--ingest-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .args(store.args())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tidings serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("server printed its addresses");
        // "Tidings is listening: public API http://A , ingest http://B , embedded store in D"
        let urls: Vec<&str> = line
            .split_whitespace()
            .filter(|w| w.starts_with("http://"))
            .collect();
        assert_eq!(urls.len(), 2, "unexpected first line: {line}");
        Self {
            child,
            public: urls[0].to_string(),
            ingest: urls[1].to_string(),
        }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary, quiet, with only the store the test names: a store chosen in the
/// environment of whoever runs the tests must not leak in.
fn command() -> Command {
    let mut command = Command::new(BIN);
    command
        .env("TIDINGS_LOG", "warn")
        .env_remove("TIDINGS_DATA_DIR")
        .env_remove("TIDINGS_DATABASE_URL");
    command
}

/// Runs `tidings ARGS...`; returns (success, stdout, stderr).
pub fn tidings(args: &[&str]) -> (bool, String, String) {
    let out = command().args(args).output().expect("run tidings");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Runs `tidings ARGS... --data-dir DIR` (or `--database-url URL`) on `store`.
pub fn tidings_on(store: &TestStore, args: &[&str]) -> (bool, String, String) {
    let store_args = store.args();
    let mut all = args.to_vec();
    all.extend(store_args.iter().map(String::as_str));
    tidings(&all)
}

/// `tidings keys create ...` on `store`; returns the printed secret.
pub fn create_key(store: &TestStore, args: &[&str]) -> String {
    let mut all = vec!["keys", "create"];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = tidings_on(store, &all);
    assert!(ok, "keys create failed: {stderr}");
    let secret = stdout.trim().to_string();
    assert!(
        secret.starts_with("tdk_") && !secret.contains('\n'),
        "only the key on stdout: {stdout:?}"
    );
    secret
}
