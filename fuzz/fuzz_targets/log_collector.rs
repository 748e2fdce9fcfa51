//! A container's log output, in frames of any size and content: the answer
//! `containers.logs` builds from it always fits its cap as serialized, and is
//! a contiguous start of the log.
#![no_main]

use libfuzzer_sys::fuzz_target;
use worker::methods::{LogCollector, LogStream};

fuzz_target!(|input: (u16, bool, Vec<(bool, Vec<u8>)>)| {
    let (cap, timestamps, frames) = input;
    let cap = usize::from(cap);
    let mut collector = LogCollector::new(cap, timestamps);
    for (stderr, chunk) in &frames {
        let stream = if *stderr { LogStream::Stderr } else { LogStream::Stdout };
        collector.push(stream, chunk);
    }
    let logs = collector.finish();
    let size = serde_json::to_vec(&logs).expect("serializes").len();
    // The empty answer is sent whatever the cap.
    let empty = r#"{"lines":[],"truncated":false}"#.len();
    assert!(size <= cap.max(empty), "{size} > {cap}");
});
