//! Generates the gRPC code from `proto/`, and links the binaries against the libtorch that `torch-sys` found, with an rpath so they run
//! without `LD_LIBRARY_PATH`, and keeps `libtorch_cuda` as a needed library so CUDA is usable
//! at run time on a GPU machine (the linker would otherwise drop it as unreferenced). Where
//! that libtorch has CUDA and the CUDA runtime's headers are at hand, it also compiles the CUDA
//! graph shim (src/model/graphs/shim.cpp) and sets `--cfg mixgan_graphs`.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=proto/mixgan.proto");
    println!("cargo::rustc-check-cfg=cfg(mixgan_graphs)");
    // The gRPC code, from proto/ by a pure-Rust protobuf compiler: no protoc needed.
    let fds = protox::compile(["proto/mixgan.proto"], ["proto"]).expect("proto/mixgan.proto compiles");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)
        .expect("gRPC code generation");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report a libtorch folder; binaries need LD_LIBRARY_PATH");
        return;
    };
    // The real folder, not a link to it (such as .libtorch): a container or another machine
    // carries the libraries at their real path.
    let lib = std::fs::canonicalize(&lib).unwrap_or_else(|_| PathBuf::from(lib));
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    graph_shim(&lib);
}

/// Compiles the CUDA graph shim against libtorch's headers. Without CUDA in libtorch, or
/// without the runtime's headers (PyPI's CUDA packages plus nvidia-cuda-crt, which
/// scripts/setup-torch installs, or `CUDA_HOME`), the binaries are built without it and
/// `cuda_graphs` says so at run time.
fn graph_shim(lib: &Path) {
    println!("cargo:rerun-if-changed=src/model/graphs/shim.cpp");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let torch_include = lib.join("../include");
    let mut cuda_includes = vec![lib.join("../../nvidia/cu13/include")];
    if let Ok(home) = std::env::var("CUDA_HOME") {
        cuda_includes.push(Path::new(&home).join("include"));
    }
    let cuda_include = cuda_includes
        .into_iter()
        .find(|d| d.join("cuda_runtime_api.h").exists() && d.join("crt/host_defines.h").exists());
    let missing = if !lib.join("libtorch_cuda.so").exists() {
        Some("libtorch has no CUDA")
    } else if !torch_include.join("ATen/cuda/CUDAGraph.h").exists() {
        Some("libtorch's headers lack ATen/cuda/CUDAGraph.h")
    } else if cuda_include.is_none() {
        Some("no CUDA runtime headers (pip install nvidia-cuda-crt, or set CUDA_HOME)")
    } else {
        None
    };
    if let Some(why) = missing {
        println!("cargo:warning=built without CUDA graphs: {why}");
        return;
    }
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .include(&torch_include)
        .include(cuda_include.expect("checked above"))
        .flag_if_supported("-Wno-unused-parameter")
        .file("src/model/graphs/shim.cpp")
        .compile("mixgan_graphs");
    for name in ["torch_cuda", "c10_cuda", "c10"] {
        println!("cargo:rustc-link-lib=dylib={name}");
    }
    println!("cargo:rustc-cfg=mixgan_graphs");
}
