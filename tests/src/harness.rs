//! The process harness for the guarantee tests (`tests/tests/{config_reload,controller_kill,
//! state_file,nack,zero_downtime,cli}.rs`): the real `switchyard-controller`, `switchyard-proxy`
//! and `switchyard-echo` binaries as separate processes, each with its log in the fleet's temp dir,
//! killed with SIGKILL by PID (never by name) and always on drop; free loopback ports; bounded
//! polling; HTTP and gRPC clients that return observations instead of panicking.
//!
//! Everything here is test support: a setup step that cannot succeed (a binary missing, a temp dir
//! that cannot be created) panics at once with the reason and the fix, so a test never silently
//! checks less than it claims.

// A failed setup step must stop the test loudly, with the reason in the message.
#![allow(clippy::expect_used)]

pub mod fleet;
pub mod grpc;
pub mod http;
pub mod poll;
pub mod process;

pub use fleet::{Echo, Fleet, ProxyNode, free_port};
pub use poll::{DEADLINE, RECONNECT_DEADLINE, eventually};
pub use process::{Process, binary, run_cli};
