//! Answers always fit: a log answer is cut to its cap and to what NATS
//! carries, and any other answer too large for NATS is an error, never silence.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{
    call, call_ok, fast_reports, line, lines, module, module_with, wait_for_list_over_nats,
    wait_for_log_lines, RunningWorker, DEADLINE,
};
use testkit::docker::TestContainer;
use testkit::nats::NatsServer;
use testkit::wait_until;
use worker::jsonrpsee::RpcModule;
use worker::WorkerConfig;

/// Serialized size of a `containers.logs` result, as the worker sends it.
fn wire_len(result: &Value) -> usize {
    result.to_string().len()
}

/// Waits until `containers.logs` with `params` says `truncated` (the
/// container has printed past the cap), and returns that answer.
async fn wait_for_truncated_logs(module: &RpcModule<()>, params: Value) -> Value {
    wait_until("a truncated log answer", DEADLINE, || async {
        let logs = call_ok(module, "containers.logs", params.clone()).await;
        (logs["truncated"] == true).then_some(logs)
    })
    .await
}

#[tokio::test]
async fn many_empty_lines_give_a_log_answer_within_log_max_bytes() {
    // Each empty line costs 30 bytes as sent ({"stream":"stdout","text":""}
    // and a comma), though its text is empty.
    let container = TestContainer::start("yes '' | head -n 200000; sleep 600").await;
    let log_max_bytes = 64 * 1024;
    let module = module_with(WorkerConfig {
        log_max_bytes,
        ..WorkerConfig::default()
    })
    .await;

    for params in [
        json!({"container": container.name, "tail": worker::methods::MAX_TAIL}),
        json!({"container": container.name, "since": 1}),
    ] {
        let logs = wait_for_truncated_logs(&module, params.clone()).await;
        let size = wire_len(&logs);
        assert!(size <= log_max_bytes, "{params}: {size} bytes");
        // Cut at the cap, not far below it.
        assert!(size > log_max_bytes - 64, "{params}: {size} bytes");
        let lines = lines(&logs);
        assert!(
            lines.iter().all(|l| *l == line("stdout", "")),
            "{params}: {lines:?}"
        );
    }
}

#[tokio::test]
async fn lines_needing_escaping_and_timestamps_stay_within_log_max_bytes() {
    // Control characters take 6 bytes each as sent ("\u0001"), quotes and
    // backslashes 2.
    let container = TestContainer::start(
        r#"yes "$(printf 'a\001\002\033[31m"\\z')" | head -n 50000; sleep 600"#,
    )
    .await;
    let log_max_bytes = 32 * 1024;
    let module = module_with(WorkerConfig {
        log_max_bytes,
        ..WorkerConfig::default()
    })
    .await;

    for timestamps in [false, true] {
        let logs = wait_for_truncated_logs(
            &module,
            json!({"container": container.name, "tail": 5000, "timestamps": timestamps}),
        )
        .await;
        let size = wire_len(&logs);
        assert!(
            size <= log_max_bytes,
            "timestamps {timestamps}: {size} bytes"
        );
        let lines = logs["lines"].as_array().unwrap();
        assert!(lines.len() > 100, "{}", lines.len());
        for printed in lines {
            assert_eq!(printed["text"], "a\u{1}\u{2}\u{1b}[31m\"\\z");
            assert_eq!(printed.get("timestamp").is_some(), timestamps);
        }
    }
}

#[tokio::test]
async fn a_tail_over_the_maximum_is_refused_and_the_maximum_is_served() {
    let container = TestContainer::start("echo only-line; sleep 600").await;
    let module = module().await;
    wait_for_log_lines(&module, &container.name, 1).await;

    let max = worker::methods::MAX_TAIL;
    let error = call(
        &module,
        "containers.logs",
        json!({"container": container.name, "tail": max + 1}),
    )
    .await
    .unwrap_err();
    assert_eq!(error["code"], -32602, "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains(&format!("maximum of {max} lines")),
        "{error}"
    );
    let logs = call_ok(
        &module,
        "containers.logs",
        json!({"container": container.name, "tail": max}),
    )
    .await;
    assert_eq!(lines(&logs), [line("stdout", "only-line")]);
}

#[tokio::test]
async fn a_transport_limit_below_log_max_bytes_cuts_the_log_answer_to_fit() {
    let container = TestContainer::start("seq -w 1 500 | sed 's/^/line-/'; sleep 600").await;
    let uncapped = module().await;
    wait_for_log_lines(&uncapped, &container.name, 500).await;

    let answer_limit = 4096;
    let module = worker::methods::rpc_module_with_answer_limit(
        testkit::docker::docker().await,
        &WorkerConfig::default(),
        move || answer_limit,
    );
    let logs = call_ok(
        &module,
        "containers.logs",
        json!({"container": container.name}),
    )
    .await;
    assert_eq!(logs["truncated"], true);
    let room = answer_limit - worker::methods::RESPONSE_ENVELOPE_RESERVE;
    assert!(wire_len(&logs) <= room, "{}", wire_len(&logs));
    let expected: Vec<_> = (1..=lines(&logs).len())
        .map(|n| line("stdout", &format!("line-{n:03}")))
        .collect();
    assert_eq!(lines(&logs), expected);
    assert!(expected.len() > 50, "{}", expected.len());
}

/// Sends a JSON-RPC request on `rpc.<method>` and returns the reply's raw
/// payload, waiting long enough for a large answer.
async fn nats_rpc_payload(
    client: &async_nats::Client,
    method: &str,
    params: Value,
) -> Result<Vec<u8>, async_nats::RequestError> {
    let request = json!({"jsonrpc": "2.0", "id": "c-17", "method": method, "params": params});
    let reply = client
        .send_request(
            format!("{}{method}", protocol::nats::RPC_PREFIX),
            async_nats::Request::new()
                .payload(request.to_string().into())
                .timeout(Some(Duration::from_secs(15))),
        )
        .await?;
    Ok(reply.payload.to_vec())
}

#[tokio::test]
async fn a_log_answer_larger_than_nats_max_payload_arrives_truncated() {
    // 3000 lines of 1000 bytes: 3 MB, three times what NATS carries.
    let container = TestContainer::start(
        r#"x=$(head -c 1000 /dev/zero | tr '\0' x); yes "$x" | head -n 3000; sleep 600"#,
    )
    .await;
    let server = NatsServer::start().await;
    let worker = RunningWorker::start(
        &server,
        WorkerConfig {
            log_max_bytes: 8 * 1024 * 1024,
            ..fast_reports()
        },
    )
    .await;
    let client = server.client().await;
    wait_for_list_over_nats(&client).await;
    let max_payload = client.server_info().max_payload;
    assert!(max_payload >= 1024 * 1024, "{max_payload}");

    let (payload, response) = wait_until("a truncated log answer over NATS", DEADLINE, || async {
        let payload = nats_rpc_payload(
            &client,
            "containers.logs",
            json!({"container": container.name, "tail": 3000}),
        )
        .await
        .expect("an answer, not silence");
        let response: Value = serde_json::from_slice(&payload).unwrap();
        (response["result"]["truncated"] == true).then_some((payload, response))
    })
    .await;
    assert!(payload.len() <= max_payload, "{} bytes", payload.len());
    let lines = lines(&response["result"]);
    // Cut to fit the message, not to some small fraction of it.
    assert!(lines.len() > 900, "{} lines", lines.len());
    assert!(lines.iter().all(|l| l.1.len() == 1000));

    worker.stop().await;
}

#[tokio::test]
async fn an_answer_over_max_payload_is_an_error_and_a_log_answer_is_cut_to_fit() {
    let max_payload = 4096;
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("nats-server.conf");
    std::fs::write(&config, format!("max_payload: {max_payload}\n")).unwrap();
    let server = NatsServer::start_with_config(config).await;
    // inspect shows the labels: this one alone is more than NATS carries.
    let big_label = "x".repeat(2 * max_payload);
    let bulky = TestContainer::start_with_labels(&[("bulky", &big_label)], "sleep 600").await;
    let chatty = TestContainer::start("seq -w 1 500 | sed 's/^/line-/'; sleep 600").await;
    wait_for_log_lines(&module().await, &chatty.name, 500).await;

    let worker = RunningWorker::start(&server, fast_reports()).await;
    let client = server.client().await;
    assert_eq!(client.server_info().max_payload, max_payload);
    wait_until("rpc.discover to be answered", DEADLINE, || async {
        nats_rpc_payload(&client, "rpc.discover", json!({}))
            .await
            .ok()
    })
    .await;

    // Any method: an error saying why, not a timeout.
    let payload = nats_rpc_payload(
        &client,
        "containers.inspect",
        json!({"container": bulky.name}),
    )
    .await
    .expect("an answer, not silence");
    let response: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(response["id"], "c-17");
    assert_eq!(response["error"]["code"], -32603, "{response}");
    let message = response["error"]["message"].as_str().unwrap();
    assert!(message.contains("larger than NATS carries"), "{message}");

    // containers.logs: the answer itself, truncated to fit.
    let payload = nats_rpc_payload(
        &client,
        "containers.logs",
        json!({"container": chatty.name}),
    )
    .await
    .expect("an answer, not silence");
    assert!(payload.len() <= max_payload, "{} bytes", payload.len());
    let response: Value = serde_json::from_slice(&payload).unwrap();
    let logs = &response["result"];
    assert_eq!(logs["truncated"], true, "{response}");
    let expected: Vec<_> = (1..=lines(logs).len())
        .map(|n| line("stdout", &format!("line-{n:03}")))
        .collect();
    assert!(expected.len() > 50, "{}", expected.len());
    assert_eq!(lines(logs), expected);

    worker.stop().await;
}
