//! The service's compositing worker for `composite_on = "batched"`: a [`BatchModel`] that
//! paints the canvases it is handed together, one pass per group of the same layout geometry
//! (see [`same_canvas`]), on the generators' device, and brings each canvas's 8-bit pixels to
//! the host in one copy per group. The batcher gathers its orders as it gathers patches; the
//! requests' own threads encode. It decides no routing and encodes nothing.

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

impl BatchModel for CanvasPainter {
    type Item = CanvasOrder;
    type Output = Canvas;
    type Error = TchError;

    fn run(&self, orders: &[CanvasOrder]) -> Result<Vec<Canvas>, TchError> {
        let _guard = tch::no_grad_guard();
        // On a GPU the batch runs on a stream of this thread's own, beside the generators'.
        let stream = SideStream::enter(self.device);
        let compositor = Compositor { device: self.device };
        let mut painted: Vec<Option<Canvas>> = orders.iter().map(|_| None).collect();
        let mut left: Vec<usize> = (0..orders.len()).collect();
        while let Some(&first) = left.first() {
            let like = |i: &usize| {
                let (a, b) = (&orders[first], &orders[*i]);
                same_canvas((&a.plan, &a.patches), (&b.plan, &b.patches))
            };
            let (group, rest): (Vec<usize>, Vec<usize>) = left.iter().partition(|i| like(i));
            left = rest;
            let plan = &orders[first].plan;
            // One canvas alone takes the compositor's own path (on the CPU, its filters).
            let done = if group.len() == 1 {
                let one = compositor.composite(plan, &orders[first].patches)?;
                Composited {
                    canvas: one.canvas.f_unsqueeze(0)?,
                    alphas: one
                        .alphas
                        .iter()
                        .map(|a| a.as_ref().map(|a| a.f_unsqueeze(0)).transpose())
                        .collect::<Result<_, _>>()?,
                }
            } else {
                let batch: Vec<&Patches> = group.iter().map(|&i| &orders[i].patches).collect();
                compositor.composite(plan, &stacked(&batch)?)?
            };
            let pixels = to_pixels(&done.canvas)?;
            for (k, &i) in group.iter().enumerate() {
                let k = k as i64;
                let alphas = done.alphas.iter().map(|a| a.as_ref().map(|a| a.f_get(k)).transpose());
                painted[i] = Some(Canvas {
                    composited: Composited { canvas: done.canvas.f_get(k)?, alphas: alphas.collect::<Result<_, _>>()? },
                    pixels: pixels.f_get(k)?,
                });
            }
        }
        drop(stream);
        Ok(painted.into_iter().map(|c| c.expect("every order is in one group")).collect())
    }
}
