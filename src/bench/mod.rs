//! Benchmarks (subcommands, not timed tests). Each compares figures measured in one run.

pub mod api;
pub mod fleet;
pub mod hostaway;
pub mod queue;
pub mod sync;

/// The p-th percentile (0..=100) of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
