//! Latent vectors that mean what NumPy's seeds mean: `np.random.RandomState(seed).randn(n)`.
//!
//! Owns NumPy's legacy Mersenne Twister seeding and its legacy polar Gaussian, so that seed 42
//! here and seed 42 in NVIDIA's `gen_images.py` start from the same `z`. Knows nothing of
//! tensors or models.

const N: usize = 624;
const M: usize = 397;

/// MT19937 seeded the way NumPy's `RandomState(int)` seeds it (`init_genrand`).
pub struct LegacyRandomState {
    key: [u32; N],
    pos: usize,
    cached_gauss: Option<f64>,
}

impl LegacyRandomState {
    pub fn new(seed: u32) -> Self {
        let mut key = [0u32; N];
        key[0] = seed;
        for i in 1..N {
            let prev = key[i - 1];
            key[i] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(i as u32);
        }
        Self { key, pos: N, cached_gauss: None }
    }

    fn refill(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        for i in 0..N {
            let y = (self.key[i] & UPPER) | (self.key[(i + 1) % N] & LOWER);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            self.key[i] = self.key[(i + M) % N] ^ (y >> 1) ^ mag;
        }
        self.pos = 0;
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.pos >= N {
            self.refill();
        }
        let mut y = self.key[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// A double in [0, 1) with 53 random bits, as NumPy's `random_sample`.
    pub fn next_f64(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// NumPy's legacy standard normal (Marsaglia's polar method, second value cached).
    pub fn next_gauss(&mut self) -> f64 {
        if let Some(g) = self.cached_gauss.take() {
            return g;
        }
        loop {
            let x1 = 2.0 * self.next_f64() - 1.0;
            let x2 = 2.0 * self.next_f64() - 1.0;
            let r2 = x1 * x1 + x2 * x2;
            if r2 < 1.0 && r2 != 0.0 {
                let f = (-2.0 * r2.ln() / r2).sqrt();
                self.cached_gauss = Some(f * x1);
                return f * x2;
            }
        }
    }
}

/// `np.random.RandomState(seed).randn(len)`.
pub fn randn(seed: u32, len: usize) -> Vec<f64> {
    let mut rng = LegacyRandomState::new(seed);
    (0..len).map(|_| rng.next_gauss()).collect()
}

/// `len` standard normal f32 values for a noise stream: a fixed function of (`seed`,
/// `stream`), so "random" noise repeats for the same seed (SplitMix64 + Box-Muller).
pub fn noise(seed: u64, stream: u64, len: usize) -> Vec<f32> {
    let mut state = seed ^ stream.wrapping_mul(0xd1b5_4a32_d192_ed03);
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        // 53 random bits in (0, 1].
        (((z ^ (z >> 31)) >> 11) as f64 + 1.0) / 9_007_199_254_740_992.0
    };
    let mut out = Vec::with_capacity(len + 1);
    while out.len() < len {
        let (u1, u2) = (next(), next());
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((r * t.cos()) as f32);
        out.push((r * t.sin()) as f32);
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_words_match_the_mt19937_reference() {
        // The reference output of init_genrand(5489), the generator's default seed.
        let mut rng = LegacyRandomState::new(5489);
        assert_eq!(rng.next_u32(), 3_499_211_612);
        assert_eq!(rng.next_u32(), 581_869_302);
    }

    #[test]
    fn randn_matches_the_values_numpy_prints() {
        // `np.random.RandomState(seed).randn(5).tolist()` as NumPy printed it.
        let expected: [(u32, [f64; 5]); 3] = [
            (0, [1.764052345967664, 0.4001572083672233, 0.9787379841057392, 2.240893199201458, 1.8675579901499675]),
            (
                42,
                [
                    0.4967141530112327,
                    -0.13826430117118466,
                    0.6476885381006925,
                    1.5230298564080254,
                    -0.23415337472333597,
                ],
            ),
            (
                4294967295,
                [0.6484086742306527, 0.6693235306338161, -1.0805437227474493, 0.2845010447986309, 0.11388773652167104],
            ),
        ];
        for (seed, values) in expected {
            let got = randn(seed, 5);
            for (g, e) in got.iter().zip(values) {
                assert!((g - e).abs() <= 1e-15 * e.abs().max(1.0), "seed {seed}: {g} != {e}");
            }
        }
    }

    #[test]
    fn noise_streams_repeat_and_look_normal() {
        let a = noise(7, 3, 20_000);
        assert_eq!(a, noise(7, 3, 20_000));
        assert_ne!(a, noise(7, 4, 20_000));
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.05, "mean {mean} var {var}");
    }
}
