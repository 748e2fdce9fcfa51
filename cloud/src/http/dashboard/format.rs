//! Numbers and times as operators read them. The script formats live updates
//! the same way (`fmt*` in `app.js`).

use serde_json::Value;

/// `2026-05-01 12:00:03 UTC` for milliseconds since the Unix epoch. The
/// script rewrites it in the browser's time zone.
pub(super) fn utc_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to a Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `1.5 GiB`.
pub(super) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `3 d 4 h`, `5 h 12 min`, `42 s`.
pub(super) fn duration(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60);
    if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 {
        format!("{m} min")
    } else {
        format!("{secs} s")
    }
}

/// A used/total pair of a health report as `used of total (p %)`, and the percentage.
fn usage(value: &Value) -> Option<(String, f64)> {
    let total = value["total_bytes"].as_u64()?;
    let used = value["used_bytes"].as_u64()?;
    let percent = if total == 0 {
        0.0
    } else {
        used as f64 * 100.0 / total as f64
    };
    Some((
        format!("{} of {} ({percent:.0} %)", bytes(used), bytes(total)),
        percent,
    ))
}

/// A device's latest `system.health` report, ready to show.
#[derive(Debug, Default)]
pub(super) struct HealthView {
    pub cpu: String,
    pub memory: String,
    pub disk: String,
    pub load: String,
    pub uptime: String,
    pub containers: String,
    /// For `<meter>`s: CPU, memory and disk in percent.
    pub cpu_percent: f64,
    pub memory_percent: f64,
    pub disk_percent: f64,
}

impl HealthView {
    /// `None` when the device has not reported yet.
    pub fn from_report(report: Option<&Value>) -> Option<HealthView> {
        let report = report.filter(|r| r.is_object())?;
        let dash = || "—".to_owned();
        let cpu_percent = report["cpu_percent"].as_f64();
        let memory = usage(&report["memory"]);
        let disk = usage(&report["disk"]);
        let load = report["load"].as_array().map(|l| {
            l.iter()
                .map(|v| format!("{:.2}", v.as_f64().unwrap_or(0.0)))
                .collect::<Vec<_>>()
                .join(" · ")
        });
        Some(HealthView {
            cpu: cpu_percent.map_or_else(dash, |p| format!("{p:.0} %")),
            cpu_percent: cpu_percent.unwrap_or(0.0),
            memory_percent: memory.as_ref().map_or(0.0, |m| m.1),
            memory: memory.map_or_else(dash, |m| m.0),
            disk_percent: disk.as_ref().map_or(0.0, |d| d.1),
            disk: disk.map_or_else(dash, |d| d.0),
            load: load.unwrap_or_else(dash),
            uptime: report["uptime_secs"].as_u64().map_or_else(dash, duration),
            containers: report["containers_running"]
                .as_i64()
                .map_or_else(dash, |n| n.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_are_utc_calendar_dates() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_time(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_time(1_767_225_599_999), "2025-12-31 23:59:59 UTC");
    }

    #[test]
    fn sizes_and_durations_read_naturally() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
        assert_eq!(duration(42), "42 s");
        assert_eq!(duration(5 * 3600 + 12 * 60), "5 h 12 min");
        assert_eq!(duration(3 * 86_400 + 4 * 3600), "3 d 4 h");
    }

    #[test]
    fn a_health_report_is_summarised() {
        let report = json!({
            "cpu_percent": 12.4,
            "memory": {"total_bytes": 4u64 << 30, "used_bytes": 1u64 << 30},
            "disk": null,
            "load": [0.5, 0.25, 1.0],
            "uptime_secs": 90,
            "containers_running": 3
        });
        let view = HealthView::from_report(Some(&report)).unwrap();
        assert_eq!(view.cpu, "12 %");
        assert_eq!(view.memory, "1.0 GiB of 4.0 GiB (25 %)");
        assert_eq!(view.disk, "—");
        assert_eq!(view.load, "0.50 · 0.25 · 1.00");
        assert_eq!(view.uptime, "1 min");
        assert_eq!(view.containers, "3");
        assert!(HealthView::from_report(None).is_none());
    }
}
