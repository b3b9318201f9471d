//! Where the generators run, as settings and flags name it: `auto` (CUDA when available,
//! else the CPU), `cpu`, `cuda` or `cuda:N`. Parsed when a setting loads; resolved against
//! the machine before any model loads.

use std::fmt;

use serde::{Deserialize, Serialize};
use tch::Device;
use thiserror::Error;

use crate::error::UnknownChoice;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

/// A CUDA device this machine does not have.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("`{choice}` is not available: CUDA has {available} device(s) here")]
pub struct DeviceError {
    pub choice: DeviceChoice,
    pub available: usize,
}

impl DeviceChoice {
    pub fn resolve(self) -> Result<Device, DeviceError> {
        match self {
            Self::Auto => {
                let device = Device::cuda_if_available();
                if device.is_cuda() {
                    set_cudnn_benchmark(true);
                }
                Ok(device)
            }
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(i) => {
                let available = tch::Cuda::device_count().max(0) as usize;
                if i < available {
                    set_cudnn_benchmark(true);
                    Ok(Device::Cuda(i))
                } else {
                    Err(DeviceError { choice: self, available })
                }
            }
        }
    }
}

/// cuDNN's autotuner: each convolution shape is timed once with every algorithm and the
/// fastest kept. On by default wherever a CUDA device is chosen (the generators run the same
/// few shapes again and again); `cudnn_benchmark = false` turns it off.
pub fn set_cudnn_benchmark(on: bool) {
    tch::Cuda::cudnn_set_benchmark(on);
}

/// The process-wide generator switches: the CPU's own passes, and on CUDA cuDNN's autotuner,
/// the generator's own kernels, recording its passes as CUDA graphs, and host threads
/// sleeping while they wait on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switches {
    pub cpu_kernels: bool,
    pub cudnn_benchmark: bool,
    pub kernels: bool,
    pub graphs: bool,
    pub blocking_sync: bool,
}

/// Sets the CPU's switch, and the CUDA ones where `device` is a GPU.
pub fn configure(device: Device, switches: Switches) {
    super::kernels::set_cpu_enabled(switches.cpu_kernels);
    if device.is_cuda() {
        set_cudnn_benchmark(switches.cudnn_benchmark);
        super::kernels::set_enabled(switches.kernels);
        super::graphs::set_enabled(switches.graphs);
        if switches.graphs && !super::graphs::built() {
            tracing::warn!("cuda_graphs is on (the default), but this binary was built without CUDA graphs, so passes run as usual (see build.rs)");
        }
        if let (true, Device::Cuda(i)) = (switches.blocking_sync, device) {
            if let Err(e) = super::graphs::blocking_waits(i) {
                tracing::warn!(error = %e, "cuda_blocking_sync is on, but waits on the GPU still spin");
            }
        }
    }
}

/// A host tensor copied to `device`. On CUDA through page-locked memory without waiting: from
/// ordinary memory libtorch's copy waits for everything queued on the stream first (other
/// models' batches included), so the host could not queue a pass while the device runs
/// another. libtorch keeps the page-locked buffer until the copy is done. Where memory cannot
/// be page-locked, the ordinary copy.
pub fn upload(t: &tch::Tensor, device: Device) -> Result<tch::Tensor, tch::TchError> {
    match (device, device.is_cuda().then(|| t.f_internal_pin_memory(device))) {
        (_, Some(Ok(pinned))) => pinned.f_to_device_(device, t.kind(), true, false),
        _ => t.f_to_device(device),
    }
}

/// `t` copied to the host, into page-locked memory on CUDA (libtorch caches such buffers),
/// which the GPU copies into several times faster than into ordinary memory; where memory
/// cannot be page-locked, the ordinary copy. Host tensors come back as they are. Waits for
/// the copy, and so for everything queued on the stream before it.
pub fn download(t: &tch::Tensor) -> Result<tch::Tensor, tch::TchError> {
    let device = t.device();
    if !device.is_cuda() {
        return Ok(t.shallow_clone());
    }
    match tch::Tensor::f_empty(t.size(), (t.kind(), Device::Cpu))?.f_internal_pin_memory(device) {
        Ok(mut host) => {
            host.f_copy_(t)?;
            Ok(host)
        }
        Err(_) => t.f_to_device(Device::Cpu),
    }
}

/// Waits for everything queued on `device` (nothing to wait for on the CPU).
pub fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

impl std::str::FromStr for DeviceChoice {
    type Err = UnknownChoice;
    fn from_str(text: &str) -> Result<Self, UnknownChoice> {
        match text {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => text
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| UnknownChoice { given: text.into(), choices: "auto, cpu, cuda or cuda:N" }),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = UnknownChoice;
    fn try_from(text: String) -> Result<Self, UnknownChoice> {
        text.parse()
    }
}

impl From<DeviceChoice> for String {
    fn from(d: DeviceChoice) -> String {
        d.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        for (text, choice) in [
            ("auto", DeviceChoice::Auto),
            ("cpu", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
        ] {
            assert_eq!(text.parse::<DeviceChoice>(), Ok(choice));
        }
        assert_eq!(DeviceChoice::Cuda(3).to_string(), "cuda:3");
        for bad in ["gpu", "cuda:", "cuda:x", "CPU", ""] {
            let err = bad.parse::<DeviceChoice>().unwrap_err().to_string();
            assert!(err.contains("cuda:N"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_missing_gpu_is_an_error_not_a_fallback() {
        let n = tch::Cuda::device_count().max(0) as usize;
        let err = DeviceChoice::Cuda(n).resolve().unwrap_err();
        assert_eq!(err.available, n);
        assert_eq!(DeviceChoice::Cpu.resolve(), Ok(Device::Cpu));
    }
}
