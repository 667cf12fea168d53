//! Simulators of services that cannot be installed on test machines. Each one implements only
//! the API surface Switchyard uses, written from the service's public API documentation, and is
//! named a *simulator* everywhere so nobody mistakes it for the real thing.

pub mod consul;
pub mod kube;
