//! The body of `GET /api/v1/status`, and the region and backend objects
//! that drain and undrain calls answer with.

use serde::Serialize;

use crate::health::BackendState;
use crate::state::{BackendRef, Event, Incident, RegionState, Snapshot, UpgradeCounts};

/// `GET /api/v1/status` body.
#[derive(Debug, Serialize)]
pub struct StatusBody {
    /// Every region.
    pub regions: Vec<RegionStatus>,
    /// The posted incident, `null` when none is set.
    pub incident: Option<Incident>,
    /// Drains kept for regions and backends the configuration does not
    /// have (any more): they apply again if the names come back.
    pub unconfigured_drains: UnconfiguredDrains,
    /// Recent transitions, oldest first.
    pub events: Vec<Event>,
    /// The HTTPS certificates and their expiry (empty without `listen.https`).
    pub certificates: Vec<crate::tls::CertStatus>,
    /// Automatic certificates, when `[tls.acme]` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme: Option<crate::acme::AcmeStatus>,
    /// Backend host names found by DNS, with their addresses.
    pub dns: Vec<crate::discovery::NameStatus>,
}

impl StatusBody {
    /// Fills in every region's open upgraded connections from `upgrades`.
    pub fn count_upgrades(mut self, upgrades: &UpgradeCounts) -> Self {
        for region in &mut self.regions {
            region.upgraded_connections = upgrades.get(&region.name);
        }
        self
    }
}

impl RegionStatus {
    /// Fills in the region's open upgraded connections from `upgrades`.
    pub fn count_upgrades(mut self, upgrades: &UpgradeCounts) -> Self {
        self.upgraded_connections = upgrades.get(&self.name);
        self
    }
}

/// Drains of names the configuration lacks.
#[derive(Debug, Serialize)]
pub struct UnconfiguredDrains {
    /// Region names.
    pub regions: Vec<String>,
    /// Backends, by region name and `host:port`.
    pub backends: Vec<BackendRef>,
}

/// One region in `/api/v1/status`.
#[derive(Debug, Serialize)]
pub struct RegionStatus {
    /// Name.
    pub name: String,
    /// State as routing sees it: `drained` when an operator drained it.
    pub state: RegionState,
    /// What its health checks alone say, drained or not.
    pub health: RegionState,
    /// Whether an operator drained it.
    pub drained: bool,
    /// Backends taking traffic: up and not drained.
    pub healthy_backends: usize,
    /// Recovered, but waiting out its fail-back hold before its users return.
    pub failback_held: bool,
    /// During slow start, the share of its users sent back to it, 0 to 1.
    pub slow_start_share: f64,
    /// Regions tried when this one cannot serve.
    pub failover: Vec<String>,
    /// Open upgraded connections (WebSockets) it carries.
    pub upgraded_connections: usize,
    /// The one failure domain every backend taking traffic shares (two or
    /// more of them): a single point of failure. Absent when spread.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_domain_warning: Option<String>,
    /// Backends.
    pub backends: Vec<BackendStatus>,
}

/// One backend in `/api/v1/status`.
#[derive(Debug, Serialize)]
pub struct BackendStatus {
    /// `host:port`.
    pub address: String,
    /// Observed health.
    pub state: BackendState,
    /// Whether an operator drained it.
    pub drained: bool,
    /// Why the last health check failed, if it did.
    pub last_error: Option<String>,
    /// Ejections in a row by passive checks.
    pub ejections: u32,
    /// Its failure domain (node, zone), reported by its health check or configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// For a backend found by DNS, the configured `name:port` it was found under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovered_from: Option<String>,
}

/// The status of region `index` in `snapshot`; its open upgraded
/// connections are live counters, not part of a snapshot, and are added by
/// [`RegionStatus::count_upgrades`].
pub fn region_status(snapshot: &Snapshot, index: usize) -> RegionStatus {
    let config = &snapshot.config;
    let (r, v) = (&config.regions[index], &snapshot.regions[index]);
    RegionStatus {
        name: r.name.clone(),
        state: v.state,
        health: v.health(r.min_healthy),
        drained: v.drained,
        healthy_backends: v.healthy_backends(),
        failback_held: v.held,
        slow_start_share: f64::from(v.ramp_permille) / 1000.0,
        failover: r
            .failover
            .iter()
            .map(|&i| config.regions[i].name.clone())
            .collect(),
        upgraded_connections: 0,
        failure_domain_warning: v.single_domain.clone(),
        backends: (0..r.backends.len())
            .map(|b| backend_status(snapshot, index, b))
            .collect(),
    }
}

/// The status of backend `backend` of region `region` in `snapshot`.
pub fn backend_status(snapshot: &Snapshot, region: usize, backend: usize) -> BackendStatus {
    let b = &snapshot.config.regions[region].backends[backend];
    let v = &snapshot.regions[region].backends[backend];
    BackendStatus {
        address: b.address.clone(),
        state: v.state,
        drained: v.drained,
        last_error: v.last_error.clone(),
        ejections: v.ejections,
        domain: v.domain.clone(),
        discovered_from: b.discovered_from.clone(),
    }
}

/// Builds the status body from a snapshot; see [`StatusBody::count_upgrades`]
/// for the open upgraded connections.
pub fn status_body(snapshot: &Snapshot) -> StatusBody {
    StatusBody {
        regions: (0..snapshot.regions.len())
            .map(|i| region_status(snapshot, i))
            .collect(),
        incident: snapshot.control.incident.clone(),
        unconfigured_drains: unconfigured_drains(snapshot),
        events: snapshot.events.iter().cloned().collect(),
        certificates: Vec::new(),
        acme: None,
        dns: Vec::new(),
    }
}

fn unconfigured_drains(snapshot: &Snapshot) -> UnconfiguredDrains {
    let regions = &snapshot.config.regions;
    let region = |name: &str| regions.iter().find(|r| r.name == name);
    UnconfiguredDrains {
        regions: snapshot
            .control
            .drained_regions
            .iter()
            .filter(|name| region(name).is_none())
            .cloned()
            .collect(),
        backends: snapshot
            .control
            .drained_backends
            .iter()
            .filter(|b| {
                region(&b.region).is_none_or(|r| {
                    r.backends.iter().all(|x| {
                        x.address != b.backend && x.discovered_from.as_ref() != Some(&b.backend)
                    })
                })
            })
            .cloned()
            .collect(),
    }
}
