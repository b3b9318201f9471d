//! The demo models' chain on CPU: the procedural datasets are deterministic and varied, and a
//! few StyleGAN2 training steps on a tiny model export a directory that mixgan loads and
//! generates from, with pictures equal to the reference's; a run resumes from its snapshot.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn tool(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools").join(name)
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("start");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The .npy payload of `procgen.py cache` (the bytes after the header), RGB or with `--alpha`.
fn cache(kind: &str, seed: u32, alpha: bool, dir: &Path) -> Vec<u8> {
    let path = dir.join(format!("{kind}-{seed}-{alpha}.npy"));
    let mut cmd = Command::new(python());
    cmd.arg(tool("procgen.py")).args(["cache", kind, "--count", "6", "--seed", &seed.to_string()]);
    if alpha {
        cmd.arg("--alpha");
    }
    run_ok(cmd.arg("-o").arg(&path));
    let bytes = std::fs::read(&path).unwrap();
    let header = u16::from_le_bytes([bytes[8], bytes[9]]) as usize + 10;
    bytes[header..].to_vec()
}

fn draw(kind: &str, seed: u32, dir: &Path) -> Vec<u8> {
    cache(kind, seed, false, dir)
}

#[test]
fn procedural_datasets_are_deterministic_and_varied() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, side) in [("face", 64usize), ("hand", 64), ("background", 128)] {
        let a = draw(kind, 1, dir.path());
        assert_eq!(a.len(), 6 * side * side * 3, "{kind}: six RGB pictures of {side} px");
        assert_eq!(a, draw(kind, 1, dir.path()), "{kind}: same seed, same pixels");
        assert_ne!(a, draw(kind, 2, dir.path()), "{kind}: another seed, other pixels");
        // Each picture has structure (not one flat colour) and differs from the next.
        let pics: Vec<&[u8]> = a.chunks(side * side * 3).collect();
        for p in &pics {
            let mean = p.iter().map(|&v| f64::from(v)).sum::<f64>() / p.len() as f64;
            let var = p.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / p.len() as f64;
            assert!(var.sqrt() > 10.0, "{kind}: a picture is nearly flat (std {})", var.sqrt());
        }
        assert!(pics.windows(2).all(|w| w[0] != w[1]), "{kind}: repeated pictures");
    }
}

#[test]
fn faces_and_hands_come_with_their_coverage() {
    let dir = tempfile::tempdir().unwrap();
    let side = 64usize;
    for kind in ["face", "hand"] {
        let rgba = cache(kind, 0, true, dir.path());
        let rgb = draw(kind, 0, dir.path());
        assert_eq!(rgba.len(), 6 * side * side * 4, "{kind}: six RGBA pictures");
        for (n, (p, q)) in rgba.chunks(side * side * 4).zip(rgb.chunks(side * side * 3)).enumerate() {
            let colour: Vec<u8> = p.chunks(4).flat_map(|px| px[..3].to_vec()).collect();
            assert_eq!(colour, q, "{kind} {n}: the colour is the RGB dataset's");
            let alpha: Vec<u8> = p.chunks(4).map(|px| px[3]).collect();
            let at = |x: usize, y: usize| alpha[y * side + x];
            // The top corners are backdrop, the middle is the subject, and the edge is
            // antialiased: some pixels are partly covered.
            assert_eq!((at(0, 0), at(side - 1, 0)), (0, 0), "{kind} {n}: top corners");
            assert_eq!(at(side / 2, side / 2), 255, "{kind} {n}: centre");
            let partial = alpha.iter().filter(|&&a| a > 0 && a < 255).count();
            assert!(partial > 20, "{kind} {n}: {partial} edge pixels partly covered");
            let covered = alpha.iter().map(|&a| f64::from(a) / 255.0).sum::<f64>() / alpha.len() as f64;
            assert!((0.1..0.8).contains(&covered), "{kind} {n}: covers {covered:.2} of the picture");
        }
    }
}

#[test]
fn a_few_training_steps_export_a_model_mixgan_serves() {
    let dir = tempfile::tempdir().unwrap();
    let (work, model) = (dir.path().join("work"), dir.path().join("hand"));
    let train = |extra: &[&str]| {
        let out = run_ok(
            Command::new(python())
                .arg(tool("train_stylegan2.py"))
                .args(["--kind", "hand", "--res", "16", "--batch", "4", "--data-size", "16"])
                .args(["--channel-base", "256", "--channel-max", "16", "--z-dim", "16", "--w-dim", "16"])
                .args(["--threads", "1", "--log-seconds", "0", "--snap-every", "2", "--work"])
                .arg(&work)
                .arg("--out")
                .arg(&model)
                .args(extra),
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let first = train(&["--steps", "3"]);
    assert!(first.contains("hand step 3"), "{first}");
    assert!(work.join("hand-state.pt").is_file() && work.join("hand-samples.png").is_file());
    let second = train(&["--steps", "5", "--resume"]);
    assert!(second.contains("resumed hand at step 3"), "{second}");
    assert!(second.contains("\"steps\": 5"), "{second}");
    assert!(!second.contains("hand step 1 "), "{second}");

    let toml = std::fs::read_to_string(model.join("model.toml")).unwrap();
    assert!(toml.contains("img_resolution = 16") && toml.contains("classes = [\"hand\"]"), "{toml}");
    // Hands learn their coverage: four channels, the fourth declared alpha.
    assert!(toml.contains("img_channels = 4") && toml.contains("alpha = true"), "{toml}");
    // mixgan loads the export and its pictures equal the reference generator's.
    let ours = dir.path().join("ours");
    run_ok(
        Command::new(bin())
            .args(["generate", "--seeds", "0-3", "--trunc", "0.7", "--model"])
            .arg(&model)
            .arg("--outdir")
            .arg(&ours),
    );
    let theirs = dir.path().join("reference");
    reference(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--seeds",
        "0-3",
        "--trunc",
        "0.7",
        "--out",
        theirs.to_str().unwrap(),
    ]);
    for seed in 0..4 {
        let name = format!("seed{seed:04}.png");
        let (a, b) = (image::open(ours.join(&name)).unwrap(), image::open(theirs.join(&name)).unwrap());
        assert_eq!(a.color(), image::ColorType::Rgba8, "{name}: mixgan generate writes RGBA");
        let (a, b) = (a.to_rgba8(), b.to_rgba8());
        assert_eq!(a.dimensions(), (16, 16));
        let worst = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
        assert!(worst <= 1, "{name}: differs from the reference by {worst}/255");
    }
}
