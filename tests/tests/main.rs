//! Every integration test in one binary: one link instead of one per file (each would carry the
//! whole controller and proxy), which keeps a cold CI build small on disk and quick to link.
//! nextest still runs each test in its own process and in parallel; filter by module, e.g.
//! `cargo nextest run -p switchyard-tests -E 'test(/^etcd::/)'`.

// Test code: a failed setup step should panic loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support {
    pub mod etcd;
    pub mod providers;
}

mod acme;
mod cli;
mod config_reload;
mod conformance;
mod consul_catalog;
mod consul_kv;
mod controller_kill;
mod delta;
mod docker;
mod etcd;
mod examples;
mod kubernetes;
mod manifests;
mod mtls;
mod nack;
mod state_file;
mod swarm;
mod tls;
mod zero_downtime;
