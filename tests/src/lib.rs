//! `switchyard-tests`: test support shared by the integration tests in `tests/tests/` — the
//! process harness for the guarantee tests (`harness`), service simulators (named as such) — and
//! the `switchyard-echo` backend binary. See `tests/README.md`.

pub mod docker;
pub mod flags;
pub mod harness;
pub mod sim;
