//! Load balancing: a smooth weighted round-robin schedule computed once per service when a
//! snapshot is applied, walked lock-free with one atomic counter per request. The counter lives
//! in the service handle, which the applier carries over to the next table when the service did
//! not change, so rotation continues across configuration changes.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Longest schedule kept; larger weight sums are scaled down proportionally.
const MAX_SCHEDULE: u64 = 4096;

/// A weighted round-robin over `n` members.
#[derive(Debug)]
pub struct Wrr {
    schedule: Box<[u32]>,
    next: AtomicUsize,
}

impl Wrr {
    /// Builds the schedule for these weights. Members with weight 0 never get picked; when every
    /// weight is 0 the schedule is empty and [`Wrr::pick`] returns `None`.
    pub fn new(weights: &[u32]) -> Self {
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        let weights: Vec<u64> = if total > MAX_SCHEDULE {
            // Scale down, keeping every non-zero member at least once.
            weights
                .iter()
                .map(|w| {
                    let w = u64::from(*w);
                    if w == 0 {
                        0
                    } else {
                        (w * MAX_SCHEDULE / total).max(1)
                    }
                })
                .collect()
        } else {
            weights.iter().map(|w| u64::from(*w)).collect()
        };
        let total: u64 = weights.iter().sum();
        // nginx's smooth weighted round robin: spreads heavy members instead of bursting them.
        let mut current = vec![0i64; weights.len()];
        let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        let total_i = i64::try_from(total).unwrap_or(i64::MAX);
        for _ in 0..total {
            let mut best = 0usize;
            for (i, w) in weights.iter().enumerate() {
                current[i] += i64::try_from(*w).unwrap_or(0);
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total_i;
            schedule.push(u32::try_from(best).unwrap_or(0));
        }
        Self {
            schedule: schedule.into_boxed_slice(),
            next: AtomicUsize::new(0),
        }
    }

    /// The next member index, or `None` when nothing can be picked.
    #[inline]
    pub fn pick(&self) -> Option<usize> {
        if self.schedule.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.schedule
            .get(n % self.schedule.len())
            .map(|i| *i as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.schedule.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(w: &Wrr, members: usize, picks: usize) -> Vec<usize> {
        let mut c = vec![0; members];
        for _ in 0..picks {
            c[w.pick().unwrap()] += 1;
        }
        c
    }

    #[test]
    fn equal_weights_alternate() {
        let w = Wrr::new(&[1, 1]);
        let picks: Vec<_> = (0..4).map(|_| w.pick().unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 0, 1]);
    }

    #[test]
    fn weights_are_proportional_and_smooth() {
        let w = Wrr::new(&[3, 1]);
        assert_eq!(counts(&w, 2, 400), vec![300, 100]);
        let w = Wrr::new(&[5, 1, 1]);
        let seq: Vec<_> = (0..7).map(|_| w.pick().unwrap()).collect();
        // Smooth: the heavy member is not picked five times in a row.
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn zero_weight_is_never_picked() {
        let w = Wrr::new(&[0, 2]);
        assert_eq!(counts(&w, 2, 10), vec![0, 10]);
        assert!(Wrr::new(&[0, 0]).pick().is_none());
        assert!(Wrr::new(&[]).pick().is_none());
    }

    #[test]
    fn huge_weights_are_scaled() {
        let w = Wrr::new(&[u32::MAX, 1]);
        let c = counts(&w, 2, 4096);
        assert!(c[1] >= 1 && c[0] > 4000, "{c:?}");
    }
}
