//! The integration tests: one test binary with a module per area, so the crate and its
//! dependencies are linked once. Every test runs the real `bulwark` binary (or, for
//! `conformance_engine`, the conformance runner without a server).
//!
//! Run one area with `cargo test --test integration api_leases::`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod conformance;

mod api_access;
mod api_actions;
mod api_audit;
mod api_auth;
mod api_backpressure;
mod api_bad_input;
mod api_edge;
mod api_identity;
mod api_leases;
mod api_limits;
mod api_limits_payload;
mod api_metrics;
mod api_sessions;
mod conformance_backpressure;
mod conformance_core;
mod conformance_engine;
mod conformance_tls;
mod log_hygiene;
mod panics;
mod restart_durability;
mod secrets_and_keys;
mod tls;
mod vault;
