//! `mixgan detect`: runs a detector model directory or a bare Haar cascade on a picture and
//! prints what it found, one JSON object per line (box, score, and the class or the cascade's
//! hits), optionally drawing the boxes onto a copy of the picture.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use super::say;
use crate::detect::detector::Detector;
use crate::detect::haar::{self, Cascade, HaarSettings};

#[derive(Args)]
pub struct DetectArgs {
    /// The picture (PNG or JPEG).
    picture: PathBuf,
    /// A detector model directory (`kind = "detector"`), such as models/scene-detector.
    #[arg(long, conflicts_with = "cascade", required_unless_present = "cascade")]
    detector: Option<PathBuf>,
    /// An OpenCV Haar cascade (XML), such as haarcascade_frontalface_default.xml.
    #[arg(long)]
    cascade: Option<PathBuf>,
    /// With --detector: detections scoring less are not shown.
    #[arg(long, default_value_t = 0.5)]
    min_score: f64,
    /// With --cascade: a group needs more hits than this to count.
    #[arg(long, default_value_t = 3)]
    min_neighbors: usize,
    /// The factor between pyramid levels.
    #[arg(long, default_value_t = 1.1)]
    scale_factor: f64,
    /// Smallest box searched, in pixels.
    #[arg(long, default_value_t = 0)]
    min_size: usize,
    /// Write the picture with the boxes drawn on it here.
    #[arg(long)]
    draw: Option<PathBuf>,
}

pub fn run(a: DetectArgs) -> Result<()> {
    let img = image::open(&a.picture).with_context(|| format!("cannot read {}", a.picture.display()))?.to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let started = Instant::now();
    let found: Vec<(crate::detect::Detection, serde_json::Value)> = match (&a.detector, &a.cascade) {
        (Some(dir), _) => {
            let detector = Detector::load(dir)?;
            let found = detector.detect(img.as_raw(), w, h)?;
            let classes = &detector.spec.classes;
            found
                .into_iter()
                .filter(|(d, _)| d.score >= a.min_score)
                .map(|(d, c)| (d, serde_json::json!({"class": classes[c]})))
                .collect()
        }
        (None, Some(path)) => {
            let cascade = Cascade::load(path)?;
            let settings =
                HaarSettings { scale_factor: a.scale_factor, min_neighbors: a.min_neighbors, min_size: a.min_size };
            let found = cascade.detect(&haar::grey(img.as_raw()), w, h, &settings);
            found.into_iter().map(|(d, hits)| (d, serde_json::json!({"hits": hits}))).collect()
        }
        (None, None) => anyhow::bail!("give --detector DIR or --cascade FILE"),
    };
    let took = started.elapsed();
    let mut text = String::new();
    for (d, extra) in &found {
        let mut line = serde_json::json!({"box": [d.x, d.y, d.w, d.h], "score": (d.score * 1e3).round() / 1e3});
        if let (Some(line), Some(extra)) = (line.as_object_mut(), extra.as_object()) {
            line.extend(extra.clone());
        }
        text += &format!("{line}\n");
    }
    text += &format!("{} found in {:.0} ms\n", found.len(), took.as_secs_f64() * 1e3);
    say(&text);
    if let Some(out) = a.draw {
        let mut canvas = img.clone();
        for (d, _) in &found {
            outline(&mut canvas, d.x as u32, d.y as u32, d.w as u32, d.h as u32);
        }
        canvas.save(&out).with_context(|| format!("cannot write {}", out.display()))?;
    }
    Ok(())
}

/// A 3-pixel green frame.
fn outline(img: &mut image::RgbImage, x: u32, y: u32, w: u32, h: u32) {
    let (iw, ih) = img.dimensions();
    for t in 0..3 {
        for i in x..(x + w).min(iw) {
            for j in [y + t, (y + h).saturating_sub(1 + t)] {
                if j < ih {
                    img.put_pixel(i, j, image::Rgb([40, 230, 90]));
                }
            }
        }
        for j in y..(y + h).min(ih) {
            for i in [x + t, (x + w).saturating_sub(1 + t)] {
                if i < iw {
                    img.put_pixel(i, j, image::Rgb([40, 230, 90]));
                }
            }
        }
    }
}
