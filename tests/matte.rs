//! Mattes on fixture models whose alpha is known: a model that draws nothing (alpha 0
//! everywhere), one that covers everything (alpha 1) and an imported RGB one. The compositor must show
//! the canvas through a transparent patch, equal the plain blend under an opaque one, refuse
//! `matte: "patch"` for a model without alpha, and measure the backdrop that leaks.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, OnceLock};

use mixgan::compositor::{matte, ownership_map};
use mixgan::pipeline::{Pipeline, Rendered};
use mixgan::registry::ModelRegistry;
use mixgan::router::RouterLimits;
use tch::Device;

use common::*;

const SETTINGS_RGBA: &str = r#"{"z_dim": 16, "c_dim": 0, "w_dim": 16, "img_resolution": 16, "img_channels": 4,
    "mapping_kwargs": {"num_layers": 2}, "synthesis_kwargs": {"channel_base": 256, "channel_max": 16}}"#;

/// A random model of `class` whose toRGB layers draw a constant alpha: `alpha_bias` per
/// layer (three layers at 16 px, so the alpha is three times it in generator units).
fn make_rgba(dir: &Path, class: &str, alpha_bias: f64) {
    make_model(dir, SETTINGS_RGBA, 3);
    let script = format!(
        r#"
import sys; sys.path.insert(0, sys.argv[1])
import sg2_reference as ref
path = sys.argv[2] + "/weights.safetensors"
sd = ref.load_safetensors(path)
for k in sd:
    if k.endswith(".torgb.weight"): sd[k][3] = 0
    if k.endswith(".torgb.bias"): sd[k][3] = {alpha_bias}
ref.save_safetensors(sd, path)
"#
    );
    let out = Command::new(python())
        .args(["-c", &script])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tools"))
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let toml = std::fs::read_to_string(dir.join("model.toml")).unwrap();
    let toml = toml
        .replace("name = \"test\"", &format!("name = \"{class}\"\nalpha = true"))
        .replace("classes = [\"thing\"]", &format!("classes = [\"{class}\"]"));
    std::fs::write(dir.join("model.toml"), toml).unwrap();
}

/// An RGB model brought in as users bring theirs: a NVIDIA snapshot pickle (written by
/// tools/checkpoint_fixtures.py from a random model) through `mixgan import`, into
/// `models/<class>`.
fn import_rgb(models: &Path, class: &str) {
    let scratch = tempfile::tempdir().unwrap();
    let source = scratch.path().join("source");
    make_model(&source, &SETTINGS_RGBA.replace("\"img_channels\": 4", "\"img_channels\": 3"), 3);
    let pkl = scratch.path().join("network-snapshot.pkl");
    let out = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/checkpoint_fixtures.py"))
        .args(["nvidia-pkl", "--model"])
        .arg(&source)
        .arg("--out")
        .arg(&pkl)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(bin())
        .env("MIXGAN_PYTHON", python())
        .arg("import")
        .arg(&pkl)
        .args(["--name", class, "--classes", class, "-o"])
        .arg(models.join(class))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn pipeline() -> Arc<Pipeline> {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        make_rgba(&dir.path().join("ghost"), "ghost", -20.0);
        make_rgba(&dir.path().join("solid"), "solid", 20.0);
        import_rgb(dir.path(), "plain");
        dir
    });
    let registry = ModelRegistry::load(dir.path(), Device::Cpu).expect("fixture models");
    Arc::new(Pipeline {
        registry: Arc::new(registry),
        limits: RouterLimits::default(),
        device: Device::Cpu,
        composite_on: Default::default(),
    })
}

fn render(layout: &str) -> Rendered {
    pipeline().render(layout.as_bytes(), 8).unwrap_or_else(|e| panic!("{e}\n{layout}"))
}

fn grey_box(class: &str, extra: &str) -> String {
    format!(
        r##"{{"width": 128, "height": 96, "background": {{"color": "#808080"}},
            "regions": [{{"class": "{class}", "seed": 5, "box": [8, 8, 112, 80]{extra}}}]}}"##
    )
}

/// Largest and mean |pixel - 0x80| over the picture.
fn off_grey(r: &Rendered) -> (u8, f64) {
    let img = image::load_from_memory(&r.bytes).unwrap().to_rgb8();
    let d: Vec<u8> = img.as_raw().iter().map(|&v| v.abs_diff(0x80)).collect();
    (*d.iter().max().unwrap(), d.iter().map(|&v| f64::from(v)).sum::<f64>() / d.len() as f64)
}

#[test]
fn a_transparent_patch_shows_the_canvas_under_every_blend() {
    for blend in ["laplacian", "alpha", "poisson", "none"] {
        for extra in ["", r#", "color_match": true"#] {
            let r = render(&grey_box("ghost", &format!(r#", "blend": "{blend}"{extra}"#)));
            assert_eq!(r.plan.regions[0].matte_name(), "patch");
            let (worst, _) = off_grey(&r);
            assert!(worst <= 1, "{blend}{extra}: the grey is off by {worst} levels");
        }
    }
    // The same patch under its region's shape alone shows the patch's own picture.
    let (_, mean) = off_grey(&render(&grey_box("ghost", r#", "matte": "region""#)));
    assert!(mean > 5.0, "matte region: mean {mean} levels from grey");
}

#[test]
fn an_opaque_patch_matches_the_region_matte() {
    let by = |matte: &str| {
        let r = render(&grey_box("solid", &format!(r#", "matte": "{matte}""#)));
        image::load_from_memory(&r.bytes).unwrap().to_rgb8()
    };
    let (patch, region) = (by("patch"), by("region"));
    let worst = patch.as_raw().iter().zip(region.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(worst <= 1, "alpha 1 differs from the plain blend by {worst} levels");
}

#[test]
fn matte_patch_needs_a_model_that_draws_alpha() {
    let err = pipeline().plan(grey_box("plain", r#", "matte": "patch""#).as_bytes()).unwrap_err().to_string();
    assert!(err.contains("regions[0].matte") && err.contains("plain"), "{err}");
    let plan = pipeline().plan(grey_box("plain", "").as_bytes()).unwrap();
    assert_eq!(plan.regions[0].matte_name(), "region", "auto falls back to the shape");
    let err = pipeline().plan(grey_box("ghost", r#", "matte": "sometimes""#).as_bytes()).unwrap_err().to_string();
    assert!(err.contains("matte"), "{err}");
}

#[test]
fn the_masks_view_and_the_leak_measure_use_the_final_matte() {
    let r = render(&grey_box("ghost", ""));
    let owners = ownership_map(&r.plan, &r.alphas).unwrap();
    assert!(owners.as_raw().iter().all(|&v| v == 0), "a patch that draws nothing owns no pixel");
    let shape = render(&grey_box("ghost", r#", "matte": "region""#));
    let owned = ownership_map(&shape.plan, &shape.alphas).unwrap().pixels().filter(|p| p.0 != [0, 0, 0]).count();
    assert_eq!(owned, 112 * 80, "under the shape alone the box owns its pixels");

    let alone = render(r##"{"width": 128, "height": 96, "background": {"color": "#808080"}}"##);
    let alpha = r.alphas[0].as_ref().expect("a matted patch reports its alpha");
    let (leak, n) = matte::backdrop_leak(&r.canvas, &alone.canvas, &r.plan.regions[0], alpha, None).unwrap().unwrap();
    assert_eq!(n, 112 * 80);
    assert!(leak < 0.5, "leak {leak}");
    let (leak, _) =
        matte::backdrop_leak(&shape.canvas, &alone.canvas, &r.plan.regions[0], alpha, None).unwrap().unwrap();
    assert!(leak > 5.0, "the shape alone leaks the backdrop: {leak}");
}

/// The harmonised region's ring errors for `layout` (its first region).
fn harmony(pipeline: &Arc<Pipeline>, layout: &str) -> mixgan::router::Harmony {
    let r = pipeline.render(layout.as_bytes(), 8).unwrap_or_else(|e| panic!("{e}\n{layout}"));
    r.plan.regions[0].harmony.expect("harmonised")
}

#[test]
fn harmonize_brings_the_border_ring_towards_the_background() {
    let layout = |class: &str, extra: &str| {
        format!(
            r##"{{"width": 96, "height": 96, "background": {{"color": "#3a6ea5"}},
                "regions": [{{"class": "{class}", "seed": 7, "box": [16, 16, 64, 64], "harmonize": true{extra}}}]}}"##
        )
    };
    let p = pipeline();
    let h = harmony(&p, &layout("plain", r#", "harmonize_steps": 60"#));
    assert!(h.ring_error_after <= 0.7 * h.ring_error_before, "imported RGB model: {h:?}");
    // The same seed without it: the picture is the seed's own, and nothing is reported.
    let without = p.render(layout("plain", "").replace(r#", "harmonize": true"#, "").as_bytes(), 8).unwrap();
    assert!(without.plan.regions[0].harmony.is_none());
    let with = p.render(layout("plain", "").as_bytes(), 8).unwrap();
    assert_ne!(with.bytes, without.bytes, "harmonising changed the picture");
}

/// The final matte (mask times the patch's alpha) as the CPU lays it out in one pass, from an
/// alpha that is a window of a larger tensor as the compositor's are, equals the tensor ops'
/// (taken for an alpha whose rows are not contiguous) bit for bit, and the mask times the
/// alpha made by hand; outside the visible rectangle it is zero.
#[test]
fn the_final_matte_in_one_pass_is_the_mask_times_the_alpha() {
    use mixgan::compositor::Compositor;
    use mixgan::router::geometry::Rect;
    use tch::{Kind, Tensor};

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let registry = Arc::new(ModelRegistry::load(&root.join("models"), Device::Cpu).expect("bundled models"));
    let pipeline =
        Pipeline { registry, limits: RouterLimits::default(), device: Device::Cpu, composite_on: Default::default() };
    let plan = pipeline.plan(&std::fs::read(root.join("examples/portrait.json")).unwrap()).unwrap();
    let compositor = Compositor { device: Device::Cpu };
    let bounds = Rect { x: 0, y: 0, w: plan.width, h: plan.height };
    tch::manual_seed(9);
    for region in &plan.regions {
        let v = &region.visible;
        let larger = Tensor::rand([1, v.h + 5, v.w + 9], (Kind::Float, Device::Cpu));
        let alpha = larger.narrow(1, 3, v.h).narrow(2, 4, v.w);
        let strided = alpha.transpose(1, 2).contiguous().transpose(1, 2);
        assert_ne!(strided.stride()[2], 1, "the other path's input");
        for margin in [0, 7] {
            let win = v.expand(margin, &bounds);
            let one_pass = compositor.matte_in(region, Some(&alpha), &win).unwrap();
            let by_ops = compositor.matte_in(region, Some(&strided), &win).unwrap();
            assert_eq!(one_pass.size(), [1, win.h, win.w]);
            assert!(one_pass.equal(&by_ops), "{}: the two paths differ", region.source);
            let mask = Tensor::from_slice(&region.mask).view([1, v.h, v.w]);
            let inside = one_pass.narrow(1, v.y - win.y, v.h).narrow(2, v.x - win.x, v.w);
            assert!(inside.equal(&(&mask * &alpha)), "{}: not the mask times the alpha", region.source);
            let total = one_pass.sum(Kind::Double).double_value(&[]);
            assert_eq!(total, inside.sum(Kind::Double).double_value(&[]), "{}: nothing outside", region.source);
        }
    }
}
