//! Traffic policy as Envoy enforces it (issue 4): circuit breakers, outlier detection,
//! retries and timeouts, local rate limits and fault injection.
//!
//! Each module holds a typed config compiled from the Envoy proto (`from_proto`, errors
//! naming the field path) and a runtime object whose hot path is atomics only. Time is
//! passed in explicitly (`Instant`) and randomness as an `Rng`, so every algorithm is a
//! deterministic, testable function. Load-balancing algorithms live in `upstream::lb`.
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use rand::Rng;

use crate::config::ConfigError;

pub mod breaker;
pub mod fault;
pub mod headers;
pub mod outlier;
pub mod ratelimit;
pub mod retry;

/// A `FractionalPercent`: `numerator` out of 100, 10 000 or 1 000 000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fraction {
    /// Numerator (capped at the denominator when evaluated).
    pub numerator: u32,
    /// 100, 10 000 or 1 000 000.
    pub denominator: u32,
}

// === impl Fraction ===

impl Fraction {
    /// 0%.
    pub const ZERO: Fraction = Fraction {
        numerator: 0,
        denominator: 100,
    };
    /// 100%.
    pub const ALL: Fraction = Fraction {
        numerator: 100,
        denominator: 100,
    };

    /// Converts the proto; an unknown denominator is an error.
    pub fn from_proto(p: &FractionalPercent, path: &str) -> Result<Self, ConfigError> {
        let denominator = match p.denominator {
            0 => 100,
            1 => 10_000,
            2 => 1_000_000,
            d => {
                return Err(ConfigError::new(
                    format!("{path}.denominator"),
                    format!("unknown value {d}"),
                ))
            }
        };
        Ok(Fraction {
            numerator: p.numerator,
            denominator,
        })
    }

    /// Envoy's `evaluateFractionalPercent`: `random % denominator < numerator`.
    pub fn hit(&self, random: u64) -> bool {
        self.numerator >= self.denominator
            || random % u64::from(self.denominator) < u64::from(self.numerator)
    }

    /// Evaluates with a fresh random number (no draw for 0% and 100%).
    pub fn roll(&self, rng: &mut impl Rng) -> bool {
        match self.numerator {
            0 => false,
            n if n >= self.denominator => true,
            _ => self.hit(rng.random()),
        }
    }
}
