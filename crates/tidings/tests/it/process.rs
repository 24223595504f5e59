//! The real `tidings` binary as a child process, for tests that need to kill it or run
//! its commands.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_tidings");

pub struct ServerProcess {
    pub child: Child,
    pub public: String,
    pub ingest: String,
}

impl ServerProcess {
    /// Starts `tidings serve` on `data_dir` with ephemeral ports and waits for its
    /// "listening" line.
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[])
    }

    /// Like [`ServerProcess::start`], with more `serve` flags.
    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--ingest-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .arg("--data-dir")
            .arg(data_dir)
            .env("TIDINGS_LOG", "warn")
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
        // "Tidings is listening: public API http://A , ingest http://B , data in D"
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

/// Runs `tidings ARGS...`; returns (success, stdout, stderr).
pub fn tidings(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("TIDINGS_LOG", "warn")
        .output()
        .expect("run tidings");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `tidings keys create ...` on `data_dir`; returns the printed secret.
pub fn create_key(data_dir: &Path, args: &[&str]) -> String {
    let dir = data_dir.to_str().expect("utf-8 path");
    let mut all = vec!["keys", "create", "--data-dir", dir];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = tidings(&all);
    assert!(ok, "keys create failed: {stderr}");
    let secret = stdout.trim().to_string();
    assert!(
        secret.starts_with("tdk_") && !secret.contains('\n'),
        "only the key on stdout: {stdout:?}"
    );
    secret
}
