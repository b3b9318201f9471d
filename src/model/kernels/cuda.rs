//! The CUDA backend: compiles the kernels with NVRTC for the device in hand, loads them into
//! its primary context, and launches them on the thread's current libtorch stream. It does not
//! know what a kernel computes; the methods of [`Kernels`] check the tensors and lay out the
//! arguments.

use std::collections::HashMap;
use std::ffi::{c_int, c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use tch::{Device, Tensor};

use super::ffi::{check, Ctx, Driver, Func, Nvrtc};
use super::{Backend, Kernels, SUFFIXES, THREADS};

pub(super) const SOURCE: &str = include_str!("kernels.cu");

pub(super) const KERNEL_NAMES: [&str; 5] = ["epilogue", "up_epilogue", "scale", "to_rgb", "epilogue_rgb"];
const ATTR_CC_MAJOR: c_int = 75;
const ATTR_CC_MINOR: c_int = 76;

static LOADED: OnceLock<Mutex<HashMap<usize, std::result::Result<&'static Kernels, String>>>> = OnceLock::new();
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the CUDA kernels on or off for the whole process (the `cuda_kernels` setting).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// The kernels for `device`, or why there are none.
pub fn state(device: Device) -> std::result::Result<&'static Kernels, String> {
    let Device::Cuda(ordinal) = device else { return Err("not a CUDA device".into()) };
    if !ENABLED.load(Ordering::Relaxed) {
        return Err("turned off (cuda_kernels = false)".into());
    }
    let mut loaded = LOADED.get_or_init(|| Mutex::new(HashMap::new())).lock().unwrap_or_else(|e| e.into_inner());
    loaded
        .entry(ordinal)
        .or_insert_with(|| match Cuda::load(ordinal as c_int) {
            Ok(cuda) => {
                tracing::info!(device = ordinal, "the generator's CUDA kernels are compiled and loaded");
                Ok(&*Box::leak(Box::new(Kernels { backend: Backend::Cuda(cuda) })))
            }
            Err(e) => {
                tracing::warn!(device = ordinal, error = %e, "the generator's CUDA kernels are off; tensor operations instead");
                Err(e)
            }
        })
        .clone()
}

/// One argument of a kernel launch, held until the launch.
pub(super) enum Arg {
    Ptr(u64),
    I32(i32),
    F32(f32),
    I64(i64),
}

impl Arg {
    pub(super) fn tensor(t: Option<&Tensor>) -> Arg {
        Arg::Ptr(t.map_or(0, |t| t.data_ptr() as u64))
    }

    pub(super) fn as_ptr(&mut self) -> *mut c_void {
        match self {
            Arg::Ptr(v) => v as *mut u64 as *mut c_void,
            Arg::I32(v) => v as *mut i32 as *mut c_void,
            Arg::F32(v) => v as *mut f32 as *mut c_void,
            Arg::I64(v) => v as *mut i64 as *mut c_void,
        }
    }
}

/// The kernels loaded into one device's primary context.
pub(super) struct Cuda {
    driver: Driver,
    ctx: Ctx,
    pub(super) ordinal: usize,
    functions: HashMap<String, usize>,
}

impl Cuda {
    fn load(ordinal: c_int) -> std::result::Result<Self, String> {
        let driver = Driver::open()?;
        let nvrtc = Nvrtc::open()?;
        // SAFETY: the driver calls below follow the CUDA driver API's contracts: initialised
        // first, out-pointers valid, the context pushed before the module is loaded into it.
        unsafe {
            check("cuInit", (driver.cu_init)(0))?;
            let mut dev = 0;
            check("cuDeviceGet", (driver.cu_device_get)(&mut dev, ordinal))?;
            let (mut major, mut minor) = (0, 0);
            check("cuDeviceGetAttribute", (driver.cu_device_get_attribute)(&mut major, ATTR_CC_MAJOR, dev))?;
            check("cuDeviceGetAttribute", (driver.cu_device_get_attribute)(&mut minor, ATTR_CC_MINOR, dev))?;
            let mut ctx: Ctx = std::ptr::null_mut();
            check("cuDevicePrimaryCtxRetain", (driver.cu_primary_ctx_retain)(&mut ctx, dev))?;
            check("cuCtxPushCurrent", (driver.cu_ctx_push)(ctx))?;
            let module = Self::load_module(&driver, &nvrtc, major, minor);
            let mut popped: Ctx = std::ptr::null_mut();
            (driver.cu_ctx_pop)(&mut popped);
            let module = module?;
            let mut functions = HashMap::new();
            for base in KERNEL_NAMES {
                for suffix in SUFFIXES {
                    let name = format!("{base}_{suffix}");
                    let cname = CString::new(name.clone()).expect("no NUL");
                    let mut f: Func = std::ptr::null_mut();
                    check(&name, (driver.cu_module_get_function)(&mut f, module, cname.as_ptr()))?;
                    functions.insert(name, f as usize);
                }
            }
            Ok(Self { driver, ctx, ordinal: ordinal as usize, functions })
        }
    }

    /// A cubin for the device's own architecture, else PTX for the driver to finish (an NVRTC
    /// newer than the GPU it finds).
    unsafe fn load_module(
        driver: &Driver,
        nvrtc: &Nvrtc,
        major: c_int,
        minor: c_int,
    ) -> std::result::Result<*mut c_void, String> {
        let mut errors = Vec::new();
        for arch in [format!("sm_{major}{minor}"), format!("compute_{major}{minor}")] {
            match nvrtc.compile(SOURCE, &arch) {
                Ok(image) => {
                    let mut module: *mut c_void = std::ptr::null_mut();
                    let r = (driver.cu_module_load_data)(&mut module, image.as_ptr() as *const c_void);
                    match check("cuModuleLoadData", r) {
                        Ok(()) => return Ok(module),
                        Err(e) => errors.push(format!("{arch}: {e}")),
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        Err(errors.join("; "))
    }

    /// Launches the kernel `name` (base and type suffix) over `blocks` blocks of [`THREADS`].
    pub(super) fn launch(&self, name: &str, blocks: u32, ptrs: &mut [*mut c_void]) -> std::result::Result<(), String> {
        let f = self.functions[name] as Func;
        // SAFETY: the arguments match the kernel's parameters in kernels.cu one for one; every
        // pointer is a live tensor's data on this device, sized as the caller checked. The
        // stream is the one libtorch queues this thread's work on, so the launch orders with it.
        let stream = crate::model::graphs::current_stream(self.ordinal);
        let r = unsafe {
            (self.driver.cu_ctx_push)(self.ctx);
            let r = (self.driver.cu_launch_kernel)(
                f,
                blocks,
                1,
                1,
                THREADS,
                1,
                1,
                0,
                stream,
                ptrs.as_mut_ptr(),
                std::ptr::null_mut(),
            );
            let mut popped: Ctx = std::ptr::null_mut();
            (self.driver.cu_ctx_pop)(&mut popped);
            r
        };
        check(name, r)
    }
}
