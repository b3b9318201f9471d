//! Haar cascades in OpenCV's XML format (`opencv-cascade-classifier`, HAAR features, BOOST
//! stages), evaluated as Viola and Jones describe and as OpenCV's `detectMultiScale` runs them:
//! the picture in grey, scaled down by 1.1 per level; at each level a 24 x 24 (the cascade's
//! size) window slides in steps of 2 pixels (1 once the level is scaled by 2 or more); each
//! window's feature sums come from integral images and are divided by the window's standard
//! deviation times its area; a window passes a stage when the sum of its weak classifiers'
//! leaves reaches the stage's threshold, and is a hit when it passes every stage. Hits are
//! grouped: boxes within 20 % of each other's size join one group, groups of more than
//! `min_neighbors` hits count, and a group's box is its members' mean.

use std::path::Path;

use thiserror::Error;

use super::Detection;

#[derive(Debug, Error)]
pub enum HaarError {
    #[error("cannot read the cascade {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("the cascade is not valid XML: {0}")]
    Xml(String),
    #[error("the cascade's `{field}` is missing or malformed")]
    Field { field: String },
    #[error("the cascade uses {0}, which is not supported (HAAR features without tilted ones, BOOST stages)")]
    Unsupported(String),
}

/// One rectangle of a feature: where in the window, and its weight.
#[derive(Debug, Clone, Copy)]
struct WeightedRect {
    x: usize,
    y: usize,
    w: usize,
    h: usize,
    weight: f64,
}

/// A weak classifier: a tree of feature thresholds whose leaves are stage votes.
#[derive(Debug, Clone)]
struct Tree {
    /// (left, right, feature, threshold); a child <= 0 is leaf `-child`.
    nodes: Vec<(i32, i32, usize, f64)>,
    leaves: Vec<f64>,
}

#[derive(Debug, Clone)]
struct Stage {
    threshold: f64,
    trees: Vec<Tree>,
}

/// A loaded cascade.
#[derive(Debug, Clone)]
pub struct Cascade {
    pub width: usize,
    pub height: usize,
    stages: Vec<Stage>,
    features: Vec<Vec<WeightedRect>>,
}

/// How a picture is searched.
#[derive(Debug, Clone, Copy)]
pub struct HaarSettings {
    /// The factor between pyramid levels.
    pub scale_factor: f64,
    /// A group needs more hits than this to count.
    pub min_neighbors: usize,
    /// The smallest box searched, in pixels (at least the cascade's size).
    pub min_size: usize,
}

impl Default for HaarSettings {
    fn default() -> Self {
        Self { scale_factor: 1.1, min_neighbors: 3, min_size: 0 }
    }
}

/// OpenCV lowers each stage threshold by this much, against float rounding.
const STAGE_EPS: f64 = 1e-5;

fn field(name: &str) -> HaarError {
    HaarError::Field { field: name.to_string() }
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Result<roxmltree::Node<'a, 'i>, HaarError> {
    node.children().find(|c| c.has_tag_name(name)).ok_or_else(|| field(name))
}

fn text_of(node: roxmltree::Node, name: &str) -> Result<String, HaarError> {
    Ok(child(node, name)?.text().unwrap_or("").trim().to_string())
}

fn numbers(node: roxmltree::Node, name: &str) -> Result<Vec<f64>, HaarError> {
    text_of(node, name)?.split_whitespace().map(|t| t.parse::<f64>().map_err(|_| field(name))).collect()
}

fn items<'a, 'i>(node: roxmltree::Node<'a, 'i>) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> {
    node.children().filter(|c| c.has_tag_name("_"))
}

impl Cascade {
    pub fn load(path: &Path) -> Result<Self, HaarError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| HaarError::Io { path: path.display().to_string(), source })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, HaarError> {
        let doc = roxmltree::Document::parse(text).map_err(|e| HaarError::Xml(e.to_string()))?;
        let cascade = doc.descendants().find(|n| n.has_tag_name("cascade")).ok_or_else(|| field("cascade"))?;
        for (name, want) in [("stageType", "BOOST"), ("featureType", "HAAR")] {
            let got = text_of(cascade, name)?;
            if got != want {
                return Err(HaarError::Unsupported(format!("{name} {got}")));
            }
        }
        let size = |name: &str| text_of(cascade, name)?.parse::<usize>().map_err(|_| field(name));
        let (width, height) = (size("width")?, size("height")?);
        let mut features = Vec::new();
        for f in items(child(cascade, "features")?) {
            if child(f, "tilted").is_ok_and(|t| t.text().unwrap_or("0").trim() != "0") {
                return Err(HaarError::Unsupported("tilted features".into()));
            }
            let mut rects = Vec::new();
            for r in items(child(f, "rects")?) {
                let v: Vec<f64> = r.text().unwrap_or("").split_whitespace().filter_map(|t| t.parse().ok()).collect();
                let [x, y, w, h, weight] = v[..] else { return Err(field("rects")) };
                if x < 0.0 || y < 0.0 || x + w > width as f64 || y + h > height as f64 {
                    return Err(field("rects"));
                }
                rects.push(WeightedRect { x: x as usize, y: y as usize, w: w as usize, h: h as usize, weight });
            }
            features.push(rects);
        }
        let mut stages = Vec::new();
        for s in items(child(cascade, "stages")?) {
            let threshold = text_of(s, "stageThreshold")?.parse::<f64>().map_err(|_| field("stageThreshold"))?;
            let mut trees = Vec::new();
            for weak in items(child(s, "weakClassifiers")?) {
                let raw = numbers(weak, "internalNodes")?;
                let leaves = numbers(weak, "leafValues")?;
                if raw.is_empty() || raw.len() % 4 != 0 {
                    return Err(field("internalNodes"));
                }
                let nodes: Vec<_> = raw.chunks(4).map(|n| (n[0] as i32, n[1] as i32, n[2] as usize, n[3])).collect();
                let bad = |c: i32| {
                    if c > 0 {
                        c as usize >= nodes.len()
                    } else {
                        (-c) as usize >= leaves.len()
                    }
                };
                if nodes.iter().any(|&(l, r, f, _)| bad(l) || bad(r) || f >= features.len()) {
                    return Err(field("internalNodes"));
                }
                trees.push(Tree { nodes, leaves });
            }
            stages.push(Stage { threshold: threshold - STAGE_EPS, trees });
        }
        if stages.is_empty() {
            return Err(field("stages"));
        }
        Ok(Self { width, height, stages, features })
    }

    /// The boxes where the cascade finds its object in `grey` (`w` x `h`, row-major) and how
    /// many hits each box's group held.
    pub fn detect(&self, grey: &[u8], w: usize, h: usize, s: &HaarSettings) -> Vec<(Detection, usize)> {
        let mut hits = Vec::new();
        let mut factor = 1.0f64;
        let min = s.min_size.max(self.width.max(self.height)) as f64;
        loop {
            let (sw, sh) = ((w as f64 / factor).round() as usize, (h as f64 / factor).round() as usize);
            if sw <= self.width || sh <= self.height {
                break;
            }
            if (self.width as f64 * factor).round() >= min {
                let level = Integral::new(&resize(grey, w, h, sw, sh), sw, sh);
                let step = if factor >= 2.0 { 1 } else { 2 };
                let size = ((self.width as f64 * factor).round(), (self.height as f64 * factor).round());
                for y in (0..sh - self.height).step_by(step) {
                    for x in (0..sw - self.width).step_by(step) {
                        if self.passes(&level, x, y) {
                            hits.push([(x as f64 * factor).round(), (y as f64 * factor).round(), size.0, size.1]);
                        }
                    }
                }
            }
            factor *= s.scale_factor.max(1.01);
        }
        group(&hits, s.min_neighbors, 0.2)
    }

    /// Whether the window at (x, y) of `level` passes every stage.
    fn passes(&self, level: &Integral, x: usize, y: usize) -> bool {
        // Normalised by the deviation inside the window less a one-pixel border.
        let (nx, ny, nw, nh) = (x + 1, y + 1, self.width - 2, self.height - 2);
        let area = (nw * nh) as f64;
        let sum = level.sum(nx, ny, nw, nh);
        let sq = level.sq_sum(nx, ny, nw, nh);
        let nf = area * sq - sum * sum;
        if nf <= 0.0 {
            return false;
        }
        let norm = 1.0 / nf.sqrt();
        // A nearly flat window (deviation of 10 levels or less) is skipped, as OpenCV does.
        if area * norm >= 0.1 {
            return false;
        }
        self.stages.iter().all(|stage| {
            let votes: f64 = stage
                .trees
                .iter()
                .map(|tree| {
                    let mut at = 0i32;
                    loop {
                        let (left, right, feature, threshold) = tree.nodes[at as usize];
                        let value: f64 = self.features[feature]
                            .iter()
                            .map(|r| r.weight * level.sum(x + r.x, y + r.y, r.w, r.h))
                            .sum::<f64>()
                            * norm;
                        at = if value < threshold { left } else { right };
                        if at <= 0 {
                            break tree.leaves[(-at) as usize];
                        }
                    }
                })
                .sum();
            votes >= stage.threshold
        })
    }
}

/// Summed-area tables of a grey picture and of its squares, one row and column larger.
struct Integral {
    stride: usize,
    sum: Vec<f64>,
    sq: Vec<f64>,
}

impl Integral {
    fn new(grey: &[u8], w: usize, h: usize) -> Self {
        let stride = w + 1;
        let (mut sum, mut sq) = (vec![0.0; stride * (h + 1)], vec![0.0; stride * (h + 1)]);
        for y in 0..h {
            let (mut row, mut row_sq) = (0.0, 0.0);
            for x in 0..w {
                let v = f64::from(grey[y * w + x]);
                row += v;
                row_sq += v * v;
                sum[(y + 1) * stride + x + 1] = sum[y * stride + x + 1] + row;
                sq[(y + 1) * stride + x + 1] = sq[y * stride + x + 1] + row_sq;
            }
        }
        Self { stride, sum, sq }
    }

    fn rect(t: &[f64], stride: usize, x: usize, y: usize, w: usize, h: usize) -> f64 {
        t[(y + h) * stride + x + w] - t[y * stride + x + w] - t[(y + h) * stride + x] + t[y * stride + x]
    }

    fn sum(&self, x: usize, y: usize, w: usize, h: usize) -> f64 {
        Self::rect(&self.sum, self.stride, x, y, w, h)
    }

    fn sq_sum(&self, x: usize, y: usize, w: usize, h: usize) -> f64 {
        Self::rect(&self.sq, self.stride, x, y, w, h)
    }
}

/// Bilinear resize with pixel centres aligned (as OpenCV's INTER_LINEAR), rounded to 8 bits.
fn resize(src: &[u8], w: usize, h: usize, dw: usize, dh: usize) -> Vec<u8> {
    if (dw, dh) == (w, h) {
        return src.to_vec();
    }
    let (fx, fy) = (w as f64 / dw as f64, h as f64 / dh as f64);
    let taps = |d: usize, f: f64, n: usize| {
        let s = ((d as f64 + 0.5) * f - 0.5).max(0.0);
        let i = (s.floor() as usize).min(n - 1);
        (i, (i + 1).min(n - 1), s - i as f64)
    };
    let mut out = vec![0u8; dw * dh];
    for y in 0..dh {
        let (y0, y1, ty) = taps(y, fy, h);
        for x in 0..dw {
            let (x0, x1, tx) = taps(x, fx, w);
            let p = |xx: usize, yy: usize| f64::from(src[yy * w + xx]);
            let top = p(x0, y0) * (1.0 - tx) + p(x1, y0) * tx;
            let bottom = p(x0, y1) * (1.0 - tx) + p(x1, y1) * tx;
            out[y * dw + x] = (top * (1.0 - ty) + bottom * ty).round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// Groups of similar boxes (each side within `eps` of the smaller boxes' mean size), those
/// with more than `min_neighbors` members, as their mean box and member count; a group inside
/// a larger, better-supported one is dropped.
fn group(hits: &[[f64; 4]], min_neighbors: usize, eps: f64) -> Vec<(Detection, usize)> {
    // Union-find over the "similar" relation, so that groups are its transitive closure.
    let mut parent: Vec<usize> = (0..hits.len()).collect();
    fn root(p: &mut [usize], mut i: usize) -> usize {
        while p[i] != i {
            p[i] = p[p[i]];
            i = p[i];
        }
        i
    }
    let similar = |a: &[f64; 4], b: &[f64; 4]| {
        let delta = eps * (a[2].min(b[2]) + a[3].min(b[3])) * 0.5;
        (a[0] - b[0]).abs() <= delta
            && (a[1] - b[1]).abs() <= delta
            && (a[0] + a[2] - b[0] - b[2]).abs() <= delta
            && (a[1] + a[3] - b[1] - b[3]).abs() <= delta
    };
    for i in 0..hits.len() {
        for j in 0..i {
            if similar(&hits[i], &hits[j]) {
                let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                parent[a] = b;
            }
        }
    }
    let mut groups: std::collections::BTreeMap<usize, ([f64; 4], usize)> = Default::default();
    for (i, hit) in hits.iter().enumerate() {
        let g = groups.entry(root(&mut parent, i)).or_insert(([0.0; 4], 0));
        for (sum, v) in g.0.iter_mut().zip(hit) {
            *sum += v;
        }
        g.1 += 1;
    }
    let means: Vec<([f64; 4], usize)> =
        groups.into_values().map(|(s, n)| (s.map(|v| (v / n as f64).trunc()), n)).collect();
    let mut out = Vec::new();
    for (i, &(r1, n1)) in means.iter().enumerate() {
        if n1 <= min_neighbors {
            continue;
        }
        let inside = means.iter().enumerate().any(|(j, &(r2, n2))| {
            let (dx, dy) = ((r2[2] * eps).trunc(), (r2[3] * eps).trunc());
            j != i
                && n2 > min_neighbors
                && r1[0] >= r2[0] - dx
                && r1[1] >= r2[1] - dy
                && r1[0] + r1[2] <= r2[0] + r2[2] + dx
                && r1[1] + r1[3] <= r2[1] + r2[3] + dy
                && (n2 > n1.max(3) || n1 < 3)
        });
        if !inside {
            out.push((Detection { x: r1[0], y: r1[1], w: r1[2], h: r1[3], score: score(n1) }, n1));
        }
    }
    out
}

/// A group's hits as a score in [0, 1): 4 hits (the fewest OpenCV's default keeps) score 0.44,
/// 10 hits 0.67, 40 hits 0.89.
pub fn score(hits: usize) -> f64 {
    hits as f64 / (hits as f64 + 5.0)
}

/// ITU-R BT.601 luma of interleaved RGB, rounded, as OpenCV converts to grey.
pub fn grey(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks_exact(3)
        .map(|p| ((299 * u32::from(p[0]) + 587 * u32::from(p[1]) + 114 * u32::from(p[2]) + 500) / 1000) as u8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integral_sums_match_direct_sums() {
        let grey: Vec<u8> = (0..7 * 5).map(|i| (i * 37 % 251) as u8).collect();
        let t = Integral::new(&grey, 7, 5);
        let direct: f64 =
            (1..4).flat_map(|y| (2..6).map(move |x| (x, y))).map(|(x, y)| f64::from(grey[y * 7 + x])).sum();
        assert_eq!(t.sum(2, 1, 4, 3), direct);
        let sq: f64 = grey.iter().map(|&v| f64::from(v).powi(2)).sum();
        assert_eq!(t.sq_sum(0, 0, 7, 5), sq);
    }

    #[test]
    fn similar_hits_group_and_lonely_ones_do_not_count() {
        let mut hits = vec![[100.0, 100.0, 40.0, 40.0]; 3];
        hits.extend([[102.0, 98.0, 40.0, 40.0], [101.0, 101.0, 42.0, 42.0]]);
        hits.push([300.0, 300.0, 40.0, 40.0]);
        let found = group(&hits, 3, 0.2);
        assert_eq!(found.len(), 1, "{found:?}");
        let (d, n) = found[0];
        assert_eq!(n, 5);
        assert_eq!((d.x, d.y, d.w, d.h), (100.0, 99.0, 40.0, 40.0));
    }

    #[test]
    fn bad_cascades_are_refused_with_the_field() {
        assert!(matches!(Cascade::parse("<nope"), Err(HaarError::Xml(_))));
        let lbp = "<opencv_storage><cascade><stageType>BOOST</stageType><featureType>LBP</featureType></cascade></opencv_storage>";
        assert!(Cascade::parse(lbp).unwrap_err().to_string().contains("LBP"));
    }
}
