//! `mixgan bench`: mixgan's native generator and the Python reference on the same weights,
//! batch sizes, device and thread count, in one run, with their ratio. It only measures; it
//! changes no model.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use tch::Device;

use super::{python, say};
use crate::config::Config;
use crate::model::device::Switches;
use crate::model::{model_dirs, to_pixels, ConvPath, DeviceChoice, GenerationParams, Model, ModelError, Precision};

#[derive(Args)]
pub struct BenchArgs {
    /// A folder of model directories, or one model directory.
    #[arg(long, default_value = "models")]
    models: PathBuf,
    /// Batch sizes.
    #[arg(long, default_value = "1,8", value_delimiter = ',')]
    batches: Vec<usize>,
    #[arg(long, default_value_t = 10)]
    iters: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Threads for both sides (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Python with PyTorch for the baseline (default: $MIXGAN_PYTHON, else the environment
    /// `make setup` installs, else python3).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Skip the Python baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Skip generating on the CPU to compare with the device (slow for large models).
    #[arg(long)]
    no_cpu_check: bool,
    /// Modulated convolutions: auto, fused (grouped, per-sample weights) or unfused.
    #[arg(long, default_value = "auto")]
    conv_path: ConvPath,
    /// auto, fp32, fp16 or bf16 (default: each model's own setting). The pictures of any
    /// precision but fp32 are also compared with fp32's.
    #[arg(long)]
    precision: Option<Precision>,
    /// cuDNN's autotuner on CUDA (true or false; the default is the server's).
    #[arg(long, default_value_t = Config::default().cudnn_benchmark, action = clap::ArgAction::Set)]
    cudnn_benchmark: bool,
    /// The generator's own CPU passes (true or false); off, libtorch's tensor ops instead.
    #[arg(long, default_value_t = Config::default().cpu_kernels, action = clap::ArgAction::Set)]
    cpu_kernels: bool,
    /// The generator's own CUDA kernels (true or false); off, libtorch's tensor ops instead.
    #[arg(long, default_value_t = Config::default().cuda_kernels, action = clap::ArgAction::Set)]
    cuda_kernels: bool,
    /// Record each pass per batch size as a CUDA graph and replay it (true or false).
    #[arg(long, default_value_t = Config::default().cuda_graphs, action = clap::ArgAction::Set)]
    cuda_graphs: bool,
    /// Fold the upsampling filter into the weights (true or false; default: measured per block
    /// and batch where the generator's CUDA kernels run, else on CUDA only).
    #[arg(long, action = clap::ArgAction::Set)]
    fold_filters: Option<bool>,
    /// After timing, print each synthesis block's milliseconds at the largest batch (waiting
    /// for the device after each block).
    #[arg(long)]
    profile_blocks: bool,
}

pub fn run_command(a: BenchArgs) -> Result<()> {
    let device = a.device.resolve().context("--device")?;
    crate::model::device::configure(
        device,
        Switches {
            cpu_kernels: a.cpu_kernels,
            cudnn_benchmark: a.cudnn_benchmark,
            kernels: a.cuda_kernels,
            graphs: a.cuda_graphs,
            ..Config::default().switches()
        },
    );
    let models = if a.models.join("model.toml").is_file() {
        vec![a.models.clone()]
    } else {
        model_dirs(&a.models)?.into_iter().filter(|d| !crate::detect::detector::is_detector_dir(d)).collect()
    };
    if models.is_empty() {
        bail!("no model directories (with a model.toml) under {}", a.models.display());
    }
    let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let cfg = BenchConfig {
        models,
        batches: a.batches,
        iters: a.iters,
        warmup: a.warmup,
        threads,
        device,
        python: (!a.no_baseline).then(|| python::python(a.python)),
        reference: python::tool("sg2_reference.py"),
        conv_path: a.conv_path,
        fold_filters: a.fold_filters,
        precision: a.precision,
        cpu_check: !a.no_cpu_check,
    };
    let rows = run(&cfg, |w| eprintln!("warning: {w}"))?;
    say(&format_table(&rows, device, threads));
    if device.is_cuda() {
        match crate::model::kernels::state(device) {
            Ok(_) => say("the generator's CUDA kernels: on\n"),
            Err(e) => say(&format!("the generator's CUDA kernels: off ({e})\n")),
        }
    }
    if a.profile_blocks {
        let batch = cfg.batches.iter().copied().max().unwrap_or(1);
        for dir in &cfg.models {
            let model = load(dir, &cfg)?;
            let params = timing_params(&model, batch);
            // The first pass tunes and warms; the third is printed.
            let mut blocks = None;
            for _ in 0..3 {
                blocks = model.profile_blocks(&params)?;
            }
            for b in [1, batch] {
                let (queued, done) = queue_time(&model, b)?;
                say(&format!(
                    "{} at batch {b}: the host queued the pass in {queued:.2} ms, the device finished it at {done:.2} ms\n",
                    model.name()
                ));
            }
            say(&fold_report(&model));
            let Some(blocks) = blocks else { continue };
            let total: f64 = blocks.iter().map(|b| b.1).sum();
            let line: Vec<String> = blocks.iter().map(|(r, ms)| format!("{r}: {ms:.2}")).collect();
            say(&format!("{} blocks at batch {batch}, ms: {} (sum {total:.2})\n", model.name(), line.join(", ")));
        }
    }
    Ok(())
}

/// The upsampling blocks' measured filter choices, one line per batch size ("" when none).
fn fold_report(model: &Model) -> String {
    let choices = model.fold_choices();
    let mut batches: Vec<i64> = choices.iter().map(|c| c.key.batch).collect();
    batches.sort_unstable();
    batches.dedup();
    let mut s = String::new();
    for b in batches {
        let line: Vec<String> = choices
            .iter()
            .filter(|c| c.key.batch == b)
            .map(|c| {
                let way = if c.folded { "folded" } else { "unfolded" };
                format!("{} px {way} ({:.2} / {:.2})", c.key.res, c.folded_ms, c.unfolded_ms)
            })
            .collect();
        s += &format!(
            "{} upsampling filters at batch {b}, by measurement (folded / unfolded ms, best of 3): {}\n",
            model.name(),
            line.join(", ")
        );
    }
    s
}

pub struct BenchConfig {
    pub models: Vec<PathBuf>,
    pub batches: Vec<usize>,
    pub iters: usize,
    pub warmup: usize,
    pub threads: usize,
    pub device: Device,
    /// Python with PyTorch and NumPy, for the baseline; `None` skips it.
    pub python: Option<PathBuf>,
    pub reference: PathBuf,
    pub conv_path: ConvPath,
    /// Fold upsampling filters into the weights (None: the generator's default for its device).
    pub fold_filters: Option<bool>,
    /// Every model's precision instead of its own setting.
    pub precision: Option<Precision>,
    /// Compare the device's pictures with the CPU's.
    pub cpu_check: bool,
}

pub struct BenchRow {
    pub model: String,
    /// The device's pictures against the CPU's, when the device is not the CPU.
    pub cpu_diff: Option<CpuCheck>,
    /// The precision the model ran in, and its pictures against fp32's on the same device
    /// (largest and mean difference in 8-bit levels), when it is not fp32 throughout.
    pub precision: Option<Precision>,
    pub vs_fp32: Option<Levels>,
    /// With CUDA graphs: the batch sizes recorded, and why one could not be.
    pub graphs: Option<(usize, Option<String>)>,
    /// Floating-point operations per picture (`GeneratorSettings::flops`).
    pub flops: f64,
    pub resolution: i64,
    pub batch: usize,
    /// Median seconds per batch.
    pub mixgan_s: f64,
    pub python_s: Option<f64>,
}

impl BenchRow {
    pub fn ratio(&self) -> Option<f64> {
        self.python_s.map(|p| self.mixgan_s / p)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A model as the benchmark runs it: its convolution path, filter folding and precision.
fn load(dir: &std::path::Path, cfg: &BenchConfig) -> Result<Model, ModelError> {
    let mut model = Model::load(dir, cfg.device)?;
    model.set_conv_path(cfg.conv_path);
    if cfg.fold_filters.is_some() {
        model.set_fold_filters(cfg.fold_filters);
    }
    if let Some(p) = cfg.precision {
        model.set_precision(p);
    }
    Ok(model)
}

/// The timed batch: seeds 0.. at truncation 0.7.
fn timing_params(model: &Model, batch: usize) -> Vec<GenerationParams> {
    (0..batch as u32).map(|s| GenerationParams { trunc: 0.7, ..model.default_params(s) }).collect()
}

fn time_mixgan(model: &Model, batch: usize, cfg: &BenchConfig) -> Result<f64, ModelError> {
    let params = timing_params(model, batch);
    let run = || -> Result<f64, ModelError> {
        let t0 = Instant::now();
        let _pixels = to_pixels(&model.generate(&params)?)?;
        Ok(t0.elapsed().as_secs_f64())
    };
    for _ in 0..cfg.warmup {
        run()?;
    }
    let times = (0..cfg.iters.max(1)).map(|_| run()).collect::<Result<Vec<_>, _>>()?;
    Ok(median(times))
}

/// Milliseconds until `generate` returns (the host has queued every operation) and until the
/// device has finished them, median of five: which of the two bounds a batch.
fn queue_time(model: &Model, batch: usize) -> Result<(f64, f64), ModelError> {
    let params = timing_params(model, batch);
    let sync = || crate::model::device::synchronize(model.generator.device());
    let (mut queued, mut done) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        sync();
        let t0 = Instant::now();
        let _img = model.generate(&params)?;
        queued.push(t0.elapsed().as_secs_f64() * 1e3);
        sync();
        done.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok((median(queued), median(done)))
}

/// Seeds `first`..`first + 3` at truncation 0.7 with constant noise: what
/// tools/nvidia_bench.py compares too (from seed 0).
fn check_params(model: &Model, first: u32) -> Vec<GenerationParams> {
    (first..first + 4)
        .map(|s| GenerationParams { trunc: 0.7, noise_mode: crate::model::NoiseMode::Const, ..model.default_params(s) })
        .collect()
}

/// Four pictures (seeds 0-3) on the benchmark device against the CPU's: the largest absolute
/// difference and the difference in 8-bit levels (largest, mean); where passes are recorded
/// as CUDA graphs, also the largest over the recording's and a replay's batches (seeds 4-11).
#[derive(Debug, Clone, Copy)]
pub struct CpuCheck {
    pub largest: f64,
    pub levels: Levels,
    pub recorded: Option<f64>,
}

/// The same images on the benchmark device and on the CPU (in float32). The CPU's float32 is
/// the arithmetic without TF32 or cuDNN's choice of algorithm, so it is one reference for
/// every precision on the device, and for NVIDIA's code (tools/nvidia_bench.py compares with
/// its own CPU pictures of the same seeds). Where passes are recorded as CUDA graphs, the
/// first batch runs as usual and two more batches of other seeds are the recording and a
/// replay, so that a replay that ignored its input shows; they are reported apart, since the
/// largest of three times the pictures is larger by chance alone.
fn device_vs_cpu(model: &Model, cfg: &BenchConfig) -> Result<Option<CpuCheck>, ModelError> {
    if cfg.device == Device::Cpu || !cfg.cpu_check {
        return Ok(None);
    }
    let mut cpu = Model::load(&model.dir, Device::Cpu)?;
    cpu.set_precision(Precision::Fp32);
    let passes = match crate::model::graphs::warmup_passes(cfg.device) {
        1 => 1,
        recorded => recorded as u32 + 1,
    };
    let mut check = CpuCheck { largest: 0.0, levels: (0.0, 0.0), recorded: None };
    for pass in 0..passes {
        let params = check_params(model, 4 * pass);
        let a = model.generate(&params)?.f_to_device(Device::Cpu)?;
        let b = cpu.generate(&params)?;
        let largest = a.f_sub(&b)?.f_abs()?.f_max()?.f_double_value(&[])?;
        if pass == 0 {
            check.largest = largest;
            check.levels = levels_apart(&to_pixels(&a)?, &to_pixels(&b)?)?;
        } else {
            check.recorded = Some(check.recorded.unwrap_or(0.0).max(largest));
        }
    }
    Ok(Some(check))
}

/// A difference between two sets of pictures in 8-bit levels: largest and mean.
pub type Levels = (f64, f64);

/// Two sets of uint8 pictures' difference.
fn levels_apart(a: &tch::Tensor, b: &tch::Tensor) -> Result<Levels, tch::TchError> {
    let d = a.f_to_kind(tch::Kind::Float)?.f_sub(&b.f_to_kind(tch::Kind::Float)?)?.f_abs()?;
    Ok((d.f_max()?.f_double_value(&[])?, d.f_mean(tch::Kind::Float)?.f_double_value(&[])?))
}

/// The model's pictures against fp32's on the same device, in 8-bit levels (largest, mean),
/// when any of its blocks runs in half precision.
fn vs_fp32(model: &mut Model) -> Result<Option<Levels>, ModelError> {
    let Some(precision) = model.precision() else { return Ok(None) };
    let g = &model.spec.generator;
    let device = model.generator.device();
    if g.block_resolutions().iter().all(|&r| precision.block_kind(r, g, device) == tch::Kind::Float) {
        return Ok(None);
    }
    let params = check_params(model, 0);
    let half = to_pixels(&model.generate(&params)?)?;
    model.set_precision(Precision::Fp32);
    let full = to_pixels(&model.generate(&params)?);
    model.set_precision(precision);
    Ok(Some(levels_apart(&half, &full?)?))
}

fn time_python(model: &Model, cfg: &BenchConfig) -> Result<Vec<Option<f64>>> {
    let Some(python) = &cfg.python else { return Ok(vec![None; cfg.batches.len()]) };
    let settings = serde_json::to_string(&model.spec.generator)?;
    let device = match cfg.device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    };
    let batches: Vec<String> = cfg.batches.iter().map(|b| b.to_string()).collect();
    let out = Command::new(python)
        .arg(&cfg.reference)
        .args(["bench", "--model"])
        .arg(&model.dir)
        .args(["--config", &settings, "--batches", &batches.join(","), "--device", &device])
        .args([
            "--threads",
            &cfg.threads.to_string(),
            "--iters",
            &cfg.iters.to_string(),
            "--warmup",
            &cfg.warmup.to_string(),
        ])
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !out.status.success() {
        bail!("the Python reference failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let times: std::collections::HashMap<String, f64> =
        serde_json::from_slice(&out.stdout).context("unreadable reference output")?;
    Ok(cfg.batches.iter().map(|b| times.get(&b.to_string()).copied()).collect())
}

/// Runs the benchmark; warnings (such as a missing baseline) go to `warn`.
pub fn run(cfg: &BenchConfig, mut warn: impl FnMut(String)) -> Result<Vec<BenchRow>, ModelError> {
    tch::set_num_threads(cfg.threads as i32);
    let mut rows = Vec::new();
    for dir in &cfg.models {
        let mut model = load(dir, cfg)?;
        let mut ours = Vec::new();
        for &b in &cfg.batches {
            ours.push(time_mixgan(&model, b, cfg)?);
        }
        let cpu_diff = device_vs_cpu(&model, cfg)?;
        // Before `vs_fp32`, whose change of precision forgets the recordings.
        let graphs = crate::model::graphs::wanted(cfg.device).map(|_| model.graphs_summary());
        let vs_fp32 = vs_fp32(&mut model)?;
        let theirs = time_python(&model, cfg).unwrap_or_else(|e| {
            warn(format!("{}: baseline skipped: {e:#}", model.name()));
            vec![None; cfg.batches.len()]
        });
        for ((&batch, mixgan_s), python_s) in cfg.batches.iter().zip(ours).zip(theirs) {
            rows.push(BenchRow {
                model: model.name().to_string(),
                cpu_diff,
                precision: model.precision(),
                vs_fp32,
                graphs: graphs.clone(),
                flops: model.spec.generator.flops(),
                resolution: model.spec.generator.img_resolution,
                batch,
                mixgan_s,
                python_s,
            });
        }
    }
    Ok(rows)
}

/// The table the command prints.
pub fn format_table(rows: &[BenchRow], device: Device, threads: usize) -> String {
    let mut s = format!(
        "device {device:?}, {threads} thread(s); median of timed runs; ratio = mixgan / Python reference (< 1 is faster)\n"
    );
    s += &format!(
        "{:<12} {:>5} {:>6} {:>14} {:>10} {:>14} {:>10} {:>7} {:>9}\n",
        "model", "res", "batch", "mixgan ms/img", "img/s", "python ms/img", "img/s", "ratio", "TFLOP/s"
    );
    for r in rows {
        let per = |t: f64| t * 1e3 / r.batch as f64;
        let (pm, pr, ratio) = match r.python_s {
            Some(p) => {
                (format!("{:.2}", per(p)), format!("{:.1}", r.batch as f64 / p), format!("{:.2}", r.ratio().unwrap()))
            }
            None => ("-".into(), "-".into(), "-".into()),
        };
        s += &format!(
            "{:<12} {:>5} {:>6} {:>14.2} {:>10.1} {:>14} {:>10} {:>7} {:>9.3}\n",
            r.model,
            r.resolution,
            r.batch,
            per(r.mixgan_s),
            r.batch as f64 / r.mixgan_s,
            pm,
            pr,
            ratio,
            r.flops * r.batch as f64 / r.mixgan_s / 1e12
        );
    }
    let mut seen = std::collections::HashSet::new();
    for r in rows {
        if !seen.insert(&r.model) {
            continue;
        }
        let precision = r.precision.map_or("as exported".to_string(), |p| p.to_string());
        if let Some(CpuCheck { largest: d, levels: (max, mean), recorded }) = r.cpu_diff {
            s += &format!("{}: max |{device:?} - CPU| = {d:.2e} on 4 images ({precision})\n", r.model);
            if let Some(d) = recorded {
                s += &format!(
                    "{}: recorded and replayed passes against the CPU: largest {d:.2e} on 8 more images (seeds 4-11)\n",
                    r.model
                );
            }
            s += &format!(
                "{}: {precision} on {device:?} against float32 on the CPU: largest {max:.0}, mean {mean:.3} levels of 255 on seeds 0-3 at truncation 0.7\n",
                r.model
            );
        }
        if let Some((max, mean)) = r.vs_fp32 {
            s += &format!(
                "{}: {precision} against fp32 on {device:?}: largest {max:.0}, mean {mean:.3} levels of 255 on seeds 0-3 at truncation 0.7\n",
                r.model
            );
        }
        if let Some((recorded, failed)) = &r.graphs {
            s += &format!("{}: {recorded} batch size(s) recorded as CUDA graphs", r.model);
            s += &failed.as_ref().map_or("\n".to_string(), |why| format!("; one could not be: {why}\n"));
        }
        s += &format!("{}: {:.2} GFLOP per picture\n", r.model, r.flops / 1e9);
    }
    s
}
