//! `mixgan generate` end to end: the binary writes `seedNNNN.png` files whose pixels match the
//! reference's PNGs (NVIDIA's uint8 conversion) within 1/255, and bad arguments fail cleanly.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn decode(path: &Path) -> image::DynamicImage {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn largest_pixel_difference(a: &Path, b: &Path) -> u8 {
    let (a, b) = (decode(a).to_rgb8(), decode(b).to_rgb8());
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)).max().unwrap()
}

#[test]
fn generate_matches_the_reference_pictures() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    make_model(
        &model,
        r#"{"z_dim":16,"c_dim":3,"w_dim":16,"img_resolution":32,"img_channels":3,
            "mapping_kwargs":{"num_layers":2},"synthesis_kwargs":{"channel_base":512,"channel_max":16,"conv_clamp":256}}"#,
        5,
    );
    let options: &[&[&str]] = &[
        &["--seeds", "0-2,42", "--class", "1", "--trunc", "0.7"],
        &["--seeds", "3", "--class", "2", "--trunc", "0.5", "--trunc-cutoff", "4", "--noise-mode", "none"],
        &["--seeds", "4,5", "--class", "0", "--mix-seed", "9", "--mix-from", "6"],
    ];
    for (i, opts) in options.iter().enumerate() {
        let ours = dir.path().join(format!("ours{i}"));
        let theirs = dir.path().join(format!("ref{i}"));
        let out = Command::new(bin())
            .args(["generate", "--model", model.to_str().unwrap(), "--outdir", ours.to_str().unwrap()])
            .args(*opts)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut args = vec!["generate", "--model", model.to_str().unwrap(), "--out", theirs.to_str().unwrap()];
        args.extend_from_slice(opts);
        reference(&args);
        let mut names: Vec<_> = std::fs::read_dir(&theirs).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert!(!names.is_empty());
        for name in names {
            let diff = largest_pixel_difference(&ours.join(&name), &theirs.join(&name));
            assert!(diff <= 1, "{opts:?} {name:?}: pixels differ by {diff}/255");
        }
    }
    assert!(dir.path().join("ours0/seed0042.png").is_file());
    assert_eq!(decode(&dir.path().join("ours0/seed0000.png")).width(), 32);
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let face = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/face");
    let cases: &[(&[&str], &str)] = &[
        (&["--seeds", "5-1"], "seed"),
        (&["--seeds", "x"], "seed"),
        (&["--seeds", "1", "--noise-mode", "loud"], "noise"),
        (&["--seeds", "1", "--mix-seed", "3", "--mix-from", "999"], "mix_from"),
        (&["--seeds", "1", "--device", "tpu"], "device"),
    ];
    for (args, word) in cases {
        let out = Command::new(bin())
            .args(["generate", "--model", face.to_str().unwrap(), "--outdir", dir.path().to_str().unwrap()])
            .args(*args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(err.contains(word), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let out = Command::new(bin())
        .args(["generate", "--model", dir.path().join("nowhere").to_str().unwrap(), "--seeds", "1", "--outdir", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("model.toml"));
}

#[test]
fn the_bundled_models_write_pictures() {
    let dir = tempfile::tempdir().unwrap();
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    for (name, size) in [("face", 64), ("hand", 64), ("background", 128)] {
        let out = dir.path().join(name);
        let status = Command::new(bin())
            .args([
                "generate",
                "--model",
                models.join(name).to_str().unwrap(),
                "--seeds",
                "0,1",
                "--outdir",
                out.to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(status.success());
        let img = decode(&out.join("seed0001.png")).to_rgb8();
        assert_eq!(img.dimensions(), (size, size));
        let first = img.get_pixel(0, 0);
        assert!(img.pixels().any(|p| p != first), "{name}: a flat picture");
    }
}
