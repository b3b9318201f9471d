//! Encoding: pixel tensors out of the generator or compositor into PNG, JPEG or WebP bytes.
//! It never runs a model.

use std::path::Path;

use image::{ExtendedColorType, ImageEncoder};
use tch::{Kind, Tensor};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum EncodeError {
    #[error("cannot encode a {0:?} tensor: pixels must be uint8 [height, width, 1|3|4]")]
    Shape(Vec<i64>),
    #[error("encoding failed: {0}")]
    Image(#[from] image::ImageError),
    #[error("cannot write {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Png,
    Jpeg { quality: u8 },
    WebP,
}

/// Encodes one uint8 image [H, W, C] (C = 1, 3 or 4).
pub fn encode(pixels: &Tensor, format: Format) -> Result<Vec<u8>, EncodeError> {
    let size = pixels.size();
    if size.len() != 3 || pixels.kind() != Kind::Uint8 || ![1, 3, 4].contains(&size[2]) {
        return Err(EncodeError::Shape(size));
    }
    let (h, w, c) = (size[0] as u32, size[1] as u32, size[2]);
    let mut data = vec![0u8; pixels.numel()];
    pixels.f_contiguous()?.f_copy_data_u8(&mut data, pixels.numel())?;
    let color = match c {
        1 => ExtendedColorType::L8,
        3 => ExtendedColorType::Rgb8,
        _ => ExtendedColorType::Rgba8,
    };
    let mut out = Vec::new();
    match format {
        Format::Png => image::codecs::png::PngEncoder::new(&mut out).write_image(&data, w, h, color)?,
        Format::Jpeg { quality } => {
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality).write_image(&data, w, h, color)?
        }
        Format::WebP => image::codecs::webp::WebPEncoder::new_lossless(&mut out).write_image(&data, w, h, color)?,
    }
    Ok(out)
}

/// Encodes one image as PNG into `path`.
pub fn write_png(pixels: &Tensor, path: &Path) -> Result<(), EncodeError> {
    let bytes = encode(pixels, Format::Png)?;
    std::fs::write(path, bytes).map_err(|source| EncodeError::Io { path: path.display().to_string(), source })
}
