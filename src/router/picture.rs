//! Client-supplied pictures (region masks, label maps, background photos to repair): base64
//! PNG or JPEG decoded under size limits, so a small request cannot claim a huge decoded image
//! (no decompression bombs), and scaled to where the router places them.

use std::io::Cursor;

use base64::Engine;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};

use crate::error::LayoutError;

/// How large a client picture may be.
#[derive(Debug, Clone, Copy)]
pub struct PictureLimits {
    /// Encoded (base64) length.
    pub max_base64_len: usize,
    /// Decoded width and height each.
    pub max_side: u32,
}

/// Decodes a base64 PNG under `limits`; errors name `field`.
pub fn decode_png(field: &str, b64: &str, limits: PictureLimits) -> Result<DynamicImage, LayoutError> {
    decode(field, b64, limits, false)
}

/// Decodes a base64 PNG or JPEG (told apart by their first bytes) under `limits`.
pub fn decode_png_or_jpeg(field: &str, b64: &str, limits: PictureLimits) -> Result<DynamicImage, LayoutError> {
    decode(field, b64, limits, true)
}

fn decode(field: &str, b64: &str, limits: PictureLimits, jpeg_too: bool) -> Result<DynamicImage, LayoutError> {
    if b64.len() > limits.max_base64_len {
        return Err(LayoutError::new(
            field,
            format!("is {} base64 characters; the limit is {}", b64.len(), limits.max_base64_len),
        ));
    }
    let payload = b64.trim();
    let payload = ["data:image/png;base64,", "data:image/jpeg;base64,"]
        .iter()
        .find_map(|p| payload.strip_prefix(p))
        .unwrap_or(payload);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload.as_bytes())
        .map_err(|e| LayoutError::new(field, format!("is not valid base64: {e}")))?;
    let format = if jpeg_too && bytes.starts_with(&[0xff, 0xd8, 0xff]) { ImageFormat::Jpeg } else { ImageFormat::Png };
    let what = if jpeg_too { "PNG or JPEG" } else { "PNG" };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut l = Limits::default();
    l.max_image_width = Some(limits.max_side);
    l.max_image_height = Some(limits.max_side);
    l.max_alloc = Some(u64::from(limits.max_side) * u64::from(limits.max_side) * 8);
    reader.limits(l);
    reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => {
            LayoutError::new(field, format!("is larger than {0}x{0} pixels", limits.max_side))
        }
        e => LayoutError::new(field, format!("is not a decodable {what}: {e}")),
    })
}

/// A mask from a picture: its alpha channel when it has one, else its grey level, scaled
/// (bilinear) to `w` x `h`, as coverage in [0, 1] row-major.
pub fn mask_values(img: &DynamicImage, w: u32, h: u32) -> Vec<f32> {
    let grey = if img.color().has_alpha() {
        let rgba = img.to_rgba8();
        image::GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| image::Luma([rgba.get_pixel(x, y)[3]]))
    } else {
        img.to_luma8()
    };
    scaled_to(grey, w, h).into_raw().into_iter().map(|v| f32::from(v) / 255.0).collect()
}

/// `img` at `w` x `h`: itself when it has that size, else scaled bilinearly.
fn scaled_to<P: image::Pixel<Subpixel = u8> + 'static>(
    img: image::ImageBuffer<P, Vec<u8>>,
    w: u32,
    h: u32,
) -> image::ImageBuffer<P, Vec<u8>> {
    if img.dimensions() == (w, h) {
        img
    } else {
        image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle)
    }
}

/// A picture as interleaved RGB bytes at `w` x `h`, scaled (bilinear) when its size differs.
pub fn rgb_at(img: &DynamicImage, w: u32, h: u32) -> Vec<u8> {
    scaled_to(img.to_rgb8(), w, h).into_raw()
}
