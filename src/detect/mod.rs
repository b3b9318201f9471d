//! Detectors: find the things a layout wants redone (faces, hands) in a picture, as boxes
//! with scores. A detector never generates or composites; the router turns its detections
//! into regions.
//!
//! - `detector`: a detector model directory (`kind = "detector"` in its `model.toml`)
//! - `haar`: OpenCV-format Haar cascades (such as the frontal-face cascade), evaluated here on
//!   integral images, with no OpenCV link.

pub mod detector;
pub mod haar;

/// One thing found: a box on the picture, in pixels, and how sure the detector is (0 to 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
    pub score: f64,
}

impl Detection {
    /// Intersection over union with another box.
    pub fn iou(&self, other: &Detection) -> f64 {
        let ix = (self.x + self.w).min(other.x + other.w) - self.x.max(other.x);
        let iy = (self.y + self.h).min(other.y + other.h) - self.y.max(other.y);
        let inter = ix.max(0.0) * iy.max(0.0);
        let union = self.w * self.h + other.w * other.h - inter;
        if union <= 0.0 {
            0.0
        } else {
            inter / union
        }
    }
}
