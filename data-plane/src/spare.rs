//! Per-thread lists of allocations kept for reuse on the request path (the boxes of fields kept
//! as received, connections' read buffers): what a finished request or connection gives back,
//! the next one takes instead of going to `malloc`. Never panics: while its thread ends, a list
//! is gone and what is given back is simply dropped.

use std::{cell::RefCell, thread::LocalKey};

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

#[cfg(test)]
mod tests {
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
}
