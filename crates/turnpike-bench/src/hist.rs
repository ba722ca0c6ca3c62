//! A fixed-size, HDR-style log-linear histogram for latency samples.
//!
//! Values (nanoseconds) below 256 are stored exactly; above that each power
//! of two is split into 128 linear sub-buckets, so any reported quantile is
//! within 0.8 % of the true value. Memory is constant (~45 KiB) however many
//! samples are recorded. Values above [`Histogram::MAX_VALUE`] are clamped
//! (the exact maximum is still tracked separately).

/// Number of low bits kept exactly; sets the precision.
const SUB_BITS: u32 = 8;
const SUB_COUNT: u64 = 1 << SUB_BITS; // 256
const HALF: u64 = SUB_COUNT / 2; // 128
/// Highest bit length stored (values up to 2^40 ns ≈ 18 minutes).
const MAX_BITS: u32 = 40;
const BUCKETS: usize = (SUB_COUNT + (MAX_BITS - SUB_BITS) as u64 * HALF) as usize;

/// Log-linear histogram of `u64` samples (typically nanoseconds).
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// Largest value stored without clamping.
    pub const MAX_VALUE: u64 = (1 << MAX_BITS) - 1;

    /// Creates an empty histogram.
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            min: u64::MAX,
            max: 0,
            sum: 0,
        }
    }

    fn index(v: u64) -> usize {
        let v = v.min(Self::MAX_VALUE);
        let bits = 64 - v.leading_zeros();
        if bits <= SUB_BITS {
            return v as usize;
        }
        let shift = bits - SUB_BITS;
        // (v >> shift) is in [HALF, SUB_COUNT).
        (SUB_COUNT + u64::from(shift - 1) * HALF + ((v >> shift) - HALF)) as usize
    }

    /// Highest value that maps to bucket `i`.
    fn upper(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB_COUNT {
            return i;
        }
        let j = i - SUB_COUNT;
        let shift = j / HALF + 1;
        let mant = j % HALF + HALF;
        ((mant + 1) << shift) - 1
    }

    /// Records one sample.
    #[inline]
    pub fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    /// Adds all samples of `other` to `self`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// Number of samples recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Exact largest sample (0 if empty).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Exact smallest sample (0 if empty).
    pub fn min(&self) -> u64 {
        if self.total == 0 { 0 } else { self.min }
    }

    /// Arithmetic mean (0 if empty).
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// Value at quantile `q` in `[0, 1]`: the upper edge of the bucket that
    /// holds the `ceil(q * count)`-th smallest sample, clamped to the exact
    /// maximum. Returns 0 if empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::upper(i).min(self.max).max(self.min());
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_and_upper_are_consistent() {
        let mut prev = 0usize;
        for v in (0u64..5000).chain((13..40).map(|b| (1u64 << b) - 1)) {
            let i = Histogram::index(v);
            assert!(i < BUCKETS);
            assert!(Histogram::upper(i) >= v, "v={v} i={i}");
            if i > 0 {
                assert!(Histogram::upper(i - 1) < v, "v={v} i={i}");
            }
            assert!(i >= prev);
            prev = i;
        }
    }

    #[test]
    fn quantiles_are_close() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v * 10);
        }
        for (q, want) in [(0.5, 500_000.0), (0.99, 990_000.0), (0.999, 999_000.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.01, "q={q} got={got}");
        }
        assert_eq!(h.quantile(1.0), 1_000_000);
        assert_eq!(h.max(), 1_000_000);
        assert_eq!(h.min(), 10);
        assert_eq!(h.count(), 100_000);
    }

    #[test]
    fn empty_and_clamped() {
        let mut h = Histogram::new();
        assert_eq!(h.quantile(0.5), 0);
        h.record(u64::MAX);
        // Clamped into the last bucket, then bounded by the exact min/max.
        assert_eq!(Histogram::index(u64::MAX), BUCKETS - 1);
        assert_eq!(h.quantile(0.5), u64::MAX);
        assert_eq!(h.max(), u64::MAX);
        let mut g = Histogram::new();
        g.record(7);
        g.merge(&h);
        assert_eq!(g.count(), 2);
        assert_eq!(g.quantile(0.5), 7);
    }
}
