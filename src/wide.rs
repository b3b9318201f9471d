//! `wide!`: a function whose body runs compiled for AVX2 where the CPU has it (closures
//! inside included) and for the baseline x86-64 otherwise, chosen when it is called. The
//! compositor's CPU filters, the encoder's conversion and its PNG filter are loops that the
//! compiler vectorises; AVX2 doubles their width. Nothing here changes a result: the same
//! operations run in the same order either way (Rust fuses no multiply-adds), so the bits
//! are the same.

/// Defines `fn $name` as written, run as described in [the module](self).
macro_rules! wide {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? $body
                // SAFETY: the CPU was just found to have AVX2.
                return unsafe { avx2($($arg),*) };
            }
            $body
        }
    };
}
