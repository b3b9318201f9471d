//! mixgan: a mixture of StyleGANs behind one API.
//!
//! Data flows one way, one module per stage:
//! [`layout`] (the JSON a client sends) → [`router`] (validation, regions, masks, one
//! generation job per model) → [`model`] (the generators, through [`registry`]) →
//! [`compositor`] (blending on the device) → [`encode`] (PNG/JPEG/WebP).
//! [`render`] runs that pipeline; [`latent`] makes NumPy-compatible latents; [`bench`]
//! measures the generator against the Python reference; [`error`] holds the shared errors.
//! [`batcher`] runs the generators on worker threads with dynamic batching; [`server`] is
//! the HTTP service around it all, configured by [`config`]; [`loadtest`] measures it.

pub mod batcher;
pub mod bench;
pub mod compositor;
pub mod config;
pub mod encode;
pub mod error;
pub mod latent;
pub mod layout;
pub mod loadtest;
pub mod model;
pub mod registry;
pub mod render;
pub mod router;
pub mod server;
