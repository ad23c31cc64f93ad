//! Figures for benchmarks' reports.

use std::time::Duration;

/// The `q` quantile (0.0 to 1.0) of `samples` by nearest rank; sorts them.
pub fn percentile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

/// A duration in milliseconds.
pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
