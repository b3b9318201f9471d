//! Canvases composited together: which plans' canvases differ only by their patches (the
//! same layout with other seeds), and their patches stacked into one batch for
//! [`Compositor::composite`](super::Compositor::composite). It decides nothing about when
//! canvases are batched; that is the service's compositing worker's.

use std::sync::Arc;

use tch::{TchError, Tensor};

use super::Patches;
use crate::router::{Background, Region, RoutePlan};

/// Whether `a` and `b` (with their patches) make canvases that the compositor paints the
/// same way: the same size, background and regions, everything but the patches' pixels.
pub fn same_canvas(a: (&RoutePlan, &Patches), b: (&RoutePlan, &Patches)) -> bool {
    let ((pa, xa), (pb, xb)) = (a, b);
    let shapes = |p: &Patches| -> Vec<Option<Vec<i64>>> {
        std::iter::once(&p.background).chain(&p.regions).map(|t| t.as_ref().map(Tensor::size)).collect()
    };
    pa.width == pb.width
        && pa.height == pb.height
        && same_background(&pa.background, &pb.background)
        && pa.regions.len() == pb.regions.len()
        && pa.regions.iter().zip(&pb.regions).all(|(r, s)| same_region(r, s))
        && shapes(xa) == shapes(xb)
}

fn same_background(a: &Background, b: &Background) -> bool {
    match (a, b) {
        (Background::Color(x), Background::Color(y)) => x == y,
        (Background::Image(x), Background::Image(y)) => Arc::ptr_eq(x, y) || x == y,
        (Background::Generated { model: m, fit: f, .. }, Background::Generated { model: n, fit: g, .. }) => {
            m.name() == n.name() && f == g
        }
        _ => false,
    }
}

/// What the compositor reads of a region, less its patch.
fn same_region(a: &Region, b: &Region) -> bool {
    a.rect == b.rect
        && a.visible == b.visible
        && a.fit == b.fit
        && a.blend == b.blend
        && a.feather == b.feather
        && a.color_match == b.color_match
        && a.patch_matte == b.patch_matte
        && a.mask == b.mask
}

/// Each slot's patches [C, S, S] stacked into [N, C, S, S], in the order given (every
/// `Patches` of plans that are [`same_canvas`]).
pub fn stacked(all: &[&Patches]) -> Result<Patches, TchError> {
    let stack = |get: &dyn Fn(&Patches) -> Option<&Tensor>| -> Result<Option<Tensor>, TchError> {
        let parts: Option<Vec<&Tensor>> = all.iter().map(|p| get(p)).collect();
        parts.map(|p| Tensor::f_stack(&p, 0)).transpose()
    };
    let regions = all.first().map_or(0, |p| p.regions.len());
    Ok(Patches {
        background: stack(&|p| p.background.as_ref())?,
        regions: (0..regions)
            .map(|i| stack(&|p| p.regions.get(i).and_then(Option::as_ref)))
            .collect::<Result<_, _>>()?,
    })
}
