//! The render pipeline end to end on the bundled models: determinism, sizes and formats,
//! each geometry, fit, blend mode, z-order and label maps, seam scores and golden pictures.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use image::RgbImage;
use mixgan::compositor::{poisson, Compositor};
use mixgan::pipeline::{Pipeline, Rendered};
use mixgan::registry::ModelRegistry;
use mixgan::router::RouterLimits;
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn registry() -> Arc<ModelRegistry> {
    static REG: OnceLock<Arc<ModelRegistry>> = OnceLock::new();
    REG.get_or_init(|| Arc::new(ModelRegistry::load(&root().join("models"), Device::Cpu).expect("bundled models")))
        .clone()
}

fn pipeline() -> Arc<Pipeline> {
    Arc::new(Pipeline {
        registry: registry(),
        limits: RouterLimits::default(),
        device: Device::Cpu,
        composite_on: Default::default(),
    })
}

fn render(layout: &str) -> Rendered {
    pipeline().render(layout.as_bytes(), 8).unwrap_or_else(|e| panic!("{e}\n{layout}"))
}

fn pixels(r: &Rendered) -> RgbImage {
    image::load_from_memory(&r.bytes).expect("decodable").to_rgb8()
}

const BG: [u8; 3] = [0x12, 0x34, 0x56];

/// Mean |pixel - background colour| over a rectangle.
fn distance_from_bg(img: &RgbImage, x0: u32, y0: u32, w: u32, h: u32) -> f64 {
    let mut sum = 0.0;
    for y in y0..y0 + h {
        for x in x0..x0 + w {
            let p = img.get_pixel(x, y).0;
            sum += (0..3).map(|c| (p[c] as f64 - BG[c] as f64).abs()).sum::<f64>() / 3.0;
        }
    }
    sum / (w * h) as f64
}

fn one_region(region: &str) -> String {
    format!(r##"{{"width": 128, "height": 96, "background": {{"color": "#123456"}}, "regions": [{region}]}}"##)
}

#[test]
fn every_example_renders_the_same_bytes_twice_at_its_size_and_format() {
    for name in ["portrait", "label_map", "crowd"] {
        let text = std::fs::read_to_string(root().join(format!("examples/{name}.json"))).unwrap();
        let layout: serde_json::Value = serde_json::from_str(&text).unwrap();
        let (a, b) = (render(&text), render(&text));
        assert_eq!(a.bytes, b.bytes, "{name}: two renders differ");
        let img = image::load_from_memory(&a.bytes).unwrap();
        assert_eq!(
            (img.width() as u64, img.height() as u64),
            (layout["width"].as_u64().unwrap(), layout["height"].as_u64().unwrap())
        );
        let want = match layout["format"].as_str().unwrap_or("png") {
            "jpeg" => image::ImageFormat::Jpeg,
            "webp" => image::ImageFormat::WebP,
            _ => image::ImageFormat::Png,
        };
        assert_eq!(image::guess_format(&a.bytes).unwrap(), want, "{name}");
    }
}

#[test]
fn each_format_is_what_it_says() {
    for (fmt, want) in
        [("png", image::ImageFormat::Png), ("jpeg", image::ImageFormat::Jpeg), ("webp", image::ImageFormat::WebP)]
    {
        let r = render(&format!(
            r#"{{"width": 40, "height": 30, "format": "{fmt}", "quality": 80, "regions": [{{"class": "face", "box": [5, 5, 20, 20]}}]}}"#
        ));
        assert_eq!(image::guess_format(&r.bytes).unwrap(), want);
        assert_eq!(pixels(&r).dimensions(), (40, 30));
    }
}

#[test]
fn geometries_cover_their_own_pixels_only() {
    let boxed = pixels(&render(&one_region(
        r#"{"class": "face", "box": [32, 16, 64, 64], "blend": "none", "matte": "region"}"#,
    )));
    assert!(distance_from_bg(&boxed, 40, 24, 48, 48) > 10.0);
    assert_eq!(distance_from_bg(&boxed, 0, 0, 30, 96), 0.0);
    assert_eq!(distance_from_bg(&boxed, 98, 0, 30, 96), 0.0);

    let ellipse = pixels(&render(&one_region(
        r#"{"class": "face", "ellipse": [64, 48, 40, 30], "blend": "none", "matte": "region"}"#,
    )));
    assert!(distance_from_bg(&ellipse, 54, 40, 20, 16) > 10.0);
    assert_eq!(distance_from_bg(&ellipse, 24, 18, 6, 6), 0.0, "the bounding box's corner lies outside the ellipse");

    let tri = pixels(&render(&one_region(
        r#"{"class": "hand", "polygon": [[20, 10], [110, 10], [20, 90]], "blend": "none", "matte": "region"}"#,
    )));
    assert!(distance_from_bg(&tri, 24, 14, 20, 20) > 10.0);
    assert_eq!(distance_from_bg(&tri, 90, 70, 15, 15), 0.0, "beyond the hypotenuse");

    // A mask: white on its left half, black on its right.
    let mut m = image::GrayImage::new(8, 8);
    for y in 0..8 {
        for x in 0..4 {
            m.put_pixel(x, y, image::Luma([255]));
        }
    }
    let mut png = Vec::new();
    m.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &png);
    let masked = pixels(&render(&one_region(&format!(
        r#"{{"class": "face", "box": [32, 16, 64, 64], "mask": "{b64}", "blend": "none"}}"#
    ))));
    assert!(distance_from_bg(&masked, 36, 20, 24, 56) > 10.0);
    assert_eq!(distance_from_bg(&masked, 68, 20, 24, 56), 0.0);
}

#[test]
fn fits_place_the_patch_as_named() {
    let wide = |fit: &str| {
        pixels(&render(&format!(
            r##"{{"width": 200, "height": 100, "background": {{"color": "#123456"}}, "regions": [{{"class": "face", "seed": 3, "box": [0, 0, 200, 100], "fit": "{fit}", "blend": "none"}}]}}"##
        )))
    };
    let contain = wide("contain");
    assert_eq!(distance_from_bg(&contain, 0, 0, 48, 100), 0.0, "contain leaves the sides empty");
    assert_eq!(distance_from_bg(&contain, 152, 0, 48, 100), 0.0);
    assert!(distance_from_bg(&contain, 60, 10, 80, 80) > 10.0);
    let (cover, stretch) = (wide("cover"), wide("stretch"));
    assert!(distance_from_bg(&cover, 0, 0, 200, 100) > 10.0, "cover fills the box");
    assert!(distance_from_bg(&stretch, 0, 0, 200, 100) > 10.0, "stretch fills the box");
    assert_ne!(cover.as_raw(), stretch.as_raw());
    // Cover keeps the aspect: its middle column is the patch's middle column at 200/64 scale,
    // so it varies vertically less than stretch squeezes it... compare against a square box.
    let square = pixels(&render(
        r##"{"width": 200, "height": 200, "background": {"color": "#123456"}, "regions": [{"class": "face", "seed": 3, "box": [0, 0, 200, 200], "blend": "none"}]}"##,
    ));
    let (a, b) = (cover.get_pixel(100, 50).0, square.get_pixel(100, 100).0);
    let diff: i32 = (0..3).map(|c| (a[c] as i32 - b[c] as i32).abs()).sum();
    assert!(diff <= 6, "cover is the centre band of the square rendering: {a:?} vs {b:?}");
}

#[test]
fn blend_modes_differ_at_the_edge_and_leave_far_pixels_alone() {
    let mut seen = Vec::new();
    for mode in ["none", "alpha", "laplacian", "poisson"] {
        let img = pixels(&render(&one_region(&format!(
            r#"{{"class": "hand", "seed": 5, "ellipse": [64, 48, 30, 30], "blend": "{mode}"}}"#
        ))));
        assert_eq!(distance_from_bg(&img, 0, 0, 16, 96), 0.0, "{mode} touched far pixels");
        assert!(distance_from_bg(&img, 56, 40, 16, 16) > 5.0, "{mode} lost the patch");
        seen.push((mode, img));
    }
    for i in 0..seen.len() {
        for j in i + 1..seen.len() {
            assert_ne!(seen[i].1.as_raw(), seen[j].1.as_raw(), "{} and {} gave the same picture", seen[i].0, seen[j].0);
        }
    }
}

#[test]
fn higher_z_wins_the_overlap_whatever_the_order() {
    let a = r#"{"class": "face", "seed": 1, "box": [10, 10, 70, 70], "blend": "none", "matte": "region", "z": ZA}"#;
    let b = r#"{"class": "hand", "seed": 2, "box": [50, 20, 70, 70], "blend": "none", "matte": "region", "z": ZB}"#;
    let both = |za: i32, zb: i32| {
        pixels(&render(&one_region(&format!(
            "{},{}",
            a.replace("ZA", &za.to_string()),
            b.replace("ZB", &zb.to_string())
        ))))
    };
    let only_a = pixels(&render(&one_region(&a.replace("ZA", "0"))));
    let only_b = pixels(&render(&one_region(&b.replace("ZB", "0"))));
    let p = (60, 50);
    assert_eq!(both(1, 2).get_pixel(p.0, p.1), only_b.get_pixel(p.0, p.1));
    assert_eq!(both(2, 1).get_pixel(p.0, p.1), only_a.get_pixel(p.0, p.1));
    // Ties go by order: the later region is on top.
    assert_eq!(both(0, 0).get_pixel(p.0, p.1), only_b.get_pixel(p.0, p.1));
}

fn label_png(w: u32, h: u32, draw: impl Fn(u32, u32) -> [u8; 3]) -> String {
    let img = RgbImage::from_fn(w, h, |x, y| image::Rgb(draw(x, y)));
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &png)
}

#[test]
fn label_maps_become_one_region_per_component() {
    // Half-size map: a red square, two green blobs, a one-pixel green speck.
    let png = label_png(64, 48, |x, y| match (x, y) {
        (8..=23, 8..=23) => [255, 0, 0],
        (40..=55, 4..=15) | (40..=55, 30..=41) => [0, 255, 0],
        (30, 40) => [0, 255, 0],
        _ => [0, 0, 0],
    });
    let layout = format!(
        r##"{{"width": 128, "height": 96, "background": {{"color": "#123456"}},
            "label_map": {{"png": "{png}", "palette": {{"face": "#ff0000", "hand": "#00ff00"}}, "min_area": 16, "blend": "none"}}}}"##
    );
    let r = render(&layout);
    let mut classes: Vec<_> = r.plan.regions.iter().map(|g| g.class.clone().unwrap()).collect();
    classes.sort();
    assert_eq!(classes, vec!["face", "hand", "hand"]);
    let face = r.plan.regions.iter().find(|g| g.class.as_deref() == Some("face")).unwrap();
    assert_eq!(face.rect, mixgan::router::geometry::Rect { x: 16, y: 16, w: 32, h: 32 });
    let img = pixels(&r);
    assert!(distance_from_bg(&img, 18, 18, 28, 28) > 10.0);
    assert_eq!(distance_from_bg(&img, 56, 76, 8, 8), 0.0, "the speck was dropped");
}

#[test]
fn laplacian_and_poisson_hide_the_seam() {
    let score = |mode: &str| {
        let r = render(&one_region(&format!(
            r#"{{"class": "hand", "seed": 9, "ellipse": [64, 48, 34, 34], "blend": "{mode}"}}"#
        )));
        let c = Compositor { device: Device::Cpu };
        c.seam_score(&r.canvas, &r.plan.regions[0], &r.plan).unwrap()
    };
    let (none, lap, poi) = (score("none"), score("laplacian"), score("poisson"));
    assert!(lap < 0.7 * none, "laplacian {lap} vs none {none}");
    assert!(poi < 0.7 * none, "poisson {poi} vs none {none}");
}

#[test]
fn the_poisson_solver_leaves_a_small_residual() {
    tch::manual_seed(1);
    let o = (Kind::Float, Device::Cpu);
    let base = Tensor::randn([3, 40, 56], o);
    let patch = Tensor::randn([3, 40, 56], o) * 3.0;
    let mask = Tensor::zeros([1, 40, 56], o);
    let _ = mask.narrow(1, 8, 20).narrow(2, 10, 30).fill_(1.0);
    let out = poisson::clone(&base, &patch, &mask).unwrap();
    let res = poisson::residual(&out, &base, &patch, &mask).unwrap();
    assert!(res < 1e-3, "residual {res}");
    let border = (&out - &base).narrow(1, 0, 1).abs().max().double_value(&[]);
    assert_eq!(border, 0.0, "the border keeps the base's values");
}

/// Golden pictures: small layouts against PNGs in tests/golden, within 2/255 per channel
/// (oneDNN's kernels may round differently across CPUs), each twice: with every region matted
/// by its shape alone (`NAME.png`, the pictures from before the experts drew alpha: their
/// colour is unchanged) and as the layout asks by default (`NAME_matte.png`, the face and
/// hand experts' own alpha). `MIXGAN_BLESS=1` rewrites them.
#[test]
fn golden_pictures() {
    let cases: &[(&str, &str)] = &[
        ("box_none", r#"{"class": "face", "seed": 1, "box": [20, 10, 60, 60], "blend": "none"}"#),
        (
            "ellipse_alpha",
            r#"{"class": "hand", "seed": 2, "ellipse": [64, 48, 36, 30], "blend": "alpha", "feather": 6}"#,
        ),
        ("polygon_laplacian", r#"{"class": "face", "seed": 3, "polygon": [[10, 80], [64, 5], [118, 80]]}"#),
        (
            "box_poisson_color_match",
            r#"{"class": "hand", "seed": 4, "box": [30, 20, 60, 50], "blend": "poisson", "color_match": true}"#,
        ),
        (
            "fits",
            r#"{"class": "face", "seed": 5, "box": [0, 0, 64, 40], "fit": "contain"}, {"class": "face", "seed": 5, "box": [64, 0, 64, 40], "fit": "stretch"}, {"class": "face", "seed": 5, "box": [32, 50, 64, 40], "fit": "cover", "z": -1}"#,
        ),
        (
            "z_order_mixing",
            r#"{"class": "face", "seed": 6, "box": [10, 10, 70, 70], "z": 2, "trunc": 0.5}, {"class": "hand", "seed": 7, "box": [50, 20, 70, 70], "z": 1, "mix_seed": 8, "mix_from": 4}"#,
        ),
    ];
    let dir = root().join("tests/golden");
    let bless = std::env::var_os("MIXGAN_BLESS").is_some();
    let matted = cases.iter().map(|(name, regions)| (format!("{name}_matte"), regions.to_string()));
    let shapes = cases
        .iter()
        .map(|(name, regions)| (name.to_string(), regions.replace(r#"{"class""#, r#"{"matte": "region", "class""#)));
    for (name, regions) in shapes.chain(matted) {
        let layout = format!(
            r##"{{"width": 128, "height": 96, "seed": 1, "background": {{"class": "background", "seed": 3}}, "regions": [{regions}]}}"##
        );
        let got = pixels(&render(&layout));
        let path: PathBuf = dir.join(format!("{name}.png"));
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            got.save(&path).unwrap();
            continue;
        }
        let want = image::open(Path::new(&path))
            .unwrap_or_else(|e| panic!("{}: {e} (MIXGAN_BLESS=1 writes it)", path.display()))
            .to_rgb8();
        let worst = got.as_raw().iter().zip(want.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
        assert!(worst <= 2, "{name}: differs from its golden picture by {worst}/255");
    }
}

fn encoded_b64(img: &RgbImage, format: image::ImageFormat) -> String {
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), format).unwrap();
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &bytes)
}

/// Repair: an existing picture as the background; pixels outside every region's reach come
/// back exactly as sent, and the regions are regenerated.
#[test]
fn a_picture_background_is_kept_outside_the_regions_it_repairs() {
    let photo =
        RgbImage::from_fn(128, 96, |x, y| image::Rgb([(x * 2) as u8, (y * 2) as u8, ((x * 7 + y * 13) % 256) as u8]));
    let b64 = encoded_b64(&photo, image::ImageFormat::Png);
    let layout = format!(
        r#"{{"width": 128, "height": 96, "background": {{"image": "{b64}"}}, "regions": [{{"class": "face", "box": [40, 20, 48, 48], "blend": "poisson"}}]}}"#
    );
    let out = pixels(&render(&layout));
    let (mut same_outside, mut outside, mut changed_inside) = (0, 0, 0);
    for (x, y, p) in out.enumerate_pixels() {
        let near = (36..92).contains(&x) && (16..72).contains(&y);
        let inside = (44..84).contains(&x) && (24..64).contains(&y);
        if !near {
            outside += 1;
            same_outside += usize::from(p == photo.get_pixel(x, y));
        } else if inside && p != photo.get_pixel(x, y) {
            changed_inside += 1;
        }
    }
    assert_eq!(same_outside, outside, "pixels away from the region must come back as sent");
    assert!(changed_inside > 40 * 40 / 2, "the region was not regenerated ({changed_inside} pixels changed)");

    // A JPEG at another size is scaled to the canvas.
    let small = image::imageops::resize(&photo, 64, 48, image::imageops::FilterType::Triangle);
    let jpeg = encoded_b64(&small, image::ImageFormat::Jpeg);
    let layout = format!(
        r#"{{"width": 128, "height": 96, "background": {{"image": "{jpeg}"}}, "regions": [{{"class": "hand", "box": [0, 0, 32, 32]}}]}}"#
    );
    let out = pixels(&render(&layout));
    assert_eq!(out.dimensions(), (128, 96));
    let far = out.get_pixel(120, 90);
    let want = photo.get_pixel(120, 90);
    assert!((0..3).all(|c| far[c].abs_diff(want[c]) < 24), "{far:?} vs {want:?}");
}

/// Repair by projection: a region that `project`s comes back close to what the picture
/// showed there (the generator's own likeness of it), unlike a fresh sample from a seed.
#[test]
fn a_projected_region_keeps_the_likeness_of_the_picture() {
    let face = render(
        r##"{"width": 128, "height": 128, "background": {"color": "#000000"}, "regions": [{"class": "face", "seed": 7, "box": [0, 0, 128, 128], "blend": "none"}]}"##,
    );
    let photo = pixels(&face);
    let b64 = encoded_b64(&photo, image::ImageFormat::Png);
    let repaired = |extra: &str| {
        let layout = format!(
            r#"{{"width": 128, "height": 128, "background": {{"image": "{b64}"}}, "regions": [{{"class": "face", "seed": 99, "box": [16, 16, 96, 96], "blend": "none"{extra}}}]}}"#
        );
        let out = pixels(&render(&layout));
        let err: f64 =
            out.as_raw().iter().zip(photo.as_raw()).map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs()).sum::<f64>();
        err / out.as_raw().len() as f64
    };
    let (sampled, projected) = (repaired(""), repaired(r#", "project": true, "project_steps": 60"#));
    assert!(projected < sampled * 0.5, "mean error per channel: projected {projected:.2}, sampled {sampled:.2}");
}

/// Projection targets follow each fit, also for regions partly off the canvas.
#[test]
fn projection_works_for_every_fit_and_clipped_regions() {
    let photo = RgbImage::from_fn(96, 64, |x, y| image::Rgb([(x * 2) as u8, (y * 3) as u8, 120]));
    let b64 = encoded_b64(&photo, image::ImageFormat::Png);
    let pipeline = pipeline();
    for (fit, rect) in [
        ("cover", "[10, 8, 60, 40]"),
        ("contain", "[10, 8, 60, 40]"),
        ("stretch", "[10, 8, 60, 40]"),
        ("cover", "[-20, -10, 50, 50]"),
    ] {
        let layout = format!(
            r#"{{"width": 96, "height": 64, "background": {{"image": "{b64}"}}, "regions": [{{"class": "hand", "box": {rect}, "fit": "{fit}", "project": true, "project_steps": 3}}]}}"#
        );
        let mut plan = pipeline.plan(layout.as_bytes()).unwrap();
        pipeline
            .project(&mut plan, &mixgan::pipeline::SearchWatch::new(&std::sync::atomic::AtomicBool::new(false)))
            .unwrap_or_else(|e| panic!("{fit} {rect}: {e}"));
        let w = plan.regions[0].params.projected.as_ref().expect("projected");
        assert!(w.iter().all(|v| v.is_finite()) && !w.is_empty(), "{fit} {rect}");
        let job = plan.jobs.iter().find(|j| j.model.name() == "hand").unwrap();
        assert_eq!(plan.job_params(job)[0].projected.as_ref(), Some(w), "the job carries the projection");
        render(&layout);
    }
}

/// The bundled face draws its own alpha: given a large box over flat grey, the box's top
/// corners show the grey (its bottom corners hold the subject's shoulders).
#[test]
fn the_bundled_face_leaves_the_grey_in_the_corners_of_its_box() {
    for seed in [1, 11, 23] {
        let layout = format!(
            r##"{{"width": 256, "height": 256, "background": {{"color": "#808080"}},
                "regions": [{{"class": "face", "seed": {seed}, "box": [16, 16, 224, 224]}}]}}"##
        );
        let r = render(&layout);
        assert_eq!(r.plan.regions[0].matte_name(), "patch");
        let img = pixels(&r);
        let corner = 224 / 8;
        for (x0, y0) in [(16, 16), (16 + 224 - corner, 16)] {
            let mut sum = 0.0;
            for y in y0..y0 + corner {
                for x in x0..x0 + corner {
                    sum += img.get_pixel(x, y).0.iter().map(|&v| f64::from(v.abs_diff(0x80))).sum::<f64>() / 3.0;
                }
            }
            let mean = sum / f64::from(corner * corner);
            assert!(mean <= 3.0, "seed {seed}: the corner at ({x0}, {y0}) is {mean:.2} levels from the grey");
        }
        // Under its shape alone the same box shows the expert's coloured backdrop there.
        let shape = pixels(&render(&layout.replace(r#""box""#, r#""matte": "region", "box""#)));
        let d = shape.get_pixel(20, 20).0.iter().map(|&v| v.abs_diff(0x80)).max().unwrap();
        assert!(d > 10, "seed {seed}: the backdrop is {d} levels from grey");
    }
}

/// With mattes, no example region's edge is more visible than with its shape alone.
#[test]
fn mattes_make_no_seam_worse_on_the_examples() {
    let c = Compositor { device: Device::Cpu };
    for name in ["portrait", "crowd", "label_map"] {
        let layout = std::fs::read_to_string(root().join(format!("examples/{name}.json"))).unwrap();
        let mut shapes: serde_json::Value = serde_json::from_str(&layout).unwrap();
        for r in shapes.get_mut("regions").and_then(|r| r.as_array_mut()).into_iter().flatten() {
            r["matte"] = "region".into();
        }
        if let Some(lm) = shapes.get_mut("label_map") {
            lm["matte"] = "region".into();
        }
        let (matted, plain) = (render(&layout), render(&shapes.to_string()));
        for (i, region) in matted.plan.regions.iter().enumerate() {
            let with = c.seam_score(&matted.canvas, region, &matted.plan).unwrap();
            let without = c.seam_score(&plain.canvas, &plain.plan.regions[i], &plain.plan).unwrap();
            assert!(
                with <= without * 1.05 + 0.05,
                "{name} {}: seam {with:.2} with mattes, {without:.2} without",
                region.source
            );
        }
    }
}
