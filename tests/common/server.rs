//! A real `mixgan serve` on an ephemeral loopback port, and a real HTTP client for it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub base: String,
    pub agent: ureq::Agent,
    pub stderr_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The error code of a JSON error answer.
    pub fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or("").to_string()
    }
}

pub fn agent(timeout: Option<Duration>) -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(timeout).build().into()
}

pub fn reply(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut r = r.expect("an HTTP answer");
    let headers = r.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect();
    let status = r.status().as_u16();
    let body = r.body_mut().with_config().limit(64 << 20).read_to_vec().expect("read the body");
    Reply { status, headers, body }
}

/// The flood's repair layout (see `mixgan loadtest --flood`) as text: a gradient picture whose
/// one face region, the whole `side` x `side` canvas, is projected for `steps` steps.
pub fn projection_layout(side: u32, steps: usize) -> String {
    String::from_utf8(mixgan::cli::flood::projection_layout(side, steps)).unwrap()
}

impl Server {
    /// Starts the binary with `MIXGAN_*` settings from `env` and extra flags; waits until it
    /// listens, and (when `wait_ready`) until /readyz says ready.
    pub fn start(env: &[(&str, &str)], args: &[&str], wait_ready: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let stderr_path = dir.path().join("stderr.log");
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mixgan"));
        cmd.args(["serve", "--addr", "127.0.0.1:0", "--device", "cpu"]);
        if !args.contains(&"--models") {
            cmd.arg("--models").arg(&models);
        }
        cmd.args(args).stdout(Stdio::piped()).stderr(std::fs::File::create(&stderr_path).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start mixgan serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let base = line
            .trim()
            .strip_prefix("mixgan: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line `{line}`"))
            .to_string();
        let server = Self { child, base, agent: agent(Some(Duration::from_secs(60))), stderr_path, _dir: dir };
        if wait_ready {
            server.wait_ready(Duration::from_secs(60));
        }
        server
    }

    pub fn wait_ready(&self, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.get("/readyz").status == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("not ready after {limit:?}; stderr:\n{}", self.stderr());
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// CPU time the server process has used so far, in seconds (Linux's /proc).
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command name (which may hold spaces) in parentheses.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / 100.0
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> Reply {
        reply(self.agent.get(self.url(path)).call())
    }

    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = self.agent.get(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        reply(req.call())
    }

    /// POST with the given headers (content-type included by the caller).
    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut req = self.agent.post(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        reply(req.send(body))
    }

    pub fn compose(&self, layout: &str) -> Reply {
        self.post("/v1/compose", &[("content-type", "application/json")], layout.as_bytes())
    }

    /// The sum and count of a histogram series in /metrics.
    pub fn histogram(&self, name: &str, label: &str) -> (f64, f64) {
        let text = String::from_utf8(self.get("/metrics").body).unwrap();
        let find = |suffix: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{name}_{suffix}")) && l.contains(label))
                .and_then(|l| l.rsplit(' ').next())
                .map(|v| v.parse::<f64>().unwrap())
                .unwrap_or(0.0)
        };
        (find("sum"), find("count"))
    }

    pub fn signal(&self, sig: &str) {
        let ok =
            Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("still running after {limit:?}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
