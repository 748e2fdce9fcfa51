//! `target/bench/report.json`: every run merges its figures into it, so the
//! standard set (`scripts/bench.sh`) leaves one report with all of them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{Map, Value};

/// Where reports and plots go.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench")
}

/// Adds `figures` to the report (replacing figures of the same name).
pub fn merge(figures: Map<String, Value>) -> anyhow::Result<PathBuf> {
    let dir = dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("report.json");
    let mut report = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str::<Map<String, Value>>(&text).unwrap_or_default(),
        Err(_) => Map::new(),
    };
    report.extend(figures);
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}
