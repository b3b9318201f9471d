//! Label maps (segmentation maps): each palette colour's pixels split into connected
//! components (8-connected), specks dropped, each component one region with its own mask.

use image::DynamicImage;

use super::geometry::Rect;
use crate::error::LayoutError;

/// One connected component of one class, in canvas pixels.
pub struct Component {
    pub class: String,
    pub rect: Rect,
    /// Row-major over `rect`, 1 inside the component.
    pub mask: Vec<f32>,
}

/// `#rrggbb` to RGB.
pub fn parse_color(field: &str, text: &str) -> Result<[u8; 3], LayoutError> {
    let hex = text.strip_prefix('#').unwrap_or("");
    if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(LayoutError::new(field, format!("`{text}` is not a colour like #1a2b3c")));
    }
    let v = u32::from_str_radix(hex, 16).expect("checked hex");
    Ok([(v >> 16) as u8, (v >> 8) as u8, v as u8])
}

/// Splits `img` (scaled to `width` x `height` by nearest neighbour) into components of the
/// palette's classes; components smaller than `min_area` pixels are dropped.
pub fn components(
    img: &DynamicImage,
    palette: &[(String, [u8; 3])],
    width: i64,
    height: i64,
    min_area: i64,
) -> Vec<Component> {
    let rgb = img.to_rgb8();
    let (iw, ih) = (i64::from(rgb.width()), i64::from(rgb.height()));
    // Label per canvas pixel: palette index + 1, 0 for no class.
    let mut labels = vec![0u16; (width * height) as usize];
    for y in 0..height {
        let sy = (y * ih / height) as u32;
        for x in 0..width {
            let sx = (x * iw / width) as u32;
            let p = rgb.get_pixel(sx, sy).0;
            if let Some(k) = palette.iter().position(|(_, c)| *c == p) {
                labels[(y * width + x) as usize] = k as u16 + 1;
            }
        }
    }
    let mut seen = vec![false; labels.len()];
    let mut out = Vec::new();
    let mut stack = Vec::new();
    let mut pixels = Vec::new();
    for start in 0..labels.len() {
        let label = labels[start];
        if label == 0 || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        pixels.clear();
        while let Some(p) = stack.pop() {
            pixels.push(p);
            let (px, py) = ((p as i64) % width, (p as i64) / width);
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (nx, ny) = (px + dx, py + dy);
                    if nx < 0 || ny < 0 || nx >= width || ny >= height {
                        continue;
                    }
                    let q = (ny * width + nx) as usize;
                    if !seen[q] && labels[q] == label {
                        seen[q] = true;
                        stack.push(q);
                    }
                }
            }
        }
        if (pixels.len() as i64) < min_area.max(1) {
            continue;
        }
        let (mut x0, mut y0, mut x1, mut y1) = (i64::MAX, i64::MAX, i64::MIN, i64::MIN);
        for &p in &pixels {
            let (x, y) = ((p as i64) % width, (p as i64) / width);
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
        let rect = Rect { x: x0, y: y0, w: x1 - x0 + 1, h: y1 - y0 + 1 };
        let mut mask = vec![0f32; rect.area() as usize];
        for &p in &pixels {
            let (x, y) = ((p as i64) % width, (p as i64) / width);
            mask[((y - y0) * rect.w + (x - x0)) as usize] = 1.0;
        }
        out.push(Component { class: palette[label as usize - 1].0.clone(), rect, mask });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_parse_and_bad_ones_are_named() {
        assert_eq!(parse_color("c", "#ff8000").unwrap(), [255, 128, 0]);
        assert!(parse_color("c", "red").unwrap_err().to_string().contains("c:"));
    }

    #[test]
    fn components_split_classes_and_drop_specks() {
        let mut img = image::RgbImage::new(10, 10);
        for y in 0..4 {
            for x in 0..4 {
                img.put_pixel(x, y, image::Rgb([255, 0, 0]));
                img.put_pixel(x + 6, y + 6, image::Rgb([255, 0, 0]));
            }
        }
        img.put_pixel(9, 0, image::Rgb([0, 255, 0])); // a speck
        let palette = vec![("face".to_string(), [255, 0, 0]), ("hand".to_string(), [0, 255, 0])];
        let comps = components(&DynamicImage::ImageRgb8(img), &palette, 10, 10, 2);
        assert_eq!(comps.len(), 2);
        assert_eq!(comps[0].rect, Rect { x: 0, y: 0, w: 4, h: 4 });
        assert_eq!(comps[1].rect, Rect { x: 6, y: 6, w: 4, h: 4 });
        assert!(comps.iter().all(|c| c.class == "face" && c.mask.iter().all(|&v| v == 1.0)));
    }
}
