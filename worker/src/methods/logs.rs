//! `containers.logs`: a container's log as lines, each with its stream and
//! (on request) its timestamp, capped in size.

use std::sync::Arc;

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use futures::StreamExt;
use jsonrpsee::types::ErrorObjectOwned;
use protocol::ErrorCode;
use serde::{Deserialize, Serialize};

use super::{check_container_ref, rpc_error, MethodContext};
use crate::engine::docker_error;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogsParams {
    container: String,
    /// Only the last N lines.
    tail: Option<u64>,
    /// Only lines at or after this time, in seconds since the Unix epoch.
    since: Option<u32>,
    /// Only lines before this time, in seconds since the Unix epoch.
    until: Option<u32>,
    #[serde(default)]
    timestamps: bool,
    #[serde(default = "yes")]
    stdout: bool,
    #[serde(default = "yes")]
    stderr: bool,
}

fn yes() -> bool {
    true
}

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout = 0,
    Stderr = 1,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    pub stream: LogStream,
    /// The line without its newline.
    pub text: String,
    /// RFC 3339 with nanoseconds, as Docker wrote it; only when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

/// The answer of `containers.logs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Logs {
    pub lines: Vec<LogLine>,
    /// True when lines were left out because of the size cap.
    pub truncated: bool,
}

/// Turns Docker's log frames into lines and keeps the first lines whose text
/// fits in `max_bytes`; once a line does not fit, it and all later ones are
/// dropped, so the answer is always a contiguous stretch of the log.
#[derive(Debug)]
pub struct LogCollector {
    max_bytes: usize,
    /// Lines start with Docker's timestamp and a space.
    timestamps: bool,
    /// The unfinished line of each stream: a frame need not end at a newline.
    partial: [Vec<u8>; 2],
    lines: Vec<LogLine>,
    text_bytes: usize,
    truncated: bool,
}

/// Room for Docker's timestamp prefix ("2006-01-02T15:04:05.999999999Z07:00 ")
/// while an unfinished line is measured against the cap.
const TIMESTAMP_PREFIX_MAX: usize = 40;

impl LogCollector {
    pub fn new(max_bytes: usize, timestamps: bool) -> Self {
        LogCollector {
            max_bytes,
            timestamps,
            partial: [Vec::new(), Vec::new()],
            lines: Vec::new(),
            text_bytes: 0,
            truncated: false,
        }
    }

    /// Adds one frame of output; does nothing once the cap was reached.
    pub fn push(&mut self, stream: LogStream, mut chunk: &[u8]) {
        let index = stream as usize;
        while let Some(newline) = chunk.iter().position(|&b| b == b'\n') {
            if self.truncated {
                return;
            }
            let mut line = std::mem::take(&mut self.partial[index]);
            line.extend_from_slice(&chunk[..newline]);
            self.add_line(stream, &line);
            chunk = &chunk[newline + 1..];
        }
        if self.truncated {
            return;
        }
        self.partial[index].extend_from_slice(chunk);
        // An unfinished line already past the cap can never fit: stop buffering it.
        let prefix = if self.timestamps {
            TIMESTAMP_PREFIX_MAX
        } else {
            0
        };
        if self.text_bytes + self.partial[index].len() > self.max_bytes + prefix {
            self.truncate();
        }
    }

    /// True once a line was dropped; later output is ignored.
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// The lines, with any unfinished last line of each stream added.
    pub fn finish(mut self) -> Logs {
        for stream in [LogStream::Stdout, LogStream::Stderr] {
            let rest = std::mem::take(&mut self.partial[stream as usize]);
            if !rest.is_empty() && !self.truncated {
                self.add_line(stream, &rest);
            }
        }
        Logs {
            lines: self.lines,
            truncated: self.truncated,
        }
    }

    fn add_line(&mut self, stream: LogStream, raw: &[u8]) {
        // A TTY container writes "\r\n".
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let (timestamp, text) = if self.timestamps {
            match raw.iter().position(|&b| b == b' ') {
                Some(space) => (Some(&raw[..space]), &raw[space + 1..]),
                None => (Some(raw), &[][..]),
            }
        } else {
            (None, raw)
        };
        let text = String::from_utf8_lossy(text).into_owned();
        if self.text_bytes + text.len() > self.max_bytes {
            self.truncate();
            return;
        }
        self.text_bytes += text.len();
        self.lines.push(LogLine {
            stream,
            text,
            timestamp: timestamp.map(|t| String::from_utf8_lossy(t).into_owned()),
        });
    }

    fn truncate(&mut self) {
        self.truncated = true;
        self.partial = [Vec::new(), Vec::new()];
    }
}

/// Lines returned when the caller gives neither `tail` nor `since`.
pub const DEFAULT_TAIL: u64 = 1000;

pub(crate) async fn logs(
    context: Arc<MethodContext>,
    params: LogsParams,
) -> Result<Logs, ErrorObjectOwned> {
    let container = check_container_ref(&params.container)?;
    if !params.stdout && !params.stderr {
        return Err(rpc_error(
            ErrorCode::InvalidParams,
            "stdout and stderr are both false: nothing to show",
        ));
    }
    let mut options = LogsOptionsBuilder::new()
        .stdout(params.stdout)
        .stderr(params.stderr)
        .timestamps(params.timestamps);
    // Without `tail` or `since`, the newest lines are what an operator wants,
    // not the oldest that fit under the cap.
    let tail = params
        .tail
        .or(params.since.is_none().then_some(DEFAULT_TAIL));
    if let Some(tail) = tail {
        options = options.tail(&tail.to_string());
    }
    if let Some(since) = params.since {
        options = options.since(unix_secs_arg("since", since)?);
    }
    if let Some(until) = params.until {
        options = options.until(unix_secs_arg("until", until)?);
    }

    let docker = context.engine.client().await?;
    let mut frames = docker.logs(container, Some(options.build()));
    let mut collector = LogCollector::new(context.log_max_bytes, params.timestamps);
    // Stop reading at the cap: dropping the stream closes the Docker request.
    while !collector.is_truncated() {
        match frames.next().await {
            None => break,
            Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                collector.push(LogStream::Stdout, &message)
            }
            Some(Ok(LogOutput::StdErr { message })) => collector.push(LogStream::Stderr, &message),
            Some(Ok(LogOutput::StdIn { .. })) => {}
            Some(Err(err)) => return Err(docker_error(err, Some(container))),
        }
    }
    Ok(collector.finish())
}

fn unix_secs_arg(name: &str, secs: u32) -> Result<i32, ErrorObjectOwned> {
    i32::try_from(secs).map_err(|_| {
        rpc_error(
            ErrorCode::InvalidParams,
            format!("{name} {secs} is out of range (seconds since the Unix epoch)"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(logs: &Logs) -> Vec<(LogStream, &str)> {
        logs.lines
            .iter()
            .map(|l| (l.stream, l.text.as_str()))
            .collect()
    }

    #[test]
    fn frames_are_split_on_newlines_and_the_newline_dropped() {
        let mut collector = LogCollector::new(1024, false);
        collector.push(LogStream::Stdout, b"one\ntwo\n");
        collector.push(LogStream::Stderr, b"oops\n");
        collector.push(LogStream::Stdout, b"\n");
        let logs = collector.finish();
        assert_eq!(
            texts(&logs),
            [
                (LogStream::Stdout, "one"),
                (LogStream::Stdout, "two"),
                (LogStream::Stderr, "oops"),
                (LogStream::Stdout, ""),
            ]
        );
        assert!(!logs.truncated);
    }

    #[test]
    fn a_line_split_across_frames_is_joined_per_stream() {
        let mut collector = LogCollector::new(1024, false);
        collector.push(LogStream::Stdout, b"hel");
        collector.push(LogStream::Stderr, b"err");
        collector.push(LogStream::Stdout, b"lo\r\nlast");
        collector.push(LogStream::Stderr, b"or\n");
        let logs = collector.finish();
        assert_eq!(
            texts(&logs),
            [
                (LogStream::Stdout, "hello"),
                (LogStream::Stderr, "error"),
                (LogStream::Stdout, "last"),
            ]
        );
    }

    #[test]
    fn timestamps_are_split_off_the_text() {
        let mut collector = LogCollector::new(1024, true);
        collector.push(
            LogStream::Stdout,
            b"2025-01-02T03:04:05.123456789Z hello world\n2025-01-02T03:04:06Z \n",
        );
        let logs = collector.finish();
        assert_eq!(logs.lines.len(), 2);
        assert_eq!(logs.lines[0].text, "hello world");
        assert_eq!(
            logs.lines[0].timestamp.as_deref(),
            Some("2025-01-02T03:04:05.123456789Z")
        );
        assert_eq!(logs.lines[1].text, "");
    }

    #[test]
    fn lines_past_the_cap_are_dropped_and_marked_truncated() {
        // "aaaa", "bbbb" and "cc" make exactly 10 bytes; "dddd" does not fit, and
        // "e" after it is dropped too although it would.
        let mut collector = LogCollector::new(10, false);
        collector.push(LogStream::Stdout, b"aaaa\nbbbb\ncc\ndddd\ne\n");
        assert!(collector.is_truncated());
        let logs = collector.finish();
        assert_eq!(
            texts(&logs),
            [
                (LogStream::Stdout, "aaaa"),
                (LogStream::Stdout, "bbbb"),
                (LogStream::Stdout, "cc"),
            ]
        );
        assert!(logs.truncated);
    }

    #[test]
    fn output_after_the_cap_is_ignored() {
        let mut collector = LogCollector::new(3, false);
        collector.push(LogStream::Stdout, b"abcd\n");
        collector.push(LogStream::Stderr, b"x\n");
        let logs = collector.finish();
        assert!(logs.lines.is_empty());
        assert!(logs.truncated);
    }

    #[test]
    fn an_endless_unfinished_line_stops_being_buffered_at_the_cap() {
        let mut collector = LogCollector::new(8, false);
        collector.push(LogStream::Stdout, b"ok\n");
        collector.push(LogStream::Stdout, &[b'x'; 100]);
        assert!(collector.is_truncated());
        let logs = collector.finish();
        assert_eq!(texts(&logs), [(LogStream::Stdout, "ok")]);
        assert!(logs.truncated);
    }

    #[test]
    fn the_cap_counts_text_not_timestamps() {
        let mut collector = LogCollector::new(5, true);
        collector.push(LogStream::Stdout, b"2025-01-02T03:04:05.123456789Z hello\n");
        let logs = collector.finish();
        assert_eq!(texts(&logs), [(LogStream::Stdout, "hello")]);
        assert!(!logs.truncated);
    }

    #[test]
    fn the_answer_serializes_as_the_wire_shape() {
        let logs = Logs {
            lines: vec![LogLine {
                stream: LogStream::Stderr,
                text: "x".into(),
                timestamp: None,
            }],
            truncated: false,
        };
        assert_eq!(
            serde_json::to_value(&logs).unwrap(),
            serde_json::json!({"lines": [{"stream": "stderr", "text": "x"}], "truncated": false})
        );
    }
}
