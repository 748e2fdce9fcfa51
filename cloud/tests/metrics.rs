//! `/metrics`: after calls, refusals and operator decisions, the exposition
//! shows the matching counts, read back with a strict OpenMetrics parser.

mod support;

use std::collections::{BTreeMap, HashMap};

use protocol::Message;
use reqwest::Method;
use serde_json::json;
use support::{wait_until, TestCloud};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One sample line.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: the type of each metric family, and every sample.
#[derive(Debug)]
struct Exposition {
    types: HashMap<String, String>,
    samples: Vec<Sample>,
}

/// Parses the OpenMetrics text format strictly, panicking on anything it
/// does not allow: a missing `# EOF`, a sample before its family's `# TYPE`,
/// interleaved or repeated families, a sample name that does not fit its
/// family's type, malformed labels or values. (No timestamps or exemplars:
/// the cloud sends none.)
fn parse_openmetrics(text: &str) -> Exposition {
    assert!(!text.contains('\r'), "carriage return in the exposition");
    let body = text
        .strip_suffix("# EOF\n")
        .expect("the exposition ends with `# EOF`");
    let mut types: HashMap<String, String> = HashMap::new();
    let mut families_seen: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    for line in body.split_terminator('\n') {
        if let Some(metadata) = line.strip_prefix("# ") {
            let (keyword, rest) = metadata.split_once(' ').expect(line);
            let (family, value) = rest.split_once(' ').expect(line);
            assert_valid_name(family, line);
            if families_seen.last().map(String::as_str) != Some(family) {
                assert!(
                    !families_seen.iter().any(|f| f == family),
                    "family {family} appears twice, or interleaved"
                );
                families_seen.push(family.to_owned());
            }
            match keyword {
                "TYPE" => {
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "info",
                            "stateset",
                            "unknown"
                        ]
                        .contains(&value),
                        "{line}"
                    );
                    assert!(
                        types.insert(family.into(), value.into()).is_none(),
                        "{line}"
                    );
                }
                "HELP" => {}
                "UNIT" => assert!(family.ends_with(&format!("_{value}")), "{line}"),
                _ => panic!("unknown metadata line: {line}"),
            }
            continue;
        }
        let family = families_seen.last().expect("a sample before any metadata");
        let kind = types
            .get(family)
            .unwrap_or_else(|| panic!("{line}: no TYPE for {family}"));
        let sample = parse_sample(line);
        let suffix = sample.name.strip_prefix(family.as_str()).expect(line);
        let allowed: &[&str] = match kind.as_str() {
            "counter" => &["_total", "_created"],
            "gauge" | "unknown" => &[""],
            "histogram" => &["_bucket", "_count", "_sum", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        assert!(allowed.contains(&suffix), "{line}: not a {kind} sample");
        if suffix == "_bucket" {
            assert!(
                sample.labels.contains_key("le"),
                "{line}: bucket without le"
            );
        }
        if kind == "counter" {
            assert!(sample.value >= 0.0, "{line}: negative counter");
        }
        samples.push(sample);
    }
    Exposition { types, samples }
}

fn assert_valid_name(name: &str, line: &str) {
    let mut chars = name.chars();
    let first = chars.next().expect(line);
    assert!(
        (first.is_ascii_alphabetic() || first == '_' || first == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "bad metric name in {line}"
    );
}

/// `name{a="x",b="y"} value`.
fn parse_sample(line: &str) -> Sample {
    let name_end = line.find(['{', ' ']).expect(line);
    let name = &line[..name_end];
    assert_valid_name(name, line);
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let mut chars = after_brace.char_indices().peekable();
        loop {
            if let Some((i, '}')) = chars.peek().copied() {
                rest = &after_brace[i + 1..];
                break;
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            assert_valid_name(&key, line);
            assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
            let mut value = String::new();
            loop {
                match chars.next().expect(line).1 {
                    '"' => break,
                    '\\' => match chars.next().expect(line).1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        other => panic!("{line}: bad escape \\{other}"),
                    },
                    c => value.push(c),
                }
            }
            assert!(
                labels.insert(key, value).is_none(),
                "{line}: repeated label"
            );
            match chars.peek().copied() {
                Some((_, ',')) => {
                    chars.next();
                }
                Some((_, '}')) => {}
                _ => panic!("{line}: labels not closed"),
            }
        }
    }
    let value = rest.strip_prefix(' ').expect(line);
    assert!(!value.contains(' '), "{line}: a timestamp or exemplar");
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        number => number
            .parse()
            .unwrap_or_else(|_| panic!("{line}: bad value")),
    };
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

impl Exposition {
    /// The one sample named `name` with exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == wanted)
            .collect();
        assert_eq!(found.len(), 1, "{name}{labels:?} in {:#?}", self.samples);
        found[0].value
    }

    /// Checks the histogram `family` at `labels`: buckets ascending and
    /// cumulative, ending at `+Inf` with the count. Returns the count.
    fn histogram_count(&self, family: &str, labels: &[(&str, &str)]) -> f64 {
        assert_eq!(
            self.types.get(family).map(String::as_str),
            Some("histogram")
        );
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
            })
            .map(|s| (s.labels["le"].parse::<f64>().unwrap(), s.value))
            .collect();
        assert!(!buckets.is_empty(), "no buckets for {family}{labels:?}");
        let in_order = buckets.clone();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert_eq!(in_order, buckets, "buckets out of order");
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "not cumulative"
        );
        let (le, last) = *buckets.last().unwrap();
        assert_eq!(le, f64::INFINITY);
        let count = self.value(&format!("{family}_count"), labels);
        assert_eq!(last, count);
        count
    }
}

async fn scrape(cloud: &TestCloud) -> Exposition {
    // No token: Prometheus scrapes without one.
    let response = cloud.http.get(cloud.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], OPENMETRICS);
    let text = response.text().await.unwrap();
    parse_openmetrics(&text)
}

#[tokio::test]
async fn metrics_count_calls_refusals_devices_and_connections() {
    let cloud = TestCloud::start().await;
    let mut live = cloud.accepted_device("live").await;
    let gone = cloud.accepted_device("gone").await;
    gone.drop_connection();
    wait_until("the dropped device is offline", || async {
        !cloud.state.devices().fleet().is_online("gone")
    })
    .await;
    let mut pending = cloud.connect("pending").await;
    pending.authenticate().await;
    let refused_key = {
        let mut device = cloud.connect("refused").await;
        device.authenticate().await;
        cloud.api().reject("refused").await.unwrap();
        device.key.clone()
    };

    // One call answered...
    let list = json!({"method": "containers.list"});
    let call = {
        let (api, list) = (cloud.api(), list.clone());
        tokio::spawn(async move {
            let (status, _) = api
                .request(Method::POST, "/devices/live/rpc", Some(&list))
                .await
                .unwrap();
            status
        })
    };
    let Message::Request { id, .. } = live.recv().await else {
        panic!("expected the call");
    };
    live.send_message(&Message::result(id, json!([]))).await;
    assert_eq!(call.await.unwrap(), 200);
    // ...one to an offline device...
    let (status, _) = cloud
        .api()
        .request(Method::POST, "/devices/gone/rpc", Some(&list))
        .await
        .unwrap();
    assert_eq!(status, 503);
    // ...a frame with a broken signature...
    let frame = live
        .signed(&Message::request("r-1", "cloud.ping", json!({})))
        .tampered("/params", json!({"tampered": true}));
    live.send(&frame).await;
    live.expect_refusal(json!("r-1"), "bad_signature").await;
    // ...and a rejected device trying again.
    let mut again = cloud.connect_with_key("refused", refused_key).await;
    assert_eq!(again.authenticate().await, json!({"status": "rejected"}));
    again.read_until_closed().await;

    let metrics = scrape(&cloud).await;
    assert_eq!(
        metrics.types.get("devbridge_rpc_calls").map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        metrics.value("devbridge_rpc_calls_total", &[("outcome", "ok")]),
        1.0
    );
    assert_eq!(
        metrics.value("devbridge_rpc_calls_total", &[("outcome", "offline")]),
        1.0
    );
    for outcome in [
        "timed_out",
        "device_error",
        "not_accepted",
        "unknown_device",
    ] {
        assert_eq!(
            metrics.value("devbridge_rpc_calls_total", &[("outcome", outcome)]),
            0.0,
            "{outcome}"
        );
    }
    let rpc_seconds = "devbridge_rpc_duration_seconds";
    assert_eq!(
        metrics.histogram_count(rpc_seconds, &[("outcome", "ok")]),
        1.0
    );
    assert_eq!(
        metrics.histogram_count(rpc_seconds, &[("outcome", "offline")]),
        1.0
    );
    assert!(metrics.value(&format!("{rpc_seconds}_sum"), &[("outcome", "ok")]) > 0.0);

    assert_eq!(
        metrics.value(
            "devbridge_frames_refused_total",
            &[("reason", "bad_signature")]
        ),
        1.0
    );
    assert_eq!(
        metrics.value(
            "devbridge_handshakes_refused_total",
            &[("reason", "rejected")]
        ),
        1.0
    );

    assert_eq!(metrics.types["devbridge_devices"], "gauge");
    for (status, count) in [("pending", 1.0), ("accepted", 2.0), ("rejected", 1.0)] {
        assert_eq!(
            metrics.value("devbridge_devices", &[("status", status)]),
            count,
            "{status}"
        );
    }
    for (status, count) in [("pending", 1.0), ("accepted", 1.0)] {
        assert_eq!(
            metrics.value("devbridge_device_connections", &[("status", status)]),
            count,
            "{status}"
        );
    }

    // Another cloud in the same process counts for itself alone.
    let other = TestCloud::start().await;
    let fresh = scrape(&other).await;
    assert_eq!(
        fresh.value("devbridge_rpc_calls_total", &[("outcome", "ok")]),
        0.0
    );
    assert_eq!(
        fresh.value("devbridge_devices", &[("status", "accepted")]),
        0.0
    );
}

#[tokio::test]
async fn a_handshake_that_times_out_is_counted() {
    let cloud =
        TestCloud::start_with(|c| c.auth_timeout = std::time::Duration::from_millis(100)).await;
    let mut silent = cloud.connect("silent").await;
    silent.read_until_closed().await;
    let metrics = scrape(&cloud).await;
    assert_eq!(
        metrics.value(
            "devbridge_handshakes_refused_total",
            &[("reason", "auth_timeout")]
        ),
        1.0
    );
}

#[tokio::test]
async fn devices_are_left_out_while_the_registry_is_down() {
    let cloud = TestCloud::start().await;
    let _device = cloud.accepted_device("dev-1").await;
    assert_eq!(
        scrape(&cloud)
            .await
            .value("devbridge_devices", &[("status", "accepted")]),
        1.0
    );
    cloud.state.devices().registry().close().await;
    let metrics = scrape(&cloud).await;
    assert!(
        !metrics.types.contains_key("devbridge_devices"),
        "a stale device count is shown"
    );
    // The rest is still there.
    assert_eq!(
        metrics.value("devbridge_device_connections", &[("status", "accepted")]),
        1.0
    );
}

#[test]
fn the_parser_refuses_what_openmetrics_does_not_allow() {
    let good = "# TYPE a counter\na_total{x=\"1\"} 2\n# EOF\n";
    assert_eq!(parse_openmetrics(good).value("a_total", &[("x", "1")]), 2.0);
    for bad in [
        "# TYPE a counter\na_total 2\n",           // no EOF
        "a 2\n# EOF\n",                            // no TYPE
        "# TYPE a counter\na 2\n# EOF\n",          // counter without _total
        "# TYPE a gauge\na{x=1} 2\n# EOF\n",       // unquoted label
        "# TYPE a gauge\na{x=\"1\"} two\n# EOF\n", // bad value
        "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\n# TYPE a gauge\n# EOF\n", // repeated
    ] {
        let outcome = std::panic::catch_unwind(|| parse_openmetrics(bad));
        assert!(outcome.is_err(), "accepted: {bad:?}");
    }
}
