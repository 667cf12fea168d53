//! Allocations kept for reuse on the request path: what a finished request or connection gives
//! back, the next one takes instead of going to `malloc`.
//!
//! - Per-thread lists ([`Spares`], [`take`], [`keep`]): the boxes of fields kept as received,
//!   connections' read buffers. Never panics: while its thread ends, a list is gone and what is
//!   given back is simply dropped.
//! - [`FutureBoxes`]: the boxes of one future type (plain connections' ~4.5 KB futures), shared
//!   by the tasks that run them. A future's type has no name a thread-local could use, so its
//!   boxes live in a value of their own, behind a lock.

use std::{cell::RefCell, pin::Pin, sync::Mutex, thread::LocalKey};

/// A thread's list of spares.
pub(crate) type Spares<T> = RefCell<Vec<T>>;

/// One of `list`'s spares, if it has any.
pub(crate) fn take<T: 'static>(list: &'static LocalKey<Spares<T>>) -> Option<T> {
    list.try_with(|spares| spares.try_borrow_mut().ok()?.pop())
        .ok()
        .flatten()
}

/// Keeps `item` in `list` while it holds fewer than `max`; else it is dropped.
pub(crate) fn keep<T: 'static>(list: &'static LocalKey<Spares<T>>, item: T, max: usize) {
    let _ = list.try_with(|spares| {
        if let Ok(mut spares) = spares.try_borrow_mut()
            && spares.len() < max
        {
            spares.push(item);
        }
    });
}

/// Boxes of futures of type `F`: a finished future's box is kept, up to a bound, for the next
/// future of that type. A kept box takes its next future with [`Pin::set`], which drops the
/// finished one in place (a finished `async fn` holds nothing) and writes the new one where it was.
pub(crate) struct FutureBoxes<F> {
    kept: Mutex<Vec<Pin<Box<F>>>>,
    max: usize,
}

impl<F: Future> FutureBoxes<F> {
    /// Keeps at most `max` boxes.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            kept: Mutex::new(Vec::new()),
            max,
        }
    }

    /// `future` in a kept box, or in a new one if none is kept.
    pub(crate) fn boxed(&self, future: F) -> Pin<Box<F>> {
        let kept = self.kept.lock().ok().and_then(|mut kept| kept.pop());
        match kept {
            Some(mut boxed) => {
                boxed.set(future);
                boxed
            }
            None => Box::pin(future),
        }
    }

    /// Keeps the box of `done`, a future that has finished (it is never polled again).
    pub(crate) fn keep(&self, done: Pin<Box<F>>) {
        if let Ok(mut kept) = self.kept.lock()
            && kept.len() < self.max
        {
            kept.push(done);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    thread_local! {
        static LIST: Spares<u32> = const { RefCell::new(Vec::new()) };
    }

    #[test]
    fn spares_are_kept_up_to_their_bound_and_taken_back() {
        assert_eq!(take(&LIST), None);
        for i in 0..5 {
            keep(&LIST, i, 3);
        }
        assert_eq!(LIST.with_borrow(Vec::len), 3);
        assert_eq!(take(&LIST), Some(2));
        assert_eq!(take(&LIST), Some(1));
        assert_eq!(take(&LIST), Some(0));
        assert_eq!(take(&LIST), None);
    }

    async fn count_into(counter: Arc<AtomicUsize>, n: usize) {
        counter.fetch_add(n, Ordering::SeqCst);
    }

    /// A finished future's box takes the next future, which then runs as its own; boxes beyond
    /// the bound are dropped.
    #[tokio::test]
    async fn a_finished_futures_box_serves_the_next_one() {
        let boxes = FutureBoxes::new(1);
        let counter = Arc::new(AtomicUsize::new(0));
        let mut first = boxes.boxed(count_into(Arc::clone(&counter), 1));
        let first_at: *const _ = &*first;
        first.as_mut().await;
        boxes.keep(first);
        let mut second = boxes.boxed(count_into(Arc::clone(&counter), 10));
        assert_eq!(
            &*second as *const _, first_at,
            "the kept box was not reused"
        );
        second.as_mut().await;
        assert_eq!(counter.load(Ordering::SeqCst), 11);
        // The finished futures dropped what they held: only `counter` is left.
        assert_eq!(Arc::strong_count(&counter), 1);
        let mut third = boxes.boxed(count_into(Arc::clone(&counter), 100));
        assert_eq!(boxes.kept.lock().map(|k| k.len()).ok(), Some(0));
        third.as_mut().await;
        boxes.keep(second);
        boxes.keep(third);
        assert_eq!(boxes.kept.lock().map(|k| k.len()).ok(), Some(1));
        assert_eq!(counter.load(Ordering::SeqCst), 111);
    }
}
