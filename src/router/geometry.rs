//! Region shapes and their anti-aliased coverage masks in canvas pixels. Pure CPU
//! arithmetic on small rectangles; knows nothing of models or tensors.

/// An integer pixel rectangle; `w` and `h` may be zero only for an empty intersection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: i64,
    pub y: i64,
    pub w: i64,
    pub h: i64,
}

impl Rect {
    pub fn intersect(&self, o: &Rect) -> Rect {
        let x0 = self.x.max(o.x);
        let y0 = self.y.max(o.y);
        let x1 = (self.x + self.w).min(o.x + o.w);
        let y1 = (self.y + self.h).min(o.y + o.h);
        Rect { x: x0, y: y0, w: (x1 - x0).max(0), h: (y1 - y0).max(0) }
    }

    pub fn is_empty(&self) -> bool {
        self.w <= 0 || self.h <= 0
    }

    /// Grown by `m` on every side, then clipped to `bounds`.
    pub fn expand(&self, m: i64, bounds: &Rect) -> Rect {
        Rect { x: self.x - m, y: self.y - m, w: self.w + 2 * m, h: self.h + 2 * m }.intersect(bounds)
    }

    /// The same rectangle in the coordinates of `origin`'s top-left corner (where it lies
    /// within a window cut at `origin`).
    pub fn within(&self, origin: &Rect) -> Rect {
        Rect { x: self.x - origin.x, y: self.y - origin.y, w: self.w, h: self.h }
    }

    pub fn area(&self) -> i64 {
        self.w * self.h
    }
}

/// Where a `pw` x `ph` picture scaled to fit inside a `w` x `h` rectangle lands in it,
/// centred: (x, y, width, height).
pub fn contained(pw: i64, ph: i64, w: i64, h: i64) -> Rect {
    let s = (w as f64 / pw as f64).min(h as f64 / ph as f64);
    let rw = ((pw as f64 * s).round() as i64).clamp(1, w);
    let rh = ((ph as f64 * s).round() as i64).clamp(1, h);
    Rect { x: (w - rw) / 2, y: (h - rh) / 2, w: rw, h: rh }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    Box { x: f64, y: f64, w: f64, h: f64 },
    Ellipse { cx: f64, cy: f64, rx: f64, ry: f64 },
    Polygon(Vec<(f64, f64)>),
}

/// Samples per pixel side for shapes without an exact coverage formula.
const SUB: usize = 4;

impl Shape {
    /// The smallest pixel rectangle holding the shape.
    pub fn bounds(&self) -> Rect {
        let (x0, y0, x1, y1) = match self {
            Shape::Box { x, y, w, h } => (*x, *y, x + w, y + h),
            Shape::Ellipse { cx, cy, rx, ry } => (cx - rx, cy - ry, cx + rx, cy + ry),
            Shape::Polygon(p) => p.iter().fold((f64::MAX, f64::MAX, f64::MIN, f64::MIN), |(a, b, c, d), &(x, y)| {
                (a.min(x), b.min(y), c.max(x), d.max(y))
            }),
        };
        let (px, py) = (x0.floor() as i64, y0.floor() as i64);
        Rect { x: px, y: py, w: (x1.ceil() as i64 - px).max(1), h: (y1.ceil() as i64 - py).max(1) }
    }

    /// Coverage of each pixel of `area` (row-major), in [0, 1].
    pub fn coverage(&self, area: &Rect) -> Vec<f32> {
        let mut out = vec![0f32; (area.w * area.h) as usize];
        match self {
            Shape::Box { x, y, w, h } => {
                let span = |p: i64, lo: f64, hi: f64| ((p as f64 + 1.0).min(hi) - (p as f64).max(lo)).clamp(0.0, 1.0);
                let cols: Vec<f64> = (0..area.w).map(|i| span(area.x + i, *x, x + w)).collect();
                for j in 0..area.h {
                    let cy = span(area.y + j, *y, y + h);
                    for (i, cx) in cols.iter().enumerate() {
                        out[(j * area.w) as usize + i] = (cx * cy) as f32;
                    }
                }
            }
            Shape::Ellipse { cx, cy, rx, ry } => {
                self.supersample(area, &mut out, |sy| {
                    let t = (sy - cy) / ry;
                    if t.abs() >= 1.0 {
                        return vec![];
                    }
                    let half = rx * (1.0 - t * t).sqrt();
                    vec![(cx - half, cx + half)]
                });
            }
            Shape::Polygon(points) => {
                self.supersample(area, &mut out, |sy| even_odd_spans(points, sy));
            }
        }
        out
    }

    /// Fills `out` by sampling SUB x SUB points per pixel; `spans(y)` lists the inside
    /// intervals [x0, x1) of the horizontal line at `y`.
    fn supersample(&self, area: &Rect, out: &mut [f32], spans: impl Fn(f64) -> Vec<(f64, f64)>) {
        let weight = 1.0 / (SUB * SUB) as f32;
        for j in 0..area.h {
            for s in 0..SUB {
                let sy = (area.y + j) as f64 + (s as f64 + 0.5) / SUB as f64;
                for (a, b) in spans(sy) {
                    // Sample columns k (x = area.x + (k + 0.5) / SUB) with a <= x < b.
                    let k0 = (((a - area.x as f64) * SUB as f64) - 0.5).ceil().max(0.0) as i64;
                    let k1 = (((b - area.x as f64) * SUB as f64) - 0.5).ceil().min((area.w * SUB as i64) as f64) as i64;
                    if k0 >= k1 {
                        continue;
                    }
                    // Whole pixels at once; the counts are exact in f32 (weight is 1/16).
                    let sub = SUB as i64;
                    let row = &mut out[(j * area.w) as usize..((j + 1) * area.w) as usize];
                    let (full0, full1) = ((k0 + sub - 1) / sub, k1 / sub);
                    if full0 > full1 {
                        row[(k0 / sub) as usize] += (k1 - k0) as f32 * weight;
                        continue;
                    }
                    if k0 < full0 * sub {
                        row[(k0 / sub) as usize] += (full0 * sub - k0) as f32 * weight;
                    }
                    for px in &mut row[full0 as usize..full1 as usize] {
                        *px += sub as f32 * weight;
                    }
                    if k1 > full1 * sub {
                        row[full1 as usize] += (k1 - full1 * sub) as f32 * weight;
                    }
                }
            }
        }
    }
}

/// Inside intervals of a horizontal line through a polygon, by the even-odd rule.
fn even_odd_spans(points: &[(f64, f64)], y: f64) -> Vec<(f64, f64)> {
    let mut xs = Vec::new();
    for i in 0..points.len() {
        let (x0, y0) = points[i];
        let (x1, y1) = points[(i + 1) % points.len()];
        if (y0 <= y) != (y1 <= y) {
            xs.push(x0 + (y - y0) / (y1 - y0) * (x1 - x0));
        }
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.chunks_exact(2).map(|c| (c[0], c[1])).collect()
}

/// Twice the signed area (shoelace formula).
pub fn polygon_area(points: &[(f64, f64)]) -> f64 {
    let n = points.len();
    (0..n).map(|i| points[i].0 * points[(i + 1) % n].1 - points[(i + 1) % n].0 * points[i].1).sum::<f64>() / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(v: &[f32]) -> f64 {
        v.iter().map(|&x| x as f64).sum()
    }

    #[test]
    fn box_coverage_is_exact_at_fractional_edges() {
        let s = Shape::Box { x: 0.5, y: 0.0, w: 2.0, h: 1.0 };
        let r = s.bounds();
        assert_eq!(r, Rect { x: 0, y: 0, w: 3, h: 1 });
        assert_eq!(s.coverage(&r), vec![0.5, 1.0, 0.5]);
    }

    #[test]
    fn ellipse_and_polygon_areas_come_out_right() {
        let e = Shape::Ellipse { cx: 20.0, cy: 20.0, rx: 10.0, ry: 6.0 };
        let area = sum(&e.coverage(&e.bounds()));
        assert!((area - std::f64::consts::PI * 60.0).abs() < 2.0, "{area}");
        let tri = Shape::Polygon(vec![(0.0, 0.0), (30.0, 0.0), (0.0, 20.0)]);
        let area = sum(&tri.coverage(&tri.bounds()));
        assert!((area - 300.0).abs() < 2.0, "{area}");
        assert_eq!(polygon_area(&[(0.0, 0.0), (30.0, 0.0), (0.0, 20.0)]).abs(), 300.0);
    }

    #[test]
    fn coverage_of_a_clipped_area_matches_the_full_one() {
        let e = Shape::Ellipse { cx: 5.0, cy: 5.0, rx: 8.0, ry: 8.0 };
        let full = e.bounds();
        let all = e.coverage(&full);
        let part = Rect { x: 0, y: 0, w: 13, h: 13 };
        let clipped = e.coverage(&part);
        for j in 0..13 {
            for i in 0..13 {
                let a = all[((j - full.y) * full.w + (i - full.x)) as usize];
                assert_eq!(a, clipped[(j * 13 + i) as usize]);
            }
        }
    }
}
