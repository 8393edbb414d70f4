//! The `pulsar-gateway` runtime: configuration, listeners, shared auth
//! ([`auth`]: Pulsar-style JWTs) and routing, the backends, and the admin
//! HTTP server. The binary in `main.rs` wires them together; tests and
//! benchmarks use them directly.

pub mod admin;
pub mod auth;
pub mod backend;
pub mod config;
pub mod listener;
pub mod shutdown;
pub mod websocket;
