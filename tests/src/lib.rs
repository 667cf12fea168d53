//! `switchyard-tests`: test support shared by the integration tests in `tests/tests/` — the
//! process harness for the guarantee tests (`harness`), service simulators (named as such) — the
//! `switchyard-echo` backend binary, and the benchmark helpers' flag parser (`flags`, for
//! `switchyard-bench` and `switchyard-subscribe`). See `tests/README.md`.

pub mod docker;
pub mod flags;
pub mod harness;
pub mod sim;
