//! `mixgan generate`: pictures from one model for a list of seeds, as NVIDIA's
//! `gen_images.py` makes them, with a progress bar on a terminal.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::say;
use super::seeds::parse_seeds;
use crate::encode::write_png;
use crate::model::{to_pixels, DeviceChoice, GenerationParams, Model, NoiseMode, Precision, StyleMix};

#[derive(Args)]
pub struct GenerateArgs {
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
    device: DeviceChoice,
    /// auto, fp32, fp16 or bf16 (default: the model's own setting, usually auto).
    #[arg(long)]
    precision: Option<Precision>,
}

fn progress(len: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() || len < 2 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} images, {eta} left").expect("valid template"));
    bar
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let device = a.device.resolve().context("--device")?;
    let seeds = parse_seeds(&a.seeds).context("--seeds")?;
    let mut model = Model::load(&a.model, device)?;
    if let Some(p) = a.precision {
        model.set_precision(p);
    }
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
