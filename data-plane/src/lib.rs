//! `switchyard-proxy`: subscribes to a controller, validates and persists each snapshot, and
//! serves HTTP from the last one it validated — with or without a controller.
//!
//! Request path: `listener` → `proxy` → `router` / `middleware` / `state` (balancers), reading
//! only the `ArcSwap<Table>`. Control path: `subscriber` → `runtime::apply` (→ `state`, `store`,
//! `listener`).

pub mod acme_challenge;
pub mod admin;
pub mod app;
pub mod balance;
pub mod join;
pub mod listener;
pub mod middleware;
pub mod proxy;
pub mod router;
pub mod runtime;
mod spare;
pub mod state;
pub mod status;
pub mod store;
pub mod subscriber;
pub mod tls;
pub mod upstream;
