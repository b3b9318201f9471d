//! Compositing several canvases of one layout in one pass (patches [N, C, S, S]), as the
//! service's batched compositing does on a GPU: each canvas equals the same canvas
//! composited alone, for every blend mode, fit, matte, colour matching and background kind;
//! and the service with `composite_on = batched` answers each request with its own picture.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::server::{agent, reply, Server};
use mixgan::compositor::{Compositor, Patches};
use mixgan::pipeline::Pipeline;
use mixgan::registry::ModelRegistry;
use mixgan::router::{PatchSlot, RoutePlan, RouterLimits};
use tch::{Device, Tensor};

fn pipeline() -> Pipeline {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let registry = Arc::new(ModelRegistry::load(&root.join("models"), Device::Cpu).expect("bundled models"));
    Pipeline { registry, limits: RouterLimits::default(), device: Device::Cpu, composite_on: Default::default() }
}

/// `layout` with every seed moved by `shift`: the same geometry, other patches.
fn reseeded(layout: &str, shift: u64) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_str(layout).unwrap();
    let bump = |o: &mut serde_json::Value| {
        let seed = o.get("seed").and_then(|s| s.as_u64()).unwrap_or(0);
        o["seed"] = (seed + shift).into();
    };
    bump(&mut v);
    if v["background"].get("class").is_some() {
        bump(&mut v["background"]);
    }
    for r in v["regions"].as_array_mut().unwrap() {
        bump(r);
    }
    serde_json::to_vec(&v).unwrap()
}

fn patches(plan: &RoutePlan) -> Patches {
    let _guard = tch::no_grad_guard();
    let mut patches = Patches { background: None, regions: (0..plan.regions.len()).map(|_| None).collect() };
    for job in &plan.jobs {
        let batch = job.model.generate(&plan.job_params(job)).unwrap();
        for (i, slot) in job.slots.iter().enumerate() {
            let patch = batch.get(i as i64);
            match slot {
                PatchSlot::Background => patches.background = Some(patch),
                PatchSlot::Region(r) => patches.regions[*r] = Some(patch),
            }
        }
    }
    patches
}

fn stacked(all: &[Patches]) -> Patches {
    let stack = |get: &dyn Fn(&Patches) -> Option<&Tensor>| -> Option<Tensor> {
        let parts: Option<Vec<&Tensor>> = all.iter().map(get).collect();
        parts.map(|p| Tensor::stack(&p, 0))
    };
    Patches {
        background: stack(&|p| p.background.as_ref()),
        regions: (0..all[0].regions.len()).map(|i| stack(&|p| p.regions[i].as_ref())).collect(),
    }
}

const MIXED: &str = r#"{"width": 300, "height": 220, "seed": 5, "background": {"class": "background", "fit": "contain"},
  "regions": [
    {"class": "face", "box": [10, 10, 90, 80], "fit": "contain", "blend": "alpha", "feather": 4},
    {"class": "face", "ellipse": [150, 100, 60, 70], "blend": "poisson", "matte": "region", "color_match": true},
    {"class": "hand", "box": [200, 20, 80, 90], "fit": "stretch", "blend": "none", "z": 2},
    {"class": "hand", "polygon": [[40, 130], [120, 140], [110, 210], [30, 200]], "blend": "poisson"},
    {"class": "face", "box": [230, 120, 100, 120], "color_match": true, "feather": 6}
  ]}"#;

const COLOURED: &str = r##"{"width": 160, "height": 128, "seed": 9, "background": {"color": "#3060a0"},
  "regions": [{"class": "face", "box": [20, 10, 100, 100]}, {"class": "hand", "ellipse": [130, 90, 30, 30], "blend": "alpha"}]}"##;

#[test]
fn a_batch_of_canvases_equals_each_composited_alone() {
    let pipeline = pipeline();
    let c = Compositor { device: Device::Cpu };
    let examples = ["portrait.json", "crowd.json"]
        .map(|f| std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples").join(f)).unwrap());
    let mut largest = 0f64;
    for layout in examples.iter().map(String::as_str).chain([MIXED, COLOURED]) {
        let plans: Vec<RoutePlan> = (0..3).map(|k| pipeline.plan(&reseeded(layout, 100 * k)).unwrap()).collect();
        let each: Vec<Patches> = plans.iter().map(patches).collect();
        let together = c.composite(&plans[0], &stacked(&each)).unwrap();
        assert_eq!(together.canvas.size(), [3, 3, plans[0].height, plans[0].width]);
        let mut apart = Vec::new();
        for (k, (plan, p)) in plans.iter().zip(&each).enumerate() {
            let alone = c.composite(plan, p).unwrap();
            let diff = (together.canvas.get(k as i64) - &alone.canvas).abs().max().double_value(&[]);
            largest = largest.max(diff);
            // The CPU's filters and the tensor ops agree to rounding: 1e-4 is 0.013 of an
            // 8-bit level.
            assert!(diff < 1e-4, "canvas {k}: {diff}\n{layout}");
            for (i, (a, b)) in together.alphas.iter().zip(&alone.alphas).enumerate() {
                assert_eq!(a.is_some(), b.is_some(), "alpha of region {i}");
                if let (Some(a), Some(b)) = (a, b) {
                    let diff = (a.get(k as i64) - b).abs().max().double_value(&[]);
                    assert!(diff < 1e-5, "alpha of region {i}, canvas {k}: {diff}");
                }
            }
            apart.push(alone.canvas);
        }
        // The seeds matter: the canvases of a batch are not one picture three times.
        let spread = (&apart[0] - &apart[1]).abs().max().double_value(&[]);
        assert!(spread > 0.1, "reseeded canvases differ by only {spread}\n{layout}");
    }
    eprintln!("largest difference from compositing alone: {largest:.2e}");
}

#[test]
fn patches_of_mixed_ranks_are_an_error() {
    let pipeline = pipeline();
    let plan = pipeline.plan(COLOURED.as_bytes()).unwrap();
    let mut p = patches(&plan);
    p.regions[0] = p.regions[0].take().map(|t| t.unsqueeze(0));
    let err = Compositor { device: Device::Cpu }.composite(&plan, &p).err().expect("an error, not a panic");
    assert!(err.to_string().contains("ranks"), "{err}");
}

/// A small layout of either of two geometries; `seed` moves every patch. Seeds from 60 on
/// make a canvas of one colour, with nothing to generate.
fn small_layout(seed: u64) -> String {
    if seed >= 60 {
        return r##"{"width": 128, "height": 112, "background": {"color": "#c04020"}, "regions": []}"##.into();
    }
    let at = if seed.is_multiple_of(2) { "[20, 16, 64, 64]" } else { "[40, 30, 70, 60]" };
    format!(
        r##"{{"width": 128, "height": 112, "seed": {seed}, "background": {{"class": "background", "seed": {seed}}},
          "regions": [{{"class": "face", "box": {at}, "color_match": true}},
                      {{"class": "hand", "ellipse": [100, 80, 20, 24], "blend": "poisson"}}]}}"##
    )
}

#[test]
fn the_service_paints_canvases_together_and_each_answer_is_its_own() {
    let s = Server::start(
        &[
            ("MIXGAN_COMPOSITE_ON", "batched"),
            ("MIXGAN_MAX_WAIT_MS", "40"),
            ("MIXGAN_MAX_BATCH", "16"),
            ("MIXGAN_WARMUP_ITERATIONS", "0"),
        ],
        &[],
        true,
    );
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let base = s.base.clone();
            std::thread::spawn(move || {
                let a = agent(Some(Duration::from_secs(60)));
                (0..3u64)
                    .map(|i| {
                        let seed = t * 10 + i;
                        let sent = a.post(format!("{base}/v1/compose")).header("content-type", "application/json");
                        (seed, reply(sent.send(small_layout(seed).as_bytes())))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let answers: Vec<_> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert!(
        answers.iter().all(|(_, r)| r.status == 200),
        "{:?}",
        answers.iter().map(|(_, r)| r.status).collect::<Vec<_>>()
    );
    for (seed, r) in answers.iter().filter(|(seed, _)| *seed >= 60) {
        let img = image::load_from_memory(&r.body).expect("a picture").to_rgb8();
        assert!(img.pixels().all(|p| p.0 == [0xc0, 0x40, 0x20]), "seed {seed}: not the colour alone");
    }
    let (sum, count) = s.histogram("mixgan_canvas_batch_size", "");
    assert_eq!(sum, 24.0, "every canvas painted once");
    assert!(sum / count > 1.0, "mean canvas batch {}: none painted together", sum / count);
    // A request alone is a batch of one, which takes the CPU's own filters: the batched
    // answers (tensor ops over the batch) agree within the 8-bit rounding of float sums.
    let pixels = |body: &[u8]| image::load_from_memory(body).expect("a picture").to_rgb8();
    let mut spread = 0;
    for (seed, batched) in &answers {
        let alone = s.compose(&small_layout(*seed));
        assert_eq!(alone.status, 200);
        let (a, b) = (pixels(&batched.body), pixels(&alone.body));
        let worst = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
        assert!(worst <= 2, "seed {seed}: painted together differs from alone by {worst} levels");
        let other = pixels(&answers[0].1.body);
        spread = spread.max(a.as_raw().iter().zip(other.as_raw()).map(|(x, y)| x.abs_diff(*y)).max().unwrap());
    }
    assert!(spread > 20, "the answers hardly differ ({spread} levels): seeds ignored?");
}
