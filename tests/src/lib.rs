//! `switchyard-tests`: test support shared by the integration tests in `tests/tests/` — service
//! simulators (named as such) — and the `switchyard-echo` backend binary. See `tests/README.md`.

pub mod docker;
pub mod sim;
