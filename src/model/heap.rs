//! How the process's heap serves libtorch's CPU tensors. glibc hands out blocks over its
//! mmap threshold (at most 32 MiB by its own adjustment) straight from the kernel and gives
//! them back on free, so a batch whose activations are larger (a 128 px generator at batch 8
//! makes 32 MiB tensors) has every page of them faulted in and zeroed again on every pass:
//! over a million page faults in 40 batches, some 40 % of a pass's time. Raising the
//! threshold, and the amount of free memory kept before trimming, lets those blocks be reused.
//! Owns nothing else; glibc's own variables, when set, win.

/// Blocks up to this size come from the heap and are reused, not mapped per allocation.
pub const MMAP_THRESHOLD: usize = 256 << 20;
/// Free memory at the top of a heap kept for reuse instead of being given back.
pub const TRIM_THRESHOLD: usize = 256 << 20;

/// glibc's variables that set the same thresholds: when any is set, the heap is left as told.
const GLIBC_VARIABLES: [&str; 3] = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"];

/// Keeps large freed blocks for reuse (see the module's note). Call once at start, before
/// large allocations. Returns whether the thresholds were set: false when glibc's variables
/// are set, glibc refuses the values, or the C library is not glibc.
pub fn keep_large_blocks() -> bool {
    if GLIBC_VARIABLES.iter().any(|v| std::env::var_os(v).is_some()) {
        return false;
    }
    set_thresholds()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_thresholds() -> bool {
    let as_int = |v: usize| libc::c_int::try_from(v).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only sets allocator parameters; it is called before the threads that
    // allocate heavily exist, and glibc serialises it against allocation anyway.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, as_int(MMAP_THRESHOLD)) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, as_int(TRIM_THRESHOLD)) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_thresholds() -> bool {
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    /// Minor page faults taken by this thread so far.
    fn thread_faults() -> i64 {
        // SAFETY: getrusage fills the struct it is given.
        unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut usage), 0);
            usage.ru_minflt
        }
    }

    #[test]
    fn a_freed_large_tensor_is_reused_without_faulting_its_pages_again() {
        // 40 MiB: above glibc's largest own threshold (32 MiB), so without the setting every
        // allocation is a fresh mapping whose 10,240 pages fault on first write (measured:
        // every pass faults all of them).
        const BYTES: usize = 40 << 20;
        const PAGE: usize = 4096;
        if GLIBC_VARIABLES.iter().any(|v| std::env::var_os(v).is_some()) {
            eprintln!("glibc's heap variables are set: they decide, not this setting");
            return;
        }
        assert!(keep_large_blocks(), "glibc refused the thresholds");
        // Written page by page from this thread (libtorch's fill would split the pages among
        // its threads, whose faults this thread's count does not see).
        let pass = || {
            let t = Tensor::empty([BYTES as i64], (Kind::Uint8, Device::Cpu));
            let p = t.data_ptr() as *mut u8;
            let before = thread_faults();
            for page in 0..BYTES / PAGE {
                // SAFETY: within the tensor's BYTES bytes, which nothing else reads or writes.
                unsafe { p.add(page * PAGE).write_volatile(1) };
            }
            thread_faults() - before
        };
        // The heap settles within the first passes (glibc may still hand out new memory
        // while its arenas grow); from then on the block is reused. Other tests of this
        // binary run beside this one and may share its arena, taking the block now and then
        // (seen once: the last 3 of 10 passes faulted), so reuse is shown by most passes
        // taking no faults; without the setting every pass faults every page.
        let warm: Vec<i64> = (0..20).map(|_| pass()).collect();
        let settled: Vec<i64> = (0..20).map(|_| pass()).collect();
        let pages = (BYTES / PAGE) as i64;
        let reused = settled.iter().filter(|&&f| f < pages / 100).count();
        assert!(reused >= settled.len() / 2, "page faults per pass of {pages} pages: {warm:?}, then {settled:?}");
    }
}
