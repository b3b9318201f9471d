//! `mixgan render`: one layout to one picture, offline, through the same pipeline the server
//! runs (in this thread instead of on the batcher's workers).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::say;
use crate::compositor::{matte, ownership_map, Compositor};
use crate::config::Config;
use crate::layout::ImageFormat;
use crate::model::device::Switches;
use crate::model::{DeviceChoice, Precision};
use crate::pipeline::{CompositeOn, Pipeline, Rendered};
use crate::registry::ModelRegistry;
use crate::router::geometry::Rect;
use crate::router::RouterLimits;

#[derive(Args)]
pub struct RenderArgs {
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
    /// Also write the ownership map (a picture coloured by region, by each region's final
    /// matte) here.
    #[arg(long)]
    masks: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// A picture (PNG or JPEG) to repair: it becomes the layout's background `image`.
    #[arg(long)]
    background_image: Option<PathBuf>,
    /// auto, fp32, fp16 or bf16 for every native model (default: each model's own setting).
    #[arg(long)]
    precision: Option<Precision>,
    /// Where to composite: auto (the CPU up to 1024 x 1024 px, else the generators' device),
    /// device, cpu or batched (here the same as device: one request has nothing to batch).
    #[arg(long, default_value = "auto")]
    composite_on: CompositeOn,
    /// Largest generation batch.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// libtorch threads per operation (0: 1, as the server runs, which gives the server's bytes).
    #[arg(long, default_value_t = 0)]
    torch_threads: usize,
    /// Render this many times; --timings then shows the median run (the first pays one-time
    /// start-up costs that a running server does not).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Also measure, for each region whose patch mattes itself, how much of its backdrop
    /// shows and its seam score, beside the same with its shape alone as the matte.
    #[arg(long)]
    leak: bool,
    /// On CUDA, record each generator pass per batch size, and a search's step, as a CUDA
    /// graph and replay it (true or false).
    #[arg(long, default_value_t = Config::default().cuda_graphs, action = clap::ArgAction::Set)]
    cuda_graphs: bool,
    /// The generator's own CPU passes (true or false); off, libtorch's tensor ops instead.
    #[arg(long, default_value_t = Config::default().cpu_kernels, action = clap::ArgAction::Set)]
    cpu_kernels: bool,
}

pub fn run(a: RenderArgs) -> Result<()> {
    let device = a.device.resolve().context("--device")?;
    let switches = Switches { graphs: a.cuda_graphs, cpu_kernels: a.cpu_kernels, ..Config::default().switches() };
    crate::model::device::configure(device, switches);
    crate::model::set_threads(a.torch_threads);
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
    let registry = Arc::new(ModelRegistry::load_in(&a.models, device, a.precision)?);
    let pipeline =
        Arc::new(Pipeline { registry, limits: RouterLimits::default(), device, composite_on: a.composite_on });
    // Every run gives the same picture; the timings shown are the run with the median total.
    // A run's tensors are freed before the next starts, as a server frees a request's: kept,
    // each run's canvas would be fresh memory whose pages fault in during compositing.
    let mut timings = Vec::with_capacity(a.repeat.max(1));
    let mut last = None;
    for _ in 0..a.repeat.max(1) {
        drop(last.take());
        let run = pipeline.render(&layout, a.max_batch)?;
        timings.push(run.timings);
        last = Some(run);
    }
    timings.sort_by_key(|t| t.total());
    let mut out = last.expect("at least one run");
    out.timings = timings[timings.len() / 2];
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
        ownership_map(&out.plan, &out.alphas)?
            .save(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let (w, h, regions) = (out.plan.width, out.plan.height, out.plan.regions.len());
    let mut text = format!("{w}x{h} {} with {regions} region(s) -> {}\n", out.format.mime(), output.display());
    for r in &out.plan.regions {
        if let Some(h) = r.harmony {
            let (b, after) = (h.ring_error_before, h.ring_error_after);
            text += &format!("{} harmonised: border ring {b:.1} -> {after:.1} levels from the background\n", r.source);
        }
    }
    if a.timings {
        let stages = out.timings.in_ms();
        let total = stages[stages.len() - 1].1;
        for (name, ms) in stages {
            // Queue is part of generate and always zero here; project shows only when it ran.
            if name == "queue" || (name == "project" && ms == 0.0) {
                continue;
            }
            let share = if name == "total" { String::new() } else { format!(" {:5.1} %", 100.0 * ms / total) };
            text += &format!("{name:>10} {ms:8.2} ms{share}\n");
        }
    }
    say(&text);
    if a.leak {
        say(&leak_table(&pipeline, &layout, &out, a.max_batch)?);
    }
    Ok(())
}

/// The backdrop leak of every region whose patch mattes itself: the mean difference, in
/// 8-bit levels, between the picture and the same layout without its regions, over the
/// region's pixels where its patch's alpha is below 0.1 (where the subject is absent), and
/// the seam score at the region's edge; each beside the same figure with every region matted
/// by its shape alone (`matte: "region"`, the compositing of models without alpha).
fn leak_table(pipeline: &Arc<Pipeline>, layout: &[u8], out: &Rendered, max_batch: usize) -> Result<String> {
    let v: serde_json::Value = serde_json::from_slice(layout).context("the layout is not JSON")?;
    let mut shapes = v.clone();
    for r in shapes.get_mut("regions").and_then(|r| r.as_array_mut()).into_iter().flatten() {
        r["matte"] = "region".into();
    }
    if let Some(lm) = shapes.get_mut("label_map").filter(|lm| lm.is_object()) {
        lm["matte"] = "region".into();
    }
    let mut alone = v;
    let obj = alone.as_object_mut().context("the layout is not a JSON object")?;
    obj.remove("regions");
    obj.remove("label_map");
    obj.entry("background").or_insert(serde_json::json!({"color": "#808080"}));
    let shapes = pipeline.render(&serde_json::to_vec(&shapes)?, max_batch)?;
    let alone = pipeline.render(&serde_json::to_vec(&alone)?, max_batch)?;
    let mut text = format!(
        "backdrop leak: 8-bit levels where the subject is absent (alpha < {}); seam score at the region's edge\n\
         {:<24} {:<6} {:>7} {:>6} {:>12} {:>6} {:>12}\n",
        matte::BACKDROP_ALPHA,
        "region",
        "class",
        "pixels",
        "leak",
        "shape alone",
        "seam",
        "shape alone"
    );
    let compositor = Compositor { device: out.canvas.device() };
    let canvas = Rect { x: 0, y: 0, w: out.plan.width, h: out.plan.height };
    let mattes = out
        .plan
        .regions
        .iter()
        .zip(&out.alphas)
        .map(|(r, a)| compositor.matte_in(r, a.as_ref(), &canvas))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, region) in out.plan.regions.iter().enumerate() {
        let Some(alpha) = &out.alphas[i] else { continue };
        // Where regions overlap, another's subject is no leak.
        let others = mattes.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, m)| m.shallow_clone());
        let others = others.reduce(|a, b| a.maximum(&b));
        let leak = |canvas| matte::backdrop_leak(canvas, &alone.canvas, region, alpha, others.as_ref());
        let Some((after, n)) = leak(&out.canvas)? else { continue };
        let (before, _) = leak(&shapes.canvas)?.unwrap_or((0.0, 0));
        let seam = compositor.seam_score(&out.canvas, region, &out.plan)?;
        let seam_before = compositor.seam_score(&shapes.canvas, region, &out.plan)?;
        let class = region.class.as_deref().unwrap_or(region.model.name());
        text += &format!(
            "{:<24} {class:<6} {n:>7} {after:>6.2} {before:>12.2} {seam:>6.2} {seam_before:>12.2}\n",
            region.source
        );
    }
    Ok(text)
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
