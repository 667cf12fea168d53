//! `switchyard-shared`: the contract between the controller and the proxies — generated wire
//! types, the domain snapshot they convert to, the compiled rule tree, the version hash — and the
//! small runtime pieces both planes use (backoff, shutdown signal, logging setup). No Traefik here:
//! Traefik's configuration language stops at the controller.

pub mod backoff;
pub mod changes;
pub mod chunk;
pub mod delta;
pub mod drain;
pub mod pb;
pub mod rule;
pub mod shutdown;
pub mod snapshot;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod version;
mod wire;
