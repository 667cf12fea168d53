//! Bounded polling: the only way the guarantee tests wait. A check returns `Ok(value)` when the
//! awaited state is reached and `Err(observation)` otherwise; on timeout the last observation is
//! in the panic message, so a failure says what the system looked like, not only that it was late.

use std::{future::Future, time::Duration};

/// Generous: CI machines have two cores and run test binaries in parallel.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// For anything that waits on a proxy's reconnection: its backoff grows to 30 s (full jitter),
/// so one unlucky draw can take that long on its own.
pub const RECONNECT_DEADLINE: Duration = Duration::from_secs(60);

/// How often a check runs; slow enough not to load two shared cores, fast enough to be prompt.
pub const INTERVAL: Duration = Duration::from_millis(100);

/// Runs `check` every [`INTERVAL`] until it returns `Ok`, or gives up after `deadline` with the
/// last observation (at least one check always runs, even past the deadline).
pub async fn poll<T, F, Fut>(deadline: Duration, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        let seen = match check().await {
            Ok(value) => return Ok(value),
            Err(seen) => seen,
        };
        if tokio::time::Instant::now() >= end {
            return Err(seen);
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

/// [`poll`], panicking on timeout with what was awaited and the last observation. Tests with
/// processes use [`crate::harness::Fleet::eventually`], which adds the processes' logs.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    match poll(deadline, check).await {
        Ok(value) => value,
        Err(seen) => panic!("timed out after {deadline:?} waiting for {what}; last seen: {seen}"),
    }
}
