//! Generates the gRPC code from `proto/`, and links the binaries against the libtorch that `torch-sys` found, with an rpath so they run
//! without `LD_LIBRARY_PATH`, and keeps `libtorch_cuda` as a needed library so CUDA is usable
//! at run time on a GPU machine (the linker would otherwise drop it as unreferenced).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=proto/mixgan.proto");
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
}
