//! Encoding: pixel tensors out of the generator or compositor into PNG, JPEG or WebP bytes.
//! It never runs a model.

mod huffman;
mod png;

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
    #[error("JPEG encoding failed: {0}")]
    Jpeg(#[from] jpeg_encoder::EncodingError),
    #[error("a JPEG is at most 65,535 pixels a side, not {w} x {h}")]
    JpegTooLarge { w: u32, h: u32 },
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

/// Encodes one uint8 image [H, W, C] (C = 1, 3 or 4), a large PNG on every core.
pub fn encode(pixels: &Tensor, format: Format) -> Result<Vec<u8>, EncodeError> {
    encode_in(pixels, format, every_core_if_large(pixels.numel()))
}

/// Encodes one uint8 image [H, W, C] (C = 1, 3 or 4), a PNG on up to `threads` threads.
pub fn encode_in(pixels: &Tensor, format: Format, threads: usize) -> Result<Vec<u8>, EncodeError> {
    let size = pixels.size();
    if size.len() != 3 || pixels.kind() != Kind::Uint8 || ![1, 3, 4].contains(&size[2]) {
        return Err(EncodeError::Shape(size));
    }
    let (h, w, c) = (size[0] as u32, size[1] as u32, size[2]);
    let pixels = pixels.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
    // SAFETY: `pixels` is a contiguous uint8 tensor on the CPU holding h * w * c values; it
    // lives, unchanged, until this function returns, and nothing else writes to it.
    let data: &[u8] = unsafe { std::slice::from_raw_parts(pixels.data_ptr() as *const u8, pixels.numel()) };
    encode_raw_in(data, w, h, c as u8, format, threads)
}

/// NVIDIA's conversion of a [C, H, W] float image in generator units to interleaved uint8
/// (`(x * 127.5 + 128).clamp(0, 255)`, truncated), done in one pass on the CPU.
pub fn to_interleaved_u8(image: &Tensor) -> Result<(Vec<u8>, u32, u32, u8), EncodeError> {
    let size = image.size();
    if size.len() != 3 || ![1, 3, 4].contains(&size[0]) {
        return Err(EncodeError::Shape(size));
    }
    let (c, h, w) = (size[0] as usize, size[1] as usize, size[2] as usize);
    let plane = h * w;
    let image = image.f_to_device(tch::Device::Cpu)?.f_to_kind(Kind::Float)?.f_contiguous()?;
    // Read in place: copying a large canvas out first costs as much as the conversion.
    // SAFETY: `image` is a contiguous float32 tensor on the CPU holding c * h * w values; it
    // lives, unchanged, until this function returns, and nothing else writes to it.
    let floats: &[f32] = unsafe { std::slice::from_raw_parts(image.data_ptr() as *const f32, c * plane) };
    let mut out = vec![0u8; c * plane];
    // Large canvases in bands of rows, one per core (the conversion of a 2048 px canvas takes
    // some 20 ms on one core).
    let planes = |first: usize, len: usize| -> Vec<&[f32]> {
        (0..c).map(|ch| &floats[ch * plane + first..ch * plane + first + len]).collect()
    };
    if out.len() < PARALLEL_PNG_BYTES {
        interleave_u8(&planes(0, plane), &mut out);
    } else {
        let band = h.div_ceil(cores()).max(1) * w;
        std::thread::scope(|scope| {
            for (i, dst) in out.chunks_mut(band * c).enumerate() {
                let src = planes(i * band, dst.len() / c);
                scope.spawn(move || interleave_u8(&src, dst));
            }
        });
    }
    Ok((out, w as u32, h as u32, c as u8))
}

/// NVIDIA's conversion of one value in generator units: `(x * 127.5 + 128).clamp(0, 255)`,
/// truncated to uint8. `max` and `min` send NaN to 0 as the saturating `as u8` would, and
/// leave a finite value within 0..=255, which the unchecked conversion then truncates exactly;
/// unlike the saturating one, the compiler vectorises it (3 times faster over a canvas).
#[inline(always)]
#[allow(clippy::manual_clamp)] // `clamp` keeps NaN, which the unchecked conversion must not see
fn to_u8(x: f32) -> u8 {
    let v = (x * 127.5 + 128.0).max(0.0).min(255.0);
    // SAFETY: `v` is finite and within 0..=255, so it fits an i32 after truncation.
    unsafe { v.to_int_unchecked::<i32>() as u8 }
}

wide! {
/// `planes` (one per channel, equally long) in generator units into interleaved uint8 `out`,
/// by NVIDIA's conversion.
fn interleave_u8(planes: &[&[f32]], out: &mut [u8]) {
    if let [r, g, b] = planes {
        // Pixel-major over three planes at once: the writes stream and nothing is bounds-checked.
        for (((px, &r), &g), &b) in out.chunks_exact_mut(3).zip(r.iter()).zip(g.iter()).zip(b.iter()) {
            px[0] = to_u8(r);
            px[1] = to_u8(g);
            px[2] = to_u8(b);
        }
    } else {
        let c = planes.len();
        for (ch, plane) in planes.iter().enumerate() {
            for (i, &x) in plane.iter().enumerate() {
                out[i * c + ch] = to_u8(x);
            }
        }
    }
}
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// From this many bytes of pixels (1024 x 1024 RGB) [`encode_raw`] makes PNGs on every core.
const PARALLEL_PNG_BYTES: usize = 1024 * 1024 * 3;

/// Threads for a PNG of `bytes` pixel bytes where the caller has no cores to say: every core
/// from [`PARALLEL_PNG_BYTES`] on, else one.
fn every_core_if_large(bytes: usize) -> usize {
    if bytes >= PARALLEL_PNG_BYTES {
        cores()
    } else {
        1
    }
}

/// Pixel bytes a PNG thread should have at least: a thread's start costs some tens of
/// microseconds, a 512 px picture's strip of rows a tenth of a millisecond.
const PNG_BYTES_A_THREAD: usize = 256 * 1024;

/// The most threads worth giving a picture of `bytes` pixel bytes in `format` (at least one):
/// only a PNG splits over threads.
pub fn threads_worth(format: Format, bytes: usize) -> usize {
    match format {
        Format::Png => (bytes / PNG_BYTES_A_THREAD).max(1),
        Format::Jpeg { .. } | Format::WebP => 1,
    }
}

/// Encodes interleaved uint8 pixels (`channels` = 1, 3 or 4), a large PNG on every core.
pub fn encode_raw(data: &[u8], w: u32, h: u32, channels: u8, format: Format) -> Result<Vec<u8>, EncodeError> {
    encode_raw_in(data, w, h, channels, format, every_core_if_large(data.len()))
}

/// Encodes interleaved uint8 pixels (`channels` = 1, 3 or 4), a PNG on up to `threads` threads
/// (the caller's among them; the bytes are the same for any number).
pub fn encode_raw_in(
    data: &[u8],
    w: u32,
    h: u32,
    channels: u8,
    format: Format,
    threads: usize,
) -> Result<Vec<u8>, EncodeError> {
    let c = channels;
    let color = match c {
        1 => ExtendedColorType::L8,
        3 => ExtendedColorType::Rgb8,
        _ => ExtendedColorType::Rgba8,
    };
    let mut out = Vec::new();
    match format {
        // mixgan's own fast deflate (png.rs).
        Format::Png => out = png::encode(data, w, h, c, threads),
        Format::Jpeg { quality } => out = jpeg(data, w, h, c, quality)?,
        Format::WebP => image::codecs::webp::WebPEncoder::new_lossless(&mut out).write_image(data, w, h, color)?,
    }
    Ok(out)
}

/// A baseline JPEG at `quality` (libjpeg's scaling of the standard tables), every channel at
/// full resolution (4:4:4, as before) and Huffman codes made for the picture's own
/// coefficients: `jpeg-encoder`'s AVX2 transform takes about 60 % of the time of `image`'s
/// encoder (used before), for pictures at least as faithful and about as large at the same
/// quality (docs/performance.md, tests/encoders.rs).
fn jpeg(data: &[u8], w: u32, h: u32, channels: u8, quality: u8) -> Result<Vec<u8>, EncodeError> {
    let color = match channels {
        1 => jpeg_encoder::ColorType::Luma,
        3 => jpeg_encoder::ColorType::Rgb,
        // JPEG has no alpha: the colour is kept as it is.
        _ => jpeg_encoder::ColorType::Rgba,
    };
    let (Ok(width), Ok(height)) = (u16::try_from(w), u16::try_from(h)) else {
        return Err(EncodeError::JpegTooLarge { w, h });
    };
    let mut out = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality);
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_4_4);
    encoder.set_optimized_huffman_tables(true);
    encoder.encode(data, width, height, color)?;
    Ok(out)
}

/// Encodes one image as PNG into `path`.
pub fn write_png(pixels: &Tensor, path: &Path) -> Result<(), EncodeError> {
    let bytes = encode(pixels, Format::Png)?;
    std::fs::write(path, bytes).map_err(|source| EncodeError::Io { path: path.display().to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// libtorch's own NVIDIA conversion of [C, H, W], interleaved.
    fn by_libtorch(image: &Tensor) -> Vec<u8> {
        let pixels = image.f_mul_scalar(127.5).unwrap().f_add_scalar(128.0).unwrap().clamp(0.0, 255.0);
        let pixels = pixels.to_kind(Kind::Uint8).permute([1, 2, 0]).contiguous();
        Vec::<u8>::try_from(pixels.flatten(0, -1)).unwrap()
    }

    #[test]
    fn interleaved_pixels_equal_libtorchs_conversion_small_and_large() {
        tch::manual_seed(3);
        // The last one is over PARALLEL_PNG_BYTES, so it converts in bands on every core, with
        // a height that does not split evenly.
        for (c, h, w) in [(1, 5, 7), (3, 17, 9), (4, 8, 8), (3, 1101, 1000), (4, 1001, 799)] {
            let image = Tensor::randn([c, h, w], (Kind::Float, Device::Cpu)).f_mul_scalar(1.5).unwrap();
            let (data, ow, oh, oc) = to_interleaved_u8(&image).unwrap();
            assert_eq!((ow, oh, oc), (w as u32, h as u32, c as u8));
            assert!(data == by_libtorch(&image), "{c}x{h}x{w}: pixels differ from libtorch's");
        }
    }

    #[test]
    fn the_conversion_equals_the_saturating_cast_everywhere() {
        let saturating = |x: f32| (x * 127.5 + 128.0).clamp(0.0, 255.0) as u8;
        let special = [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN, 0.0, -0.0];
        // Every value from -1.1 to 1.1 in steps finer than a level, and the ends exactly.
        let sweep = (-2200..=2200).map(|i| i as f32 / 2000.0);
        let ends = [-1.0039216f32, 1.0, 0.9999999, (127.0 - 128.0) / 127.5, (255.0 - 128.0) / 127.5];
        for x in special.into_iter().chain(sweep).chain(ends) {
            assert_eq!(to_u8(x), saturating(x), "at {x}");
        }
    }
}
