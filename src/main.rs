//! The `mixgan` command line: parses arguments and hands each sub-command to the library.
//! No model math or image handling lives here.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use std::sync::Arc;

use mixgan::bench::{self, BenchConfig};
use mixgan::compositor::ownership_map;
use mixgan::config::Config;
use mixgan::encode::write_png;
use mixgan::latent::parse_seeds;
use mixgan::layout::ImageFormat;
use mixgan::model::{model_dirs, parse_device, to_pixels, ConvPath, GenerationParams, Model, NoiseMode, StyleMix};
use mixgan::registry::ModelRegistry;
use mixgan::render::{CompositeOn, DirectSource, Renderer};
use mixgan::router::RouterLimits;

#[derive(Parser)]
#[command(name = "mixgan", version, about = "A mixture of StyleGANs: expert generators composed into one picture")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images from one model for a list of seeds (like NVIDIA's gen_images.py).
    Generate(GenerateArgs),
    /// Time each model's generator against the Python reference on the same weights.
    Bench(BenchArgs),
    /// Render a layout (JSON) into one picture, offline, with the server's code path.
    Render(RenderArgs),
    /// Serve the HTTP API (every option also from --config and MIXGAN_* variables).
    Serve(ServeArgs),
    /// Load-test the service (starting one unless --url is given) against the bare generators.
    Loadtest(LoadArgs),
    /// Turn an NVIDIA .pkl or rosinality .pt checkpoint into a model directory.
    Import(ImportArgs),
}

#[derive(Args)]
struct ImportArgs {
    /// The checkpoint: NVIDIA `network-snapshot-*.pkl` or rosinality `.pt`.
    src: PathBuf,
    /// The model's name.
    #[arg(long)]
    name: String,
    /// The components it serves, comma-separated (face,hand,...).
    #[arg(long)]
    classes: String,
    /// Output directory [default: models/NAME].
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// auto, nvidia-pkl or rosinality.
    #[arg(long, default_value = "auto")]
    format: String,
    /// Python with PyTorch for the conversion (default: $MIXGAN_PYTHON, else python3).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Your checkout of NVIDIA's stylegan3 (or stylegan2-ada-pytorch): export the generator
    /// to TorchScript with it (needed for StyleGAN3). This runs NVIDIA's code.
    #[arg(long)]
    nvlabs_src: Option<PathBuf>,
}

#[derive(Args)]
struct LoadArgs {
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
    /// Alternating rounds of bare generators and service for the comparison.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Device of the started server and of the baseline: auto (CUDA when available), cpu,
    /// cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
}

#[derive(Args)]
struct ServeArgs {
    /// A TOML file with any of the settings below (and more: see the README).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Folder of model directories [default: models].
    #[arg(long)]
    models: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long)]
    addr: Option<String>,
    /// auto, cpu, cuda or cuda:N [default: auto].
    #[arg(long)]
    device: Option<String>,
    /// Bearer token required on /v1/* (also MIXGAN_API_KEY).
    #[arg(long)]
    api_key: Option<String>,
    /// text or json [default: text].
    #[arg(long)]
    log_format: Option<mixgan::config::LogFormat>,
}

#[derive(Args)]
struct RenderArgs {
    /// The layout file (JSON); `-` reads standard input.
    layout: PathBuf,
    /// Output picture (default: OUTDIR/<layout name>.<png|jpg|webp>).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Where the picture goes when --output is not given.
    #[arg(long, default_value = ".")]
    outdir: PathBuf,
    /// Folder of model directories.
    #[arg(long, default_value = "models")]
    models: PathBuf,
    /// Print per-stage timings (route, project if any, generate, composite, encode).
    #[arg(long)]
    timings: bool,
    /// Also write the ownership map (a picture coloured by region) here.
    #[arg(long)]
    masks: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// A picture (PNG or JPEG) to repair: it becomes the layout's background `image`.
    #[arg(long)]
    background_image: Option<PathBuf>,
    /// Where to composite: device (the generators') or cpu.
    #[arg(long, default_value = "device")]
    composite_on: CompositeOn,
    /// Largest generation batch.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Render this many times; --timings then shows the median run (the first pays one-time
    /// start-up costs that a running server does not).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
}

#[derive(Args)]
struct GenerateArgs {
    /// Model directory (holding model.toml).
    #[arg(long)]
    model: PathBuf,
    /// Seeds: a list and/or ranges, such as `0,1,42` or `0-9`.
    #[arg(long)]
    seeds: String,
    /// Truncation psi (default: the model's default, else 1).
    #[arg(long)]
    trunc: Option<f64>,
    /// Truncate only the first N ws.
    #[arg(long)]
    trunc_cutoff: Option<usize>,
    /// Class index for a conditional model.
    #[arg(long = "class")]
    class_index: Option<usize>,
    /// Noise mode: const, random or none (default: the model's default).
    #[arg(long)]
    noise_mode: Option<NoiseMode>,
    /// Style mixing: take ws from --mix-from onwards from this seed.
    #[arg(long, requires = "mix_from")]
    mix_seed: Option<u32>,
    /// First ws index replaced by the mix seed's.
    #[arg(long, requires = "mix_seed")]
    mix_from: Option<usize>,
    /// Output directory.
    #[arg(long)]
    outdir: PathBuf,
    /// Images generated per batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args)]
struct BenchArgs {
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
    device: String,
    /// Python with PyTorch for the baseline (default: $MIXGAN_PYTHON, else python3).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Skip the Python baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Modulated convolutions: auto, fused (grouped, per-sample weights) or unfused.
    #[arg(long, default_value = "auto", value_parser = parse_conv_path)]
    conv_path: ConvPath,
}

/// Prints to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn say(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

fn parse_conv_path(s: &str) -> Result<ConvPath, String> {
    match s {
        "auto" => Ok(ConvPath::Auto),
        "fused" => Ok(ConvPath::Fused),
        "unfused" => Ok(ConvPath::Unfused),
        _ => Err(format!("`{s}` is not auto, fused or unfused")),
    }
}

fn progress(len: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() || len < 2 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} images, {eta} left").expect("valid template"));
    bar
}

fn generate(a: GenerateArgs) -> Result<()> {
    let device = parse_device(&a.device).map_err(anyhow::Error::msg)?;
    let seeds = parse_seeds(&a.seeds).map_err(|e| anyhow::anyhow!("--seeds: {e}"))?;
    let model = Model::load(&a.model, device)?;
    let d = &model.spec.defaults;
    if a.class_index.is_some() && model.spec.generator.c_dim == 0 {
        eprintln!("warning: --class ignored: model `{}` is unconditional", model.name());
    }
    let class_index = if model.spec.generator.c_dim == 0 { None } else { a.class_index.or(d.class_index) };
    let params: Vec<GenerationParams> = seeds
        .iter()
        .map(|&seed| GenerationParams {
            seed,
            trunc: a.trunc.unwrap_or(d.trunc),
            trunc_cutoff: a.trunc_cutoff.or(d.trunc_cutoff),
            class_index,
            noise_mode: a.noise_mode.unwrap_or(d.noise_mode),
            mix: a.mix_seed.zip(a.mix_from).map(|(seed, from)| StyleMix { seed, from }),
            projected: None,
        })
        .collect();
    std::fs::create_dir_all(&a.outdir).with_context(|| format!("cannot create {}", a.outdir.display()))?;
    let bar = progress(params.len());
    for chunk in params.chunks(a.batch.max(1)) {
        let pixels = to_pixels(&model.generate(chunk)?)?;
        for (i, p) in chunk.iter().enumerate() {
            write_png(&pixels.get(i as i64), &a.outdir.join(format!("seed{:04}.png", p.seed)))?;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    say(&format!("{} image(s) from `{}` in {}\n", params.len(), model.name(), a.outdir.display()));
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    let device = parse_device(&a.device).map_err(anyhow::Error::msg)?;
    let models = if a.models.join("model.toml").is_file() { vec![a.models.clone()] } else { model_dirs(&a.models)? };
    if models.is_empty() {
        bail!("no model directories (with a model.toml) under {}", a.models.display());
    }
    let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let python = if a.no_baseline {
        None
    } else {
        Some(
            a.python
                .or_else(|| std::env::var_os("MIXGAN_PYTHON").map(PathBuf::from))
                .unwrap_or_else(|| "python3".into()),
        )
    };
    let cfg = BenchConfig {
        models,
        batches: a.batches,
        iters: a.iters,
        warmup: a.warmup,
        threads,
        device,
        python,
        reference: bench::find_reference(),
        conv_path: a.conv_path,
    };
    let rows = bench::run(&cfg, |w| eprintln!("warning: {w}"))?;
    say(&bench::format_table(&rows, device, threads));
    Ok(())
}

fn render(a: RenderArgs) -> Result<()> {
    let device = parse_device(&a.device).map_err(anyhow::Error::msg)?;
    let layout = if a.layout.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
        buf
    } else {
        std::fs::read(&a.layout).with_context(|| format!("cannot read {}", a.layout.display()))?
    };
    let layout = match &a.background_image {
        Some(path) => with_background_image(&layout, path)?,
        None => layout,
    };
    let registry = ModelRegistry::load(&a.models, device)?;
    let renderer = Renderer {
        registry: Arc::new(registry),
        limits: RouterLimits::default(),
        device,
        composite_on: a.composite_on,
    };
    let source = DirectSource { max_batch: a.max_batch };
    let mut runs = (0..a.repeat.max(1)).map(|_| renderer.render(&layout, &source)).collect::<Result<Vec<_>, _>>()?;
    runs.sort_by_key(|r| r.timings.total());
    let out = runs.swap_remove(runs.len() / 2);
    let output = a.output.clone().unwrap_or_else(|| {
        let stem = a.layout.file_stem().map_or("layout".into(), |s| s.to_string_lossy().into_owned());
        let ext = match out.format {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpg",
            ImageFormat::Webp => "webp",
        };
        a.outdir.join(format!("{stem}.{ext}"))
    });
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&output, &out.bytes).with_context(|| format!("cannot write {}", output.display()))?;
    if let Some(path) = &a.masks {
        ownership_map(&out.plan).save(path).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let mut text = format!(
        "{}x{} {} with {} region(s) -> {}\n",
        out.plan.width,
        out.plan.height,
        out.format.mime(),
        out.plan.regions.len(),
        output.display()
    );
    if a.timings {
        let t = out.timings;
        let total = t.total().as_secs_f64();
        let project = (!t.project.is_zero()).then_some(("project", t.project));
        for (name, d) in [("route", t.route)].into_iter().chain(project).chain([
            ("generate", t.generate),
            ("composite", t.composite),
            ("encode", t.encode),
        ]) {
            text += &format!("{name:>10} {:8.2} ms {:5.1} %\n", d.as_secs_f64() * 1e3, 100.0 * d.as_secs_f64() / total);
        }
        text += &format!("{:>10} {:8.2} ms\n", "total", total * 1e3);
    }
    say(&text);
    Ok(())
}

/// The layout with `path`'s picture as its background `image`.
fn with_background_image(layout: &[u8], path: &Path) -> Result<Vec<u8>> {
    let picture = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut v: serde_json::Value = serde_json::from_slice(layout).context("the layout is not JSON")?;
    let Some(obj) = v.as_object_mut() else { bail!("the layout is not a JSON object") };
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &picture);
    obj.insert("background".into(), serde_json::json!({ "image": b64 }));
    Ok(serde_json::to_vec(&v)?)
}

fn serve(a: ServeArgs) -> Result<()> {
    let mut config = Config::load(a.config.as_deref(), std::env::vars())?;
    if let Some(v) = a.models {
        config.models = v;
    }
    if let Some(v) = a.addr {
        config.addr = v;
    }
    if let Some(v) = a.device {
        config.device = v;
    }
    if let Some(v) = a.api_key {
        config.api_key = Some(v);
    }
    if let Some(v) = a.log_format {
        config.log_format = v;
    }
    config.validate().map_err(anyhow::Error::msg)?;
    // Blocking threads only route and composite (each bounded), so few are needed.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().max_blocking_threads(64).build()?;
    runtime.block_on(mixgan::server::serve(config)).map_err(anyhow::Error::msg)
}

fn loadtest(a: LoadArgs) -> Result<()> {
    let layout = std::fs::read(&a.layout).with_context(|| format!("cannot read {}", a.layout.display()))?;
    let plan = mixgan::loadtest::LoadPlan {
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
        rounds: a.rounds,
        device: a.device,
    };
    let report = mixgan::loadtest::run(&plan);
    say(&report.text);
    match report.failure {
        Some(why) => bail!(why),
        None => Ok(()),
    }
}

fn import(a: ImportArgs) -> Result<()> {
    let out = a.output.clone().unwrap_or_else(|| PathBuf::from("models").join(&a.name));
    if out.join("model.toml").exists() {
        bail!("{} already holds a model; choose another --output or remove it", out.display());
    }
    let python =
        a.python.or_else(|| std::env::var_os("MIXGAN_PYTHON").map(PathBuf::from)).unwrap_or_else(|| "python3".into());
    let tool = bench::find_tool("import_checkpoint.py");
    eprintln!("[1/3] converting {} with {}", a.src.display(), tool.display());
    let mut cmd = std::process::Command::new(&python);
    cmd.arg(&tool)
        .arg(&a.src)
        .args(["--name", &a.name, "--classes", &a.classes, "--format", &a.format, "--out"])
        .arg(&out);
    if let Some(src) = &a.nvlabs_src {
        cmd.arg("--nvlabs-src").arg(src);
    }
    let status =
        cmd.stdout(std::process::Stdio::null()).status().with_context(|| format!("cannot run {}", python.display()))?;
    if !status.success() {
        bail!("the checkpoint was not imported (see the message above)");
    }
    eprintln!("[2/3] loading {}", out.display());
    let model = Model::load(&out, tch::Device::Cpu)?;
    eprintln!("[3/3] generating a sample picture");
    let p = model.default_params(0);
    let sample = out.join("sample.png");
    write_png(&to_pixels(&model.generate(&[p])?)?.get(0), &sample)?;
    let g = &model.spec.generator;
    let architecture = match model.spec.kind {
        mixgan::model::spec::ModelKind::Torchscript => "TorchScript".to_string(),
        _ => format!("{:?}", g.synthesis_kwargs.architecture),
    };
    say(&format!(
        "model `{}` ({}) in {}: {}x{} px, {} channel(s), z_dim {}, w_dim {}, c_dim {}, {} ws, architecture {}\nsample picture (seed 0): {}\n",
        model.name(),
        model.spec.classes.join(", "),
        out.display(),
        g.img_resolution,
        g.img_resolution,
        g.img_channels,
        g.z_dim,
        g.w_dim,
        g.c_dim,
        model.spec.num_ws(),
        architecture,
        sample.display()
    ));
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => generate(a),
        Command::Bench(a) => bench(a),
        Command::Render(a) => render(a),
        Command::Serve(a) => serve(a),
        Command::Loadtest(a) => loadtest(a),
        Command::Import(a) => import(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
