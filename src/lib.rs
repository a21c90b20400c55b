//! Meridian: a geo-failover edge reverse proxy.
pub mod config;
pub mod geo;
pub mod health;
pub mod routing;
pub mod state;
