//! `containers.logs`: a container's log as lines, each with its stream and
//! (on request) its timestamp, capped in size.
//!
//! The size rule: the answer, serialized as it is sent, is at most
//! `log_max_bytes` (every byte counts: keys, quotes, escapes, timestamps), and
//! over NATS also at most the server's `max_payload` less
//! [`super::RESPONSE_ENVELOPE_RESERVE`] for the JSON-RPC response around it.
//! Lines past the cap are left out, from the first that does not fit on, and
//! the answer says `truncated: true`; it is never an error. `tail` is at most
//! [`MAX_TAIL`] lines.

use std::sync::Arc;

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use futures::StreamExt;
use jsonrpsee::types::ErrorObjectOwned;
use protocol::ErrorCode;
use serde::{Deserialize, Serialize};

use super::{check_container_ref, MethodContext};
use crate::error::{docker_error, rpc_error};

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

/// Turns Docker's log frames into lines and keeps the first lines that fit in
/// `max_bytes`; once a line does not fit, it and all later ones are dropped, so
/// the answer is always a contiguous stretch of the log.
///
/// `max_bytes` bounds the whole [`Logs`] answer as serde_json writes it, not
/// just the text: each line's `{"stream":…,"text":…,"timestamp":…}` with its
/// text escaped (a control character takes 6 bytes, `\u0000`), the commas
/// between lines and the `{"lines":[…],"truncated":…}` around them. So a
/// container printing millions of empty lines, or lines that need escaping,
/// yields an answer no larger than the cap, and the collector's memory is
/// bounded by the cap too (the lines kept take at most a few times their
/// serialized size, and an unfinished line is dropped once it cannot fit).
#[derive(Debug)]
pub struct LogCollector {
    max_bytes: usize,
    /// Lines start with Docker's timestamp and a space.
    timestamps: bool,
    /// The unfinished line of each stream: a frame need not end at a newline.
    partial: [Vec<u8>; 2],
    lines: Vec<LogLine>,
    /// Serialized size of the answer with the lines kept so far.
    answer_bytes: usize,
    truncated: bool,
}

/// The answer with no lines, as serialized: the size every answer starts from.
/// (`"truncated":true` is one byte shorter than this `false`.)
const EMPTY_ANSWER: &str = r#"{"lines":[],"truncated":false}"#;

impl LogCollector {
    pub fn new(max_bytes: usize, timestamps: bool) -> Self {
        LogCollector {
            max_bytes,
            timestamps,
            partial: [Vec::new(), Vec::new()],
            lines: Vec::new(),
            answer_bytes: EMPTY_ANSWER.len(),
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
        // A line serializes to more bytes than it has raw (quotes, keys and
        // escapes only add; an invalid UTF-8 sequence of up to 3 bytes becomes
        // the 3-byte U+FFFD), so an unfinished line already past what is left
        // can never fit: stop buffering it.
        if self.answer_bytes + self.partial[index].len() > self.max_bytes {
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
        let line = LogLine {
            stream,
            text: String::from_utf8_lossy(text).into_owned(),
            timestamp: timestamp.map(|t| String::from_utf8_lossy(t).into_owned()),
        };
        let comma = usize::from(!self.lines.is_empty());
        let size = comma + serialized_len(&line);
        if self.answer_bytes + size > self.max_bytes {
            self.truncate();
            return;
        }
        self.answer_bytes += size;
        self.lines.push(line);
    }

    fn truncate(&mut self) {
        self.truncated = true;
        self.partial = [Vec::new(), Vec::new()];
    }
}

/// How many bytes serde_json writes for `value`, counted without writing them.
fn serialized_len(value: &impl Serialize) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, value).expect("a log line serializes to JSON");
    counter.0
}

/// Lines returned when the caller gives neither `tail` nor `since`.
pub const DEFAULT_TAIL: u64 = 1000;

/// Largest `tail` accepted: Docker reads that many lines before it sends any,
/// and a log answer holds at most `log_max_bytes` anyway. Older lines are
/// reached with `since` and `until`.
pub const MAX_TAIL: u64 = 10_000;

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
    if let Some(tail) = params.tail.filter(|&tail| tail > MAX_TAIL) {
        return Err(rpc_error(
            ErrorCode::InvalidParams,
            format!(
                "tail {tail} is over the maximum of {MAX_TAIL} lines; \
                 use since and until for older lines"
            ),
        ));
    }
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
    let mut collector = LogCollector::new(context.log_answer_cap(), params.timestamps);
    // Stop reading at the cap: dropping the stream closes the Docker request,
    // so a huge log is never read whole.
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

    /// The answer's size as it is sent.
    fn wire_len(logs: &Logs) -> usize {
        serde_json::to_vec(logs).unwrap().len()
    }

    /// Size of one stdout line without timestamp: `{"stream":"stdout","text":"…"}`.
    fn plain_line_len(text: &str) -> usize {
        r#"{"stream":"stdout","text":""}"#.len() + text.len()
    }

    #[test]
    fn the_empty_answer_is_the_size_counted_from() {
        let logs = LogCollector::new(1024, false).finish();
        assert_eq!(serde_json::to_string(&logs).unwrap(), EMPTY_ANSWER);
    }

    #[test]
    fn lines_past_the_cap_are_dropped_and_marked_truncated() {
        // Exactly "aaaa", "bbbb" and "cc" fit (two commas between them); "dddd"
        // does not, and "e" after it is dropped too although it would.
        let cap = EMPTY_ANSWER.len()
            + plain_line_len("aaaa")
            + 1
            + plain_line_len("bbbb")
            + 1
            + plain_line_len("cc");
        let mut collector = LogCollector::new(cap, false);
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
        assert!(wire_len(&logs) <= cap);
    }

    #[test]
    fn output_after_the_cap_is_ignored() {
        let cap = EMPTY_ANSWER.len() + plain_line_len("abc");
        let mut collector = LogCollector::new(cap, false);
        collector.push(LogStream::Stdout, b"abcd\n");
        collector.push(LogStream::Stderr, b"x\n");
        let logs = collector.finish();
        assert!(logs.lines.is_empty());
        assert!(logs.truncated);
    }

    #[test]
    fn an_endless_unfinished_line_stops_being_buffered_at_the_cap() {
        let cap = EMPTY_ANSWER.len() + plain_line_len("ok") + 8;
        let mut collector = LogCollector::new(cap, false);
        collector.push(LogStream::Stdout, b"ok\n");
        for _ in 0..1000 {
            collector.push(LogStream::Stdout, &[b'x'; 100]);
        }
        assert!(collector.is_truncated());
        assert!(collector.partial.iter().all(Vec::is_empty));
        let logs = collector.finish();
        assert_eq!(texts(&logs), [(LogStream::Stdout, "ok")]);
        assert!(logs.truncated);
    }

    #[test]
    fn millions_of_empty_lines_give_an_answer_within_the_cap() {
        let cap = 64 * 1024;
        let mut collector = LogCollector::new(cap, false);
        let chunk = [b'\n'; 4096];
        let mut pushed = 0;
        // 4 million empty lines, fed until the collector says it is full.
        while pushed < 4_000_000 && !collector.is_truncated() {
            collector.push(LogStream::Stdout, &chunk);
            pushed += chunk.len();
        }
        assert!(
            collector.is_truncated(),
            "4 million empty lines fit in {cap}"
        );
        assert!(
            pushed < 100_000,
            "the collector kept taking lines: {pushed}"
        );
        let logs = collector.finish();
        let size = wire_len(&logs);
        assert!(size <= cap, "{size} > {cap}");
        // Nearly full: another line would not have fitted.
        assert!(size + 1 + plain_line_len("") > cap, "{size}");
        assert!(logs.lines.iter().all(|line| line.text.is_empty()));
    }

    #[test]
    fn escaping_counts_at_its_escaped_size() {
        // 100 NULs are 600 bytes as "\u0000" each: they do not fit in 500.
        let mut collector = LogCollector::new(500, false);
        let mut line = vec![0u8; 100];
        line.push(b'\n');
        collector.push(LogStream::Stdout, &line);
        let logs = collector.finish();
        assert!(logs.lines.is_empty());
        assert!(logs.truncated);

        // Quotes and backslashes take 2 bytes each: 4 more for these 4.
        let text = r#""\"\"#;
        for (extra, fits) in [(3, false), (4, true)] {
            let cap = EMPTY_ANSWER.len() + plain_line_len(text) + extra;
            let mut collector = LogCollector::new(cap, false);
            collector.push(LogStream::Stdout, format!("{text}\n").as_bytes());
            let logs = collector.finish();
            assert_eq!(logs.lines.len(), usize::from(fits), "{extra}: {logs:?}");
            assert_eq!(logs.truncated, !fits);
            assert!(wire_len(&logs) <= cap);
        }
    }

    #[test]
    fn the_cap_counts_timestamps_too() {
        let raw = b"2025-01-02T03:04:05.123456789Z hello\n";
        let stamped = LogLine {
            stream: LogStream::Stdout,
            text: "hello".into(),
            timestamp: Some("2025-01-02T03:04:05.123456789Z".into()),
        };
        let exact = EMPTY_ANSWER.len() + serde_json::to_vec(&stamped).unwrap().len();

        let mut collector = LogCollector::new(exact, true);
        collector.push(LogStream::Stdout, raw);
        let logs = collector.finish();
        assert_eq!(logs.lines, [stamped]);
        assert!(!logs.truncated);
        assert_eq!(wire_len(&logs), exact);

        let mut collector = LogCollector::new(exact - 1, true);
        collector.push(LogStream::Stdout, raw);
        let logs = collector.finish();
        assert!(logs.lines.is_empty());
        assert!(logs.truncated);
    }

    /// Lines that are hard to size: empty, control characters, quotes and
    /// backslashes, non-ASCII, invalid UTF-8, a TTY's "\r", long ones.
    fn awkward_output(timestamps: bool) -> Vec<(LogStream, Vec<u8>)> {
        let texts: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"plain text".to_vec(),
            (0u8..32).filter(|&b| b != b'\n').collect(),
            br#"say "hi" \ bye"#.to_vec(),
            "h\u{e9}llo \u{2603} \u{1f600}".as_bytes().to_vec(),
            vec![0xff, 0xfe, b'a', 0xf0, 0x9f, 0x98],
            b"tty line\r".to_vec(),
            vec![b'\x7f'; 300],
            vec![b'z'; 1000],
        ];
        let mut output = Vec::new();
        for round in 0..5 {
            for (n, text) in texts.iter().enumerate() {
                let stream = if (round + n) % 3 == 0 {
                    LogStream::Stderr
                } else {
                    LogStream::Stdout
                };
                let mut line = Vec::new();
                if timestamps {
                    line.extend_from_slice(b"2025-01-02T03:04:05.123456789Z ");
                }
                line.extend_from_slice(text);
                line.push(b'\n');
                output.push((stream, line));
            }
        }
        output
    }

    #[test]
    fn whatever_the_lines_the_answer_fits_and_holds_as_many_as_fit() {
        for timestamps in [false, true] {
            let output = awkward_output(timestamps);
            // Everything, to find out what each line becomes.
            let mut everything = LogCollector::new(usize::MAX, timestamps);
            for (stream, line) in &output {
                everything.push(*stream, line);
            }
            let all = everything.finish();
            assert_eq!(all.lines.len(), output.len());

            for cap in (0..wire_len(&all) + 100).step_by(23) {
                let mut collector = LogCollector::new(cap, timestamps);
                for (stream, line) in &output {
                    collector.push(*stream, line);
                }
                let logs = collector.finish();
                let size = wire_len(&logs);
                assert!(size <= cap.max(EMPTY_ANSWER.len()), "{size} > {cap}");
                assert_eq!(logs.lines[..], all.lines[..logs.lines.len()], "cap {cap}");
                assert_eq!(logs.truncated, logs.lines.len() < all.lines.len());
                if logs.truncated {
                    // The first line left out would not have fitted.
                    let one_more = Logs {
                        lines: all.lines[..=logs.lines.len()].to_vec(),
                        truncated: false,
                    };
                    assert!(wire_len(&one_more) > cap, "cap {cap}: a line was left out");
                }
            }
        }
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
