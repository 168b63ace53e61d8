//! The `letl` binary's library: the clap CLI and its HTTP client, the TOML config and its
//! validation, the HTTP API (axum), tracing set-up, signals, and the wiring that turns a config
//! into running actors. [`node::start`] takes already-built parts and a shutdown future, so tests
//! and the simulator run the same code that production runs.
//!
//! This is the only crate that knows about clap, axum, reqwest, TOML or process signals. It
//! never touches a tier's files or the index directly: it goes through the tier actors.

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod error;
pub mod letl;
pub mod metrics;
pub mod move_jobs;
pub mod moves;
pub mod node;
pub mod pipelines;
pub mod places;
pub mod rebalance;
pub mod server;
pub mod service;
pub mod tasks;
pub mod token;
pub mod transforms;
