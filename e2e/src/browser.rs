//! A real headless Chromium for the dashboard's tests, driven over WebDriver
//! (fantoccini): `chromedriver` on a free loopback port with its own profile
//! directory, killed with every browser process it started on drop.

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use testkit::wait_until;

/// How long chromedriver may take to answer after it starts.
const DRIVER_START_TIMEOUT: Duration = Duration::from_secs(20);

/// Where Debian's `chromium` and `chromium-driver` put their binaries.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A `chromedriver` child process in its own process group.
struct ChromeDriver {
    port: u16,
    child: Child,
}

impl ChromeDriver {
    async fn start() -> ChromeDriver {
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its browsers join this group, so that drop can end them all.
            .process_group(0)
            .spawn()
            .expect("spawning chromedriver (apt-get install chromium chromium-driver)");
        let driver = ChromeDriver { port, child };
        let status = format!("http://127.0.0.1:{port}/status");
        let http = reqwest::Client::new();
        wait_until("chromedriver to answer", DRIVER_START_TIMEOUT, || async {
            let reply = http.get(&status).send().await.ok()?;
            let body: Value = reply.json().await.ok()?;
            (body["value"]["ready"] == true).then_some(())
        })
        .await;
        driver
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the Chromium processes it started.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// A headless Chromium session.
pub struct Browser {
    pub client: Client,
    /// Chromium's profile, removed on drop.
    _profile: tempfile::TempDir,
    _driver: ChromeDriver,
}

/// What the browser measured while loading the current page
/// (Navigation Timing), in milliseconds from the start of navigation.
#[derive(Debug, Clone, Copy)]
pub struct PageTiming {
    /// First byte of the response.
    pub response_start: f64,
    /// The DOM is parsed and deferred scripts have run.
    pub dom_content_loaded: f64,
    /// The page and everything it links have loaded.
    pub load: f64,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium (1280×900).
    pub async fn start() -> Browser {
        let driver = ChromeDriver::start().await;
        let profile = tempfile::tempdir().expect("Chromium profile directory");
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    "--disable-gpu",
                    "--no-first-run",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("an object literal")
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .expect("a WebDriver session with headless Chromium");
        Browser {
            client,
            _profile: profile,
            _driver: driver,
        }
    }

    /// Navigates and returns the wall-clock time `goto` took (until `load`).
    pub async fn goto(&self, url: &str) -> Duration {
        let started = Instant::now();
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("navigating to {url}: {e}"));
        started.elapsed()
    }

    /// The current page's Navigation Timing.
    pub async fn page_timing(&self) -> PageTiming {
        let value = self
            .script(
                "const n = performance.getEntriesByType('navigation')[0];\
                 return [n.responseStart, n.domContentLoadedEventEnd, n.loadEventEnd];",
            )
            .await;
        let at = |i: usize| value[i].as_f64().unwrap_or(f64::NAN);
        PageTiming {
            response_start: at(0),
            dom_content_loaded: at(1),
            load: at(2),
        }
    }

    /// Runs a script in the page and returns what it returns.
    pub async fn script(&self, source: &str) -> Value {
        self.client
            .execute(source, vec![])
            .await
            .unwrap_or_else(|e| panic!("running {source:?}: {e}"))
    }

    /// The text of the first element matching `css`, if there is one.
    pub async fn text(&self, css: &str) -> Option<String> {
        let element = self.client.find(Locator::Css(css)).await.ok()?;
        element.text().await.ok()
    }

    /// Waits until an element matching `css` exists and its text contains
    /// `needle`; returns its text.
    pub async fn wait_for_text(&self, css: &str, needle: &str, deadline: Duration) -> String {
        wait_until(
            &format!("{css:?} to contain {needle:?}"),
            deadline,
            || async { self.text(css).await.filter(|text| text.contains(needle)) },
        )
        .await
    }

    /// Waits until an element matching `css` exists.
    pub async fn wait_for(&self, css: &str, deadline: Duration) {
        wait_until(&format!("{css:?} to appear"), deadline, || async {
            self.client.find(Locator::Css(css)).await.ok().map(drop)
        })
        .await
    }

    /// Clicks the first element matching `css`. A live page may redraw the
    /// element between finding and clicking it; then it is found again.
    pub async fn click(&self, css: &str) {
        const REDRAWS_TOLERATED: usize = 5;
        for attempt in 1.. {
            let element = self
                .client
                .find(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("finding {css:?} to click: {e}"));
            match element.click().await {
                Ok(()) => return,
                Err(e) if e.is_stale_element_reference() && attempt < REDRAWS_TOLERATED => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("clicking {css:?}: {e}"),
            }
        }
    }

    /// Replaces the value of the input matching `css` with `text`.
    pub async fn fill(&self, css: &str, text: &str) {
        let input = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("finding {css:?} to fill: {e}"));
        input.clear().await.expect("clearing an input");
        input.send_keys(text).await.expect("typing into an input");
    }

    /// The current page's path and query.
    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.expect("current URL");
        match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// Saves a screenshot of the window as `<target>/screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("a screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("creating the screenshot directory");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("writing a screenshot");
        path
    }

    /// Ends the WebDriver session; dropping kills the browser in any case.
    pub async fn close(self) {
        let Browser {
            client,
            _profile,
            _driver,
        } = self;
        let _ = client.close().await;
    }
}

/// `target/screenshots` of this workspace (or of `CARGO_TARGET_DIR`).
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("screenshots")
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("binding 127.0.0.1:0 to find a free port")
}
