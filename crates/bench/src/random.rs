//! Deterministic randomness for the load generator: a SplitMix64 generator
//! (reproducible from `--seed`) and a Zipf sampler by rejection-inversion
//! (Hörmann and Derflinger, "Rejection-inversion to generate variates from
//! monotone discrete distributions", 1996), constant memory for any size.

/// SplitMix64 (Steele, Lea, Flood 2014; Vigna's reference constants).
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// An independent stream for request `index` of a run seeded with `seed`:
    /// the same (seed, index) always gives the same stream, whatever the
    /// order in which concurrent requests are issued.
    pub fn for_request(seed: u64, index: u64) -> Self {
        let mut mixer = SplitMix64::new(seed ^ index.wrapping_mul(GOLDEN_GAMMA).rotate_left(17));
        SplitMix64::new(mixer.next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 53 bits of precision.
    pub fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..bound` (`bound` > 0), by multiply-shift (bias < 2^-32
    /// for the bounds used here).
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "bound must be positive");
        ((self.next_u64() as u128 * bound as u128) >> 64) as u64
    }

    /// Uniform in `low..=high`.
    pub fn between(&mut self, low: i64, high: i64) -> i64 {
        assert!(low <= high, "empty range");
        low + self.below((high - low) as u64 + 1) as i64
    }

    /// True with probability `percent` / 100.
    pub fn percent(&mut self, percent: u32) -> bool {
        self.below(100) < u64::from(percent)
    }
}

/// Zipf distribution over ranks `1..=count`: P(k) ∝ k^-exponent.
#[derive(Debug, Clone)]
pub struct Zipf {
    count: f64,
    exponent: f64,
    h_integral_x1: f64,
    h_integral_count: f64,
    s_factor: f64,
}

impl Zipf {
    /// `count` ≥ 1 ranks, `exponent` > 0.
    pub fn new(count: u64, exponent: f64) -> Result<Zipf, String> {
        if count == 0 {
            return Err("a zipf distribution needs at least one rank".into());
        }
        if !(exponent.is_finite() && exponent > 0.0) {
            return Err(format!(
                "the zipf exponent must be a positive number, not {exponent}"
            ));
        }
        let mut zipf = Zipf {
            count: count as f64,
            exponent,
            h_integral_x1: 0.0,
            h_integral_count: 0.0,
            s_factor: 0.0,
        };
        zipf.h_integral_x1 = zipf.h_integral(1.5) - 1.0;
        zipf.h_integral_count = zipf.h_integral(zipf.count + 0.5);
        zipf.s_factor = 2.0 - zipf.h_integral_inverse(zipf.h_integral(2.5) - zipf.h(2.0));
        Ok(zipf)
    }

    /// A rank in `1..=count`.
    pub fn sample(&self, random: &mut SplitMix64) -> u64 {
        loop {
            let u = self.h_integral_count
                + random.next_unit() * (self.h_integral_x1 - self.h_integral_count);
            let x = self.h_integral_inverse(u);
            let k = (x + 0.5).floor().clamp(1.0, self.count);
            if k - x <= self.s_factor || u >= self.h_integral(k + 0.5) - self.h(k) {
                return k as u64;
            }
        }
    }

    /// The exact probability of `rank`: k^-s / H(n, s). O(n): for tests.
    #[cfg(test)]
    pub fn probability(&self, rank: u64) -> f64 {
        let normalisation: f64 = (1..=self.count as u64)
            .map(|k| (k as f64).powf(-self.exponent))
            .sum();
        (rank as f64).powf(-self.exponent) / normalisation
    }

    fn h(&self, x: f64) -> f64 {
        (-self.exponent * x.ln()).exp()
    }

    /// ∫ h = (x^(1-s) - 1) / (1 - s), continuous at s = 1 (ln x).
    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        helper_expm1_over_x((1.0 - self.exponent) * log_x) * log_x
    }

    fn h_integral_inverse(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.exponent)).max(-1.0);
        (helper_log1p_over_x(t) * x).exp()
    }
}

/// ln(1 + x) / x, accurate near 0.
fn helper_log1p_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// (e^x - 1) / x, accurate near 0.
fn helper_expm1_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_sequence_and_is_deterministic() {
        // Reference outputs of splitmix64.c (Vigna) from state 0.
        let mut random = SplitMix64::new(0);
        assert_eq!(random.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(random.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(random.next_u64(), 0x06C4_5D18_8009_454F);
        let run = |seed| {
            let mut random = SplitMix64::new(seed);
            (0..1_000).map(|_| random.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42), "same seed, same sequence");
        assert_ne!(run(42), run(43), "another seed, another sequence");
        let per_request = |seed, index| SplitMix64::for_request(seed, index).next_u64();
        assert_eq!(per_request(7, 12), per_request(7, 12));
        assert_ne!(per_request(7, 12), per_request(7, 13));
        assert_ne!(per_request(7, 12), per_request(8, 12));
    }

    #[test]
    fn uniform_helpers_stay_in_range_and_cover_it() {
        let mut random = SplitMix64::new(3);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            let unit = random.next_unit();
            assert!((0.0..1.0).contains(&unit));
            seen[random.below(10) as usize] += 1;
            let value = random.between(-2, 2);
            assert!((-2..=2).contains(&value));
        }
        assert!(
            seen.iter().all(|count| (800..1_200).contains(count)),
            "{seen:?}"
        );
    }

    /// Rank frequencies over 100,000 samples, within 4 standard deviations
    /// of the binomial count expected from the exact probabilities.
    fn assert_follows_theory(count: u64, exponent: f64, seed: u64) {
        let zipf = Zipf::new(count, exponent).unwrap();
        let mut random = SplitMix64::new(seed);
        let samples = 100_000u64;
        let mut frequencies = vec![0u64; count as usize + 1];
        for _ in 0..samples {
            let rank = zipf.sample(&mut random);
            assert!(
                (1..=count).contains(&rank),
                "rank {rank} out of 1..={count}"
            );
            frequencies[rank as usize] += 1;
        }
        for rank in [1, 2, 3, 10, count.min(100)] {
            let probability = zipf.probability(rank);
            let expected = probability * samples as f64;
            let deviation = (samples as f64 * probability * (1.0 - probability)).sqrt();
            let observed = frequencies[rank as usize] as f64;
            assert!(
                (observed - expected).abs() <= 4.0 * deviation + 1.0,
                "n={count} s={exponent} rank {rank}: observed {observed}, expected {expected:.1} ± {deviation:.1}"
            );
        }
    }

    #[test]
    fn zipf_rank_frequencies_follow_theory() {
        assert_follows_theory(1_000, 1.1, 1);
        assert_follows_theory(1_000, 1.0, 2);
        assert_follows_theory(50, 0.5, 3);
        assert_follows_theory(100_000, 1.3, 4);
        // Rank 1 of 1,000 at s = 1.1 is 17.94% of the draws (1 / H(1000, 1.1)).
        let zipf = Zipf::new(1_000, 1.1).unwrap();
        assert!((zipf.probability(1) - 0.179_442).abs() < 1e-5);
    }

    #[test]
    fn zipf_is_deterministic_and_refuses_bad_parameters() {
        let zipf = Zipf::new(1_000, 1.1).unwrap();
        let draw = |seed| {
            let mut random = SplitMix64::new(seed);
            (0..100)
                .map(|_| zipf.sample(&mut random))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(9), draw(9));
        assert!(Zipf::new(0, 1.1).is_err());
        assert!(Zipf::new(10, 0.0).is_err());
        assert!(Zipf::new(10, f64::NAN).is_err());
        let single = Zipf::new(1, 2.0).unwrap();
        let mut random = SplitMix64::new(1);
        assert!((0..100).all(|_| single.sample(&mut random) == 1));
    }
}
