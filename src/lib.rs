//! mixgan: a mixture of StyleGANs behind one API.
//!
//! The pipeline, one module per stage:
//! - [`latent`]: seeds to latent vectors exactly as NumPy makes them;
//! - [`model`]: model directories, weights and the native StyleGAN2 generator;
//! - [`encode`]: pixels to PNG/JPEG/WebP;
//! - [`bench`]: the side-by-side benchmark against the Python reference.

pub mod bench;
pub mod encode;
pub mod latent;
pub mod model;
