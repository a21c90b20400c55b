//! Meridian: a geo-failover edge reverse proxy.
pub mod activity;
pub mod admin;
pub mod body;
pub mod config;
pub mod demo;
pub mod geo;
pub mod headers;
pub mod health;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod state;
pub mod status_page;
pub mod telemetry;
pub mod upstream;
