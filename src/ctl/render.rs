//! Text for people from the API's JSON: the status table and the one-line
//! confirmations. Pure functions; every field is optional on reading, so a
//! newer or older Meridian still renders.

use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::Value;

use super::Command;

/// Events shown under the table; `--json` has them all.
const EVENTS_SHOWN: usize = 10;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StatusView {
    regions: Vec<RegionView>,
    incident: Option<IncidentView>,
    events: Vec<EventView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RegionView {
    name: String,
    state: String,
    health: String,
    drained: bool,
    healthy_backends: usize,
    failback_held: bool,
    slow_start_share: Option<f64>,
    failover: Vec<String>,
    backends: Vec<BackendView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct BackendView {
    address: String,
    state: String,
    drained: bool,
    last_error: Option<String>,
    ejections: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct IncidentView {
    title: String,
    message: String,
    link: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EventView {
    at: String,
    subject: String,
    from: String,
    to: String,
    reason: String,
}

/// Replaces control characters, so that text from the API (an incident, an
/// error) cannot move the cursor or break a row of the table.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Lays `rows` out in columns two spaces apart, each line prefixed by
/// `indent`; the last column is not padded.
fn columns(out: &mut String, indent: &str, rows: &[Vec<String>]) {
    let count = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..count)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = indent.to_owned();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// The `/api/v1/status` answer as a table: a row per region, indented rows
/// per backend, then the incident and the latest events.
pub fn status_table(status: &Value) -> Result<String, serde_json::Error> {
    let status = StatusView::deserialize(status)?;
    let mut out = String::new();
    let header = [
        "REGION", "STATE", "HEALTH", "DRAINED", "BACKENDS", "FAILOVER",
    ];
    let mut regions = vec![header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>()];
    for r in &status.regions {
        let mut failover = if r.failover.is_empty() {
            "-".to_owned()
        } else {
            r.failover.join(", ")
        };
        if r.failback_held {
            failover.push_str("  (fail-back held)");
        }
        if let Some(share) = r.slow_start_share.filter(|s| *s < 1.0) {
            let _ = write!(failover, "  (slow start: {:.0}% back)", share * 100.0);
        }
        regions.push(vec![
            clean(&r.name),
            clean(&r.state),
            clean(&r.health),
            if r.drained { "yes" } else { "no" }.to_owned(),
            format!("{}/{}", r.healthy_backends, r.backends.len()),
            clean(&failover),
        ]);
    }
    // Region rows are laid out together so their columns line up; each
    // region's backends follow it, aligned among themselves.
    let mut laid_out = String::new();
    columns(&mut laid_out, "", &regions);
    let mut lines = laid_out.lines();
    if let Some(h) = lines.next() {
        out.push_str(h);
        out.push('\n');
    }
    for (r, line) in status.regions.iter().zip(lines) {
        out.push_str(line);
        out.push('\n');
        let rows: Vec<Vec<String>> = r
            .backends
            .iter()
            .map(|b| {
                let mut error = b
                    .last_error
                    .as_deref()
                    .map(|e| format!("last error: {}", clean(e)))
                    .unwrap_or_else(|| "-".to_owned());
                if b.ejections > 0 {
                    let _ = write!(error, "  (ejected {} in a row)", b.ejections);
                }
                vec![
                    clean(&b.address),
                    clean(&b.state),
                    if b.drained { "drained" } else { "-" }.to_owned(),
                    error,
                ]
            })
            .collect();
        columns(&mut out, "    ", &rows);
    }
    out.push('\n');
    match &status.incident {
        Some(i) => {
            let _ = writeln!(out, "incident: {}", clean(&i.title));
            let _ = writeln!(out, "  {}", clean(&i.message));
            if let Some(link) = &i.link {
                let _ = writeln!(out, "  {}", clean(link));
            }
        }
        None => out.push_str("no incident\n"),
    }
    out.push('\n');
    if status.events.is_empty() {
        out.push_str("no events yet\n");
    } else {
        let shown = &status.events[status.events.len().saturating_sub(EVENTS_SHOWN)..];
        let _ = writeln!(
            out,
            "last {} of {} events, oldest first:",
            shown.len(),
            status.events.len()
        );
        let rows: Vec<Vec<String>> = shown
            .iter()
            .map(|e| {
                vec![
                    clean(&e.at),
                    clean(&e.subject),
                    format!("{} -> {}", clean(&e.from), clean(&e.to)),
                    clean(&e.reason),
                ]
            })
            .collect();
        columns(&mut out, "  ", &rows);
    }
    Ok(out)
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or("?")
}

/// One line saying what `command` did, from the answer it got.
pub fn confirmation(command: &Command, answer: &Value) -> String {
    let line = match command {
        Command::Status => "status read".to_owned(),
        Command::Drain {
            region,
            backend: None,
        } => format!(
            "region {region}: drained (health: {})",
            text(answer, "health")
        ),
        Command::Undrain {
            region,
            backend: None,
        } => format!("region {region}: undrained, now {}", text(answer, "state")),
        Command::Drain {
            region,
            backend: Some(b),
        } => format!(
            "backend {b} of region {region}: drained (health: {})",
            text(answer, "state")
        ),
        Command::Undrain {
            region,
            backend: Some(b),
        } => format!(
            "backend {b} of region {region}: undrained, now {}",
            text(answer, "state")
        ),
        Command::IncidentSet(_) => match answer.get("link").and_then(Value::as_str) {
            Some(link) => format!("incident set: {} ({link})", text(answer, "title")),
            None => format!("incident set: {}", text(answer, "title")),
        },
        Command::IncidentClear => "incident cleared".to_owned(),
        Command::AlertsTest => format!(
            "test alert delivered to {} webhook(s)",
            answer.get("delivered").and_then(Value::as_u64).unwrap_or(0)
        ),
        Command::Reload => {
            let restart: Vec<&str> = answer
                .get("restart_needed")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let done = if answer.get("reloaded").and_then(Value::as_bool) == Some(false) {
                "configuration unchanged"
            } else {
                "configuration reloaded"
            };
            if restart.is_empty() {
                done.to_owned()
            } else {
                format!(
                    "{done}; a restart is needed for these to take effect: {}",
                    restart.join(", ")
                )
            }
        }
    };
    clean(&line)
}

/// The `warnings` of an answer, for standard error.
pub fn warnings(answer: &Value) -> Vec<String> {
    answer
        .get("warnings")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|w| clean(w.as_str().map_or(&w.to_string(), |s| s)))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::IncidentText;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "regions": [
                {"name": "us", "state": "drained", "health": "healthy", "drained": true,
                 "healthy_backends": 1, "failback_held": false, "slow_start_share": 1.0,
                 "failover": ["eu"],
                 "backends": [
                     {"address": "10.1.0.10:8080", "state": "up", "drained": false, "last_error": null, "ejections": 0},
                     {"address": "10.1.0.11:8080", "state": "down", "drained": true,
                      "last_error": "connect: connection refused", "ejections": 2}
                 ]},
                {"name": "eu-west", "state": "healthy", "health": "healthy", "drained": false,
                 "healthy_backends": 1, "failback_held": true, "slow_start_share": 0.25,
                 "failover": [],
                 "backends": [{"address": "[::1]:80", "state": "up", "drained": false}]}
            ],
            "incident": {"title": "Checkout errors", "message": "Payments\nfail.", "link": "https://status.example.com/"},
            "events": (0..12).map(|i| json!({
                "at": format!("2026-01-01T00:00:{i:02}Z"), "subject": "us",
                "from": "healthy", "to": "down", "reason": format!("event {i}")
            })).collect::<Vec<_>>()
        })
    }

    #[test]
    fn the_status_table_has_a_row_per_region_and_backend() {
        let table = status_table(&sample()).unwrap();
        let expected = "\
REGION   STATE    HEALTH   DRAINED  BACKENDS  FAILOVER
us       drained  healthy  yes      1/2       eu
    10.1.0.10:8080  up    -        -
    10.1.0.11:8080  down  drained  last error: connect: connection refused  (ejected 2 in a row)
eu-west  healthy  healthy  no       1/1       -  (fail-back held)  (slow start: 25% back)
    [::1]:80  up  -  -

incident: Checkout errors
  Payments fail.
  https://status.example.com/

last 10 of 12 events, oldest first:
  2026-01-01T00:00:02Z  us  healthy -> down  event 2
";
        assert!(table.starts_with(expected), "{table}");
        assert!(
            table.ends_with("  2026-01-01T00:00:11Z  us  healthy -> down  event 11\n"),
            "{table}"
        );
        assert!(!table.contains("event 1\n"), "only the last ten events");
    }

    #[test]
    fn an_empty_or_partial_status_still_renders() {
        let table = status_table(&json!({"regions": [{"name": "us"}], "incident": null})).unwrap();
        assert!(table.contains("us    "), "{table}");
        assert!(table.contains("\nno incident\n"), "{table}");
        assert!(table.ends_with("no events yet\n"), "{table}");
        assert!(status_table(&json!({"regions": 5})).is_err());
    }

    #[test]
    fn confirmations_say_the_resulting_state() {
        let drain = |backend: Option<&str>| Command::Drain {
            region: "us".into(),
            backend: backend.map(Into::into),
        };
        assert_eq!(
            confirmation(&drain(None), &json!({"state": "drained", "health": "down"})),
            "region us: drained (health: down)"
        );
        assert_eq!(
            confirmation(
                &Command::Undrain {
                    region: "us".into(),
                    backend: None
                },
                &json!({"state": "healthy"})
            ),
            "region us: undrained, now healthy"
        );
        assert_eq!(
            confirmation(&drain(Some("[::1]:80")), &json!({"state": "up"})),
            "backend [::1]:80 of region us: drained (health: up)"
        );
        let set = Command::IncidentSet(IncidentText {
            title: "T".into(),
            message: "M".into(),
            link: None,
        });
        assert_eq!(
            confirmation(&set, &json!({"title": "T", "message": "M"})),
            "incident set: T"
        );
        assert_eq!(
            confirmation(&Command::IncidentClear, &json!({"incident": null})),
            "incident cleared"
        );
        assert_eq!(
            confirmation(
                &Command::Reload,
                &json!({"reloaded": true, "restart_needed": ["listen.http", "admin.listen"]})
            ),
            "configuration reloaded; a restart is needed for these to take effect: listen.http, admin.listen"
        );
        assert_eq!(
            confirmation(&Command::Reload, &json!({"reloaded": true})),
            "configuration reloaded"
        );
    }

    #[test]
    fn warnings_are_read_from_the_answer() {
        assert_eq!(
            warnings(&json!({"warnings": ["no region can serve now", 3]})),
            ["no region can serve now", "3"]
        );
        assert!(warnings(&json!({"name": "us"})).is_empty());
    }
}
