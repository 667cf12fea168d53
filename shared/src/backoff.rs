//! Exponential backoff with full jitter, capped, reset after a healthy period (AWS "full jitter";
//! the same shape ztunnel and linkerd use for control-plane reconnects).

use std::time::Duration;

/// Backoff state. `next_delay` grows the ceiling; `reset` brings it back to `base`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    ceiling: Duration,
}

impl Backoff {
    /// A backoff whose delays are uniformly drawn from `[0, ceiling]`, the ceiling doubling from
    /// `base` up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            ceiling: base,
        }
    }

    /// The delay to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling_ms = u64::try_from(self.ceiling.as_millis()).unwrap_or(u64::MAX);
        let delay = Duration::from_millis(fastrand::u64(0..=ceiling_ms));
        self.ceiling = (self.ceiling * 2).min(self.max);
        delay
    }

    /// Back to the initial ceiling, after a healthy period.
    pub fn reset(&mut self) {
        self.ceiling = self.base;
    }

    /// The current ceiling (for logs and tests).
    pub fn ceiling(&self) -> Duration {
        self.ceiling
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_a_doubling_capped_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let mut ceiling = Duration::from_millis(100);
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= ceiling, "{d:?} > {ceiling:?}");
            ceiling = (ceiling * 2).min(Duration::from_secs(30));
        }
        assert_eq!(b.ceiling(), Duration::from_secs(30));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }
}
