//! One gauge of a cloud's Prometheus exposition (`/metrics`), read over a
//! run beside the process's own memory.

use std::time::Duration;

/// A scrape of `/metrics` that takes this long is a sample missed.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// A gauge of a cloud's Prometheus exposition (`/metrics`).
pub struct Gauge {
    name: &'static str,
    url: String,
    http: reqwest::Client,
}

impl Gauge {
    /// The gauge `name` of the exposition at `url`.
    pub fn new(name: &'static str, url: String) -> Self {
        Gauge {
            name,
            url,
            http: reqwest::Client::new(),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The gauge's value now; `None` if the cloud does not answer or does
    /// not show it.
    pub async fn read(&self) -> Option<u64> {
        let response = self
            .http
            .get(&self.url)
            .timeout(SCRAPE_TIMEOUT)
            .send()
            .await
            .ok()?;
        let text = response.error_for_status().ok()?.text().await.ok()?;
        text.lines().find_map(|line| {
            let value = line.strip_prefix(self.name)?.strip_prefix(' ')?;
            value.trim().parse().ok()
        })
    }
}
