//! Deterministic fault injection shared by every simulator.
//!
//! The decision for the n-th provider request is a pure function of
//! `(seed, n, probabilities)`, so replaying the same request order against a
//! simulator started with the same seed yields the same fault sequence.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// Fault probabilities (0.0..=1.0 each) and their timings.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Faults {
    /// Answer 500 with the provider's error shape.
    pub error_5xx: f64,
    /// Answer the provider's short-term rate-limit response (burst throttling).
    pub burst_429: f64,
    /// Hold the request `timeout_ms`, then drop the connection without a response.
    pub timeout: f64,
    /// Answer 200 with a truncated, unparseable body.
    pub malformed: f64,
    /// Add `slow_ms` of latency before answering normally.
    pub slow: f64,
    pub slow_ms: u64,
    /// 0 means the default of 30 000 ms.
    pub timeout_ms: u64,
}

impl Faults {
    pub fn effective_timeout_ms(&self) -> u64 {
        if self.timeout_ms == 0 {
            30_000
        } else {
            self.timeout_ms
        }
    }

    pub fn effective_slow_ms(&self) -> u64 {
        if self.slow_ms == 0 {
            2_000
        } else {
            self.slow_ms
        }
    }
}

/// What to do with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAction {
    None,
    Error5xx,
    Burst429,
    Timeout { ms: u64 },
    Malformed,
    Slow { ms: u64 },
}

/// Runtime-changeable fault settings plus the request counter.
pub struct FaultPlan {
    seed: u64,
    counter: AtomicU64,
    faults: RwLock<Faults>,
}

/// SplitMix64 finaliser: a cheap, well-mixed hash of (seed, n).
pub fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform value in [0, 1) derived from (seed, n).
pub fn unit(seed: u64, n: u64) -> f64 {
    (mix(seed, n) >> 11) as f64 / (1u64 << 53) as f64
}

impl FaultPlan {
    pub fn new(seed: u64, faults: Faults) -> Self {
        Self {
            seed,
            counter: AtomicU64::new(0),
            faults: RwLock::new(faults),
        }
    }

    pub fn get(&self) -> Faults {
        self.faults.read().map(|f| f.clone()).unwrap_or_default()
    }

    pub fn set(&self, faults: Faults) {
        if let Ok(mut f) = self.faults.write() {
            *f = faults;
        }
    }

    /// Number of provider requests that went through the fault decision.
    pub fn requests_seen(&self) -> u64 {
        self.counter.load(Ordering::Relaxed)
    }

    /// Number the next request (0-based) and decide its fault.
    pub fn next(&self) -> (u64, FaultAction) {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let f = match self.faults.read() {
            Ok(f) => f,
            Err(_) => return (n, FaultAction::None),
        };
        (n, Self::decide(&f, self.seed, n))
    }

    /// One uniform draw per request, compared against the cumulative
    /// probabilities in a fixed order.
    pub fn decide(f: &Faults, seed: u64, n: u64) -> FaultAction {
        let total = f.error_5xx + f.burst_429 + f.timeout + f.malformed + f.slow;
        if total <= 0.0 {
            return FaultAction::None;
        }
        let r = unit(seed ^ 0xFA17_FA17, n);
        let mut acc = f.error_5xx;
        if r < acc {
            return FaultAction::Error5xx;
        }
        acc += f.burst_429;
        if r < acc {
            return FaultAction::Burst429;
        }
        acc += f.timeout;
        if r < acc {
            return FaultAction::Timeout {
                ms: f.effective_timeout_ms(),
            };
        }
        acc += f.malformed;
        if r < acc {
            return FaultAction::Malformed;
        }
        acc += f.slow;
        if r < acc {
            return FaultAction::Slow {
                ms: f.effective_slow_ms(),
            };
        }
        FaultAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_rates_roughly_match() {
        let f = Faults {
            error_5xx: 0.2,
            burst_429: 0.1,
            ..Faults::default()
        };
        let a: Vec<_> = (0..1000).map(|n| FaultPlan::decide(&f, 7, n)).collect();
        let b: Vec<_> = (0..1000).map(|n| FaultPlan::decide(&f, 7, n)).collect();
        assert_eq!(a, b);
        let errs = a.iter().filter(|x| **x == FaultAction::Error5xx).count();
        assert!((150..250).contains(&errs), "{errs}");
        let c: Vec<_> = (0..1000).map(|n| FaultPlan::decide(&f, 8, n)).collect();
        assert_ne!(a, c);
    }
}
