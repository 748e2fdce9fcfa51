//! The Python tools that `scripts/ensure-python-tools.sh` installs into
//! `target/python-tools` (or `$PYTHON_TOOLS`): independent checkers of what
//! the cloud serves.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The venv's interpreter; fails the test, saying how to install it, if missing.
pub fn interpreter() -> PathBuf {
    let venv = std::env::var_os("PYTHON_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/python-tools")
        });
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/ensure-python-tools.sh (scripts/test.sh does)",
        python.display()
    );
    python
}

/// Runs `script` with `input` on its stdin; returns whether it exited 0, and
/// what it printed (stdout, then stderr).
pub fn run(script: &str, input: &[u8]) -> (bool, String) {
    let mut child = Command::new(interpreter())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input)
        .expect("python reads its input");
    let output = child.wait_with_output().expect("python ends");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}
