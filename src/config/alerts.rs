//! Validation of `[alerts]`: the webhooks region transitions are pushed to,
//! and the bounds on their delivery.

use std::time::Duration;

use toml::Spanned;

use super::error::Issues;
use super::file::AlertsFile;
use super::validate::{duration_within, ranged, span};
use super::Alerts;

/// Checks `[alerts]`; `None` when it is invalid.
pub(super) fn check_alerts(issues: &mut Issues, alerts: AlertsFile) -> Option<Alerts> {
    let AlertsFile {
        webhooks,
        group_window,
        timeout,
        retries,
        queue,
    } = alerts;
    let anchor = [
        webhooks.as_ref().map(span),
        group_window.as_ref().map(span),
        timeout.as_ref().map(span),
    ]
    .into_iter()
    .flatten()
    .min_by_key(|r| r.start)
    .unwrap_or(0..0);
    let webhooks = webhooks.map(Spanned::into_inner).unwrap_or_default();
    if webhooks.is_empty() {
        issues.at(
            anchor,
            "alerts.webhooks",
            "missing: the URLs alerts are POSTed to, such as [\"https://hooks.slack.com/services/…\"]",
        );
    }
    let mut urls = Vec::new();
    for w in &webhooks {
        match w.get_ref().parse::<http::Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() =>
            {
                urls.push(u)
            }
            _ => issues.at(
                span(w),
                "alerts.webhooks",
                format!(
                    "invalid URL \"{}\": expected an http:// or https:// webhook URL",
                    w.get_ref()
                ),
            ),
        }
    }
    Some(Alerts {
        webhooks: urls,
        group_window: duration_within(
            issues,
            "alerts.group_window",
            group_window.as_ref(),
            Duration::from_secs(2),
            (Duration::ZERO, Duration::from_secs(60)),
        ),
        timeout: duration_within(
            issues,
            "alerts.timeout",
            timeout.as_ref(),
            Duration::from_secs(5),
            (Duration::from_millis(10), Duration::from_secs(60)),
        ),
        retries: ranged(
            issues,
            "alerts.retries",
            retries.as_ref(),
            3,
            (0, 10),
            "a whole number",
        ) as u32,
        queue: ranged(
            issues,
            "alerts.queue",
            queue.as_ref(),
            100,
            (1, 10_000),
            "a whole number",
        ) as usize,
    })
}
