//! Graceful drain (after mini-redis' shutdown and ztunnel's drain): the owner keeps a [`Signal`];
//! every task that must finish before the process exits holds a [`Watch`] clone. `Signal::drain`
//! tells every watcher to wind down, then waits until every clone is dropped.
//!
//! Watching takes `&self`, so one connection's `Watch` serves every wait of that connection (the
//! first bytes, each wait for a request) and its "has the drain started?" questions in between,
//! without a clone per wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Notify, mpsc};

/// The owner's side. Dropped without [`Signal::drain`], it still starts the drain (nobody is
/// left to wait for the watchers).
#[derive(Debug)]
pub struct Signal {
    shared: Arc<Shared>,
    done: mpsc::Receiver<()>,
}

/// A holder's side; dropping it says "done".
#[derive(Clone, Debug)]
pub struct Watch {
    shared: Arc<Shared>,
    _done: mpsc::Sender<()>,
}

#[derive(Debug, Default)]
struct Shared {
    draining: AtomicBool,
    notify: Notify,
}

/// A new drain pair.
pub fn channel() -> (Signal, Watch) {
    let shared = Arc::new(Shared::default());
    let (done_tx, done) = mpsc::channel(1);
    (
        Signal {
            shared: Arc::clone(&shared),
            done,
        },
        Watch {
            shared,
            _done: done_tx,
        },
    )
}

impl Signal {
    /// Signals every watcher and waits until all of them are dropped.
    pub async fn drain(mut self) {
        self.start();
        // `recv` returns `None` once every sender (every `Watch`) is gone.
        while self.done.recv().await.is_some() {}
    }

    fn start(&self) {
        // Set before the wakeups: a watcher woken, or one that looks only afterwards, sees it.
        self.shared.draining.store(true, Ordering::SeqCst);
        self.shared.notify.notify_waiters();
    }
}

impl Drop for Signal {
    fn drop(&mut self) {
        self.start();
    }
}

impl Watch {
    /// Whether a drain has started.
    pub fn is_signaled(&self) -> bool {
        self.shared.draining.load(Ordering::SeqCst)
    }

    /// Resolves once a drain has started.
    pub async fn signaled(&self) {
        // `notify_waiters` wakes every `Notified` made before it, polled or not: made before the
        // flag is read, this one cannot miss a drain that starts in between.
        let notified = self.shared.notify.notified();
        if self.is_signaled() {
            return;
        }
        notified.await;
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Waker};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn drain_waits_for_every_holder() {
        let (signal, watch) = channel();
        let holder = watch.clone();
        drop(watch);
        let task = tokio::spawn(async move {
            holder.signaled().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(holder);
            true
        });
        signal.drain().await;
        assert!(task.await.unwrap());
    }

    fn is_ready(fut: std::pin::Pin<&mut impl Future<Output = ()>>) -> bool {
        fut.poll(&mut Context::from_waker(Waker::noop())).is_ready()
    }

    /// A wait made before the drain starts, polled or not yet, ends with it; one made after
    /// ends at once; and the watcher can ask meanwhile.
    #[test]
    fn every_wait_sees_the_drain() {
        let (signal, watch) = channel();
        let mut polled = pin!(watch.signaled());
        let mut unpolled = pin!(watch.signaled());
        assert!(!is_ready(polled.as_mut()));
        assert!(!watch.is_signaled());
        signal.start();
        assert!(watch.is_signaled());
        assert!(is_ready(polled.as_mut()));
        assert!(is_ready(unpolled.as_mut()));
        assert!(is_ready(pin!(watch.signaled())));
    }

    #[test]
    fn a_dropped_signal_starts_the_drain() {
        let (signal, watch) = channel();
        let mut waiting = pin!(watch.signaled());
        assert!(!is_ready(waiting.as_mut()));
        drop(signal);
        assert!(watch.is_signaled());
        assert!(is_ready(waiting.as_mut()));
    }
}
