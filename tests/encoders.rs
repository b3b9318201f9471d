//! Pictures as the service encodes them, on a photograph, the bundled examples and a flat
//! picture. PNGs decode to the same pixels and are no larger than `image`'s fast PNG encoder
//! makes them (the encoder pictures up to 1024 x 1024 used before their own); JPEGs are as
//! faithful as `image`'s JPEG encoder (used before) at the same quality, at about its size. So
//! speed was not bought with size.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use image::{ExtendedColorType, ImageEncoder, RgbImage};
use mixgan::encode::{encode_raw, Format};
use mixgan::pipeline::Pipeline;
use mixgan::registry::ModelRegistry;
use mixgan::router::RouterLimits;
use tch::Device;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fast_general_png(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut out,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::Paeth,
    )
    .write_image(img.as_raw(), img.width(), img.height(), ExtendedColorType::Rgb8)
    .unwrap();
    out
}

/// The test pictures: a photograph, the bundled examples rendered, and a flat picture (its
/// rows are runs of zero residuals).
fn pictures() -> Vec<(String, RgbImage)> {
    let mut pictures =
        vec![("astronaut".to_string(), image::open(common::test_picture("astronaut.png")).unwrap().to_rgb8())];
    let registry = Arc::new(ModelRegistry::load(&root().join("models"), Device::Cpu).expect("bundled models"));
    let pipeline = Arc::new(Pipeline {
        registry,
        limits: RouterLimits::default(),
        device: Device::Cpu,
        composite_on: Default::default(),
    });
    for example in ["portrait", "crowd"] {
        let layout = std::fs::read(root().join(format!("examples/{example}.json"))).unwrap();
        let rendered = pipeline.render(&layout, 8).unwrap();
        pictures.push((example.to_string(), image::load_from_memory(&rendered.bytes).unwrap().to_rgb8()));
    }
    pictures.push(("flat".to_string(), RgbImage::from_pixel(640, 480, image::Rgb([30, 144, 255]))));
    pictures
}

#[test]
fn pngs_decode_exactly_and_are_no_larger_than_a_fast_general_encoders() {
    for (name, img) in pictures() {
        let ours = encode_raw(img.as_raw(), img.width(), img.height(), 3, Format::Png).unwrap();
        let decoded = image::load_from_memory_with_format(&ours, image::ImageFormat::Png).unwrap().to_rgb8();
        assert!(decoded == img, "{name}: the PNG decodes to other pixels");
        let general = fast_general_png(&img);
        eprintln!(
            "{name} {}x{}: {} bytes, the fast general encoder's {}",
            img.width(),
            img.height(),
            ours.len(),
            general.len()
        );
        assert!(ours.len() <= general.len(), "{name}: {} bytes against {}", ours.len(), general.len());
    }
}

/// Peak signal-to-noise ratio of `b` against `a`, in dB (infinite where they are equal).
fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let sum: f64 = a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum();
    10.0 * (255.0f64.powi(2) / (sum / a.len() as f64)).log10()
}

#[test]
fn jpegs_are_as_faithful_as_a_general_encoders_at_about_its_size() {
    for (name, img) in pictures() {
        let (w, h) = img.dimensions();
        for quality in [50, 75, 90, 95] {
            let ours = encode_raw(img.as_raw(), w, h, 3, Format::Jpeg { quality }).unwrap();
            let decoded = image::load_from_memory_with_format(&ours, image::ImageFormat::Jpeg).unwrap().to_rgb8();
            assert_eq!(decoded.dimensions(), (w, h), "{name} at {quality}");
            let mut general = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut general, quality)
                .write_image(img.as_raw(), w, h, ExtendedColorType::Rgb8)
                .unwrap();
            let theirs = image::load_from_memory(&general).unwrap().to_rgb8();
            let (p_ours, p_theirs) = (psnr(img.as_raw(), decoded.as_raw()), psnr(img.as_raw(), theirs.as_raw()));
            eprintln!(
                "{name} at {quality}: {} bytes, {p_ours:.3} dB; the general encoder's {} bytes, {p_theirs:.3} dB",
                ours.len(),
                general.len()
            );
            assert!(p_ours >= p_theirs - 0.01, "{name} at {quality}: {p_ours:.3} dB against {p_theirs:.3}");
            // At the default quality (90) no more than 1 % larger (seen: 22 % smaller to 0.7 %
            // larger). Near the top of the scale the transform keeps more of the smooth
            // portrait's faint detail than the general encoder's: 5.4 % larger at 95 for
            // 0.06 dB more.
            let allowed = if quality == 90 { 101 } else { 106 };
            let (a, b) = (ours.len(), general.len());
            assert!(a * 100 <= b * allowed, "{name} at {quality}: {a} bytes against {b}");
        }
    }
}

/// Grey and RGBA pixels make JPEGs too (the alpha is dropped: JPEG has none), and a side
/// past JPEG's 65,535 is an error that says so, not a panic.
#[test]
fn jpegs_of_grey_and_rgba_pixels_and_a_side_too_long() {
    let grey: Vec<u8> = (0..64 * 48).map(|i| (i % 251) as u8).collect();
    let jpeg = encode_raw(&grey, 64, 48, 1, Format::Jpeg { quality: 90 }).unwrap();
    let decoded = image::load_from_memory(&jpeg).unwrap();
    assert_eq!((decoded.width(), decoded.height(), decoded.color()), (64, 48, image::ColorType::L8));
    assert!(psnr(&grey, decoded.to_luma8().as_raw()) > 30.0);

    let rgba: Vec<u8> = (0..64 * 48).flat_map(|i| [(i % 64 * 4) as u8, (i / 64 * 5) as u8, 90, 7]).collect();
    let jpeg = encode_raw(&rgba, 64, 48, 4, Format::Jpeg { quality: 90 }).unwrap();
    let decoded = image::load_from_memory(&jpeg).unwrap().to_rgb8();
    let rgb: Vec<u8> = rgba.chunks(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
    assert!(psnr(&rgb, decoded.as_raw()) > 30.0, "the colour, alpha dropped");

    let err = encode_raw(&[0; 70_000 * 3], 70_000, 1, 3, Format::Jpeg { quality: 90 }).unwrap_err();
    assert!(err.to_string().contains("65,535"), "{err}");
}
