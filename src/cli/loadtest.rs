//! `mixgan loadtest`, the service benchmark: drives a running `mixgan serve` over HTTP,
//! closed-loop at given concurrencies or open-loop at a fixed rate, and measures the bare
//! generators on the same mix of patches in-process for comparison. It only measures; it
//! serves nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;

use super::flood::Flood;
use super::say;
use crate::model::DeviceChoice;
use crate::pipeline::Pipeline;
use crate::registry::ModelRegistry;
use crate::router::RouterLimits;

#[derive(Args)]
pub struct LoadArgs {
    /// A running server; without it, one is started on a free loopback port.
    #[arg(long)]
    url: Option<String>,
    /// The layout every request sends.
    #[arg(long, default_value = "examples/portrait.json")]
    layout: PathBuf,
    /// Models for the started server and for the bare-generator baseline.
    #[arg(long, default_value = "models")]
    models: PathBuf,
    /// Closed-loop client counts.
    #[arg(long, default_value = "1,4,16", value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Bearer token for the server.
    #[arg(long)]
    api_key: Option<String>,
    /// Batch size of the bare-generator baseline (the server's default max_batch).
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Soak instead: open loop at twice the closed-loop rate at the highest concurrency (or
    /// at --rate), for --seconds, checking answers and the server's memory.
    #[arg(long)]
    soak: bool,
    /// Requests per second for --soak.
    #[arg(long)]
    rate: Option<f64>,
    /// Flood instead: the layout's latency idle, then while --flood-clients post projections
    /// of --flood-steps steps back to back; every answer must be 200 or 503.
    #[arg(long)]
    flood: bool,
    #[arg(long, default_value_t = 4)]
    flood_clients: usize,
    #[arg(long, default_value_t = 150)]
    flood_steps: usize,
    /// Alternating rounds of bare generators and service for the comparison.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Device of the started server and of the baseline: auto (CUDA when available), cpu,
    /// cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
}

pub fn run_command(a: LoadArgs) -> Result<()> {
    let layout = std::fs::read(&a.layout).with_context(|| format!("cannot read {}", a.layout.display()))?;
    let plan = LoadPlan {
        url: a.url,
        api_key: a.api_key,
        layout,
        layout_name: a.layout.display().to_string(),
        models: a.models,
        concurrency: a.concurrency,
        seconds: a.seconds,
        max_batch: a.max_batch,
        soak: a.soak,
        rate: a.rate,
        flood: a.flood.then_some(Flood { clients: a.flood_clients, steps: a.flood_steps, portraits: 2 }),
        rounds: a.rounds,
        device: a.device,
    };
    let mut text = String::new();
    let result = run_into(&plan, &mut text);
    say(&text);
    result
}

#[derive(Clone)]
pub struct Target {
    pub url: String,
    pub api_key: Option<String>,
    pub layout: Vec<u8>,
}

#[derive(Debug, Default, Clone)]
pub struct LoadResult {
    pub seconds: f64,
    /// Latencies of 200 answers, in seconds.
    pub latencies: Vec<f64>,
    /// Answers by status (0 = no answer: connection error or client timeout).
    pub statuses: BTreeMap<u16, usize>,
}

impl LoadResult {
    pub fn ok(&self) -> usize {
        self.statuses.get(&200).copied().unwrap_or(0)
    }

    pub fn rps(&self) -> f64 {
        self.ok() as f64 / self.seconds
    }

    pub fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let mut v = self.latencies.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v[((v.len() - 1) as f64 * p).round() as usize]
    }

    fn merge(&mut self, other: LoadResult) {
        self.latencies.extend(other.latencies);
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
    }
}

pub(super) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

pub(super) fn send(agent: &ureq::Agent, t: &Target) -> (u16, f64) {
    let started = Instant::now();
    let mut req = agent.post(format!("{}/v1/compose", t.url)).header("content-type", "application/json");
    if let Some(k) = &t.api_key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let status = match req.send(&t.layout[..]) {
        Ok(mut r) => {
            let code = r.status().as_u16();
            match r.body_mut().with_config().limit(256 << 20).read_to_vec() {
                Ok(_) => code,
                Err(_) => 0,
            }
        }
        Err(_) => 0,
    };
    (status, started.elapsed().as_secs_f64())
}

/// `concurrency` clients, each sending the layout back to back for `duration`.
pub fn closed_loop(t: &Target, concurrency: usize, duration: Duration) -> LoadResult {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let results: Vec<LoadResult> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..concurrency)
            .map(|_| {
                scope.spawn(|| {
                    let agent = agent();
                    let mut r = LoadResult::default();
                    while Instant::now() < deadline {
                        let (status, secs) = send(&agent, t);
                        *r.statuses.entry(status).or_default() += 1;
                        if status == 200 {
                            r.latencies.push(secs);
                        }
                    }
                    r
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a client thread")).collect()
    });
    let mut total = LoadResult { seconds: started.elapsed().as_secs_f64(), ..Default::default() };
    for r in results {
        total.merge(r);
    }
    total
}

/// Requests started at a fixed `rate` per second for `duration`, whatever the answers
/// (open loop). Client `i` of `clients` owns the request slots `i`, `i + clients`, ...; a
/// client still busy when its slot comes sends as soon as it is free. `sample` runs about
/// once a second.
pub fn open_loop(t: &Target, rate: f64, duration: Duration, clients: usize, mut sample: impl FnMut()) -> LoadResult {
    let started = Instant::now();
    let interval = 1.0 / rate.max(0.01);
    let results: Vec<LoadResult> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients.max(1))
            .map(|i| {
                scope.spawn(move || {
                    let agent = agent();
                    let mut r = LoadResult::default();
                    for slot in (i..).step_by(clients.max(1)) {
                        let at = Duration::from_secs_f64(slot as f64 * interval);
                        if at >= duration {
                            break;
                        }
                        if let Some(wait) = (started + at).checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        let (status, secs) = send(&agent, t);
                        *r.statuses.entry(status).or_default() += 1;
                        if status == 200 {
                            r.latencies.push(secs);
                        }
                    }
                    r
                })
            })
            .collect();
        while started.elapsed() < duration {
            sample();
            std::thread::sleep(Duration::from_secs(1));
        }
        handles.into_iter().map(|h| h.join().expect("a client thread")).collect()
    });
    let mut total = LoadResult { seconds: started.elapsed().as_secs_f64(), ..Default::default() };
    for r in results {
        total.merge(r);
    }
    total
}

/// The bare generators on the layout's mix of patches: `requests` layouts' worth of patches,
/// each model's in batches of `max_batch`, in this thread. Layouts per second.
pub fn bare_generators(registry: Arc<ModelRegistry>, layout: &[u8], requests: usize, max_batch: usize) -> Result<f64> {
    let device = registry.iter().next().map(|m| m.generator.device()).ok_or_else(|| anyhow!("no models"))?;
    let pipeline = Pipeline { registry, limits: RouterLimits::default(), device, composite_on: Default::default() };
    let plan = pipeline.plan(layout)?;
    let _guard = tch::no_grad_guard();
    let run = |n: usize| -> Result<f64> {
        let started = Instant::now();
        for job in &plan.jobs {
            let params = plan.job_params(job);
            let params: Vec<_> = (0..n).flat_map(|_| params.iter().cloned()).collect();
            for chunk in params.chunks(max_batch.max(1)) {
                let _ = job.model.generate(chunk)?.f_to_device(tch::Device::Cpu)?;
            }
        }
        Ok(started.elapsed().as_secs_f64())
    };
    // Warm up every batch size the timed run forms (cuDNN's autotuner tunes each the first time;
    // with CUDA graphs the second pass at a size records it).
    let passes = crate::model::graphs::warmup_passes(device);
    for job in &plan.jobs {
        let params = plan.job_params(job);
        let total = requests * params.len();
        let batch = max_batch.max(1);
        let mut sizes = vec![total.min(batch)];
        sizes.extend((total > batch && !total.is_multiple_of(batch)).then_some(total % batch));
        for size in sizes {
            let chunk: Vec<_> = params.iter().cycle().take(size).cloned().collect();
            for _ in 0..passes {
                let _ = job.model.generate(&chunk)?.f_to_device(tch::Device::Cpu)?;
            }
        }
    }
    Ok(requests as f64 / run(requests)?)
}

/// Resident memory of a process in bytes (Linux), for the soak.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU seconds (user and system) process `pid` ("self" for this one) has used, from /proc
/// (Linux; `None` elsewhere).
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state is field 3, utime and stime 14 and 15.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| ticks / per_second as f64)
}

/// What `mixgan loadtest` runs: the rows at each concurrency and the alternating comparison
/// with the bare generators, or, with `soak`, an open-loop overload run.
pub struct LoadPlan {
    /// A running server; without it, one is started on a free loopback port.
    pub url: Option<String>,
    pub api_key: Option<String>,
    pub layout: Vec<u8>,
    pub layout_name: String,
    pub models: PathBuf,
    pub concurrency: Vec<usize>,
    pub seconds: f64,
    pub max_batch: usize,
    pub soak: bool,
    pub rate: Option<f64>,
    pub flood: Option<Flood>,
    pub rounds: usize,
    pub device: DeviceChoice,
}

/// A `mixgan serve` child (this executable) on a free loopback port, stopped with SIGTERM
/// when dropped.
struct ChildServer {
    child: std::process::Child,
    url: String,
}

impl ChildServer {
    fn start(models: &Path, device: DeviceChoice) -> Result<Self> {
        use std::io::BufRead;
        let exe = std::env::current_exe()?;
        let mut child = std::process::Command::new(exe)
            .env("MIXGAN_LOG", "warn")
            .args(["serve", "--addr", "127.0.0.1:0", "--device", &device.to_string(), "--models"])
            .arg(models)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("cannot start the server")?;
        let mut line = String::new();
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no server stdout"))?;
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let url = line
            .trim()
            .strip_prefix("mixgan: listening on ")
            .ok_or_else(|| anyhow!("the server did not start"))?
            .to_string();
        let server = Self { child, url };
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let started = Instant::now();
        while agent.get(format!("{}/readyz", server.url)).call().map(|r| r.status().as_u16()).ok() != Some(200) {
            if started.elapsed().as_secs() > 120 {
                bail!("the server was not ready within 2 minutes");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

fn run_into(a: &LoadPlan, text: &mut String) -> Result<()> {
    let child = match &a.url {
        Some(_) => None,
        None => Some(ChildServer::start(&a.models, a.device)?),
    };
    let url = a.url.clone().or_else(|| child.as_ref().map(|c| c.url.clone())).ok_or_else(|| anyhow!("no server"))?;
    let target = Target { url: url.clone(), api_key: a.api_key.clone(), layout: a.layout.clone() };
    let duration = Duration::from_secs_f64(a.seconds.max(0.5));
    *text += &format!("server {url}, layout {}, {:.0} s per row, device {}\n", a.layout_name, a.seconds, a.device);
    if a.soak {
        return soak(a, &target, child.as_ref().map(|c| c.child.id()), duration, text);
    }
    if let Some(flood) = &a.flood {
        return super::flood::run(&target, flood, duration, text);
    }
    *text += &format!(
        "{:>11} {:>9} {:>8} {:>9} {:>9} {:>8}\n",
        "concurrency", "requests", "req/s", "p50 ms", "p99 ms", "non-200"
    );
    for &c in &a.concurrency {
        let r = closed_loop(&target, c, duration);
        let bad: usize = r.statuses.iter().filter(|(s, _)| **s != 200).map(|(_, n)| n).sum();
        *text += &format!(
            "{:>11} {:>9} {:>8.2} {:>9.1} {:>9.1} {:>8}\n",
            c,
            r.ok(),
            r.rps(),
            r.percentile(0.5) * 1e3,
            r.percentile(0.99) * 1e3,
            bad
        );
    }
    // The comparison alternates short rounds of the bare generators and of the service at the
    // highest concurrency, so drift of a shared machine hits both alike; the median ratio counts.
    // The bare generators run with the settings the server takes from the same environment
    // (the CPU's passes, cuDNN's autotuner, the CUDA kernels), so the two are compared like
    // for like.
    let device = a.device.resolve()?;
    let settings = crate::config::Config::load(None, std::env::vars(), Default::default())?;
    crate::model::device::configure(device, settings.switches());
    let registry = Arc::new(ModelRegistry::load(&a.models, device)?);
    let top = a.concurrency.iter().copied().max().unwrap_or(16);
    let round = Duration::from_secs_f64((a.seconds / 2.0).max(2.0));
    let mut ratios = Vec::new();
    let before = super::stages::scrape(&target);
    let server = child.as_ref().map(|c| c.child.id().to_string());
    let cpu = || (server.as_deref().and_then(cpu_seconds), cpu_seconds("self"));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    for i in 0..a.rounds.max(1) {
        let bare = bare_generators(registry.clone(), &a.layout, (round.as_secs_f64() * 30.0) as usize, a.max_batch)?;
        let (cpu_before, started) = (cpu(), Instant::now());
        let served = closed_loop(&target, top, round).rps();
        let busy = |before: Option<f64>, after: Option<f64>| Some((after? - before?) / started.elapsed().as_secs_f64());
        let cpu_after = cpu();
        let busy_cores = match (busy(cpu_before.0, cpu_after.0), busy(cpu_before.1, cpu_after.1)) {
            (Some(server), Some(client)) => {
                format!(" (cores busy: the server {server:.1}, this load generator {client:.1}, of {cores})")
            }
            _ => String::new(),
        };
        *text += &format!(
            "round {}: bare generators {bare:.2} layouts/s (batch {}), service {served:.2} req/s at concurrency {top}: {:.2}{busy_cores}\n",
            i + 1,
            a.max_batch,
            served / bare
        );
        ratios.push(served / bare);
    }
    ratios.sort_by(|x, y| x.total_cmp(y));
    *text += &format!(
        "service / bare generators at concurrency {top}, median of {} rounds: {:.2}\n",
        ratios.len(),
        ratios[ratios.len() / 2]
    );
    if let (Some(before), Some(after)) = (before, super::stages::scrape(&target)) {
        *text += &super::stages::report(&before, &after);
    }
    Ok(())
}

/// Open loop at twice the closed-loop rate (or `rate`): every answer must be a picture or a
/// 503, the server must stay alive, and its memory must not grow by more than a quarter.
fn soak(a: &LoadPlan, target: &Target, pid: Option<u32>, duration: Duration, text: &mut String) -> Result<()> {
    let rate = match a.rate {
        Some(r) => r,
        None => 2.0 * closed_loop(target, *a.concurrency.iter().max().unwrap_or(&16), Duration::from_secs(5)).rps(),
    };
    let mut rss = Vec::new();
    let r = open_loop(target, rate, duration, 256, || {
        if let Some(m) = pid.and_then(rss_bytes) {
            rss.push(m);
        }
    });
    *text +=
        &format!("soak: {rate:.1} requests/s offered for {:.0} s; answers by status: {:?}\n", r.seconds, r.statuses);
    *text += &format!(
        "served {:.1}/s, p50 {:.0} ms, p99 {:.0} ms\n",
        r.rps(),
        r.percentile(0.5) * 1e3,
        r.percentile(0.99) * 1e3
    );
    if rss.len() >= 4 {
        let mb = |b: u64| b as f64 / (1 << 20) as f64;
        let (settled, last) = (rss[rss.len() / 4], *rss.last().unwrap_or(&0));
        let max = rss.iter().copied().max().unwrap_or(0);
        *text += &format!(
            "server memory (RSS): {:.0} MiB after the first quarter, {:.0} MiB at the end, {:.0} MiB at most\n",
            mb(settled),
            mb(last),
            mb(max)
        );
        if last as f64 > settled as f64 * 1.25 {
            bail!("memory grew by more than 25 % during the soak");
        }
    }
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let alive = agent.get(format!("{}/healthz", target.url)).call().map(|r| r.status().as_u16()).ok() == Some(200);
    *text += &format!("server alive after the soak: {alive}\n");
    let other: Vec<_> = r.statuses.keys().filter(|s| **s != 200 && **s != 503).collect();
    if !other.is_empty() || !alive {
        bail!("answers other than 200 and 503: {other:?}, alive: {alive}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_count_this_process_working_and_no_other() {
        let before = cpu_seconds("self").expect("this process's CPU time on Linux");
        let started = Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let used = cpu_seconds("self").unwrap() - before;
        // A clock tick is 10 ms: 0.3 s of work counts at least 0.2; and the whole process
        // (other tests run beside this one) no more than every core for the time it took.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let most = started.elapsed().as_secs_f64() * cores + 0.05;
        assert!(used >= 0.2 && used <= most, "{used} CPU seconds for 0.3 s of work (at most {most})");
        assert_eq!(cpu_seconds("4294967295"), None);
    }
}
