//! The kernels checked without a GPU: compiled by NVRTC, and built for the host and run there
//! against the tensor ops.

use std::ffi::{c_uint, c_void};
use std::path::PathBuf;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use libloading::Library;

use super::cuda::{KERNEL_NAMES, SOURCE};
use super::ffi::{sym, Nvrtc};
use super::*;
use crate::model::ops::Filter;

/// The kernel source compiles for Hopper (cubin) and as PTX for Ampere, without a GPU:
/// NVRTC only needs the host. Skipped where libtorch's NVRTC is absent (a CPU-only build).
#[test]
fn the_kernels_compile_with_nvrtc() {
    // libtorch is mapped by now, so NVRTC can be found beside it as at run time.
    let _ = Tensor::zeros([1], (Kind::Float, Device::Cpu));
    let nvrtc = match Nvrtc::open() {
        Ok(n) => n,
        Err(e) => return eprintln!("skipped: {e}"),
    };
    let cubin = nvrtc.compile(SOURCE, "sm_90").unwrap();
    assert_eq!(&cubin[..4], b"\x7fELF", "a cubin is an ELF image");
    let ptx = String::from_utf8(nvrtc.compile(SOURCE, "compute_80").unwrap()).unwrap();
    for name in KERNEL_NAMES {
        for suffix in SUFFIXES {
            assert!(ptx.contains(&format!(".entry {name}_{suffix}(")), "{name}_{suffix} in the PTX");
        }
    }
    // Each element-wise thread moves 16-byte words.
    assert!(ptx.contains("ld.global.v4.u32") || ptx.contains("ld.global.v4.b32"), "vector loads");
}

/// kernels.cu built for the host with the C++ compiler (host.h stands in for
/// CUDA), so that each launch's blocks and threads can be run in a loop on CPU tensors.
pub(super) struct HostBuild {
    lib: Library,
    _dir: tempfile::TempDir,
    /// Launches so far, by kernel name (with its type's suffix).
    launches: Mutex<HashMap<String, usize>>,
}

type Ptr = *mut c_void;

impl HostBuild {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/model/kernels");
        let out = dir.path().join("libkernels.so");
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let status = std::process::Command::new(&cxx)
            .args(["-O1", "-shared", "-fPIC", "-std=c++17", "-Wno-unknown-pragmas", "-include"])
            .arg(src.join("host.h"))
            .args(["-x", "c++"])
            .arg(src.join("kernels.cu"))
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap_or_else(|e| panic!("{cxx}: {e}"));
        assert!(status.success(), "{cxx} could not build kernels.cu for the host");
        // SAFETY: a library built just now from our own source.
        let lib = unsafe { Library::new(&out) }.unwrap();
        Self { lib, _dir: dir, launches: Mutex::new(HashMap::new()) }
    }

    /// A launch of kernel `name` as `Kernels::launch` makes it on a GPU: `args` holds a
    /// pointer to each argument; every (block, thread) runs in turn on this thread.
    pub(super) fn call(&self, name: &str, blocks: u32, args: &mut [Ptr]) {
        // SAFETY: host.h's wrapper of the kernel, which reads its arguments as a launch does.
        let call: unsafe extern "C" fn(*mut Ptr) = unsafe { sym(&self.lib, &format!("host_call_{name}")) }.unwrap();
        *self.launches.lock().unwrap().entry(name.to_string()).or_default() += 1;
        self.launch(i64::from(blocks), || unsafe { call(args.as_mut_ptr()) });
    }

    /// Runs `kernel` once per (block, thread) of a launch of `blocks` blocks.
    fn launch(&self, blocks: i64, mut kernel: impl FnMut()) {
        // SAFETY: the signature of host_set_thread in host.h.
        let set: unsafe extern "C" fn(c_uint, c_uint, c_uint) = unsafe { sym(&self.lib, "host_set_thread") }.unwrap();
        for b in 0..blocks as u32 {
            for t in 0..THREADS {
                unsafe { set(b, t, THREADS) };
                kernel();
            }
        }
    }

    fn func<T: Copy>(&self, base: &str, kind: Kind) -> T {
        let suffix = suffix(kind).unwrap();
        // SAFETY: the caller names the kernel's signature in kernels.cu.
        unsafe { sym(&self.lib, &format!("{base}_{suffix}")) }.unwrap()
    }
}

/// The kernels built for the host once per test process, as a `Kernels` whose launches run
/// there: the Rust launchers and the generator's use of them, checked on CPU tensors.
fn host_kernels() -> &'static Kernels {
    static BUILT: OnceLock<&'static Kernels> = OnceLock::new();
    BUILT.get_or_init(|| Box::leak(Box::new(Kernels { backend: Backend::Host(HostBuild::new()) })))
}

/// What [`for_device`] gives for the CPU on a test's thread.
#[derive(Clone, Copy, PartialEq)]
enum OnCpu {
    /// As outside the tests: the CPU's passes.
    Passes,
    /// The CUDA kernels built for the host ([`with_host_kernels`]).
    HostBuild,
    /// None: libtorch's tensor ops ([`with_tensor_ops`]).
    TensorOps,
}

thread_local! {
    static ON_CPU: std::cell::Cell<OnCpu> = const { std::cell::Cell::new(OnCpu::Passes) };
}

/// What this thread's tests chose for the CPU, where they chose.
pub(super) fn kernels_for(device: Device) -> Option<Option<&'static Kernels>> {
    match (device, ON_CPU.with(|on| on.get())) {
        (Device::Cpu, OnCpu::HostBuild) => Some(Some(host_kernels())),
        (Device::Cpu, OnCpu::TensorOps) => Some(None),
        _ => None,
    }
}

/// Runs `f` with [`for_device`] giving `choice` for the CPU on this thread.
fn with_on_cpu<T>(choice: OnCpu, f: impl FnOnce() -> T) -> T {
    ON_CPU.with(|on| on.set(choice));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    ON_CPU.with(|on| on.set(OnCpu::Passes));
    out.unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Runs `f` with [`for_device`] giving the host's kernels for the CPU on this thread.
fn with_host_kernels<T>(f: impl FnOnce() -> T) -> T {
    with_on_cpu(OnCpu::HostBuild, f)
}

/// Runs `f` with [`for_device`] giving no kernels for the CPU on this thread.
pub(super) fn with_tensor_ops<T>(f: impl FnOnce() -> T) -> T {
    with_on_cpu(OnCpu::TensorOps, f)
}

/// The host build behind [`host_kernels`], for tests that call its kernels directly.
fn host_build() -> &'static HostBuild {
    let Backend::Host(host) = &host_kernels().backend else { unreachable!("built for the host") };
    host
}

/// How many launches of `base` (in any type) the host's kernels have run through a launcher.
fn launches(base: &str) -> usize {
    let counts = host_build().launches.lock().unwrap();
    SUFFIXES.iter().map(|s| counts.get(&format!("{base}_{s}")).copied().unwrap_or(0)).sum()
}

fn ptr(t: &Tensor) -> Ptr {
    t.data_ptr()
}

/// [N, C, H, W] in `kind`, stored channels-last or not.
fn features(shape: [i64; 4], kind: Kind, channels_last: bool, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    let x = Tensor::randn(shape, (Kind::Float, Device::Cpu)).to_kind(kind);
    if channels_last {
        crate::model::modconv::to_channels_last(&x).unwrap()
    } else {
        x.contiguous()
    }
}

/// Largest difference, in float32, with what the kernel's type can hold: about two units
/// in the last place at the values used (at most 2).
fn assert_close(got: &Tensor, want: &Tensor, kind: Kind, what: &str) {
    let tol = match kind {
        Kind::Float => 1e-5,
        Kind::Half => 2e-3,
        _ => 1.6e-2,
    };
    let diff = got.to_kind(Kind::Float).f_sub(&want.to_kind(Kind::Float)).unwrap().abs().max().double_value(&[]);
    assert!(diff <= tol, "{what}: largest difference {diff} > {tol}");
}

/// The epilogue by tensor ops, in float32: `clamp(lrelu(x·d + nb + noise·g, slope), ±clamp)`,
/// times `post` where given.
#[allow(clippy::too_many_arguments)]
fn finish(
    x: &Tensor,
    d: &Tensor,
    nb4: &Tensor,
    noise: &Tensor,
    g: f32,
    slope: f32,
    clamp: f64,
    post: Option<&Tensor>,
) -> Tensor {
    let (n, c) = (d.size()[0], d.size()[1]);
    let a = x.to_kind(Kind::Float) * d.view([n, c, 1, 1]) + nb4.to_kind(Kind::Float) + noise * f64::from(g);
    let y = a.where_self(&a.ge(0.0), &(&a * f64::from(slope))).clamp(-clamp, clamp);
    match post {
        Some(p) => y * p.view([n, c, 1, 1]),
        None => y,
    }
}

const CASES: [([i64; 4], bool); 4] =
    [([2, 16, 4, 4], false), ([2, 16, 4, 4], true), ([3, 24, 8, 8], false), ([3, 24, 8, 8], true)];
const KINDS: [Kind; 3] = [Kind::Float, Kind::Half, Kind::BFloat16];

#[test]
fn the_kernels_compute_what_the_tensor_ops_do_on_the_host() {
    let host = host_build();
    let fir = stylegan2_filter();
    for (shape, cl) in CASES {
        let [n, c, h, w] = shape;
        let (hw, total) = (h * w, n * c * h * w);
        let blocks = (total / VEC + THREADS as i64 - 1) / THREADS as i64;
        for kind in KINDS {
            let what = format!("{shape:?} {kind:?} channels-last {cl}");
            let x = features(shape, kind, cl, 1);
            let s = Tensor::rand([n, c], (Kind::Float, Device::Cpu));

            // Style scaling.
            let scaled = x.empty_like();
            let scale: unsafe extern "C" fn(Ptr, Ptr, Ptr, i64, i64, i64, i32) = host.func("scale", kind);
            host.launch(blocks, || unsafe { scale(ptr(&x), ptr(&s), ptr(&scaled), c, hw, total, cl as i32) });
            let want = x.to_kind(Kind::Float) * s.view([n, c, 1, 1]);
            assert_close(&scaled, &want, kind, &format!("scale {what}"));

            // The epilogue, with a per-channel and a per-pixel bias, noise, slope and clamp.
            let d = Tensor::rand([n, c], (Kind::Float, Device::Cpu)) + 0.5;
            let noise = Tensor::randn([n, 1, h, w], (Kind::Float, Device::Cpu));
            let (g, slope, clamp) = (1.4f32, 0.2f32, 1.5f32);
            let per_pixel = features([1, c, h, w], kind, cl, 2);
            let per_channel = Tensor::randn([c], (Kind::Float, Device::Cpu)).to_kind(kind);
            let epilogue: unsafe extern "C" fn(Ptr, Ptr, Ptr, i32, Ptr, f32, f32, f32, Ptr, i64, i64, i64, i32) =
                host.func("epilogue", kind);
            // Mode 2 also scales by the next layer's styles at the end.
            let post = Tensor::rand([n, c], (Kind::Float, Device::Cpu)) + 0.5;
            for (mode, nb, nb4) in
                [(1, &per_channel, per_channel.view([1, c, 1, 1])), (2, &per_pixel, per_pixel.shallow_clone())]
            {
                let y = x.copy();
                let post = (mode == 2).then_some(&post);
                let post_ptr = post.map_or(std::ptr::null_mut(), ptr);
                host.launch(blocks, || unsafe {
                    epilogue(
                        ptr(&y),
                        ptr(&d),
                        ptr(nb),
                        mode,
                        ptr(&noise),
                        g,
                        slope,
                        clamp,
                        post_ptr,
                        c,
                        hw,
                        total,
                        cl as i32,
                    )
                });
                let want = finish(&x, &d, &nb4, &noise, g, slope, 1.5, post);
                assert_close(&y, &want, kind, &format!("epilogue, nb mode {mode}, {what}"));
                let bound = if post.is_some() { 1.5 * 1.5 } else { 1.5 };
                assert!(y.abs().max().double_value(&[]) <= bound, "clamped");
            }

            // toRGB, with and without the picture so far.
            let o = 3;
            let wm = Tensor::randn([n, o, c], (Kind::Float, Device::Cpu)) * 0.3;
            let bias = Tensor::randn([o], (Kind::Float, Device::Cpu));
            let prev = Tensor::randn([n, o, h, w], (Kind::Float, Device::Cpu));
            let contribution = wm
                .matmul(&x.to_kind(Kind::Float).contiguous().view([n, c, hw]))
                .view([n, o, h, w])
                .f_add(&bias.view([1, o, 1, 1]))
                .unwrap()
                .clamp(-2.0, 2.0);
            let to_rgb: ToRgb = host.func("to_rgb", kind);
            let pixel_blocks = (n * hw + THREADS as i64 - 1) / THREADS as i64;
            let run_scaling = |prev: Ptr, half: i32, out: &Tensor, next: Option<&Tensor>| {
                let next_out = next.map_or(std::ptr::null_mut(), ptr);
                let next_s = if next.is_some() { ptr(&s) } else { std::ptr::null_mut() };
                host.launch(pixel_blocks, || unsafe {
                    to_rgb(
                        ptr(&x),
                        c,
                        cl as i32,
                        ptr(&wm),
                        ptr(&bias),
                        2.0,
                        prev,
                        half,
                        ptr(out),
                        h,
                        w,
                        n * hw,
                        o as i32,
                        next_s,
                        next_out,
                    )
                })
            };
            let run = |prev: Ptr, half: i32, out: &Tensor| run_scaling(prev, half, out, None);
            let out = Tensor::zeros([n, o, h, w], (Kind::Float, Device::Cpu));
            run(std::ptr::null_mut(), 0, &out);
            assert_close(&out, &contribution, Kind::Float, &format!("to_rgb {what}"));
            let sum = prev.copy();
            run(ptr(&sum), 0, &sum);
            assert_close(&sum, &(&prev + &contribution), Kind::Float, &format!("to_rgb onto a picture, {what}"));
            // The picture at half the size, upsampled by the kernel as the filter's depthwise
            // convolution does it.
            let small = Tensor::randn([n, o, h / 2, w / 2], (Kind::Float, Device::Cpu));
            let up = fir.upsample2d(&small, false).unwrap();
            let out = Tensor::zeros([n, o, h, w], (Kind::Float, Device::Cpu));
            run(ptr(&small), 1, &out);
            assert_close(
                &out,
                &(&up + &contribution),
                Kind::Float,
                &format!("to_rgb onto a half-size picture, {what}"),
            );
            // The next layer's input scaling as the features are read: what `scale` makes,
            // in the features' layout, beside the same picture.
            let (out, next) = (Tensor::zeros([n, o, h, w], (Kind::Float, Device::Cpu)), x.empty_like());
            run_scaling(ptr(&small), 1, &out, Some(&next));
            assert_close(&out, &(&up + &contribution), Kind::Float, &format!("to_rgb scaling too, {what}"));
            assert_eq!(next.stride(), x.stride(), "{what}: the scaled features keep the layout");
            assert!(next.equal(&scaled), "{what}: to_rgb's scaled features are the scale kernel's, bit for bit");
        }
    }
}

/// to_rgb's parameters in kernels.cu: x, C, cl, wm, bias, clampv, prev, prev_half, out, H, W,
/// pixels, O, next_s, next_out.
type ToRgb = unsafe extern "C" fn(Ptr, i64, i32, Ptr, Ptr, f32, Ptr, i32, Ptr, i64, i64, i64, i32, Ptr, Ptr);

/// StyleGAN2's [1, 3, 3, 1] filter.
fn stylegan2_filter() -> Filter {
    let taps = Tensor::from_slice(&[1.0f32, 3.0, 3.0, 1.0]);
    Filter::from_buffer(&(taps.outer(&taps) / 64.0)).unwrap()
}

/// up_epilogue's parameters in kernels.cu: t, fir, taps, before, Ht, Wt, y, Wo, then the
/// epilogue's from d on (d, nb, nb_mode, noise, noise_gain, slope, clampv, post, C, HW, total, cl).
type UpEpilogue = unsafe extern "C" fn(
    Ptr,
    Ptr,
    i32,
    i32,
    i64,
    i64,
    Ptr,
    i64,
    Ptr,
    Ptr,
    i32,
    Ptr,
    f32,
    f32,
    f32,
    Ptr,
    i64,
    i64,
    i64,
    i32,
);

/// An upsampling layer's filter and epilogue in one pass against the strided convolution's
/// result filtered by the tensor ops (StyleGAN2's [1, 3, 3, 1] filter, 3x3 kernel, padding 1).
#[test]
fn the_upsampling_epilogue_filters_as_the_tensor_ops_do_on_the_host() {
    let host = host_build();
    let filter = stylegan2_filter();
    let fir = filter.kernel().to_kind(Kind::Float).contiguous();
    let pad = Up2Padding::new(3, 4, 1);
    assert_eq!((pad.before, pad.after), (1, 1), "StyleGAN2's up layers pad the filter by one");
    for ([n, c, h, w], cl) in
        [([2, 16, 4, 4], false), ([2, 16, 4, 4], true), ([3, 8, 8, 4], false), ([1, 24, 4, 8], true)]
    {
        // The strided convolution's result is 2h + 1 by 2w + 1; the layer's output 2h by 2w.
        let (ht, wt, ho, wo) = (2 * h + 1, 2 * w + 1, 2 * h, 2 * w);
        let (hw, total) = (ho * wo, n * c * ho * wo);
        let blocks = (total / VEC + THREADS as i64 - 1) / THREADS as i64;
        for kind in KINDS {
            let what = format!("[{n}, {c}, {ht}, {wt}] {kind:?} channels-last {cl}");
            let t = features([n, c, ht, wt], kind, cl, 3);
            let filtered = filter.pad_and_filter(&t.to_kind(Kind::Float), pad.before, pad.after).unwrap();
            assert_eq!(filtered.size(), [n, c, ho, wo]);
            let d = Tensor::rand([n, c], (Kind::Float, Device::Cpu)) + 0.5;
            let noise = Tensor::randn([n, 1, ho, wo], (Kind::Float, Device::Cpu));
            let per_pixel = features([1, c, ho, wo], kind, cl, 4);
            let per_channel = Tensor::randn([c], (Kind::Float, Device::Cpu)).to_kind(kind);
            let f: UpEpilogue = host.func("up_epilogue", kind);
            let post = Tensor::rand([n, c], (Kind::Float, Device::Cpu)) + 0.5;
            for (mode, nb, nb4) in
                [(1, &per_channel, per_channel.view([1, c, 1, 1])), (2, &per_pixel, per_pixel.shallow_clone())]
            {
                let y = features([n, c, ho, wo], kind, cl, 5);
                let post = (mode == 1).then_some(&post);
                let post_ptr = post.map_or(std::ptr::null_mut(), ptr);
                host.launch(blocks, || unsafe {
                    f(
                        ptr(&t),
                        ptr(&fir),
                        4,
                        pad.before as i32,
                        ht,
                        wt,
                        ptr(&y),
                        wo,
                        ptr(&d),
                        ptr(nb),
                        mode,
                        ptr(&noise),
                        1.4,
                        0.2,
                        2.5,
                        post_ptr,
                        c,
                        hw,
                        total,
                        cl as i32,
                    )
                });
                let want = finish(&filtered, &d, &nb4, &noise, 1.4, 0.2, 2.5, post);
                assert_close(&y, &want, kind, &format!("up_epilogue, nb mode {mode}, {what}"));
            }
        }
    }
}

/// A layer's epilogue and its block's toRGB layer in one pass make the same bits as the two
/// kernels one after the other (the launchers' own arguments, on the host): the features,
/// scaled for the next layer or not, and the picture over the one so far.
#[test]
fn the_epilogue_with_torgb_is_the_two_kernels_in_one_pass() {
    let k = host_kernels();
    let f32s = (Kind::Float, Device::Cpu);
    for (shape, cl) in CASES {
        let [n, c, h, w] = shape;
        for kind in KINDS {
            let what = format!("{shape:?} {kind:?} channels-last {cl}");
            let x = features(shape, kind, cl, 3);
            let (d, nb) = (Tensor::rand([n, c], f32s) + 0.5, Tensor::randn([c], f32s).to_kind(kind));
            let noise = Tensor::randn([n, 1, h, w], f32s);
            let fin = Finish {
                d: &d,
                nb: &nb,
                noise: Some(&noise),
                noise_gain: 1.4,
                slope: 0.2,
                clamp: Some(1.5),
                post: None,
            };
            let (wm, bias) = (Tensor::randn([n, 3, c], f32s) * 0.3, Tensor::randn([3], f32s));
            let (small, s) = (Tensor::randn([n, 3, h / 2, w / 2], f32s), Tensor::rand([n, c], f32s));
            for next in [None, Some(&s)] {
                let rgb =
                    Rgb { wm: &wm, bias: &bias, clamp: Some(2.0), prev: Some(Picture::Half(&small)), next, keep: true };
                let two = x.copy();
                assert!(k.epilogue(&two, &fin).unwrap(), "{what}");
                let (picture, scaled) = k.to_rgb(&two, &rgb).unwrap().expect("to_rgb takes these");
                let one = x.copy();
                let in_one = k.epilogue_rgb(&one, &fin, &rgb).unwrap().expect("epilogue_rgb takes these");
                assert!(in_one.equal(&picture), "{what}, next {}: the picture", next.is_some());
                let features = scaled.unwrap_or(two);
                assert!(one.equal(&features), "{what}, next {}: the features", next.is_some());
                assert!(!one.equal(&x), "{what}: the epilogue changed them");
                // The last block's: the same picture, the features left as they were.
                let (last, untouched) = (Rgb { keep: false, ..rgb }, x.copy());
                let declined = k.epilogue_rgb(&untouched, &fin, &last).unwrap();
                if next.is_some() {
                    assert!(declined.is_none(), "{what}: scaling features nobody keeps");
                } else {
                    assert!(declined.unwrap().equal(&picture), "{what}: the last block's picture");
                    assert!(untouched.equal(&x), "{what}: the last block's features are not written");
                }
            }
            // With the next layer's scaling folded into the epilogue instead, it declines.
            let post = Finish { post: Some(&s), ..fin };
            let rgb = Rgb { wm: &wm, bias: &bias, clamp: None, prev: None, next: None, keep: true };
            assert!(k.epilogue_rgb(&x.copy(), &post, &rgb).unwrap().is_none(), "{what}");
        }
    }
}

/// The CPU has its passes (the host's kernels only inside [`with_host_kernels`]), and the
/// host's kernels take no layout they cannot read.
#[test]
fn tensors_elsewhere_or_in_other_layouts_are_not_taken() {
    let passes = for_device(Device::Cpu).expect("the CPU's passes");
    assert!(!passes.filter());
    assert!(with_host_kernels(|| for_device(Device::Cpu)).is_some_and(Kernels::filter));
    assert!(with_tensor_ops(|| for_device(Device::Cpu)).is_none());
    assert!(!for_device(Device::Cpu).unwrap().filter(), "only while the closure runs");
    let k = host_kernels();
    let x = Tensor::ones([1, 8, 4, 4], (Kind::Float, Device::Cpu));
    let s = Tensor::ones([1, 8], (Kind::Float, Device::Cpu));
    assert!(k.scale(&x, &s).unwrap().is_some());
    // NCHW with 9 pixels a channel, a strided view, a 3-D tensor, integers.
    for odd in [
        Tensor::ones([1, 8, 3, 3], (Kind::Float, Device::Cpu)),
        x.transpose(2, 3),
        x.view([8, 4, 4]),
        x.to_kind(Kind::Int),
    ] {
        assert!(k.scale(&odd, &s).unwrap().is_none(), "{:?} {:?}", odd.size(), odd.kind());
    }
}

/// The generator with its kernels (built for the host and launched there through the same
/// launchers as on a GPU) draws what it draws with tensor ops alone: each launch's arguments
/// and layouts, and how the blocks hand on the picture and the features scaled for the next
/// layer. In float32 and float16, with the upsampling filters folded, not folded (the
/// filtering epilogue kernel) and chosen by measurement block by block.
#[test]
fn the_generator_draws_the_same_with_its_kernels_on_the_host() {
    use crate::model::{GenerationParams, Model, NoiseMode, Precision};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/face");
    let mut model = Model::load(&dir, Device::Cpu).unwrap();
    let params: Vec<GenerationParams> = (0..3)
        .map(|s| GenerationParams { trunc: 0.7, noise_mode: NoiseMode::Const, ..model.default_params(s) })
        .collect();
    let pixels = |images: &Tensor| crate::model::to_pixels(images).unwrap().to_kind(Kind::Float);
    // Largest and mean difference in 8-bit levels.
    let levels = |a: &Tensor, b: &Tensor| {
        let d = (pixels(a) - pixels(b)).abs();
        (d.max().double_value(&[]), d.mean(Kind::Float).double_value(&[]))
    };
    model.set_precision(Precision::Fp32);
    let full = model.generate(&params).unwrap();
    for precision in [Precision::Fp32, Precision::Fp16] {
        model.set_precision(precision);
        for fold in [Some(false), Some(true), None] {
            let what = format!("{precision}, fold {fold:?}");
            model.set_fold_filters(fold);
            let plain = with_tensor_ops(|| model.generate(&params).unwrap());
            let names = ["epilogue", "up_epilogue", "epilogue_rgb", "scale"];
            let counted = names.map(launches);
            let with = with_host_kernels(|| model.generate(&params).unwrap());
            let ran = names.map(launches);
            let d = (&with - &plain).abs().max().double_value(&[]);
            let (largest, mean) = levels(&with, &plain);
            let (from_full, plain_from_full) = (levels(&with, &full), levels(&plain, &full));
            eprintln!(
                "{what}: kernels against tensor ops {d:.2e}, {largest} / {mean:.4} levels; against float32 \
                 {from_full:?} levels, the tensor ops {plain_from_full:?}"
            );
            if precision == Precision::Fp32 {
                // The same arithmetic in another order: float32's rounding, far below a level.
                assert!(d <= 1e-4, "{what}: {d}");
            } else {
                // The kernels round each value once where the tensor ops round after every
                // step, so float16 differs by up to an 8-bit level here and there, and the
                // kernels' pictures are no further from float32's than the tensor ops'.
                assert!(largest <= 2.0 && mean <= 0.1, "{what}: {largest} / {mean} levels");
                assert!(from_full.1 <= plain_from_full.1, "{what}: {from_full:?} against {plain_from_full:?}");
            }
            assert!(ran[2] > counted[2], "{what}: each block's last epilogue made its picture");
            assert!(ran[3] > counted[3], "{what}: the first block's input was scaled by the kernel");
            match fold {
                Some(true) => assert!(ran[0] > counted[0], "{what}: folded, the plain epilogue ran"),
                Some(false) => assert!(ran[1] > counted[1], "{what}: unfolded, the filtering epilogue ran"),
                None => {}
            }
        }
    }
}
