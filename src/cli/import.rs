//! `mixgan import`: an NVIDIA `.pkl` or rosinality `.pt` checkpoint becomes a model directory
//! (converted by `tools/import_checkpoint.py` with the Python that has PyTorch), then loaded
//! and sampled once to prove it works.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::python;
use super::say;
use crate::encode::write_png;
use crate::model::spec::ModelKind;
use crate::model::{to_pixels, Model};

#[derive(Args)]
pub struct ImportArgs {
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
    /// Python with PyTorch for the conversion (default: $MIXGAN_PYTHON, else the environment
    /// `make setup` installs, else python3).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Your checkout of NVIDIA's stylegan3 (or stylegan2-ada-pytorch): export the generator
    /// to TorchScript with it (needed for StyleGAN3). This runs NVIDIA's code.
    #[arg(long)]
    nvlabs_src: Option<PathBuf>,
}

pub fn run(a: ImportArgs) -> Result<()> {
    let out = a.output.clone().unwrap_or_else(|| PathBuf::from("models").join(&a.name));
    if out.join("model.toml").exists() {
        bail!("{} already holds a model; choose another --output or remove it", out.display());
    }
    let python = python::python(a.python);
    python::check(&python, &["torch", "numpy"])?;
    let tool = python::tool("import_checkpoint.py");
    eprintln!("[1/3] converting {} with {}", a.src.display(), tool.display());
    let mut cmd = std::process::Command::new(&python);
    cmd.arg(&tool).arg(&a.src).args(["--name", &a.name, "--classes", &a.classes, "--format", &a.format, "--out"]);
    cmd.arg(&out);
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
    let sample = out.join("sample.png");
    write_png(&to_pixels(&model.generate(&[model.default_params(0)])?)?.get(0), &sample)?;
    let g = &model.spec.generator;
    let architecture = match model.spec.kind {
        ModelKind::Torchscript => "TorchScript".to_string(),
        _ => format!("{:?}", g.synthesis_kwargs.architecture),
    };
    say(&format!(
        "model `{}` ({}) in {}: {}x{} px, {} channel(s), z_dim {}, w_dim {}, c_dim {}, {} ws, architecture {}\n\
         sample picture (seed 0): {}\n",
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
