//! Bad layouts: each kind gets its own message naming the field, `mixgan render` exits
//! non-zero, and nothing a client sends panics the parser or router (random bytes, mutated
//! layouts, deep nesting, random JSON).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use mixgan::pipeline::Pipeline;
use mixgan::registry::ModelRegistry;
use mixgan::router::RouterLimits;
use tch::Device;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn registry() -> Arc<ModelRegistry> {
    static REG: OnceLock<Arc<ModelRegistry>> = OnceLock::new();
    REG.get_or_init(|| Arc::new(ModelRegistry::load(&root().join("models"), Device::Cpu).unwrap())).clone()
}

fn pipeline(limits: RouterLimits) -> Arc<Pipeline> {
    Arc::new(Pipeline { registry: registry(), limits, device: Device::Cpu, composite_on: Default::default() })
}

fn png_b64(w: u32, h: u32) -> String {
    let img = image::GrayImage::from_pixel(w, h, image::Luma([255]));
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &png)
}

fn with_region(region: &str) -> String {
    format!(r##"{{"width": 64, "height": 48, "regions": [{region}]}}"##)
}

#[test]
fn every_kind_of_bad_layout_has_its_own_message() {
    let many: Vec<String> = (0..65).map(|_| r##"{"class": "face", "box": [0, 0, 8, 8]}"##.to_string()).collect();
    let big_mask = png_b64(80, 80);
    let small = png_b64(64, 48);
    let project_600 = r##"{"class": "face", "box": [0, 0, 8, 8], "project": true, "project_steps": 600}"##;
    let cases: Vec<(String, &str, &str)> = vec![
        ("{not json".into(), "layout", "invalid JSON"),
        (r##"{"width": 64}"##.into(), "layout", "missing field `height`"),
        (r##"{"width": 64, "height": 48, "colour": 1}"##.into(), "colour", "unknown field `colour`"),
        (r##"{"width": 0, "height": 48, "background": {"color": "#000000"}}"##.into(), "width", "whole number"),
        (r##"{"width": 64.5, "height": 48, "background": {"color": "#000000"}}"##.into(), "width", "whole number"),
        (r##"{"width": 5000, "height": 48, "background": {"color": "#000000"}}"##.into(), "width", "4096"),
        (r##"{"width": 64, "height": 48}"##.into(), "layout", "nothing to draw"),
        (r##"{"width": 64, "height": 48, "format": "gif"}"##.into(), "format", "unknown variant `gif`"),
        (
            r##"{"width": 64, "height": 48, "quality": 0, "background": {"color": "#000000"}}"##.into(),
            "quality",
            "between 1 and 100",
        ),
        (
            r##"{"width": 64, "height": 48, "background": {"color": "blue"}}"##.into(),
            "background.color",
            "not a colour",
        ),
        (
            r##"{"width": 64, "height": 48, "background": {"color": "#000000", "class": "face"}}"##.into(),
            "background",
            "one of a `color`",
        ),
        (
            r##"{"width": 64, "height": 48, "background": {"image": "AAAA", "class": "face"}}"##.into(),
            "background",
            "one of a `color`",
        ),
        (r##"{"width": 64, "height": 48, "background": {"image": "%%%"}}"##.into(), "background.image", "base64"),
        (
            with_region(r##"{"class": "face", "box": [0, 0, 8, 8], "project": true}"##),
            "regions[0].project",
            "background `image`",
        ),
        (
            with_region(r##"{"class": "face", "box": [0, 0, 8, 8], "project_steps": 5}"##),
            "regions[0].project_steps",
            "needs `project: true`",
        ),
        (
            format!(
                r##"{{"width": 64, "height": 48, "background": {{"image": "{small}"}}, "regions": [{{"class": "face", "box": [0, 0, 8, 8], "project": true, "project_steps": 5000}}]}}"##
            ),
            "regions[0].project_steps",
            "from 1 to 1000",
        ),
        (
            format!(
                r##"{{"width": 64, "height": 48, "background": {{"image": "{small}"}}, "regions": [{project_600}, {project_600}]}}"##
            ),
            "regions",
            "1200 projection and harmonisation steps",
        ),
        (
            r##"{"width": 64, "height": 48, "background": {"image": "AAAA"}}"##.into(),
            "background.image",
            "decodable PNG or JPEG",
        ),
        (
            format!(r##"{{"width": 64, "height": 48, "background": {{"image": "{big_mask}"}}}}"##),
            "background.image",
            "larger than 64x64",
        ),
        (with_region(r##"{"class": "dragon", "box": [0, 0, 8, 8]}"##), "regions[0].class", "background, face, hand"),
        (with_region(r##"{"class": "face", "box": [0, 0, 8, 8], "matte": "mostly"}"##), "regions[0].matte", "`mostly`"),
        (
            with_region(r##"{"class": "face", "box": [0, 0, 8, 8], "harmonize_steps": 5}"##),
            "regions[0].harmonize_steps",
            "needs `harmonize: true`",
        ),
        (
            with_region(r##"{"class": "face", "box": [0, 0, 8, 8], "harmonize": true, "harmonize_steps": 0}"##),
            "regions[0].harmonize_steps",
            "from 1 to 1000",
        ),
        (
            with_region(
                r##"{"class": "face", "box": [0, 0, 8, 8], "harmonize": true, "harmonize_steps": 600}, {"class": "face", "box": [0, 0, 8, 8], "harmonize": true, "harmonize_steps": 600}"##,
            ),
            "regions",
            "1200 projection and harmonisation steps",
        ),
        (with_region(r##"{"model": "dragon", "box": [0, 0, 8, 8]}"##), "regions[0].model", "unknown model"),
        (with_region(r##"{"class": "face", "model": "face", "box": [0, 0, 8, 8]}"##), "regions[0]", "not both"),
        (with_region(r##"{"class": "face"}"##), "regions[0]", "exactly one of"),
        (
            with_region(r##"{"class": "face", "box": [0, 0, 8, 8], "ellipse": [4, 4, 2, 2]}"##),
            "regions[0]",
            "exactly one of",
        ),
        (with_region(r##"{"class": "face", "box": [100, 100, 8, 8]}"##), "regions[0]", "entirely off"),
        (with_region(r##"{"class": "face", "box": [0, 0, 8]}"##), "regions[0].box", "4 numbers"),
        (with_region(r##"{"class": "face", "box": [0, 0, 0, 8]}"##), "regions[0].box", "at least 1"),
        (with_region(r##"{"class": "face", "box": [1e300, 0, 8, 8]}"##), "regions[0].box", "finite"),
        (with_region(r##"{"class": "face", "box": [1e999, 0, 8, 8]}"##), "layout", "invalid JSON"),
        (with_region(r##"{"class": "face", "ellipse": [4, 4, 0, 2]}"##), "regions[0].ellipse", "radii"),
        (
            with_region(r##"{"class": "face", "polygon": [[0, 0], [10, 10], [20, 20]]}"##),
            "regions[0].polygon",
            "degenerate",
        ),
        (
            with_region(r##"{"class": "face", "polygon": [[0, 0], [10, 10]]}"##),
            "regions[0].polygon",
            "3 to 4096 points",
        ),
        (with_region(r##"{"class": "face", "polygon": [[0, 0], [10], [20, 20]]}"##), "regions[0].polygon[1]", "[x, y]"),
        (
            with_region(r##"{"class": "face", "ellipse": [4, 4, 2, 2], "mask": "AAAA"}"##),
            "regions[0].mask",
            "placed on a `box`",
        ),
        (with_region(r##"{"class": "face", "box": [0, 0, 8, 8], "mask": "%%%"}"##), "regions[0].mask", "base64"),
        (
            with_region(r##"{"class": "face", "box": [0, 0, 8, 8], "mask": "AAAA"}"##),
            "regions[0].mask",
            "decodable PNG",
        ),
        (
            with_region(&format!(r##"{{"class": "face", "box": [0, 0, 8, 8], "mask": "{big_mask}"}}"##)),
            "regions[0].mask",
            "larger than 64x64",
        ),
        (
            with_region(r##"{"class": "face", "box": [0, 0, 8, 8], "feather": -1}"##),
            "regions[0].feather",
            "between 0 and 256",
        ),
        (
            with_region(r##"{"class": "face", "box": [0, 0, 8, 8], "blend": "glue"}"##),
            "regions[0].blend",
            "unknown variant `glue`",
        ),
        (with_region(r##"{"class": "face", "box": [0, 0, 8, 8], "trunc": 1e9}"##), "regions[0].trunc", "psi"),
        (
            with_region(r##"{"class": "face", "box": [0, 0, 8, 8], "seed": 99999999999}"##),
            "regions[0].seed",
            "4294967295",
        ),
        (with_region(r##"{"class": "face", "box": [0, 0, 8, 8], "mix_seed": 3}"##), "regions[0]", "go together"),
        (
            with_region(r##"{"class": "face", "box": [0, 0, 8, 8], "mix_seed": 3, "mix_from": 99}"##),
            "regions[0].mix_from",
            "past the model",
        ),
        (
            with_region(r##"{"class": "face", "box": [0, 0, 8, 8], "class_index": 1}"##),
            "regions[0].class_index",
            "unconditional",
        ),
        (with_region(r##"{"class": "face", "box": [0, 0, 8, 8], "z": 1e100}"##), "regions[0].z", "finite"),
        (with_region(&many.join(",")), "regions", "limit is 64"),
        (
            r##"{"width": 64, "height": 48, "label_map": {"png": "AAAA", "palette": {"dragon": "#ff0000"}}}"##.into(),
            "label_map.palette.dragon",
            "unknown class",
        ),
        (
            r##"{"width": 64, "height": 48, "label_map": {"png": "AAAA", "palette": {}}}"##.into(),
            "label_map.palette",
            "names no class",
        ),
        (
            r##"{"width": 64, "height": 48, "label_map": {"png": "AAAA", "palette": {"face": "#ff0000"}}}"##.into(),
            "label_map.png",
            "decodable PNG",
        ),
    ];
    let limits = RouterLimits { max_picture_side: 64, ..RouterLimits::default() };
    let r = pipeline(limits);
    for (layout, field, reason) in &cases {
        match r.plan(layout.as_bytes()) {
            Ok(_) => panic!("accepted: {layout}"),
            Err(e) => {
                assert_eq!(e.field(), *field, "{e} for {layout}");
                assert!(e.reason().contains(reason), "`{e}` lacks `{reason}` for {layout}");
            }
        }
    }
}

#[test]
fn partly_off_canvas_regions_are_clipped_not_refused() {
    let r = pipeline(RouterLimits::default());
    let plan = r.plan(with_region(r##"{"class": "face", "box": [-20, 30, 50, 50]}"##).as_bytes()).unwrap();
    let g = &plan.regions[0];
    assert_eq!((g.rect.x, g.rect.w), (-20, 50));
    assert_eq!((g.visible.x, g.visible.y, g.visible.w, g.visible.h), (0, 30, 30, 18));
    r.render(with_region(r##"{"class": "face", "box": [-20, 30, 50, 50]}"##).as_bytes(), 4).unwrap();
}

#[test]
fn render_exits_non_zero_with_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, with_region(r##"{"class": "dragon", "box": [0, 0, 8, 8]}"##)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mixgan"))
        .args(["render", bad.to_str().unwrap(), "-o", dir.path().join("x.png").to_str().unwrap(), "--models"])
        .arg(root().join("models"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("regions[0].class: unknown class `dragon`"), "{err}");
    assert!(!dir.path().join("x.png").exists());
}

#[test]
fn render_repairs_a_picture_named_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let picture = dir.path().join("photo.png");
    image::RgbImage::from_pixel(64, 48, image::Rgb([200, 40, 90])).save(&picture).unwrap();
    let layout = dir.path().join("fix.json");
    std::fs::write(&layout, with_region(r##"{"class": "face", "box": [0, 0, 24, 24], "blend": "none"}"##)).unwrap();
    let out_png = dir.path().join("fixed.png");
    let run = |pic: &Path| {
        Command::new(env!("CARGO_BIN_EXE_mixgan"))
            .args(["render", layout.to_str().unwrap(), "-o", out_png.to_str().unwrap(), "--background-image"])
            .arg(pic)
            .arg("--models")
            .arg(root().join("models"))
            .output()
            .unwrap()
    };
    let ok = run(&picture);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let fixed = image::open(&out_png).unwrap().to_rgb8();
    assert_eq!(fixed.get_pixel(50, 40).0, [200, 40, 90], "outside the region the picture stays");
    assert_ne!(fixed.get_pixel(12, 12).0, [200, 40, 90], "the region is regenerated");
    let missing = run(&dir.path().join("nothing.png"));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read"));
}

/// A small deterministic generator (xorshift64*) so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn random_json(rng: &mut Rng, depth: u32) -> serde_json::Value {
    use serde_json::{json, Value};
    const KEYS: &[&str] = &[
        "width",
        "height",
        "seed",
        "format",
        "quality",
        "background",
        "regions",
        "label_map",
        "image",
        "class",
        "model",
        "box",
        "ellipse",
        "polygon",
        "mask",
        "z",
        "fit",
        "blend",
        "feather",
        "color_match",
        "project",
        "project_steps",
        "trunc",
        "trunc_cutoff",
        "class_index",
        "noise_mode",
        "mix_seed",
        "mix_from",
        "color",
        "png",
        "palette",
        "min_area",
    ];
    const WORDS: &[&str] =
        &["face", "hand", "background", "png", "jpeg", "cover", "contain", "poisson", "none", "#ff0000", "", "AAAA"];
    match if depth > 4 { rng.below(4) } else { rng.below(7) } {
        0 => Value::Null,
        1 => json!(rng.below(2) == 1),
        2 => {
            let v = [0.0, 1.0, -1.0, 0.5, 64.0, 4096.0, 1e6, 1e300, -1e300, 4294967296.0][rng.below(10) as usize];
            json!(v * if rng.below(3) == 0 { rng.below(100) as f64 } else { 1.0 })
        }
        3 => json!(WORDS[rng.below(WORDS.len() as u64) as usize]),
        4 | 5 => Value::Array((0..rng.below(6)).map(|_| random_json(rng, depth + 1)).collect()),
        _ => {
            let mut m = serde_json::Map::new();
            for _ in 0..rng.below(8) {
                m.insert(KEYS[rng.below(KEYS.len() as u64) as usize].into(), random_json(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

#[test]
fn nothing_a_client_sends_panics_the_parser_or_router() {
    let r = pipeline(RouterLimits::default());
    let mut rng = Rng(0x5eed);
    let examples: Vec<Vec<u8>> = ["portrait", "label_map", "crowd"]
        .iter()
        .map(|n| std::fs::read(root().join(format!("examples/{n}.json"))).unwrap())
        .collect();
    let mut accepted = 0;
    for i in 0..3000 {
        let bytes: Vec<u8> = match i % 3 {
            0 => (0..rng.below(200)).map(|_| rng.next() as u8).collect(),
            1 => {
                let mut b = examples[rng.below(3) as usize].clone();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(b.len() as u64) as usize;
                    match rng.below(3) {
                        0 => b[at] = rng.next() as u8,
                        1 => {
                            b.remove(at);
                        }
                        _ => b.insert(at, b"{}[],:\"0-e."[rng.below(11) as usize]),
                    }
                }
                b
            }
            _ => serde_json::to_vec(&random_json(&mut rng, 0)).unwrap(),
        };
        if let Ok(plan) = r.plan(&bytes) {
            accepted += 1;
            if plan.width * plan.height <= 640 * 512 {
                let _ = r.render(&bytes, 8);
            }
        }
    }
    for deep in
        [format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)), format!("{{\"regions\": {}", "[".repeat(50_000))]
    {
        assert!(r.plan(deep.as_bytes()).is_err());
    }
    assert!(accepted > 0, "the mutations should leave some layouts valid");
}

#[test]
fn the_published_schema_names_exactly_the_accepted_keys() {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("schema/layout.schema.json")).unwrap()).unwrap();
    let keys =
        |v: &serde_json::Value| -> Vec<String> { v["properties"].as_object().unwrap().keys().cloned().collect() };
    let r = pipeline(RouterLimits::default());
    let unknown =
        |layout: String| r.plan(layout.as_bytes()).err().is_some_and(|e| e.reason().contains("unknown field"));
    for key in keys(&schema) {
        assert!(!unknown(format!(r#"{{"width": 8, "height": 8, "{key}": null}}"#)), "top-level `{key}`");
    }
    assert!(unknown(r#"{"width": 8, "height": 8, "bogus": 1}"#.to_string()));
    for key in keys(&schema["$defs"]["region"]) {
        assert!(
            !unknown(with_region(&format!(r#"{{"class": "face", "box": [0, 0, 8, 8], "{key}": null}}"#))),
            "region `{key}`"
        );
    }
    assert!(unknown(with_region(r#"{"class": "face", "box": [0, 0, 8, 8], "bogus": 1}"#)));
    for key in keys(&schema["$defs"]["background"]) {
        assert!(
            !unknown(format!(r#"{{"width": 8, "height": 8, "background": {{"{key}": null}}}}"#)),
            "background `{key}`"
        );
    }
    for key in keys(&schema["$defs"]["label_map"]) {
        assert!(
            !unknown(format!(
                r#"{{"width": 8, "height": 8, "label_map": {{"png": "", "palette": {{}}, "{key}": null}}}}"#
            )),
            "label_map `{key}`"
        );
    }
}
