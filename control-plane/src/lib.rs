//! `switchyard-controller`: watches configuration providers, merges and validates what they say,
//! compiles it into one versioned routing snapshot and streams it to every proxy over gRPC.
//!
//! Data flow: `provider` → `aggregate` → `compile` → `publish` → `server`. Traefik's configuration
//! language (`dynamic`, `compile::rule`) stops here: proxies only see the compiled snapshot.

pub mod acme;
pub mod aggregate;
pub mod app;
pub mod ca;
pub mod certs;
pub mod compile;
pub mod config;
pub mod dynamic;
pub mod join;
pub mod provider;
pub mod publish;
pub mod server;
pub mod status;
