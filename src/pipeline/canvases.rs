//! The service's compositing worker for `composite_on = "batched"`: a [`BatchModel`] that
//! paints the canvases it is handed together, one pass per group of the same layout geometry
//! (see [`same_canvas`]), on the generators' device, and brings each canvas's 8-bit pixels to
//! the host in one copy per group. Each group succeeds or fails on its own. The batcher
//! gathers its orders as it gathers patches; the requests' own threads encode. It decides no
//! routing and encodes nothing.

use std::sync::Arc;

use tch::{Device, TchError, Tensor};

use crate::batcher::BatchModel;
use crate::compositor::batch::{same_canvas, stacked};
use crate::compositor::{Composited, Compositor, Patches};
use crate::model::graphs::SideStream;
use crate::model::to_pixels;
use crate::router::RoutePlan;

/// The batcher's name for the compositing worker's queue.
pub const LANE: &str = "composite";

/// One canvas to paint: the request's plan and its generated patches, on the device.
pub struct CanvasOrder {
    pub plan: Arc<RoutePlan>,
    pub patches: Patches,
}

/// A painted canvas: where it was composited (a view of its group's batch) and its pixels,
/// [H, W, 3] 8-bit on the host, ready to encode.
pub struct Canvas {
    pub composited: Composited,
    pub pixels: Tensor,
}

/// Paints canvases on `device`, grouping those of one geometry into one batch.
pub struct CanvasPainter {
    pub device: Device,
}

/// A group's canvas, or why it could not be painted: each group fails on its own.
pub type Painted = Result<Canvas, TchError>;

impl BatchModel for CanvasPainter {
    type Item = CanvasOrder;
    type Output = Painted;
    type Error = TchError;

    fn run(&self, orders: &[CanvasOrder]) -> Result<Vec<Painted>, TchError> {
        let _guard = tch::no_grad_guard();
        // On a GPU the batch runs on a stream of this thread's own, beside the generators'.
        let stream = SideStream::enter(self.device);
        let mut painted: Vec<Option<Painted>> = orders.iter().map(|_| None).collect();
        let mut left: Vec<usize> = (0..orders.len()).collect();
        // A canvas without patches (a colour or a picture alone) has nothing to batch.
        let patched = |p: &Patches| p.background.is_some() || p.regions.iter().any(Option::is_some);
        while let Some(&first) = left.first() {
            let like = |i: &usize| {
                let (a, b) = (&orders[first], &orders[*i]);
                *i == first || (patched(&a.patches) && same_canvas((&a.plan, &a.patches), (&b.plan, &b.patches)))
            };
            let (group, rest): (Vec<usize>, Vec<usize>) = left.iter().partition(|i| like(i));
            left = rest;
            match self.paint(orders, &group) {
                Ok(canvases) => group.iter().zip(canvases).for_each(|(&i, c)| painted[i] = Some(Ok(c))),
                Err(e) => {
                    let why = e.to_string();
                    group.iter().for_each(|&i| painted[i] = Some(Err(TchError::Torch(why.clone()))));
                }
            }
        }
        drop(stream);
        Ok(painted.into_iter().map(|c| c.expect("every order is in one group")).collect())
    }
}

impl CanvasPainter {
    /// The canvases of `group` (indices into `orders`, one geometry), in its order.
    fn paint(&self, orders: &[CanvasOrder], group: &[usize]) -> Result<Vec<Canvas>, TchError> {
        let compositor = Compositor { device: self.device };
        let plan = &orders[group[0]].plan;
        // One canvas alone takes the compositor's own path (on the CPU, its filters).
        let done = if let [one] = group {
            let alone = compositor.composite(plan, &orders[*one].patches)?;
            let alphas = alone.alphas.iter().map(|a| a.as_ref().map(|a| a.f_unsqueeze(0)).transpose());
            Composited { canvas: alone.canvas.f_unsqueeze(0)?, alphas: alphas.collect::<Result<_, _>>()? }
        } else {
            let batch: Vec<&Patches> = group.iter().map(|&i| &orders[i].patches).collect();
            compositor.composite(plan, &stacked(&batch)?)?
        };
        let pixels = to_pixels(&done.canvas)?;
        (0..group.len() as i64)
            .map(|k| {
                let alphas = done.alphas.iter().map(|a| a.as_ref().map(|a| a.f_get(k)).transpose());
                let composited =
                    Composited { canvas: done.canvas.f_get(k)?, alphas: alphas.collect::<Result<_, _>>()? };
                Ok(Canvas { composited, pixels: pixels.f_get(k)? })
            })
            .collect()
    }
}
