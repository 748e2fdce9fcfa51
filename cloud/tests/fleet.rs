//! Fleet operations over the real HTTP API, with connected fake devices:
//! tags and the filters they make, jobs that call every matching device,
//! and calls that wait for an offline device (across a restart of the cloud,
//! until they expire, once per idempotency key).

mod support;

use std::time::Duration;

use cloud::client::ApiClient;
use cloud::roles::Role;
use protocol::{keys, Message};
use reqwest::Method;
use serde_json::{json, Value};
use support::{answer_calls, wait_until, TestCloud};
use tokio::sync::mpsc;

/// An API client of a new operator with `role`.
async fn client_with_role(cloud: &TestCloud, name: &str, role: Role) -> ApiClient {
    cloud
        .add_operator_with_role(name, "correct horse battery", role)
        .await;
    let store = &cloud.state.ops().store().accounts;
    let operator = store.operator(name).await.unwrap().unwrap();
    let (_, secret) = store
        .create_token(&operator, "test", role, protocol::now_ms() as i64)
        .await
        .unwrap();
    cloud.api_as(&secret)
}

async fn patch_tags(api: &ApiClient, id: &str, patch: Value) -> (u16, Value) {
    api.request(Method::PATCH, &format!("/devices/{id}/tags"), Some(&patch))
        .await
        .unwrap()
}

fn ids(answer: &Value) -> Vec<String> {
    answer["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn tags_label_devices_and_the_list_filters_by_them() {
    let cloud = TestCloud::start().await;
    let api = cloud.api();
    let _a = cloud.accepted_device("berlin-1").await;
    let _b = cloud.accepted_device("berlin-2").await;
    let _c = cloud.accepted_device("paris-1").await;

    let (status, answer) =
        patch_tags(&api, "berlin-1", json!({"site": "berlin", "env": "prod"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["tags"], json!({"env": "prod", "site": "berlin"}));
    patch_tags(&api, "berlin-2", json!({"site": "berlin"})).await;
    patch_tags(&api, "paris-1", json!({"site": "paris", "env": "prod"})).await;

    let list = |query: &'static str| {
        let api = api.clone();
        async move { ids(&api.get(&format!("/devices?{query}")).await.unwrap()) }
    };
    assert_eq!(list("tag=site%3Dberlin").await, ["berlin-1", "berlin-2"]);
    assert_eq!(list("tag=site%3Dberlin,env").await, ["berlin-1"]);
    assert_eq!(list("tag=env%3Dprod&q=paris").await, ["paris-1"]);
    assert_eq!(list("tag=rack").await, Vec::<String>::new());
    let device = api.device("berlin-1").await.unwrap();
    assert_eq!(device["device"]["tags"]["site"], "berlin");

    // A null removes a tag; PUT replaces them all.
    let (_, answer) = patch_tags(&api, "berlin-1", json!({"env": null})).await;
    assert_eq!(answer["tags"], json!({"site": "berlin"}));
    let (status, answer) = api
        .request(
            Method::PUT,
            "/devices/paris-1/tags",
            Some(&json!({"rack": "7"})),
        )
        .await
        .unwrap();
    assert_eq!((status, &answer["tags"]), (200, &json!({"rack": "7"})));

    // What a tag may be, refused with the rule.
    for (patch, says) in [
        (json!({"si te": "x"}), "letters, digits"),
        (json!({"site": "a,b"}), "without ','"),
        (json!({"site": "x".repeat(129)}), "at most 128 bytes"),
    ] {
        let (status, answer) = patch_tags(&api, "berlin-2", patch).await;
        assert_eq!(
            (status, answer["error"]["kind"].as_str()),
            (400, Some("bad_request"))
        );
        assert!(
            answer["error"]["message"].as_str().unwrap().contains(says),
            "{answer}"
        );
    }
    let many: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("k{i}"), json!("v"))).collect();
    let (status, answer) = patch_tags(&api, "berlin-2", Value::Object(many)).await;
    assert_eq!(status, 400);
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("at most 32 tags"));
    assert_eq!(
        api.device("berlin-2").await.unwrap()["device"]["tags"],
        json!({"site": "berlin"}),
        "a refused change changes nothing"
    );
    let (status, answer) = patch_tags(&api, "nobody", json!({"site": "x"})).await;
    assert_eq!(
        (status, answer["error"]["kind"].as_str()),
        (404, Some("unknown_device"))
    );
    let (status, _) = api
        .request(Method::GET, "/devices?tag=si%20te", None)
        .await
        .unwrap();
    assert_eq!(status, 400, "a bad filter is refused");

    // Viewers read tags but do not change them; changes are audited.
    let viewer = client_with_role(&cloud, "vera", Role::Viewer).await;
    let (status, answer) = patch_tags(&viewer, "berlin-2", json!({"site": "x"})).await;
    assert_eq!(
        (status, answer["error"]["kind"].as_str()),
        (403, Some("forbidden"))
    );
    assert_eq!(
        ids(&viewer.get("/devices?tag=site%3Dberlin").await.unwrap()).len(),
        2
    );
    let audit = api.audit("action=device.tag").await.unwrap();
    let entries = audit["entries"].as_array().unwrap();
    assert!(entries
        .iter()
        .any(|e| e["target"] == "paris-1" && e["detail"] == "rack=7"));
    assert!(entries
        .iter()
        .any(|e| e["actor"] == "vera" && e["outcome"] == "forbidden"));
}

#[tokio::test]
async fn a_job_calls_every_matching_device_and_keeps_each_outcome() {
    let cloud = TestCloud::start().await;
    let api = cloud.api();
    let (called, mut calls_of_berlin) = mpsc::unbounded_channel();
    for id in ["berlin-1", "berlin-2"] {
        answer_calls(cloud.accepted_device(id).await, id, called.clone());
    }
    // Connected, but never answers: its call times out.
    let _silent = cloud.accepted_device("berlin-3").await;
    // Accepted, never connected: offline.
    let key = keys::generate();
    api.preauthorize("berlin-4", &keys::public_key_to_pem(&key.verifying_key()))
        .await
        .unwrap();
    let (paris_called, mut calls_of_paris) = mpsc::unbounded_channel();
    answer_calls(
        cloud.accepted_device("paris-1").await,
        "paris-1",
        paris_called,
    );
    for id in ["berlin-1", "berlin-2", "berlin-3", "berlin-4"] {
        patch_tags(&api, id, json!({"site": "berlin"})).await;
    }
    patch_tags(&api, "paris-1", json!({"site": "paris"})).await;

    let request = json!({
        "method": "containers.list",
        "params": {"all": true},
        "filter": {"tag": "site=berlin"},
        "concurrency": 2,
        "timeout_ms": 1000,
    });
    let (status, started) = api
        .request(Method::POST, "/jobs", Some(&request))
        .await
        .unwrap();
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["job"]["total"], 4);
    assert_eq!(started["job"]["filter"], "tag=site%3Dberlin");
    let id = started["job"]["id"].as_i64().unwrap();
    let path = format!("/jobs/{id}");
    wait_until("the job finishes", || {
        let (api, path) = (api.clone(), path.clone());
        async move { api.get(&path).await.unwrap()["job"]["state"] == "finished" }
    })
    .await;
    let job = api.get(&path).await.unwrap();
    assert_eq!(
        job["job"]["tally"],
        json!({"ok": 2, "offline": 1, "timed_out": 1})
    );
    assert_eq!(job["job"]["done"], 4);
    let outcomes = job["outcomes"].as_array().unwrap();
    let outcome_of = |device: &str| {
        outcomes
            .iter()
            .find(|o| o["device_id"] == device)
            .unwrap_or_else(|| panic!("no outcome for {device}: {job}"))
            .clone()
    };
    for device in ["berlin-1", "berlin-2"] {
        let outcome = outcome_of(device);
        assert_eq!(outcome["outcome"], "ok");
        assert_eq!(
            outcome["result"],
            json!({"device": device, "method": "containers.list"})
        );
    }
    assert_eq!(outcome_of("berlin-3")["outcome"], "timed_out");
    assert_eq!(outcome_of("berlin-4")["outcome"], "offline");
    assert_eq!(outcome_of("berlin-4")["result"], "device is offline");
    let seqs: Vec<i64> = outcomes
        .iter()
        .map(|o| o["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    // Following: what comes after a point.
    let rest = api.get(&format!("{path}?after=2")).await.unwrap();
    assert_eq!(rest["outcomes"].as_array().unwrap().len(), 2);
    assert_eq!(rest["next"], 4);
    assert_eq!(calls_of_berlin.recv().await.unwrap(), "containers.list");
    assert_eq!(calls_of_berlin.recv().await.unwrap(), "containers.list");
    assert!(
        calls_of_paris.try_recv().is_err(),
        "paris-1 does not match the filter"
    );

    // One audit entry for the job, with its tally.
    let audit = api.audit("action=job").await.unwrap();
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["target"], format!("job {id}"));
    assert_eq!(entries[0]["outcome"], "partial");
    let detail = entries[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("containers.list on 4 devices") && detail.contains("2 ok"),
        "{detail}"
    );
    let listed = api.get("/jobs").await.unwrap();
    assert_eq!(listed["jobs"][0]["id"], id);

    // Role rules apply to a job's method; bad requests are refused.
    let viewer = client_with_role(&cloud, "vera", Role::Viewer).await;
    let stop = json!({"method": "containers.stop", "params": {"id": "x"}, "filter": {"tag": "site=berlin"}});
    let (status, answer) = viewer
        .request(Method::POST, "/jobs", Some(&stop))
        .await
        .unwrap();
    assert_eq!(
        (status, answer["error"]["kind"].as_str()),
        (403, Some("forbidden"))
    );
    for bad in [
        json!({"method": "containers.list", "concurrency": 0}),
        json!({"method": "containers.list", "filter": {"state": "asleep"}}),
        json!({"method": "bad method"}),
        json!({"method": "containers.list", "params": 7}),
    ] {
        let (status, answer) = api
            .request(Method::POST, "/jobs", Some(&bad))
            .await
            .unwrap();
        assert_eq!(status, 400, "{bad} → {answer}");
    }
    let (status, answer) = api.request(Method::GET, "/jobs/999", None).await.unwrap();
    assert_eq!(
        (status, answer["error"]["kind"].as_str()),
        (404, Some("unknown_job"))
    );
}

async fn queue(api: &ApiClient, device: &str, body: Value) -> (u16, Value) {
    api.request(
        Method::POST,
        &format!("/devices/{device}/calls"),
        Some(&body),
    )
    .await
    .unwrap()
}

async fn call_state(api: &ApiClient, device: &str, id: i64) -> Value {
    api.get(&format!("/devices/{device}/calls/{id}"))
        .await
        .unwrap()["call"]
        .clone()
}

#[tokio::test]
async fn a_queued_call_waits_for_its_offline_device_across_a_cloud_restart() {
    let mut cloud = TestCloud::start().await;
    let key = keys::generate();
    cloud
        .api()
        .preauthorize("van-7", &keys::public_key_to_pem(&key.verifying_key()))
        .await
        .unwrap();
    let body = json!({
        "method": "containers.restart",
        "params": {"id": "web"},
        "ttl_ms": 60_000,
        "idempotency_key": "restart-web-1",
    });
    let (status, answer) = queue(&cloud.api(), "van-7", body.clone()).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["call"]["state"], "queued");
    let id = answer["call"]["id"].as_i64().unwrap();

    // The same submission again is the same call; the key with another call
    // is refused.
    let (status, again) = queue(&cloud.api(), "van-7", body.clone()).await;
    assert_eq!((status, again["call"]["id"].as_i64()), (200, Some(id)));
    let mut other = body.clone();
    other["params"] = json!({"id": "db"});
    let (status, answer) = queue(&cloud.api(), "van-7", other).await;
    assert_eq!(
        (status, answer["error"]["kind"].as_str()),
        (409, Some("idempotency_conflict"))
    );
    assert_eq!(
        cloud.api().get("/devices/van-7/calls").await.unwrap()["calls"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    cloud.restart().await;
    assert_eq!(
        call_state(&cloud.api(), "van-7", id).await["state"],
        "queued"
    );

    // The device comes online: the call is sent and answered, once.
    let mut device = cloud.connect_with_key("van-7", key).await;
    assert_eq!(device.authenticate().await, json!({"status": "accepted"}));
    let Message::Request {
        id: call,
        method,
        params,
    } = device.recv().await
    else {
        panic!("the queued call is sent");
    };
    assert_eq!(
        (method.as_str(), params),
        ("containers.restart", Some(json!({"id": "web"})))
    );
    device
        .send_message(&Message::result(call, json!({"restarted": "web"})))
        .await;
    let api = cloud.api();
    wait_until("the call succeeds", || {
        let api = api.clone();
        async move { call_state(&api, "van-7", id).await["state"] == "successful" }
    })
    .await;
    let done = call_state(&api, "van-7", id).await;
    assert_eq!(done["result"], json!({"restarted": "web"}));
    assert!(done["sent_at"].as_i64().unwrap() >= done["created_at"].as_i64().unwrap());
    let (status, _) = queue(&api, "van-7", body).await;
    assert_eq!(
        status, 200,
        "a retried submission after the end still does not call again"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), device.recv())
            .await
            .is_err(),
        "the call is sent once"
    );
    let audit = api.audit("action=rpc").await.unwrap();
    let entry = &audit["entries"][0];
    assert_eq!(
        (entry["outcome"].as_str(), entry["target"].as_str()),
        (Some("ok"), Some("van-7"))
    );
    assert!(entry["detail"]
        .as_str()
        .unwrap()
        .contains(&format!("queued call {id}")));
}

#[tokio::test]
async fn a_queued_call_expires_when_its_device_stays_away_and_failures_are_kept() {
    let cloud = TestCloud::start().await;
    let api = cloud.api();
    let key = keys::generate();
    api.preauthorize("van-8", &keys::public_key_to_pem(&key.verifying_key()))
        .await
        .unwrap();
    let (_, answer) = queue(
        &api,
        "van-8",
        json!({"method": "system.health", "ttl_ms": 300}),
    )
    .await;
    let id = answer["call"]["id"].as_i64().unwrap();
    wait_until("the call expires", || {
        let api = api.clone();
        async move { call_state(&api, "van-8", id).await["state"] == "expired" }
    })
    .await;
    let mut device = cloud.connect_with_key("van-8", key).await;
    assert_eq!(device.authenticate().await, json!({"status": "accepted"}));
    assert!(
        tokio::time::timeout(Duration::from_millis(2500), device.recv())
            .await
            .is_err(),
        "an expired call is never sent"
    );

    // Online now: a queued call goes at once; the device's error is kept.
    let (_, answer) = queue(
        &api,
        "van-8",
        json!({"method": "containers.start", "params": {"id": "nope"}, "ttl_ms": 60_000}),
    )
    .await;
    let id = answer["call"]["id"].as_i64().unwrap();
    let Message::Request { id: call, .. } = device.recv().await else {
        panic!("sent at once");
    };
    device
        .send_message(&Message::error(
            call,
            protocol::RpcError::new(protocol::ErrorCode::InvalidParams, "no such container"),
        ))
        .await;
    wait_until("the call fails", || {
        let api = api.clone();
        async move { call_state(&api, "van-8", id).await["state"] == "failed" }
    })
    .await;
    let failed = call_state(&api, "van-8", id).await;
    assert_eq!(failed["outcome"], "device_error");
    assert!(
        failed["result"]
            .as_str()
            .unwrap()
            .contains("no such container"),
        "{failed}"
    );

    // Bounds: a ttl, a key and a device queue of at most 100.
    for bad in [
        json!({"method": "system.health", "ttl_ms": 0}),
        json!({"method": "system.health", "ttl_ms": 8 * 24 * 3_600_000u64}),
        json!({"method": "system.health", "ttl_ms": 1000, "idempotency_key": ""}),
        json!({"method": "system.health"}),
    ] {
        let (status, answer) = queue(&api, "van-8", bad.clone()).await;
        assert_eq!(status, 400, "{bad} → {answer}");
    }
    let (status, _) = queue(
        &api,
        "nobody",
        json!({"method": "system.health", "ttl_ms": 1000}),
    )
    .await;
    assert_eq!(status, 404);
    drop(device);
    let waiting = json!({"method": "system.health", "ttl_ms": 600_000});
    let mut accepted = 0;
    let mut busy = None;
    for _ in 0..101 {
        let (status, answer) = queue(&api, "van-8", waiting.clone()).await;
        match status {
            202 => accepted += 1,
            _ => busy = Some((status, answer)),
        }
    }
    let (status, answer) = busy.expect("the 101st is refused");
    assert_eq!(
        (status, answer["error"]["kind"].as_str()),
        (429, Some("busy"))
    );
    assert!(accepted <= 100, "{accepted} calls waiting");
}
