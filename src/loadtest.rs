//! The service benchmark: drives a running `mixgan serve` over HTTP, closed-loop at given
//! concurrencies or open-loop at a fixed rate, and measures the bare generators on the same
//! mix of patches in-process for comparison. It only measures; it serves nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::GenerationParams;
use crate::registry::ModelRegistry;
use crate::render::Renderer;
use crate::router::RouterLimits;

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

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(120))).build().into()
}

fn send(agent: &ureq::Agent, t: &Target) -> (u16, f64) {
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
pub fn bare_generators(registry: Arc<ModelRegistry>, layout: &[u8], requests: usize, max_batch: usize) -> Result<f64, String> {
    let device = registry.iter().next().map(|m| m.generator.device()).ok_or("no models")?;
    let renderer = Renderer { registry, limits: RouterLimits::default(), device };
    let plan = renderer.plan(layout).map_err(|e| e.to_string())?;
    let _guard = tch::no_grad_guard();
    let run = |n: usize| -> Result<f64, String> {
        let started = Instant::now();
        for job in &plan.jobs {
            let params: Vec<GenerationParams> = (0..n).flat_map(|_| job.items.iter().map(|(_, p)| p.clone())).collect();
            for chunk in params.chunks(max_batch.max(1)) {
                let out = job.model.generate(chunk).map_err(|e| e.to_string())?;
                let _ = out.f_to_device(tch::Device::Cpu).map_err(|e| e.to_string())?;
            }
        }
        Ok(started.elapsed().as_secs_f64())
    };
    run(2)?; // warm up
    Ok(requests as f64 / run(requests)?)
}

/// Resident memory of a process in bytes (Linux), for the soak.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
