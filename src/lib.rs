//! Bulwark: a secure, single-binary job server speaking the Open Job Spec.
//!
//! The map: [`http`] is the edge; it authenticates through the [`auth`] store and drives the
//! [`queue`] actor, which owns the job state machine over the [`store`]. [`job`] holds the pure
//! job rules (envelope validation, retry timing, wire form). [`tls`] is transport security.
//! [`app`] wires it all together.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod job;
pub mod limiter;
pub mod metrics;
pub mod queue;
pub mod rules;
pub mod secrets;
pub mod services;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod vault;
