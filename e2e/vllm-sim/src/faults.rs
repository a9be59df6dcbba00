//! Fault injection: requests answered 500, streams cut mid-way.
//!
//! Each decision is an independent draw against its rate; a rate of 0 never
//! draws (no RNG on the hot path) and a rate of 1 always fires, so tests can
//! rely on either without flakiness.

/// Fault rates from `--sim-error-rate` and `--sim-drop-rate`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    error_rate: f64,
    drop_rate: f64,
}

impl Faults {
    /// Faults with the given (validated, 0..=1) rates.
    pub fn new(error_rate: f64, drop_rate: f64) -> Self {
        Faults {
            error_rate,
            drop_rate,
        }
    }

    /// Whether this request should fail with a 500 before it is scheduled.
    pub fn inject_error(&self) -> bool {
        draw(self.error_rate)
    }

    /// For a stream that will emit `tokens` tokens: the token index after which
    /// the connection is cut, or `None` to let the stream finish. The cut lands
    /// halfway, so the client has seen some tokens but never `[DONE]`.
    pub fn drop_after(&self, tokens: u64) -> Option<u64> {
        draw(self.drop_rate).then_some(tokens / 2)
    }
}

fn draw(rate: f64) -> bool {
    if rate <= 0.0 {
        false
    } else if rate >= 1.0 {
        true
    } else {
        rand::random::<f64>() < rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extreme_rates_are_deterministic() {
        let never = Faults::new(0.0, 0.0);
        let always = Faults::new(1.0, 1.0);
        for _ in 0..100 {
            assert!(!never.inject_error());
            assert!(never.drop_after(10).is_none());
            assert!(always.inject_error());
            assert_eq!(always.drop_after(10), Some(5));
        }
    }

    #[test]
    fn fractional_rate_fires_sometimes() {
        let half = Faults::new(0.5, 0.0);
        let fired = (0..2000).filter(|_| half.inject_error()).count();
        assert!((700..1300).contains(&fired), "{fired}");
    }
}
