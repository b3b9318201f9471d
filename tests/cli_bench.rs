//! `mixgan bench` runs both sides and prints their ratio (speed goals live in the benchmark
//! itself, not in tests).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

#[test]
fn bench_prints_mixgan_the_baseline_and_their_ratio() {
    let face = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/face");
    let out = Command::new(bin())
        .args([
            "bench",
            "--models",
            face.to_str().unwrap(),
            "--batches",
            "1,2",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--threads",
            "1",
        ])
        .arg("--python")
        .arg(python())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Vec<&str>> =
        text.lines().filter(|l| l.starts_with("face ")).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 2, "{text}");
    for row in rows {
        // model res batch mixgan-ms img/s python-ms img/s ratio
        let nums: Vec<f64> =
            row[1..].iter().map(|v| v.parse().unwrap_or_else(|_| panic!("`{v}` in {row:?}"))).collect();
        assert_eq!(nums[0], 64.0);
        assert!(nums[2] > 0.0 && nums[4] > 0.0, "{row:?}");
        let ratio = nums[2] / nums[4];
        assert!((ratio - nums[6]).abs() <= 0.01 + 0.01 * ratio, "ratio column {row:?}");
    }
}

#[test]
fn bench_without_models_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["bench", "--models", dir.path().to_str().unwrap(), "--no-baseline"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no model directories"));
}
