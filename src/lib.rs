//! mixgan: a mixture of StyleGANs behind one API.
//!
//! Data flows one way, one module per stage:
//! [`layout`] (the JSON a client sends) → [`router`] (validation, regions, masks, one
//! generation job per model) → [`model`] (the generators, found in [`registry`], run in
//! batches by [`batcher`]) → [`compositor`] (blending on the device) → [`encode`]
//! (PNG/JPEG/WebP). [`pipeline`] is the one place that runs those stages in order, for every
//! front end: [`server`] (HTTP and gRPC, configured by [`config`]) and [`cli`] (`mixgan
//! render` and the other commands). [`latent`] makes NumPy-compatible latents; [`error`]
//! holds the errors that cross modules.

#[macro_use]
mod wide;

pub mod batcher;
pub mod cli;
pub mod compositor;
pub mod config;
pub mod detect;
pub mod encode;
pub mod error;
pub mod latent;
pub mod layout;
pub mod model;
pub mod pipeline;
pub mod registry;
pub mod router;
pub mod server;
