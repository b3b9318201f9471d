//! PNG files as the service makes them, on a photograph and on the bundled examples: decoded
//! to the same pixels, and no larger than `image`'s fast PNG encoder makes them (the encoder
//! pictures up to 1024 x 1024 used before their own), so speed was not bought with size.

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

#[test]
fn pngs_decode_exactly_and_are_no_larger_than_a_fast_general_encoders() {
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
    // A flat picture: its rows are runs of zero residuals.
    pictures.push(("flat".to_string(), RgbImage::from_pixel(640, 480, image::Rgb([30, 144, 255]))));

    for (name, img) in pictures {
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
