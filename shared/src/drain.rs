//! Graceful drain (after mini-redis' shutdown and ztunnel's drain): the owner keeps a [`Signal`];
//! every task that must finish before the process exits holds a [`Watch`] clone. `Signal::drain`
//! tells every watcher to wind down, then waits until every clone is dropped.

use tokio::sync::{mpsc, watch};

/// The owner's side.
#[derive(Debug)]
pub struct Signal {
    tx: watch::Sender<bool>,
    done: mpsc::Receiver<()>,
}

/// A holder's side; dropping it says "done".
#[derive(Clone, Debug)]
pub struct Watch {
    rx: watch::Receiver<bool>,
    _done: mpsc::Sender<()>,
}

/// A new drain pair.
pub fn channel() -> (Signal, Watch) {
    let (tx, rx) = watch::channel(false);
    let (done_tx, done) = mpsc::channel(1);
    (Signal { tx, done }, Watch { rx, _done: done_tx })
}

impl Signal {
    /// Signals every watcher and waits until all of them are dropped.
    pub async fn drain(mut self) {
        let _ = self.tx.send(true);
        // `recv` returns `None` once every sender (every `Watch`) is gone.
        while self.done.recv().await.is_some() {}
    }
}

impl Watch {
    /// Whether a drain has started.
    pub fn is_signaled(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once a drain has started.
    pub async fn signaled(&mut self) {
        let _ = self.rx.wait_for(|draining| *draining).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn drain_waits_for_every_holder() {
        let (signal, watch) = channel();
        let mut holder = watch.clone();
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
}
