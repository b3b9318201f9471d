//! The layout's `detect` entries: each runs a detector on the background picture and turns
//! what it finds, filtered and ordered as asked, into ordinary regions (ellipses or boxes
//! around the grown detection, `project: true` unless told otherwise), which then route like
//! any other. What was found, and which region each became, goes into the plan.

use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::geometry::Rect;
use super::{err, Router};
use crate::detect::Detection;
use crate::error::LayoutError;
use crate::layout::{DetectOrder, DetectShape, DetectSpec, Layout, RegionSpec};

/// One detection as the answer reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Detected {
    /// `detect[i]`.
    pub source: String,
    pub detector: String,
    pub class: String,
    /// [x, y, w, h] on the canvas, as found.
    pub rect: [f64; 4],
    pub score: f64,
    /// The region it became (`detect[i][k]`), or none when `min_size`, `max_size` or
    /// `top_k` left it out.
    pub region: Option<String>,
}

/// What the detect entries found: the regions they make (field name and spec) and the report.
pub struct Found {
    pub regions: Vec<(String, RegionSpec)>,
    pub detected: Vec<Detected>,
    pub took: Duration,
}

const SHAPE_FIELDS: [&str; 4] = ["box", "ellipse", "polygon", "mask"];

fn number(field: String, v: Option<f64>, default: f64, range: (f64, f64)) -> Result<f64, LayoutError> {
    let v = v.unwrap_or(default);
    if v.is_finite() && v >= range.0 && v <= range.1 {
        Ok(v)
    } else {
        Err(err(field, format!("{v} is not between {} and {}", range.0, range.1)))
    }
}

impl Router<'_> {
    /// Runs every `detect` entry of `layout` on `picture` (the background at canvas size, RGB).
    pub(super) fn detect(&self, layout: &Layout, picture: Option<&[u8]>, canvas: &Rect) -> Result<Found, LayoutError> {
        let mut found = Found { regions: vec![], detected: vec![], took: Duration::ZERO };
        for (i, spec) in layout.detect.iter().enumerate() {
            let field = format!("detect[{i}]");
            let Some(picture) = picture else {
                return Err(err(&field, "needs a background `image` to detect in"));
            };
            let detector = match &spec.detector {
                Some(name) => self
                    .registry
                    .detector(name)
                    .ok_or_else(|| err(format!("{field}.detector"), format!("unknown detector `{name}`")))?,
                None => self
                    .registry
                    .detector_for_class(&spec.class)
                    .ok_or_else(|| err(format!("{field}.class"), format!("no detector finds `{}`", spec.class)))?,
            };
            let class_index = detector.spec.classes.iter().position(|c| *c == spec.class).ok_or_else(|| {
                err(format!("{field}.class"), format!("detector `{}` does not find `{}`", detector.name(), spec.class))
            })?;
            let min_score = number(format!("{field}.min_score"), spec.min_score, 0.5, (0.0, 1.0))?;
            let side = canvas.w.max(canvas.h) as f64;
            let min_size = number(format!("{field}.min_size"), spec.min_size, 0.0, (0.0, side))?;
            let max_size = number(format!("{field}.max_size"), spec.max_size, side, (min_size, side))?;
            let top_k = number(format!("{field}.top_k"), spec.top_k, 64.0, (0.0, 64.0))?;
            if top_k.fract() != 0.0 {
                return Err(err(format!("{field}.top_k"), format!("{top_k} is not a whole number")));
            }
            let dilate = number(format!("{field}.dilate"), spec.dilate, 0.2, (0.0, 4.0))?;
            let padding = number(format!("{field}.padding"), spec.padding, 0.0, (0.0, side))?;
            if let Some(k) = SHAPE_FIELDS.iter().find(|k| spec.region.contains_key(**k)) {
                return Err(err(format!("{field}.region.{k}"), "the detection gives the shape"));
            }
            // An override for a detection that did not happen is no error (the picture decides
            // how many there are); a key that is no index is.
            if let Some(key) = spec.overrides.keys().find(|k| k.parse::<usize>().is_err()) {
                return Err(err(format!("{field}.overrides.{key}"), "is not a detection index"));
            }

            let started = Instant::now();
            let mut hits: Vec<Detection> = detector
                .detect(picture, canvas.w as usize, canvas.h as usize)
                .map_err(|e| err(format!("{field}.detector"), format!("detector `{}` failed: {e}", detector.name())))?
                .into_iter()
                .filter(|(d, class)| *class == class_index && d.score >= min_score)
                .map(|(d, _)| d)
                .collect();
            found.took += started.elapsed();
            match spec.order {
                DetectOrder::Score => hits.sort_by(|a, b| b.score.total_cmp(&a.score)),
                DetectOrder::Largest => hits.sort_by(|a, b| (b.w * b.h).total_cmp(&(a.w * a.h))),
                DetectOrder::LeftToRight => hits.sort_by(|a, b| a.x.total_cmp(&b.x)),
            }
            let mut kept = 0usize;
            for d in hits {
                let size = d.w.max(d.h);
                let keep = size >= min_size && size <= max_size && (kept as f64) < top_k;
                let region = keep.then(|| format!("{field}[{kept}]"));
                if let Some(name) = &region {
                    let overrides = spec.overrides.get(&kept.to_string());
                    let r = region_spec(spec, &d, (dilate, padding), overrides, name)?;
                    found.regions.push((name.clone(), r));
                    kept += 1;
                }
                found.detected.push(Detected {
                    source: field.clone(),
                    detector: detector.name().to_string(),
                    class: spec.class.clone(),
                    rect: [d.x, d.y, d.w, d.h],
                    score: d.score,
                    region,
                });
            }
        }
        Ok(found)
    }
}

/// The region a detection becomes: `region`'s settings, then the override's, the class, the
/// grown box as the shape, and `project: true` unless set.
fn region_spec(
    spec: &DetectSpec,
    d: &Detection,
    (dilate, padding): (f64, f64),
    overrides: Option<&Map<String, Value>>,
    name: &str,
) -> Result<RegionSpec, LayoutError> {
    let mut fields = spec.region.clone();
    if let Some(o) = overrides {
        if let Some(k) = SHAPE_FIELDS.iter().find(|k| o.contains_key(**k)) {
            return Err(err(format!("{name}.{k}"), "the detection gives the shape"));
        }
        fields.extend(o.clone());
    }
    let (w, h) = (d.w * (1.0 + dilate) + 2.0 * padding, d.h * (1.0 + dilate) + 2.0 * padding);
    let (cx, cy) = (d.x + d.w / 2.0, d.y + d.h / 2.0);
    let shape = match spec.shape {
        DetectShape::Box => ("box", serde_json::json!([cx - w / 2.0, cy - h / 2.0, w, h])),
        DetectShape::Ellipse => ("ellipse", serde_json::json!([cx, cy, w / 2.0, h / 2.0])),
    };
    fields.insert(shape.0.into(), shape.1);
    fields.entry("class").or_insert_with(|| Value::String(spec.class.clone()));
    fields.entry("project").or_insert(Value::Bool(true));
    serde_path_to_error::deserialize(Value::Object(fields))
        .map_err(|e| err(format!("{name}.{}", e.path()), e.inner().to_string()))
}
