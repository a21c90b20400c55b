//! Meridian: a geo-failover edge reverse proxy.
//!
//! A request is served in phases: [`geo`] finds the client's preferred
//! region, [`routing`] turns it and one [`state`] snapshot into an ordered
//! plan of backends (a pure function), [`proxy`] walks the plan through the
//! [`upstream`] client with streaming [`body`] and [`request_body`] types and
//! [`headers`] hygiene, retrying and hedging within the [`budget`] and the
//! delays [`latency`] suggests, and [`status_page`] answers when nothing can.
//! [`health`] probes backends and, with what live traffic reports, feeds the
//! single owner of the snapshot; [`server`] wires it all together,
//! [`admin`] serves the operators' API and [`ctl`] is its client.

#![warn(missing_docs)]

pub mod acme;
pub mod activity;
pub mod admin;
pub mod alerts;
pub mod atomic_file;
pub mod body;
pub mod budget;
pub mod closing;
pub mod concurrency;
pub mod config;
mod connections;
pub mod ctl;
pub mod demo;
pub mod discovery;
pub mod framing;
pub mod generation;
pub mod geo;
pub mod headers;
pub mod health;
pub mod http1;
pub mod latency;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod proxy_protocol;
pub mod reload;
pub mod request_body;
pub mod routing;
pub mod server;
pub mod state;
pub mod status_page;
pub mod strict;
pub mod telemetry;
pub mod tls;
pub mod upstream;
