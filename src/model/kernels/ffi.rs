//! The CUDA driver and NVRTC, opened at run time (no link-time dependency, so the same binary
//! runs where neither exists): the few entry points the kernels need, and NVRTC's compile.

use std::ffi::{c_char, c_int, c_uint, c_void, CString};
use std::path::PathBuf;

use libloading::Library;

pub(super) type CuResult = c_int;
pub(super) type Ctx = *mut c_void;
pub(super) type Func = *mut c_void;

/// The CUDA driver's entry points used here.
pub(super) struct Driver {
    _lib: Library,
    pub(super) cu_init: unsafe extern "C" fn(c_uint) -> CuResult,
    pub(super) cu_device_get: unsafe extern "C" fn(*mut c_int, c_int) -> CuResult,
    pub(super) cu_device_get_attribute: unsafe extern "C" fn(*mut c_int, c_int, c_int) -> CuResult,
    pub(super) cu_primary_ctx_retain: unsafe extern "C" fn(*mut Ctx, c_int) -> CuResult,
    pub(super) cu_ctx_push: unsafe extern "C" fn(Ctx) -> CuResult,
    pub(super) cu_ctx_pop: unsafe extern "C" fn(*mut Ctx) -> CuResult,
    pub(super) cu_module_load_data: unsafe extern "C" fn(*mut *mut c_void, *const c_void) -> CuResult,
    pub(super) cu_module_get_function: unsafe extern "C" fn(*mut Func, *mut c_void, *const c_char) -> CuResult,
    #[allow(clippy::type_complexity)]
    pub(super) cu_launch_kernel: unsafe extern "C" fn(
        Func,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        *mut c_void,
        *mut *mut c_void,
        *mut *mut c_void,
    ) -> CuResult,
}

/// NVRTC's entry points used here.
pub(super) struct Nvrtc {
    _lib: Library,
    /// NVRTC opens its builtins by soname; where NVRTC itself was found by path they are
    /// opened first from beside it.
    _builtins: Option<Library>,
    create: unsafe extern "C" fn(
        *mut *mut c_void,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> c_int,
    compile: unsafe extern "C" fn(*mut c_void, c_int, *const *const c_char) -> c_int,
    log_size: unsafe extern "C" fn(*mut c_void, *mut usize) -> c_int,
    log: unsafe extern "C" fn(*mut c_void, *mut c_char) -> c_int,
    cubin_size: unsafe extern "C" fn(*mut c_void, *mut usize) -> c_int,
    cubin: unsafe extern "C" fn(*mut c_void, *mut c_char) -> c_int,
    ptx_size: unsafe extern "C" fn(*mut c_void, *mut usize) -> c_int,
    ptx: unsafe extern "C" fn(*mut c_void, *mut c_char) -> c_int,
    destroy: unsafe extern "C" fn(*mut *mut c_void) -> c_int,
}

/// Copies a symbol out of `lib` as a plain value.
///
/// # Safety
/// `T` must be the symbol's true function-pointer type.
pub(super) unsafe fn sym<T: Copy>(lib: &Library, name: &str) -> std::result::Result<T, String> {
    lib.get::<T>(name.as_bytes()).map(|s| *s).map_err(|e| format!("{name}: {e}"))
}

/// NVRTC's builtins library in `dir`, opened.
fn builtins_beside(dir: &std::path::Path) -> Option<Library> {
    let name = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .find(|n| n.starts_with("libnvrtc-builtins.so"))?;
    // SAFETY: a library with no initialisers of consequence, opened for NVRTC to find.
    unsafe { Library::new(dir.join(name)).ok() }
}

/// The folder of a shared library this process has mapped, from /proc/self/maps.
fn loaded_library_dir(name: &str) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.rsplit('/').next() == Some(name))
        .and_then(|p| PathBuf::from(p).parent().map(PathBuf::from))
}

impl Driver {
    pub(super) fn open() -> std::result::Result<Self, String> {
        // SAFETY: opening the driver runs its initialisers only; each symbol is declared with
        // the signature of CUDA's public header.
        unsafe {
            let lib = Library::new("libcuda.so.1").map_err(|e| format!("CUDA driver: {e}"))?;
            Ok(Self {
                cu_init: sym(&lib, "cuInit")?,
                cu_device_get: sym(&lib, "cuDeviceGet")?,
                cu_device_get_attribute: sym(&lib, "cuDeviceGetAttribute")?,
                cu_primary_ctx_retain: sym(&lib, "cuDevicePrimaryCtxRetain")?,
                cu_ctx_push: sym(&lib, "cuCtxPushCurrent_v2")?,
                cu_ctx_pop: sym(&lib, "cuCtxPopCurrent_v2")?,
                cu_module_load_data: sym(&lib, "cuModuleLoadData")?,
                cu_module_get_function: sym(&lib, "cuModuleGetFunction")?,
                cu_launch_kernel: sym(&lib, "cuLaunchKernel")?,
                _lib: lib,
            })
        }
    }
}

impl Nvrtc {
    /// NVRTC by its sonames, then beside the libtorch this process loaded (PyPI's layout keeps
    /// it in `nvidia/cu13/lib` or `nvidia/cuda_nvrtc/lib` next to `torch/lib`).
    pub(super) fn open() -> std::result::Result<Self, String> {
        let mut candidates: Vec<PathBuf> =
            ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"].iter().map(PathBuf::from).collect();
        for lib in ["libtorch_cuda.so", "libtorch_cpu.so"] {
            if let Some(dir) = loaded_library_dir(lib) {
                for rel in ["../../nvidia/cu13/lib/libnvrtc.so.13", "../../nvidia/cuda_nvrtc/lib/libnvrtc.so.12"] {
                    candidates.push(dir.join(rel));
                }
            }
        }
        let mut last = String::from("no candidate");
        for c in candidates {
            // SAFETY: NVRTC's initialisers have no preconditions; each symbol is declared with
            // the signature of NVRTC's public header.
            unsafe {
                match Library::new(&c) {
                    Ok(lib) => {
                        let builtins = c.parent().filter(|d| !d.as_os_str().is_empty()).and_then(builtins_beside);
                        return Ok(Self {
                            create: sym(&lib, "nvrtcCreateProgram")?,
                            compile: sym(&lib, "nvrtcCompileProgram")?,
                            log_size: sym(&lib, "nvrtcGetProgramLogSize")?,
                            log: sym(&lib, "nvrtcGetProgramLog")?,
                            cubin_size: sym(&lib, "nvrtcGetCUBINSize")?,
                            cubin: sym(&lib, "nvrtcGetCUBIN")?,
                            ptx_size: sym(&lib, "nvrtcGetPTXSize")?,
                            ptx: sym(&lib, "nvrtcGetPTX")?,
                            destroy: sym(&lib, "nvrtcDestroyProgram")?,
                            _lib: lib,
                            _builtins: builtins,
                        });
                    }
                    Err(e) => last = e.to_string(),
                }
            }
        }
        Err(format!("NVRTC not found ({last})"))
    }

    /// The kernels compiled for `arch`: "sm_90" gives a cubin, "compute_90" PTX (NUL-ended).
    pub(super) fn compile(&self, source: &str, arch: &str) -> std::result::Result<Vec<u8>, String> {
        let src = CString::new(source).expect("no NUL in the kernel source");
        let name = CString::new("mixgan_kernels.cu").expect("no NUL");
        let opts: Vec<CString> = [format!("--gpu-architecture={arch}"), "--std=c++17".into()]
            .into_iter()
            .map(|o| CString::new(o).expect("no NUL"))
            .collect();
        let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
        let cubin = arch.starts_with("sm_");
        // SAFETY: NVRTC's program life cycle: created, compiled, read, destroyed; buffers sized
        // by the size calls before each read.
        unsafe {
            let mut prog: *mut c_void = std::ptr::null_mut();
            if (self.create)(&mut prog, src.as_ptr(), name.as_ptr(), 0, std::ptr::null(), std::ptr::null()) != 0 {
                return Err("nvrtcCreateProgram failed".into());
            }
            let result = if (self.compile)(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) != 0 {
                let mut size = 0usize;
                (self.log_size)(prog, &mut size);
                let mut buf = vec![0u8; size.max(1)];
                (self.log)(prog, buf.as_mut_ptr() as *mut c_char);
                Err(format!("NVRTC ({arch}): {}", String::from_utf8_lossy(&buf).trim_end_matches('\0')))
            } else {
                let mut size = 0usize;
                let (size_fn, get_fn) = if cubin { (self.cubin_size, self.cubin) } else { (self.ptx_size, self.ptx) };
                size_fn(prog, &mut size);
                let mut buf = vec![0u8; size];
                if size == 0 || get_fn(prog, buf.as_mut_ptr() as *mut c_char) != 0 {
                    Err(format!("NVRTC ({arch}): no output"))
                } else {
                    Ok(buf)
                }
            };
            (self.destroy)(&mut prog);
            result
        }
    }
}

pub(super) fn check(what: &str, r: CuResult) -> std::result::Result<(), String> {
    if r == 0 {
        Ok(())
    } else {
        Err(format!("{what} returned CUDA error {r}"))
    }
}
