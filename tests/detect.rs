//! Detectors on real pictures: the bundled frontal-face Haar cascade (`models/face-haar`),
//! evaluated by mixgan's own code, on scikit-image's `astronaut` photograph.

mod common;

use std::path::Path;

use mixgan::detect::Detection;
use mixgan::registry::ModelRegistry;

/// Detections below this score are not reported by default.
const DEFAULT_MIN_SCORE: f64 = 0.5;

#[test]
fn the_haar_cascade_finds_the_astronaut_s_face_and_nothing_else() {
    let registry =
        ModelRegistry::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models"), tch::Device::Cpu).unwrap();
    let detector = registry.detector_for_class("face").expect("a face detector is bundled");
    assert_eq!(detector.name(), "face-haar");
    assert!(registry.iter().all(|m| m.name() != "face-haar"), "detectors are not generators");
    let img = image::open(common::test_picture("astronaut.png")).unwrap().to_rgb8();
    let found = detector.detect(img.as_raw(), img.width() as usize, img.height() as usize).unwrap();
    // Labelled by hand: hairline to chin, ear to ear.
    let face = Detection { x: 176.0, y: 72.0, w: 94.0, h: 110.0, score: 1.0 };
    let (best, class) = found[0];
    assert_eq!(class, 0);
    assert!(best.iou(&face) >= 0.4, "IoU {:.2} for {best:?}", best.iou(&face));
    assert!(best.score >= DEFAULT_MIN_SCORE, "{best:?}");
    let others: Vec<_> = found[1..].iter().filter(|(d, _)| d.score >= DEFAULT_MIN_SCORE).collect();
    assert!(others.is_empty(), "other detections above the default score: {others:?}");
}

#[test]
fn the_detect_command_prints_boxes_and_draws_them() {
    let dir = tempfile::tempdir().unwrap();
    let drawn = dir.path().join("found.png");
    let cascade = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/face-haar/haarcascade_frontalface_default.xml");
    let out = std::process::Command::new(common::bin())
        .arg("detect")
        .arg(common::test_picture("astronaut.png"))
        .arg("--cascade")
        .arg(&cascade)
        .arg("--draw")
        .arg(&drawn)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with(r#"{"box":[176.0,66.0,94.0,94.0],"hits":40,"score":0.889}"#), "{text}");
    assert!(text.contains("1 found in"), "{text}");
    let img = image::open(&drawn).unwrap().to_rgb8();
    assert_eq!(img.get_pixel(176 + 40, 66), &image::Rgb([40, 230, 90]), "the box is drawn");
}

fn astronaut_b64() -> String {
    let bytes = std::fs::read(common::test_picture("astronaut.png")).unwrap();
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
}

/// The astronaut repaired by one `detect` entry: her face found, projected and regenerated.
fn repair_layout(detect: &str) -> String {
    format!(
        r#"{{"width": 512, "height": 512, "background": {{"image": "{}"}}, "detect": [{detect}]}}"#,
        astronaut_b64()
    )
}

#[test]
fn one_compose_with_a_detect_entry_repairs_the_face_over_http_and_grpc() {
    use common::server::Server;
    let s = Server::start(&[], &[], true);
    let layout = repair_layout(r#"{"class": "face", "region": {"project_steps": 20, "seed": 5}}"#);
    let r = s.post(
        "/v1/compose",
        &[("content-type", "application/json"), ("accept", "application/json")],
        layout.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let found = v["detections"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let d = &found[0];
    assert_eq!((d["detector"].as_str(), d["class"].as_str()), (Some("face-haar"), Some("face")));
    assert_eq!(d["box"], serde_json::json!([176.0, 66.0, 94.0, 94.0]));
    assert_eq!(d["region"], "detect[0][0]");
    let region = &v["regions"][0];
    assert_eq!((region["source"].as_str(), region["model"].as_str()), (Some("detect[0][0]"), Some("face")));
    assert!(v["timings_ms"]["detect"].as_f64().unwrap() > 0.0 && v["timings_ms"]["project"].as_f64().unwrap() > 0.0);
    // The picture outside the grown ellipse is the astronaut's own; inside it changed.
    let png = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, v["image"].as_str().unwrap()).unwrap();
    let (after, before) = (
        image::load_from_memory(&png).unwrap().to_rgb8(),
        image::open(common::test_picture("astronaut.png")).unwrap().to_rgb8(),
    );
    for (x, y) in [(20, 20), (400, 400), (150, 60), (300, 200)] {
        assert_eq!(after.get_pixel(x, y), before.get_pixel(x, y), "({x}, {y}) is outside the face");
    }
    let changed = (200..250)
        .flat_map(|x| (90..140).map(move |y| (x, y)))
        .filter(|&(x, y)| after.get_pixel(x, y) != before.get_pixel(x, y))
        .count();
    assert!(changed > 2000, "only {changed} face pixels changed");
    let text = String::from_utf8(s.get("/metrics").body).unwrap();
    assert!(text.contains("mixgan_stage_duration_seconds_count{stage=\"detect\"} 1"), "{text}");

    // gRPC: the same picture and the detection.
    let reply = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let mut client = mixgan::server::grpc::pb::mixgan_client::MixganClient::connect(s.base.clone()).await.unwrap();
        client
            .compose(mixgan::server::grpc::pb::ComposeRequest { layout_json: layout.clone() })
            .await
            .unwrap()
            .into_inner()
    });
    assert_eq!(reply.image, png);
    assert_eq!(reply.detections.len(), 1);
    assert_eq!(
        (reply.detections[0].r#box.clone(), reply.detections[0].region.as_str()),
        (vec![176.0, 66.0, 94.0, 94.0], "detect[0][0]")
    );
    assert!(reply.timings.unwrap().detect_ms > 0.0);
}

#[test]
fn bad_detect_entries_get_422_naming_the_field() {
    use common::server::Server;
    let s = Server::start(&[], &[], true);
    let no_picture =
        r##"{"width": 64, "height": 64, "background": {"color": "#000000"}, "detect": [{"class": "face"}]}"##;
    let cases = [
        (no_picture.to_string(), "detect[0]: needs a background `image`"),
        (repair_layout(r#"{"class": "face", "min_score": 2}"#), "detect[0].min_score"),
        (repair_layout(r#"{"class": "face", "detector": "nope"}"#), "detect[0].detector: unknown detector `nope`"),
        (repair_layout(r#"{"class": "background"}"#), "detect[0].class: no detector finds `background`"),
        (repair_layout(r#"{"class": "face", "region": {"box": [0, 0, 8, 8]}}"#), "detect[0].region.box"),
        (repair_layout(r#"{"class": "face", "overrides": {"first": {}}}"#), "detect[0].overrides.first"),
        (repair_layout(r#"{"class": "face", "region": {"blend": "smudge"}}"#), "detect[0][0].blend"),
        (repair_layout(r#"{"class": "face", "order": "random"}"#), "detect[0].order"),
    ];
    for (layout, named) in cases {
        let r = s.post("/v1/compose", &[("content-type", "application/json")], layout.as_bytes());
        let message = r.json()["error"]["message"].as_str().unwrap_or("").to_string();
        assert!(r.status == 422 || r.status == 400, "{named}: {}", r.status);
        assert!(message.contains(named), "{named}: {message}");
    }
}

/// A TorchScript detector by the documented contract, scripted here: it boxes the pixels
/// brighter than 0.9 as a `hand` (class 1), or breaks the contract when `broken`.
const BRIGHT_DETECTOR: &str = r#"
import sys, torch
class Bright(torch.nn.Module):
    def forward(self, x: torch.Tensor):
        m = x[0].mean(0) > 0.9
        at = torch.nonzero(m)
        ys, xs = at[:, 0], at[:, 1]
        if ys.numel() == 0:
            return torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long)
        x0, x1, y0, y1 = xs.min().float(), xs.max().float(), ys.min().float(), ys.max().float()
        box = torch.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1]).unsqueeze(0)
        return box, torch.tensor([0.9]), torch.tensor([1])
class Broken(torch.nn.Module):
    def forward(self, x: torch.Tensor):
        return x.mean()
torch.jit.script(Broken() if sys.argv[2] == "broken" else Bright()).save(sys.argv[1])
"#;

/// A models folder with the bundled generators and a scripted detector called `bright`.
fn models_with_script_detector(dir: &Path, variant: &str) {
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    for name in ["face", "hand", "background"] {
        std::os::unix::fs::symlink(bundled.join(name), dir.join(name)).unwrap();
    }
    let det = dir.join("bright");
    std::fs::create_dir(&det).unwrap();
    // TorchScript reads the module's source, so the script is a file.
    let script = dir.join("make_detector.py");
    std::fs::write(&script, BRIGHT_DETECTOR).unwrap();
    let out = std::process::Command::new(common::python())
        .arg(&script)
        .arg(det.join("detector.pt"))
        .arg(variant)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(
        det.join("model.toml"),
        "name = \"bright\"\nkind = \"detector\"\nclasses = [\"face\", \"hand\"]\n[detector]\nformat = \"torchscript\"\nfile = \"detector.pt\"\ninput_size = 128\n",
    )
    .unwrap();
}

/// The pipeline on the models under `dir`, on the CPU.
fn pipeline_on(dir: &Path) -> std::sync::Arc<mixgan::pipeline::Pipeline> {
    let registry = std::sync::Arc::new(ModelRegistry::load(dir, tch::Device::Cpu).unwrap());
    std::sync::Arc::new(mixgan::pipeline::Pipeline {
        registry,
        limits: Default::default(),
        device: tch::Device::Cpu,
        composite_on: Default::default(),
    })
}

fn square_picture() -> String {
    let img = image::RgbImage::from_fn(256, 256, |x, y| {
        if (64..112).contains(&x) && (96..136).contains(&y) {
            image::Rgb([250, 250, 250])
        } else {
            image::Rgb([30, 40, (x / 2) as u8])
        }
    });
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, png)
}

#[test]
fn a_torchscript_detector_by_the_contract_makes_regions() {
    let dir = tempfile::tempdir().unwrap();
    models_with_script_detector(dir.path(), "bright");
    let pipeline = pipeline_on(dir.path());
    let layout = format!(
        r#"{{"width": 256, "height": 256, "background": {{"image": "{}"}},
            "detect": [{{"class": "hand", "detector": "bright", "shape": "box", "dilate": 0, "region": {{"project": false, "seed": 3}}}}]}}"#,
        square_picture()
    );
    let out = pipeline.render(layout.as_bytes(), 8).unwrap();
    let d = &out.plan.detections;
    assert_eq!(d.len(), 1, "{d:?}");
    // Found at half size (input_size 128) and scaled back.
    assert_eq!(d[0].rect, [64.0, 96.0, 48.0, 40.0]);
    assert_eq!((d[0].class.as_str(), d[0].region.as_deref()), ("hand", Some("detect[0][0]")));
    let r = &out.plan.regions[0];
    assert_eq!((r.model.name(), r.rect.x, r.rect.y, r.rect.w, r.rect.h), ("hand", 64, 96, 48, 40));
    assert!(out.timings.detect > std::time::Duration::ZERO);

    // Asking the same detector for a class it finds none of gives no regions.
    let none = layout.replace(r#""class": "hand""#, r#""class": "face""#);
    assert!(pipeline.render(none.as_bytes(), 8).unwrap().plan.detections.is_empty());
}

#[test]
fn a_module_that_breaks_the_contract_is_named() {
    let dir = tempfile::tempdir().unwrap();
    models_with_script_detector(dir.path(), "broken");
    let pipeline = pipeline_on(dir.path());
    let layout = format!(
        r#"{{"width": 64, "height": 64, "background": {{"image": "{}"}}, "detect": [{{"class": "hand"}}]}}"#,
        square_picture()
    );
    let e = pipeline.render(layout.as_bytes(), 8).err().unwrap().to_string();
    assert!(e.contains("detect[0].detector") && e.contains("contract"), "{e}");
}

#[test]
fn the_bundled_scene_detector_finds_faces_and_hands_in_held_out_scenes() {
    // Held-out scenes (pools drawn with another seed than training's), written by the trainer's
    // eval; then detected here through mixgan's own detector path.
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(common::python())
        .arg(root.join("tools/train_detector.py"))
        .args(["eval", "--scenes", "40", "--seed", "2000", "--model"])
        .arg(root.join("models/scene-detector/detector.pt"))
        .arg("--dump")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let registry = ModelRegistry::load(&root.join("models"), tch::Device::Cpu).unwrap();
    let detector = registry.detector("scene-detector").unwrap();
    let scenes: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("boxes.json")).unwrap()).unwrap();
    let (mut truth, mut found, mut matched) = (0, 0, 0);
    for s in scenes.as_array().unwrap() {
        let img = image::open(dir.path().join(s["file"].as_str().unwrap())).unwrap().to_rgb8();
        let dets: Vec<(Detection, usize)> = detector
            .detect(img.as_raw(), img.width() as usize, img.height() as usize)
            .unwrap()
            .into_iter()
            .filter(|(d, _)| d.score >= DEFAULT_MIN_SCORE)
            .collect();
        let boxes: Vec<(Detection, usize)> = s["boxes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                let v: Vec<f64> = b.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
                (Detection { x: v[0], y: v[1], w: v[2], h: v[3], score: 1.0 }, v[4] as usize)
            })
            .collect();
        let mut used = vec![false; boxes.len()];
        for (d, class) in &dets {
            let best = (0..boxes.len())
                .filter(|&j| !used[j] && boxes[j].1 == *class)
                .max_by(|&a, &b| d.iou(&boxes[a].0).total_cmp(&d.iou(&boxes[b].0)));
            if let Some(j) = best.filter(|&j| d.iou(&boxes[j].0) >= 0.5) {
                used[j] = true;
                matched += 1;
            }
        }
        truth += boxes.len();
        found += dets.len();
    }
    let recall = matched as f64 / truth as f64;
    let false_rate = (found - matched) as f64 / found.max(1) as f64;
    assert!(recall >= 0.9, "recall {recall:.3} ({matched} of {truth})");
    assert!(false_rate <= 0.05, "false detections {false_rate:.3} ({} of {found})", found - matched);
}

#[test]
fn the_crowd_repair_in_the_docs_finds_and_redraws_three_faces() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut layout: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("docs/examples/crowd_faces.json")).unwrap()).unwrap();
    let picture = std::fs::read(root.join("docs/examples/crowd.jpg")).unwrap();
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &picture);
    layout["background"] = serde_json::json!({"image": b64});
    let pipeline = pipeline_on(&root.join("models"));
    let out = pipeline.render(layout.to_string().as_bytes(), 8).unwrap();
    let regions: Vec<&str> = out.plan.detections.iter().filter_map(|d| d.region.as_deref()).collect();
    assert_eq!(regions, ["detect[0][0]", "detect[0][1]", "detect[0][2]"], "{:?}", out.plan.detections);
    assert!(out.plan.detections.iter().all(|d| d.detector == "scene-detector" && d.class == "face"));
    // Left to right, and the override's seed on the second.
    let xs: Vec<f64> = out.plan.detections.iter().map(|d| d.rect[0]).collect();
    assert!(xs.windows(2).all(|w| w[0] <= w[1]), "{xs:?}");
    let second = out.plan.regions.iter().find(|r| r.source == "detect[0][1]").unwrap();
    assert_eq!(second.params.seed, 77);
}
