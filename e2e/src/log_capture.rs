//! The log lines of the parts running in this test process (cloud, bridge,
//! worker), kept so that a test can assert what an operator would read in
//! them, and copied to stderr (shown when a test fails).
//!
//! [`capture`] installs the process's tracing subscriber on first use; it
//! sees nothing if another subscriber was installed before. Under nextest
//! each test is its own process; under `cargo test` tests share the lines,
//! so look for lines naming the test's own device id.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use testkit::wait_until;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// The log filter: the parts at info, their noisy dependencies at warn.
const FILTER: &str = "info,sqlx=warn,hyper=warn,hyper_util=warn,async_nats=warn,bollard=warn";

/// Every log line written since [`capture`] was first called.
#[derive(Clone, Default)]
pub struct CapturedLogs {
    text: Arc<Mutex<Vec<u8>>>,
}

/// Starts capturing (once per process) and returns the captured lines.
pub fn capture() -> CapturedLogs {
    static CAPTURED: OnceLock<CapturedLogs> = OnceLock::new();
    CAPTURED
        .get_or_init(|| {
            let logs = CapturedLogs::default();
            let _ = tracing_subscriber::fmt()
                .with_env_filter(EnvFilter::new(FILTER))
                .with_ansi(false)
                .with_writer(logs.clone())
                .try_init();
            logs
        })
        .clone()
}

impl CapturedLogs {
    /// The lines that contain every one of `needles`.
    pub fn lines_with(&self, needles: &[&str]) -> Vec<String> {
        let text = self.text.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&text)
            .lines()
            .filter(|line| needles.iter().all(|needle| line.contains(needle)))
            .map(str::to_owned)
            .collect()
    }

    /// Waits up to `deadline` for a line containing every one of `needles`,
    /// and returns the first.
    pub async fn wait_for_line(&self, needles: &[&str], deadline: Duration) -> String {
        wait_until(
            &format!("a log line with {needles:?}"),
            deadline,
            || async { self.lines_with(needles).into_iter().next() },
        )
        .await
    }
}

impl Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.text
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
        let _ = std::io::stderr().write_all(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The value of `field=` in a log line as the fmt subscriber writes it
/// (up to the next space), e.g. `wait_ms`.
pub fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    line[start..].split(' ').next()
}
