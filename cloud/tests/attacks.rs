//! Attacks on what the cloud holds, one test each.
//!
//! The property under test: nothing a party sends before it has proven
//! possession of the key registered for an id may consume anything that
//! belongs to that id, and everything strangers and pending devices can make
//! the cloud hold is bounded per source and in total.
//!
//! Every test has an accepted **bystander** device that must keep being
//! served during and after the attack (it pings the cloud, and an operator's
//! RPC through the API reaches it), and asserts that what the attacker made
//! the cloud store stays within its bound. Limits are made small through
//! `CloudConfig::limits` so that each test takes seconds.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use protocol::close_code::{KEY_MISMATCH, REJECTED, TRY_AGAIN_LATER};
use protocol::{keys, now_ms, ErrorCode, Message};
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, RETRY_AFTER};
use reqwest::redirect::Policy;
use reqwest::Method;
use serde_json::{json, Value};
use support::{hidden_field, set_cookie, TestCloud};
use testkit::fake_device::{FakeDevice, RefusedUpgrade};
use testkit::PROMPTLY;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const BYSTANDER: &str = "bystander";
const AUTH_FAILED: u16 = protocol::close_code::AUTH_FAILED;
const PASSWORD: &str = "correct horse battery";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The bystander is served: it pings the cloud, and an operator's RPC through
/// the API reaches it and its answer comes back. Returns how many signed
/// frames the bystander sent doing so.
async fn assert_bystander_served(cloud: &TestCloud, bystander: &mut FakeDevice) -> usize {
    bystander.ping_cloud().await;
    let call = api_rpc(cloud, &bystander.id, "containers.list");
    let Message::Request { id, method, .. } = bystander.recv().await else {
        panic!("the operator's call did not reach the bystander");
    };
    assert_eq!(method, "containers.list");
    bystander
        .send_message(&Message::result(id, json!(["still-served"])))
        .await;
    let (status, body) = tokio::time::timeout(PROMPTLY, call)
        .await
        .expect("the API call did not finish in time")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], json!(["still-served"]), "{body}");
    2
}

/// Starts `POST /api/v1/devices/{id}/rpc` as an operator would.
fn api_rpc(cloud: &TestCloud, id: &str, method: &str) -> tokio::task::JoinHandle<(u16, Value)> {
    let api = cloud.api();
    let path = format!("/devices/{id}/rpc");
    let body = json!({ "method": method, "timeout_ms": 5000 });
    tokio::spawn(async move { api.request(Method::POST, &path, Some(&body)).await.unwrap() })
}

/// The `data.reason` of a refused authentication answer ("" for a result).
fn reason(answer: &Value) -> &str {
    answer["data"]["reason"].as_str().unwrap_or("")
}

/// Asserts that the handshake was refused with `expected` and the connection
/// then closed with `code`.
async fn assert_handshake_refused(
    device: &mut FakeDevice,
    answer: &Value,
    expected: &str,
    code: u16,
) {
    assert_eq!(reason(answer), expected, "{}: {answer}", device.id);
    assert!(
        answer["message"].as_str().is_some_and(|m| !m.is_empty()),
        "the refusal says why: {answer}"
    );
    assert_eq!(
        device.expect_close().await.0,
        code,
        "{}: {answer}",
        device.id
    );
}

/// The audit log's entries matching `query` (e.g. `action=login`), newest first.
async fn audit_entries(cloud: &TestCloud, query: &str) -> Vec<Value> {
    let (status, body) = cloud
        .api()
        .request(Method::GET, &format!("/audit?{query}&limit=500"), None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let entries = body["entries"].as_array().unwrap().clone();
    assert_eq!(
        body["total"].as_i64(),
        Some(entries.len() as i64),
        "more entries than one page: {body}"
    );
    entries
}

/// A refused upgrade: the status, and a body a person can read.
fn assert_upgrade_refused(refused: Result<FakeDevice, RefusedUpgrade>, status: u16, what: &str) {
    match refused {
        Ok(device) => panic!("{what}: the upgrade of {} was not refused", device.id),
        Err(refused) => {
            assert_eq!(refused.status, status, "{what}: {refused:?}");
            assert!(
                refused.body.trim().len() >= 10 && refused.body.is_ascii(),
                "{what}: the refusal has no readable body: {refused:?}"
            );
        }
    }
}

/// Opens a device WebSocket as `forwarded_for` and leaves it unauthenticated.
async fn unauthenticated(
    cloud: &TestCloud,
    id: &str,
    forwarded_for: &str,
) -> Result<FakeDevice, RefusedUpgrade> {
    cloud
        .try_connect(id, keys::generate(), Some(forwarded_for))
        .await
}

/// Retries opening an unauthenticated WebSocket until one is let in (a slot
/// is given back once the cloud has noticed a connection end).
async fn eventually_unauthenticated(
    cloud: &TestCloud,
    id: &str,
    forwarded_for: &str,
) -> FakeDevice {
    let deadline = Instant::now() + PROMPTLY;
    loop {
        match unauthenticated(cloud, id, forwarded_for).await {
            Ok(device) => return device,
            Err(refused) => {
                assert!(
                    Instant::now() < deadline,
                    "no slot came free for {forwarded_for}: {refused:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Every table and column of the database with the length in bytes of its
/// longest value (SQLite's own bookkeeping left out).
async fn longest_values(cloud: &TestCloud) -> Vec<(String, String, i64)> {
    let pool = cloud.state.devices().registry().pool();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' \
         AND name NOT LIKE 'sqlite%' AND name NOT LIKE '\\_sqlx%' ESCAPE '\\'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut longest = Vec::new();
    for table in tables {
        let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info(?)")
            .bind(&table)
            .fetch_all(pool)
            .await
            .unwrap();
        for column in columns {
            let bytes: i64 = sqlx::query_scalar(&format!(
                "SELECT COALESCE(MAX(LENGTH(CAST(\"{column}\" AS BLOB))), 0) FROM \"{table}\""
            ))
            .fetch_one(pool)
            .await
            .unwrap();
            longest.push((table.clone(), column, bytes));
        }
    }
    longest
}

/// The `table.column`s holding a value that contains `needle`.
async fn stored_anywhere(cloud: &TestCloud, needle: &str) -> Vec<String> {
    let pool = cloud.state.devices().registry().pool();
    let mut found = Vec::new();
    for (table, column, _) in longest_values(cloud).await {
        let hits: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM \"{table}\" WHERE instr(CAST(\"{column}\" AS TEXT), ?) > 0"
        ))
        .bind(needle)
        .fetch_one(pool)
        .await
        .unwrap();
        if hits > 0 {
            found.push(format!("{table}.{column}"));
        }
    }
    found
}

/// Waits for the cloud to end a raw TCP connection (EOF or reset), reading
/// and discarding whatever it sends first; false if it is still open after
/// `within`.
async fn ended_within(mut stream: TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

type RawSocket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// The next text frame as JSON (unverified), or how the connection ended.
async fn next_json(ws: &mut RawSocket) -> Result<Value, Option<u16>> {
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    loop {
        let next = tokio::time::timeout(PROMPTLY, ws.next())
            .await
            .expect("the cloud sent nothing in time");
        match next {
            Some(Ok(WsMessage::Text(text))) => {
                return Ok(serde_json::from_str(text.as_str()).unwrap());
            }
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            Some(Ok(WsMessage::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
            Some(Ok(other)) => panic!("unexpected {other:?}"),
            Some(Err(_)) | None => return Err(None),
        }
    }
}

/// A stranger's handshake claiming `id` with a fresh key, as cheaply as an
/// attacker would make it (the cloud's signatures are not checked): the
/// answer to `device.authenticate` (its result or error) and how the
/// connection then ended.
async fn claim(cloud: &TestCloud, id: &str, bridge_version: &str) -> (Value, Option<u16>) {
    let (ws, frame) = open_claim(cloud, id, bridge_version).await;
    finish_claim(ws, frame).await
}

/// The first half of [`claim`]: a connection with its challenge read, and the
/// signed authentication request ready to send.
async fn open_claim(cloud: &TestCloud, id: &str, bridge_version: &str) -> (RawSocket, String) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;

    let key = keys::generate();
    let mut request = cloud.ws_url().into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(protocol::SUBPROTOCOL),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let hello = next_json(&mut ws).await.expect("a challenge");
    let challenge = hello["params"]["challenge"].as_str().unwrap().to_owned();
    let auth = Message::request(
        "a-1",
        protocol::auth::DEFAULT_AUTHENTICATE,
        json!({
            "device_id": id,
            "public_key": keys::public_key_to_pem(&key.verifying_key()),
            "challenge": challenge,
            "bridge_version": bridge_version,
        }),
    );
    let frame = protocol::sign(
        &auth,
        &key,
        id,
        &cloud.cloud_id,
        protocol::Direction::DeviceToCloud,
        rand::random(),
        now_ms(),
    );
    (ws, Value::Object(frame).to_string())
}

/// The second half of [`claim`]: sends the request, reads the answer and the end.
async fn finish_claim(mut ws: RawSocket, frame: String) -> (Value, Option<u16>) {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    ws.send(WsMessage::text(frame)).await.unwrap();
    let answer = next_json(&mut ws).await.expect("an answer");
    assert_eq!(answer["id"], "a-1", "{answer}");
    let answer = answer
        .get("result")
        .or_else(|| answer.get("error"))
        .cloned()
        .unwrap_or(Value::Null);
    let ended = match next_json(&mut ws).await {
        Ok(more) => panic!("after the answer, expected the end: {more}"),
        Err(code) => code,
    };
    (answer, ended)
}

/// A client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

/// `POST /api/v1/login` as a client behind a proxy that says it is `forwarded_for`.
async fn login_as(
    cloud: &TestCloud,
    name: &str,
    password: &str,
    forwarded_for: Option<&str>,
) -> reqwest::Response {
    let mut request = cloud
        .http
        .post(cloud.url("/api/v1/login"))
        .json(&json!({ "name": name, "password": password }));
    if let Some(forwarded_for) = forwarded_for {
        request = request.header("X-Forwarded-For", forwarded_for);
    }
    request.send().await.unwrap()
}

/// A 429 that says when to come back.
fn assert_rate_limited(response: &reqwest::Response, what: &str) {
    assert_eq!(response.status(), 429, "{what}");
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .unwrap_or_else(|| panic!("{what}: 429 without Retry-After"))
        .to_str()
        .unwrap()
        .parse::<u64>()
        .unwrap_or_else(|e| panic!("{what}: Retry-After is not seconds: {e}"));
    assert!(retry_after >= 1, "{what}: Retry-After {retry_after}");
}

async fn add_operator(cloud: &TestCloud, name: &str) {
    cloud.add_operator(name, PASSWORD).await;
}

/// Posts the dashboard's sign-in form (fetching a fresh form first).
async fn post_sign_in_form(
    cloud: &TestCloud,
    http: &reqwest::Client,
    name: &str,
    password: &str,
    next: &str,
) -> reqwest::Response {
    let form = http.get(cloud.url("/login")).send().await.unwrap();
    assert_eq!(form.status(), 200);
    let cookie = set_cookie(&form, "devbridge_login_csrf").expect("the form's cookie");
    let token = hidden_field(&form.text().await.unwrap(), "form_token");
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("form_token", token.as_str()),
            ("next", next),
            ("name", name),
            ("password", password),
        ])
        .finish();
    http.post(cloud.url("/login"))
        .header(COOKIE, cookie)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// A redirect target a browser resolves on this site: a path, with no control
/// characters, that does not start with `//` or `/\` (browsers drop tabs and
/// newlines anywhere in a URL and read `\` as `/`).
fn assert_stays_on_this_site(location: &str, what: &str) {
    assert!(location.starts_with('/'), "{what}: Location {location:?}");
    assert!(
        !location.chars().any(|c| c.is_control()),
        "{what}: Location {location:?} holds control characters"
    );
    let stripped: String = location
        .chars()
        .filter(|c| !c.is_control() && *c != ' ')
        .collect();
    let second = stripped.chars().nth(1);
    assert!(
        !matches!(second, Some('/') | Some('\\')),
        "{what}: Location {location:?} leaves the site"
    );
}

/// `elapsed` in seconds, for a figure line.
fn secs(elapsed: Duration) -> String {
    format!("{:.2} s", elapsed.as_secs_f64())
}

/// How the database's bytes on disk changed since `before`, for a figure line.
fn database_growth(cloud: &TestCloud, before: u64) -> String {
    let after = cloud.database_bytes();
    let change = after as i64 - before as i64;
    format!("database {before} -> {after} bytes ({change:+})")
}

/// The refusals the cloud counted, by reason, for a figure line.
fn refusal_counts(cloud: &TestCloud) -> String {
    let mut counts: Vec<_> = cloud.state.devices().refusals().into_iter().collect();
    counts.sort();
    let counts: Vec<String> = counts
        .into_iter()
        .map(|(reason, count)| format!("{reason} {count}"))
        .collect();
    if counts.is_empty() {
        "cloud refusals none".to_owned()
    } else {
        format!("cloud refusals {}", counts.join(", "))
    }
}

// ---------------------------------------------------------------------------
// The attacks
// ---------------------------------------------------------------------------

/// Attack: a stranger opens hundreds of handshakes claiming an accepted
/// device's id, each with a fresh key, hoping to use up the id's replay
/// allowance (`replay_per_device`) so that the real device's frames are
/// refused, to overwrite what the registry says of it (`last_seen`,
/// `bridge_version`), or to flood its auth log.
///
/// The claims come first as a burst (8 at once on each of several accepted
/// ids), then as a steady stream on the bystander's.
///
/// Bound: every attempt is refused `key_mismatch` (close 4002) and consumes
/// nothing of the id: the real device keeps its whole allowance, its record
/// is unchanged, and its log holds one aggregated `key_mismatch` row whose
/// `count` is the number of attempts, however many arrived at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimed_id_handshakes_do_not_lock_out_the_real_device() {
    const ATTEMPTS: usize = 300;
    const BURST: usize = 8;
    const VICTIMS: usize = 6;
    const ALLOWANCE: usize = 200;
    let cloud = TestCloud::start_with(|c| {
        c.replay_per_device = ALLOWANCE;
        c.limits.handshakes_per_address_per_minute = 100_000;
        c.limits.max_unauthenticated_per_address = 10_000;
        c.limits.max_unauthenticated = 10_000;
    })
    .await;
    let mut bystander = cloud.accepted_device(BYSTANDER).await;
    let before = cloud.api().device(BYSTANDER).await.unwrap()["device"].clone();
    // last_seen has millisecond resolution: make any write of it visible.
    tokio::time::sleep(Duration::from_millis(5)).await;

    // Other accepted devices, claimed in the same burst.
    let mut victims = Vec::new();
    for n in 0..VICTIMS {
        victims.push(cloud.accepted_device(&format!("victim-{n}")).await);
    }
    let mut claimed: Vec<String> = (0..VICTIMS).map(|n| format!("victim-{n}")).collect();
    claimed.push(BYSTANDER.to_owned());
    let bytes_before = cloud.database_bytes();
    let nonces_before = cloud.state.devices().remembered_nonces();
    let attack = Instant::now();

    // First a burst: claims of every id prepared, then all sent at once ...
    let prepared = futures::future::join_all(claimed.iter().flat_map(|id| {
        (0..BURST).map(|_| async { (id.clone(), open_claim(&cloud, id, "attacker-6.6.6").await) })
    }))
    .await;
    let mut outcomes: Vec<(String, String, u16)> =
        futures::future::join_all(prepared.into_iter().map(|(id, (ws, frame))| async move {
            let (answer, ended) = finish_claim(ws, frame).await;
            (id, reason(&answer).to_owned(), ended.unwrap_or(0))
        }))
        .await;
    // ... then a steady stream.
    let stream: Vec<(String, String, u16)> = futures::stream::iter(BURST..ATTEMPTS)
        .map(|_| async {
            let (answer, ended) = claim(&cloud, BYSTANDER, "attacker-6.6.6").await;
            (
                BYSTANDER.to_owned(),
                reason(&answer).to_owned(),
                ended.unwrap_or(0),
            )
        })
        .buffer_unordered(8)
        .collect()
        .await;
    outcomes.extend(stream);
    let attack_time = attack.elapsed();
    let handshakes = outcomes.len();
    let nonces_from_strangers =
        cloud.state.devices().remembered_nonces() as i64 - nonces_before as i64;
    let mut tally: HashMap<(String, String, u16), usize> = HashMap::new();
    for outcome in outcomes {
        *tally.entry(outcome).or_default() += 1;
    }
    let mismatch = |id: &str, n| ((id.to_owned(), "key_mismatch".to_owned(), KEY_MISMATCH), n);
    let mut expected: HashMap<_, _> = (0..VICTIMS)
        .map(|n| mismatch(&format!("victim-{n}"), BURST))
        .collect();
    expected.extend([mismatch(BYSTANDER, ATTEMPTS)]);
    assert_eq!(
        tally, expected,
        "every claim with another key is refused key_mismatch"
    );

    // The registry's record of the real device is the device's own.
    let after = cloud.api().device(BYSTANDER).await.unwrap()["device"].clone();
    for field in [
        "status",
        "fingerprint",
        "public_key",
        "last_seen",
        "bridge_version",
    ] {
        assert_eq!(after[field], before[field], "{field} changed by strangers");
    }
    assert_eq!(after["online"], true);

    // One aggregated row says how many attempts there were.
    let rows = audit_entries(&cloud, &format!("action=key_mismatch&target={BYSTANDER}")).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["count"], json!(ATTEMPTS), "{rows:#?}");
    let events = cloud
        .api()
        .get(&format!("/auth-events?device_id={BYSTANDER}&limit=1000"))
        .await
        .unwrap();
    let mismatches = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "key_mismatch")
        .count();
    assert_eq!(mismatches, 1, "{events:#}");
    let (bystander_rows, bystander_count) = (rows.len(), rows[0]["count"].clone());
    // Also for the ids claimed only in the burst, each by many at once.
    let mut victim_rows = 0;
    let mut victim_count = 0;
    for n in 0..VICTIMS {
        let rows = audit_entries(&cloud, &format!("action=key_mismatch&target=victim-{n}")).await;
        let counts: Vec<&Value> = rows.iter().map(|row| &row["count"]).collect();
        assert_eq!(counts, [&json!(BURST)], "victim-{n}: {rows:#?}");
        victim_rows += rows.len();
        victim_count += rows[0]["count"].as_i64().unwrap_or(0);
    }

    // Its replay allowance is whole: more frames than strangers could have
    // left it are served.
    let mut served = 0;
    for _ in 0..5 {
        bystander.ping_cloud().await;
        served += 1;
    }
    assert_bystander_served(&cloud, &mut bystander).await;
    served += 1;
    assert_eq!(
        cloud.state.devices().refusals().get("too_many_messages"),
        None,
        "{:?}",
        cloud.state.devices().refusals()
    );
    eprintln!(
        "figure: claimed-id handshakes: {handshakes} stranger handshakes ({} ids x {BURST} at once, \
         then {} streamed) in {}; bystander key_mismatch rows {bystander_rows} (count {bystander_count}), \
         auth-log key_mismatch events {mismatches}; burst-only victims' rows {victim_rows} \
         (count {victim_count}); nonces strangers left in the replay guard {nonces_from_strangers} \
         (allowance {ALLOWANCE} per id); bystander record unchanged; {}; {}; \
         bystander served {served}/{served}",
        VICTIMS + 1,
        ATTEMPTS - BURST,
        secs(attack_time),
        database_growth(&cloud, bytes_before),
        refusal_counts(&cloud),
    );
}

/// Attack: devices nobody has accepted (anyone can register one) send signed
/// requests as fast as they can; each nonce the fleet-wide replay guard
/// remembers is memory, and a full guard fails closed for every device.
///
/// Bound: a pending device's frames never enter the fleet-wide guard, and
/// beyond `pending_messages_per_minute` its connection is closed with 1013;
/// the guard holds no more nonces than the bystander itself sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_devices_cannot_fill_the_replay_guard() {
    const LIMIT: u32 = 4;
    const PENDING: usize = 4;
    let cloud = TestCloud::start_with(|c| c.limits.pending_messages_per_minute = LIMIT).await;
    let mut bystander = cloud.accepted_device(BYSTANDER).await;
    // Signed frames the bystander sent: its authentication so far.
    let mut bystander_sent = 1;
    let bytes_before = cloud.database_bytes();
    let attack = Instant::now();
    let (mut sent, mut answered_in_all, mut cut_off) = (0, 0, 0);

    for n in 0..PENDING {
        let mut device = cloud.connect(&format!("pending-{n}")).await;
        assert_eq!(device.authenticate().await, json!({"status": "pending"}));
        let mut answered = 0;
        let mut ended = None;
        for _ in 0..LIMIT + 5 {
            let id = device.new_request_id();
            device
                .send_message(&Message::request(id.as_str(), "cloud.ping", json!({})))
                .await;
            sent += 1;
            match device.recv_or_close().await {
                Ok(Message::Response { id: to, result }) => {
                    assert_eq!(to, json!(id));
                    let error = result.expect_err("a pending device is not served");
                    if error.code == ErrorCode::NotAccepted.code() {
                        answered += 1;
                        continue;
                    }
                    // Told why, then cut off.
                    ended = Some(device.recv_or_close().await.expect_err("then closed"));
                    break;
                }
                Ok(other) => panic!("pending-{n}: expected an answer, got {other:?}"),
                Err(code) => {
                    ended = Some(code);
                    break;
                }
            }
        }
        assert_eq!(
            ended,
            Some(Some(TRY_AGAIN_LATER)),
            "pending-{n} was not cut off with 1013 (answered {answered})"
        );
        cut_off += 1;
        answered_in_all += answered;
        assert!(
            answered <= LIMIT,
            "pending-{n}: {answered} requests heard, limit {LIMIT}"
        );
        assert!(
            cloud.state.devices().remembered_nonces() <= bystander_sent,
            "after pending-{n}: the fleet-wide guard holds {} nonces, the bystander sent {bystander_sent}",
            cloud.state.devices().remembered_nonces()
        );
    }

    let attack_time = attack.elapsed();
    bystander_sent += assert_bystander_served(&cloud, &mut bystander).await;
    assert!(
        cloud.state.devices().remembered_nonces() <= bystander_sent,
        "the fleet-wide guard holds {} nonces, the bystander sent {bystander_sent}",
        cloud.state.devices().remembered_nonces()
    );
    // The pending devices stay registered, for an operator to decide on.
    let pending = cloud.api().get("/devices?state=pending").await.unwrap();
    assert_eq!(pending["devices"].as_array().unwrap().len(), PENDING);
    eprintln!(
        "figure: pending replay flood: {PENDING} pending devices sent {sent} signed requests \
         in {}; answered not_accepted {answered_in_all} (limit {LIMIT} each), cut off with 1013 \
         {cut_off}/{PENDING}; replay guard holds {} nonces, the bystander sent {bystander_sent}; \
         pending devices registered {}; {}; {}; bystander served 1/1",
        secs(attack_time),
        cloud.state.devices().remembered_nonces(),
        pending["devices"].as_array().unwrap().len(),
        database_growth(&cloud, bytes_before),
        refusal_counts(&cloud),
    );
}

/// Attack: strangers send what the cloud writes to disk, as big as the
/// transport lets them: 2 MB operator names on sign-in (the API's and the
/// dashboard form's), a 1 MB `bridge_version` in a handshake (of a new id,
/// and of an accepted device with its own key), and an accepted device sends
/// 100 KB health reports and container events.
///
/// Bound: none of it is stored. Names longer than 64 bytes are refused
/// without storing them (the audit log holds at most aggregated rows, no
/// value of them over 64 bytes); the version is refused `bad_auth_params`
/// (close 4003) and registers nothing; health above `max_health_bytes` and
/// events above `max_container_event_bytes` are dropped while normal-sized
/// ones are stored; no column holds a value above `max_health_bytes`, and the
/// database grows by far less than what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_sign_in_names_and_device_strings_are_not_stored() {
    const NAME_BYTES: usize = 2_000_000;
    const VERSION_BYTES: usize = 1_000_000;
    const REPORT_BYTES: usize = 100_000;
    const GROWTH_ALLOWED: u64 = 512 * 1024;
    let cloud = TestCloud::start().await;
    let limits = cloud.state.ops().config().limits.clone();
    let mut bystander = cloud.accepted_device(BYSTANDER).await;
    let mut reporter = cloud.accepted_device("reporter").await;
    add_operator(&cloud, "alice").await;

    // Normal-sized reports are stored.
    let health = json!({"cpu_percent": 12.5, "memory": {"used": 1024}});
    reporter
        .send_message(&Message::notification("device.health", health.clone()))
        .await;
    let event = json!({"action": "start", "id": "abc"});
    reporter
        .send_message(&Message::notification(
            "device.container_event",
            event.clone(),
        ))
        .await;
    reporter.ping_cloud().await;
    let api = cloud.api();
    let shown = api.device("reporter").await.unwrap();
    assert_eq!(shown["device"]["last_health"], health);
    assert_eq!(shown["container_events"][0]["payload"], event);

    let bytes_before = cloud.database_bytes();
    let mut sent = 0;
    let attack = Instant::now();

    // 2 MB names, through the API and the dashboard's form.
    for n in 0..3 {
        let name = format!("{n}{}", "N".repeat(NAME_BYTES));
        sent += name.len();
        let response = login_as(&cloud, &name, "not the password", None).await;
        let status = response.status().as_u16();
        assert!(
            [400, 401, 429].contains(&status),
            "a 2 MB name answered {status}: {}",
            response.text().await.unwrap_or_default()
        );
    }
    let name = "N".repeat(NAME_BYTES);
    sent += name.len();
    let response = post_sign_in_form(&cloud, &no_redirects(), &name, "not it", "/").await;
    let status = response.status().as_u16();
    assert!(
        [400, 401, 429].contains(&status),
        "a 2 MB name in the form answered {status}"
    );

    // A 1 MB bridge_version: a new id registers nothing ...
    let huge_version = "V".repeat(VERSION_BYTES);
    sent += 2 * huge_version.len();
    let mut newcomer = cloud.connect("newcomer").await;
    let answer = newcomer.authenticate_reporting(&huge_version).await;
    assert_handshake_refused(&mut newcomer, &answer, "bad_auth_params", AUTH_FAILED).await;
    let (status, _) = api
        .request(Method::GET, "/devices/newcomer", None)
        .await
        .unwrap();
    assert_eq!(status, 404);
    // ... and an accepted device's own key does not get it stored either.
    let mut again = cloud
        .connect_with_key("reporter", reporter.key.clone())
        .await;
    let answer = again.authenticate_reporting(&huge_version).await;
    assert_handshake_refused(&mut again, &answer, "bad_auth_params", AUTH_FAILED).await;
    assert_eq!(
        api.device("reporter").await.unwrap()["device"]["bridge_version"],
        "test-0.1"
    );
    // A version at the limit is fine.
    let longest_version = "v".repeat(limits.max_bridge_version_bytes);
    let mut versioned = cloud.connect("versioned").await;
    assert_eq!(
        versioned.authenticate_reporting(&longest_version).await,
        json!({"status": "pending"})
    );
    assert_eq!(
        api.device("versioned").await.unwrap()["device"]["bridge_version"],
        longest_version.as_str()
    );

    // 100 KB health and container events from an accepted device.
    let big_health = json!({"cpu_percent": 99.0, "pad": "H".repeat(REPORT_BYTES)});
    let big_event = json!({"action": "die", "id": "abc", "pad": "C".repeat(REPORT_BYTES)});
    sent += 2 * REPORT_BYTES;
    reporter
        .send_message(&Message::notification("device.health", big_health))
        .await;
    reporter
        .send_message(&Message::notification("device.container_event", big_event))
        .await;
    // Answered after both notifications were handled.
    reporter.ping_cloud().await;
    let shown = api.device("reporter").await.unwrap();
    assert_eq!(shown["device"]["last_health"], health, "big health stored");
    let events = shown["container_events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "big container event stored");
    assert_eq!(events[0]["payload"], event);
    let history = api.get("/devices/reporter/health").await.unwrap();
    let samples = history["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 1, "big health in the history");
    assert_eq!(samples[0]["health"], health);
    let attack_time = attack.elapsed();

    // What is stored: nothing big, nothing of the attacker's strings.
    let mut longest = 0;
    for (table, column, bytes) in longest_values(&cloud).await {
        assert!(
            bytes <= limits.max_health_bytes as i64,
            "{table}.{column} holds a value of {bytes} bytes"
        );
        longest = longest.max(bytes);
    }
    let mut needles = 0;
    for needle in [
        "N".repeat(65),
        "V".repeat(limits.max_bridge_version_bytes + 1),
        "H".repeat(1024),
        "C".repeat(1024),
    ] {
        let found = stored_anywhere(&cloud, &needle).await;
        assert!(
            found.is_empty(),
            "{} bytes of {:?}… stored in {found:?}",
            needle.len(),
            &needle[..1]
        );
        needles += 1;
    }
    let sign_ins = audit_entries(&cloud, "action=login").await;
    assert!(sign_ins.len() <= 2, "{sign_ins:#?}");
    for entry in &sign_ins {
        for field in ["actor", "target", "detail"] {
            let value = entry[field].as_str().unwrap_or("");
            assert!(value.len() <= 64, "audit {field} of {} bytes", value.len());
        }
    }
    let growth = cloud.database_bytes().saturating_sub(bytes_before);
    assert!(
        growth < GROWTH_ALLOWED,
        "the database grew by {growth} bytes after {sent} bytes of attack"
    );

    reporter.ping_cloud().await;
    assert_bystander_served(&cloud, &mut bystander).await;
    eprintln!(
        "figure: oversized strings: {sent} bytes sent (4 names of 2 MB, 2 versions of 1 MB, \
         2 reports of 100 KB) in {}; {} (allowed +{GROWTH_ALLOWED}); longest stored value \
         {longest} bytes (limit {}); attacker strings found stored 0 of {needles}; sign-in \
         audit rows {}; {}; bystander served 1/1",
        secs(attack_time),
        database_growth(&cloud, bytes_before),
        limits.max_health_bytes,
        sign_ins.len(),
        refusal_counts(&cloud),
    );
}

/// Attack: one client registers new device ids as fast as it can, each a
/// pending device an operator must look at and the registry keeps; then
/// many clients (through a trusted proxy, each its own address) register
/// more than the registry should hold.
///
/// Bound: one address registers at most `new_devices_per_address_per_hour`
/// ids (beyond: `too_many_new_devices`, close 1013), however it spoofs
/// `X-Forwarded-For` when no proxy is trusted; the registry holds at most
/// `max_pending_devices` pending devices (beyond: `too_many_pending`, close
/// 1013), and once an operator removes one another may register.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_register_unbounded_devices() {
    const QUOTA: usize = 20;
    const ATTEMPTS: usize = 50;
    let cloud = TestCloud::start_with(|c| {
        c.limits.new_devices_per_address_per_hour = QUOTA as u32;
    })
    .await;
    // The bystander was a new id of this address too.
    let mut bystander = cloud.accepted_device(BYSTANDER).await;
    let bytes_before = cloud.database_bytes();
    let attack = Instant::now();
    let mut registered = Vec::new();
    let mut refused = 0;
    for n in 0..ATTEMPTS {
        // No proxy is trusted: a spoofed X-Forwarded-For changes nothing.
        let spoofed = format!("198.51.100.{n}");
        let mut device = cloud
            .try_connect(&format!("new-{n}"), keys::generate(), Some(&spoofed))
            .await
            .expect("the upgrade is not what is limited here");
        let answer = device.authenticate().await;
        if answer == json!({"status": "pending"}) {
            assert_eq!(refused, 0, "new-{n} registered after a refusal");
            registered.push(device);
        } else {
            assert_handshake_refused(
                &mut device,
                &answer,
                "too_many_new_devices",
                TRY_AGAIN_LATER,
            )
            .await;
            refused += 1;
        }
    }
    let attack_time = attack.elapsed();
    assert_eq!(registered.len(), QUOTA - 1);
    assert_eq!(refused, ATTEMPTS - (QUOTA - 1));
    let api = cloud.api();
    let all = api.devices().await.unwrap();
    assert_eq!(all["devices"].as_array().unwrap().len(), QUOTA, "{all:#}");
    let one_address = format!(
        "{ATTEMPTS} new ids from one address (spoofed X-Forwarded-For) in {}: registered {}, \
         refused too_many_new_devices {refused}, registry holds {} devices; {}; {}",
        secs(attack_time),
        registered.len(),
        all["devices"].as_array().unwrap().len(),
        database_growth(&cloud, bytes_before),
        refusal_counts(&cloud),
    );
    let last = format!("/devices/new-{}", ATTEMPTS - 1);
    let (status, _) = api.request(Method::GET, &last, None).await.unwrap();
    assert_eq!(status, 404);
    // A known device of the same address is not a new one.
    let mut reconnected = cloud
        .connect_with_key(BYSTANDER, bystander.key.clone())
        .await;
    assert_eq!(
        reconnected.authenticate().await,
        json!({"status": "accepted"})
    );
    assert_eq!(
        bystander.expect_close().await.0,
        protocol::close_code::REPLACED
    );
    assert_bystander_served(&cloud, &mut reconnected).await;
    drop(registered);

    // Many addresses: the registry's bound on pending devices.
    const MAX_PENDING: usize = 10;
    const ADDRESSES: usize = 12;
    const PER_ADDRESS: usize = 3;
    let cloud = TestCloud::start_with(|c| {
        c.limits.max_pending_devices = MAX_PENDING as i64;
        c.limits.new_devices_per_address_per_hour = PER_ADDRESS as u32;
        c.limits.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let mut bystander = cloud.accepted_device(BYSTANDER).await;
    let bytes_before = cloud.database_bytes();
    let attack = Instant::now();
    let mut pending = Vec::new();
    let mut refused = 0;
    for address in 1..=ADDRESSES {
        for n in 0..PER_ADDRESS {
            let id = format!("p-{address}-{n}");
            let mut device = cloud
                .connect_from(&id, keys::generate(), &format!("10.0.0.{address}"))
                .await;
            let answer = device.authenticate().await;
            if answer == json!({"status": "pending"}) {
                pending.push(device);
            } else {
                assert_handshake_refused(&mut device, &answer, "too_many_pending", TRY_AGAIN_LATER)
                    .await;
                refused += 1;
            }
        }
    }
    let attack_time = attack.elapsed();
    assert_eq!(pending.len(), MAX_PENDING);
    assert_eq!(refused, ADDRESSES * PER_ADDRESS - MAX_PENDING);
    let registered_from_many = pending.len();
    let api = cloud.api();
    let listed = api.get("/devices?state=pending").await.unwrap();
    assert_eq!(listed["devices"].as_array().unwrap().len(), MAX_PENDING);

    // The bound is what the registry holds: room comes back with a removal.
    let removed = pending.remove(0);
    let (status, _) = api
        .request(Method::DELETE, &format!("/devices/{}", removed.id), None)
        .await
        .unwrap();
    assert_eq!(status, 204);
    let mut late = cloud
        .connect_from("late-1", keys::generate(), "10.0.1.1")
        .await;
    assert_eq!(late.authenticate().await, json!({"status": "pending"}));
    let mut later = cloud
        .connect_from("late-2", keys::generate(), "10.0.1.2")
        .await;
    let answer = later.authenticate().await;
    assert_handshake_refused(&mut later, &answer, "too_many_pending", TRY_AGAIN_LATER).await;
    assert_bystander_served(&cloud, &mut bystander).await;
    eprintln!(
        "figure: device registrations: {one_address}; {} new ids from {ADDRESSES} addresses \
         in {}: registered {registered_from_many} (max pending {MAX_PENDING}), refused \
         too_many_pending {refused}, after one removal 1 of 2 more registered; {}; {}; \
         bystander served 2/2",
        ADDRESSES * PER_ADDRESS,
        secs(attack_time),
        database_growth(&cloud, bytes_before),
        refusal_counts(&cloud),
    );
}

/// Attack: one client opens device WebSockets and never authenticates, each
/// holding a connection, a task and a challenge; then many clients do.
///
/// Bound: at most `max_unauthenticated_per_address` such connections per
/// client address and `max_unauthenticated` in all; beyond, the upgrade is
/// refused with HTTP 503 and a readable body, before any WebSocket exists. A
/// connection gives its slot back when it authenticates or ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_are_bounded_per_address_and_in_all() {
    const PER_ADDRESS: usize = 3;
    const IN_ALL: usize = 5;
    let cloud = TestCloud::start_with(|c| {
        c.limits.max_unauthenticated_per_address = PER_ADDRESS;
        c.limits.max_unauthenticated = IN_ALL;
        c.limits.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let mut bystander = cloud.accepted_device(BYSTANDER).await;
    let (a, b, c) = ("10.1.0.1", "10.1.0.2", "10.1.0.3");
    let bytes_before = cloud.database_bytes();
    let attack = Instant::now();
    let mut refused = 0;

    // One address: PER_ADDRESS, then 503.
    let mut from_a = Vec::new();
    for n in 0..PER_ADDRESS {
        from_a.push(unauthenticated(&cloud, &format!("a-{n}"), a).await.unwrap());
    }
    assert_upgrade_refused(
        unauthenticated(&cloud, "a-x", a).await,
        503,
        "over the per-address bound",
    );
    refused += 1;
    // Others: up to IN_ALL, then 503 for anyone.
    let mut from_b = Vec::new();
    for n in 0..IN_ALL - PER_ADDRESS {
        from_b.push(unauthenticated(&cloud, &format!("b-{n}"), b).await.unwrap());
    }
    assert_upgrade_refused(
        unauthenticated(&cloud, "b-x", b).await,
        503,
        "over the total bound",
    );
    refused += 1;
    assert_upgrade_refused(
        unauthenticated(&cloud, "c-x", c).await,
        503,
        "over the total bound",
    );
    refused += 1;
    let held_at_peak = from_a.len() + from_b.len();
    bystander.ping_cloud().await;

    // Authenticating gives the slot back.
    let mut first = from_a.remove(0);
    assert_eq!(first.authenticate().await, json!({"status": "pending"}));
    let from_c = eventually_unauthenticated(&cloud, "c-1", c).await;
    assert_upgrade_refused(unauthenticated(&cloud, "a-y", a).await, 503, "full again");
    refused += 1;
    // So does ending the connection.
    from_b.remove(0).drop_connection();
    let again_a = eventually_unauthenticated(&cloud, "a-z", a).await;
    assert_upgrade_refused(
        unauthenticated(&cloud, "a-w", a).await,
        503,
        "a is at its bound",
    );
    refused += 1;
    let attack_time = attack.elapsed();

    // The slots held were the attacker's, not the bystander's.
    assert_bystander_served(&cloud, &mut bystander).await;
    drop((from_a, from_b, from_c, again_a, first));
    eprintln!(
        "figure: unauthenticated connections: held at once {held_at_peak} (per address \
         {PER_ADDRESS}, in all {IN_ALL}), upgrades refused 503 {refused}, slots given back by \
         1 authentication and 1 disconnect both reused, in {}; {}; {}; bystander served 2/2",
        secs(attack_time),
        database_growth(&cloud, bytes_before),
        refusal_counts(&cloud),
    );
}

/// Attack: one client starts device handshakes as fast as it can (each
/// upgrade costs a task, a challenge and a signature), dropping each.
///
/// Bound: `handshakes_per_address_per_minute` upgrades per client address;
/// beyond, HTTP 429 with a readable body, also when the client prepends
/// addresses to `X-Forwarded-For` (the right-most entry that is not a trusted
/// proxy names it). Other addresses and the bystander are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_per_address_are_rate_limited() {
    const PER_MINUTE: usize = 5;
    let cloud = TestCloud::start_with(|c| {
        c.limits.handshakes_per_address_per_minute = PER_MINUTE as u32;
        c.limits.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let mut bystander = cloud.accepted_device(BYSTANDER).await;
    let attacker = "10.2.0.1";
    let bytes_before = cloud.database_bytes();
    let attack = Instant::now();
    let mut let_in = 0;
    for n in 0..PER_MINUTE {
        unauthenticated(&cloud, &format!("h-{n}"), attacker)
            .await
            .unwrap_or_else(|refused| panic!("handshake {n} refused: {refused:?}"))
            .drop_connection();
        let_in += 1;
    }
    assert_upgrade_refused(
        unauthenticated(&cloud, "h-x", attacker).await,
        429,
        "over the rate",
    );
    let mut refused = 1;
    for spoofed in [
        format!("203.0.113.7, {attacker}"),
        format!("{attacker}, 127.0.0.1"),
    ] {
        assert_upgrade_refused(
            unauthenticated(&cloud, "h-y", &spoofed).await,
            429,
            &format!("X-Forwarded-For: {spoofed}"),
        );
        refused += 1;
    }
    let attack_time = attack.elapsed();
    // Another address is not limited by the attacker's rate.
    let mut other = unauthenticated(&cloud, "other", "10.2.0.2").await.unwrap();
    assert_eq!(other.authenticate().await, json!({"status": "pending"}));
    assert_bystander_served(&cloud, &mut bystander).await;
    eprintln!(
        "figure: handshake rate: {} upgrades from one address in {}: let in {let_in} \
         (limit {PER_MINUTE}/min), refused 429 {refused} (2 of them with a spoofed \
         X-Forwarded-For); another address let in and registered 1/1; {}; {}; \
         bystander served 1/1",
        let_in + refused,
        secs(attack_time),
        database_growth(&cloud, bytes_before),
        refusal_counts(&cloud),
    );
}

/// Attack (slowloris): a hundred TCP connections each send half a request
/// line and then nothing, each holding a connection task for as long as the
/// client likes; then more connections than the cloud serves at once.
///
/// Bound: a connection that has not sent its headers within
/// `header_read_timeout` is closed; beyond `max_connections` (the
/// bystander's WebSocket counts) a new connection is closed at once, while
/// those already served carry on, and room comes back as connections end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_timed_out_and_connections_are_capped() {
    const SLOW: usize = 100;
    let timeout = Duration::from_secs(1);
    let cloud = TestCloud::start_with(|c| c.limits.header_read_timeout = timeout).await;
    let mut bystander = cloud.accepted_device(BYSTANDER).await;
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let mut stream = TcpStream::connect(cloud.addr).await.unwrap();
        stream.write_all(b"GET /heal").await.unwrap();
        slow.push(stream);
    }
    // While they hang, the bystander and a whole request are served.
    assert_bystander_served(&cloud, &mut bystander).await;
    let health = reqwest::get(cloud.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let ended = futures::future::join_all(
        slow.into_iter()
            .map(|stream| ended_within(stream, timeout + Duration::from_secs(4))),
    )
    .await;
    let still_open = ended.iter().filter(|ended| !**ended).count();
    let all_ended = started.elapsed();
    assert_eq!(
        still_open,
        0,
        "half-sent requests still open after {:?}",
        started.elapsed()
    );
    bystander.ping_cloud().await;
    let slowloris = format!(
        "{SLOW} half-sent requests: closed {}/{SLOW} within {} of opening (header timeout {})",
        ended.len() - still_open,
        secs(all_ended),
        secs(timeout),
    );

    // The cap on connections served at once.
    const MAX: usize = 8;
    const BEYOND: usize = 3;
    let mut cloud = TestCloud::start_with(|c| {
        c.limits.max_connections = MAX;
        c.limits.header_read_timeout = Duration::from_secs(30);
    })
    .await;
    // No idle pooled connection: the bystander's WebSocket is the only one held.
    cloud.http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut bystander = cloud.accepted_device(BYSTANDER).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut idle = Vec::new();
    for _ in 0..MAX - 1 + BEYOND {
        idle.push(TcpStream::connect(cloud.addr).await.unwrap());
    }
    // Closed at once: the read ends well before any timeout of the cloud.
    let checked = futures::future::join_all(idle.into_iter().map(|mut stream| async move {
        let mut buffer = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buffer)).await {
            Err(_) => Some(stream),
            Ok(Ok(0)) | Ok(Err(_)) => None,
            Ok(Ok(n)) => panic!("the cloud sent {n} bytes to an idle connection"),
        }
    }))
    .await;
    let closed = checked.iter().filter(|held| held.is_none()).count();
    let held: Vec<TcpStream> = checked.into_iter().flatten().collect();
    assert_eq!(
        (held.len(), closed),
        (MAX - 1, BEYOND),
        "connections held and closed at once, with the bystander's WebSocket held"
    );
    let held_count = held.len();
    // At the cap: a new request is turned away, the bystander carries on.
    let refused = cloud.http.get(cloud.url("/healthz")).send().await;
    assert!(
        refused.is_err(),
        "a request beyond max_connections was served: {refused:?}"
    );
    bystander.ping_cloud().await;
    // Room comes back as connections end.
    drop(held);
    let freed = Instant::now();
    support::wait_until("a request is served again", || async {
        cloud
            .http
            .get(cloud.url("/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let room_back = freed.elapsed();
    assert_bystander_served(&cloud, &mut bystander).await;
    eprintln!(
        "figure: slowloris and connection cap: {slowloris}; {} idle connections against \
         max_connections {MAX}: held {held_count} (+ the bystander's), closed at once {closed}, \
         a request at the cap refused 1/1, served again {} after they ended; bystander served 4/4",
        MAX - 1 + BEYOND,
        secs(room_back),
    );
}

/// Attack: a link to this site's sign-in page whose `next` sends a signed-in
/// operator elsewhere: `/%09/evil.example` passes a naive "starts with one
/// slash" check, and browsers drop the tab, reading `//evil.example`.
///
/// Bound: `/login` (GET for a signed-in session, and the form's POST)
/// redirects only to a plain local path: no control characters, not `//` or
/// `/\` once they are stripped; otherwise to `/`.
#[tokio::test]
async fn sign_in_next_redirects_stay_on_this_site() {
    let cloud = TestCloud::start().await;
    let mut bystander = cloud.accepted_device(BYSTANDER).await;
    add_operator(&cloud, "alice").await;
    let http = no_redirects();
    let attack = Instant::now();

    // Signing in through the form with such a `next`.
    let response = post_sign_in_form(&cloud, &http, "alice", PASSWORD, "/\t/evil.example").await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()[LOCATION], "/");
    let session =
        set_cookie(&response, cloud::http::auth::SESSION_COOKIE).expect("a session cookie");

    let redirect_for = |next: &'static str| {
        let request = http
            .get(cloud.url(&format!("/login?next={next}")))
            .header(COOKIE, &session);
        async move {
            let response = request
                .send()
                .await
                .unwrap_or_else(|e| panic!("next={next}: no answer: {e}"));
            assert_eq!(response.status(), 303, "next={next}");
            response
                .headers()
                .get(LOCATION)
                .unwrap_or_else(|| panic!("next={next}: no Location"))
                .to_str()
                .unwrap_or_else(|_| panic!("next={next}: unreadable Location"))
                .to_owned()
        }
    };
    // A plain local path is kept.
    assert_eq!(redirect_for("%2Fdevices%3Fq%3Da").await, "/devices?q=a");
    assert_eq!(redirect_for("/%09/evil.example").await, "/");
    // The form's and the one above.
    let (mut hostile, mut to_root) = (2, 2);
    for next in [
        "/%09/evil.example",
        "/%0a/evil.example",
        "/%0d/evil.example",
        "/%0d%0a/evil.example",
        "%09//evil.example",
        "/%00/evil.example",
        "/%7f/evil.example",
        "//evil.example",
        "/%5Cevil.example",
        "/%5C/evil.example",
        "%5C%5Cevil.example",
        "/%2F/evil.example",
        "https://evil.example",
        "javascript:alert(1)",
        "evil.example",
    ] {
        let location = redirect_for(next).await;
        assert_stays_on_this_site(&location, &format!("next={next}"));
        hostile += 1;
        if location == "/" {
            to_root += 1;
        }
    }
    let attack_time = attack.elapsed();
    assert_bystander_served(&cloud, &mut bystander).await;
    eprintln!(
        "figure: sign-in next redirects: {hostile} hostile next values (1 through the form) in \
         {}: redirected off this site 0, to / {to_root}, to another local path {}; a plain \
         local path kept 1/1; bystander served 1/1",
        secs(attack_time),
        hostile - to_root,
    );
}

/// Attack: strangers fail sign-ins for a real operator's name, from many
/// addresses at once and from one, to lock the operator out; another guesses
/// names from one address; each refusal would be an audit row.
///
/// Bound: failures count per (name, client address) and per address: past
/// `sign_in_failures_per_name_per_minute` (or `_per_address_`) that address
/// gets 429 with Retry-After, also when it prepends addresses to
/// `X-Forwarded-For`, and without a trusted proxy the header is ignored; the
/// operator's correct password from another address still signs in. Refusals
/// are one audit row per (actor, action, outcome) with their `count`, also
/// when they arrive at once, and names that are no operator's appear only as
/// `(unknown)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_of_others_do_not_lock_out_a_correct_password() {
    const PER_NAME: usize = 5;
    const PER_ADDRESS: usize = 8;
    const SPREAD: usize = 4;
    let cloud = TestCloud::start_with(|c| {
        c.limits.sign_in_failures_per_name_per_minute = PER_NAME as u32;
        c.limits.sign_in_failures_per_address_per_minute = PER_ADDRESS as u32;
        c.limits.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let mut bystander = cloud.accepted_device(BYSTANDER).await;
    add_operator(&cloud, "alice").await;
    let attacker = "10.9.0.1";
    let guesser = "10.9.0.3";
    let cloud_ref = &cloud;
    let bytes_before = cloud.database_bytes();
    let attack = Instant::now();
    let (mut unauthorized, mut limited) = (0, 0);

    // Many addresses at once (a botnet), each within its limit.
    let spread = futures::future::join_all(
        (1..=SPREAD)
            .flat_map(|address| (0..PER_NAME).map(move |_| format!("10.9.1.{address}")))
            .map(|from| async move {
                let response = login_as(cloud_ref, "alice", "guess", Some(&from)).await;
                (from, response.status())
            }),
    )
    .await;
    for (from, status) in spread {
        assert_eq!(status, 401, "{from}");
        unauthorized += 1;
    }

    // One address guessing names: PER_ADDRESS failures (at once), then 429.
    let guesses = futures::future::join_all((0..PER_ADDRESS).map(|n| async move {
        let name = format!("guess-{n}");
        login_as(cloud_ref, &name, "guess", Some(guesser))
            .await
            .status()
    }))
    .await;
    assert!(guesses.iter().all(|s| *s == 401), "{guesses:?}");
    unauthorized += guesses.len();
    for n in PER_ADDRESS..PER_ADDRESS + 2 {
        let response = login_as(&cloud, &format!("guess-{n}"), "guess", Some(guesser)).await;
        assert_rate_limited(&response, "past the per-address limit");
        limited += 1;
    }

    // One address against alice's name: PER_NAME failures, then 429.
    for n in 0..PER_NAME {
        let response = login_as(&cloud, "alice", "guess", Some(attacker)).await;
        assert_eq!(response.status(), 401, "failure {n}");
        unauthorized += 1;
    }
    for _ in 0..3 {
        let response = login_as(&cloud, "alice", "guess", Some(attacker)).await;
        assert_rate_limited(&response, "past the per-name limit");
        limited += 1;
    }
    let spoofed = format!("203.0.113.7, {attacker}");
    let response = login_as(&cloud, "alice", "guess", Some(&spoofed)).await;
    assert_rate_limited(&response, "with a prepended X-Forwarded-For");
    limited += 1;
    let attack_time = attack.elapsed();

    // Alice, from her own address (behind two proxies), is not locked out.
    let response = login_as(&cloud, "alice", PASSWORD, Some("10.9.0.2, 127.0.0.1")).await;
    assert_eq!(response.status(), 200, "alice was locked out by strangers");

    // Refusals in aggregate, unknown names not kept.
    let entries = audit_entries(&cloud, "action=login").await;
    let mut counts: HashMap<(String, String), i64> = HashMap::new();
    for entry in &entries {
        let actor = entry["actor"].as_str().unwrap().to_owned();
        let outcome = entry["outcome"].as_str().unwrap().to_owned();
        // Unknown names never become actors (a row each); what an aggregated
        // row may say of them is bounded.
        assert!(
            !actor.starts_with("guess-"),
            "a guessed name is an actor: {entry}"
        );
        for field in ["target", "detail"] {
            let value = entry[field].as_str().unwrap_or("");
            assert!(value.len() <= 128, "audit {field} of {} bytes", value.len());
        }
        if outcome == "ok" {
            continue;
        }
        let count = entry["count"]
            .as_i64()
            .unwrap_or_else(|| panic!("no count: {entry}"));
        let previous = counts.insert((actor.clone(), outcome.clone()), count);
        assert!(
            previous.is_none(),
            "two rows for {actor} {outcome}: {entries:#?}"
        );
    }
    let alice_failures = PER_NAME + SPREAD * PER_NAME;
    let expected = HashMap::from([
        (
            ("alice".into(), "wrong_password".into()),
            alice_failures as i64,
        ),
        (("alice".into(), "rate_limited".into()), 4),
        (
            ("(unknown)".into(), "wrong_password".into()),
            PER_ADDRESS as i64,
        ),
        (("(unknown)".into(), "rate_limited".into()), 2),
    ]);
    assert_eq!(counts, expected, "{entries:#?}");
    let ok: Vec<_> = entries.iter().filter(|e| e["outcome"] == "ok").collect();
    assert_eq!(ok.len(), 1, "{entries:#?}");
    assert_eq!(ok[0]["actor"], "alice");
    let counted: i64 = counts.values().sum();
    let database = database_growth(&cloud, bytes_before);

    // Without a trusted proxy, X-Forwarded-For is the client's word: ignored.
    let direct = TestCloud::start().await;
    add_operator(&direct, "alice").await;
    for n in 0..PER_NAME {
        let from = format!("10.8.0.{n}");
        let response = login_as(&direct, "alice", "guess", Some(&from)).await;
        assert_eq!(response.status(), 401, "failure {n}");
    }
    let response = login_as(&direct, "alice", "guess", Some("10.8.0.99")).await;
    assert_rate_limited(&response, "a spoofed X-Forwarded-For");

    assert_bystander_served(&cloud, &mut bystander).await;
    eprintln!(
        "figure: failed sign-ins: {} failed sign-ins ({SPREAD} addresses x {PER_NAME} and {} from 1 \
         address against alice, {} guessed names from 1 address) in {}: 401 {unauthorized}, \
         429 {limited}; alice's correct password signed in 1/1; audit login rows {} (refusal \
         rows {}, counts summing to {counted}); guessed names as actors 0; {database}; \
         without a trusted proxy {} spoofed addresses rate-limited after {PER_NAME}; \
         bystander served 1/1",
        unauthorized + limited,
        PER_NAME + 4,
        PER_ADDRESS + 2,
        secs(attack_time),
        entries.len(),
        counts.len(),
        PER_NAME + 1,
    );
}

/// Attack: someone who recorded a device's signed frame replays it after the
/// cloud restarts (its replay guard is in memory, so it forgot the nonce)
/// and the device has connected again, within the clock-skew window.
///
/// Bound: a frame signed before its connection's `device.authenticate` is
/// refused `older_than_session` on that connection; fresh frames work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_recorded_before_a_restart_are_refused_after_it() {
    let mut cloud = TestCloud::start().await;
    let mut bystander = cloud.accepted_device(BYSTANDER).await;
    let mut device = cloud.accepted_device("dev-1").await;
    let recorded = device
        .signed(&Message::request("r-1", "cloud.ping", json!({})))
        .text();
    device.send_text(recorded.clone()).await;
    let pong = device.expect_response(json!("r-1")).await.unwrap();
    assert_eq!(pong["pong"], true);

    let restarting = Instant::now();
    cloud.restart().await;
    let restart_time = restarting.elapsed();
    for connection in [&mut device, &mut bystander] {
        assert_eq!(
            connection.expect_close().await.0,
            protocol::close_code::GOING_AWAY
        );
    }
    let mut bystander = cloud
        .connect_with_key(BYSTANDER, bystander.key.clone())
        .await;
    assert_eq!(
        bystander.authenticate().await,
        json!({"status": "accepted"})
    );
    let mut device = cloud.connect_with_key("dev-1", device.key.clone()).await;
    assert_eq!(device.authenticate().await, json!({"status": "accepted"}));

    let bytes_before = cloud.database_bytes();
    let attack = Instant::now();
    let (mut replayed, mut fresh) = (0, 0);
    device.send_text(recorded.clone()).await;
    device
        .expect_refusal(json!("r-1"), "older_than_session")
        .await;
    replayed += 1;
    device.ping_cloud().await;
    fresh += 1;
    // Still refused once fresh frames have been heard.
    device.send_text(recorded).await;
    device
        .expect_refusal(json!("r-1"), "older_than_session")
        .await;
    replayed += 1;
    device.ping_cloud().await;
    fresh += 1;
    let attack_time = attack.elapsed();
    assert_bystander_served(&cloud, &mut bystander).await;
    eprintln!(
        "figure: replay after restart: a recorded frame replayed {replayed} times after a \
         restart (restart {}) in {}: refused older_than_session {replayed}/{replayed}, served 0; \
         the device's fresh frames served {fresh}/{fresh}; replay guard holds {} nonces after \
         the restart; {}; {}; bystander served 1/1",
        secs(restart_time),
        secs(attack_time),
        cloud.state.devices().remembered_nonces(),
        database_growth(&cloud, bytes_before),
        refusal_counts(&cloud),
    );
}

/// Attack: a pending or rejected device (or anyone holding such a key, or
/// anyone claiming its id) reconnects in a loop; each handshake costs
/// signatures, registry reads and an auth-log row.
///
/// Bound: a pending or rejected device opens at most
/// `pending_reconnects_per_minute` connections a minute (beyond:
/// `reconnecting_too_often`, close 1013); strangers claiming its id with
/// other keys do not use up that allowance; accepted devices are not slowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_reconnects_of_pending_and_rejected_devices_are_slowed() {
    const LIMIT: usize = 3;
    const TRIES: usize = LIMIT + 3;
    let cloud =
        TestCloud::start_with(|c| c.limits.pending_reconnects_per_minute = LIMIT as u32).await;
    let mut bystander = cloud.accepted_device(BYSTANDER).await;
    let bytes_before = cloud.database_bytes();
    let attack = Instant::now();

    // A pending device: the first connection registers it.
    let key = keys::generate();
    let mut answers = Vec::new();
    for _ in 0..TRIES {
        let mut device = cloud.connect_with_key("pend-1", key.clone()).await;
        let answer = device.authenticate().await;
        if answer == json!({"status": "pending"}) {
            device.drop_connection();
            answers.push("pending");
        } else {
            assert_handshake_refused(
                &mut device,
                &answer,
                "reconnecting_too_often",
                TRY_AGAIN_LATER,
            )
            .await;
            answers.push("slowed");
        }
    }
    let served = answers.iter().take_while(|a| **a == "pending").count();
    assert!(
        (LIMIT..=LIMIT + 1).contains(&served) && answers[served..].iter().all(|a| *a == "slowed"),
        "pending device: {answers:?}"
    );
    let pending_served = served;

    // A rejected device.
    let key = keys::generate();
    let mut device = cloud.connect_with_key("rej-1", key.clone()).await;
    assert_eq!(device.authenticate().await, json!({"status": "pending"}));
    let (status, _) = cloud
        .api()
        .request(Method::POST, "/devices/rej-1/reject", Some(&json!({})))
        .await
        .unwrap();
    assert_eq!(status, 200);
    device.expect_status_notification("rejected").await;
    assert_eq!(device.expect_close().await.0, REJECTED);
    let mut answers = Vec::new();
    for _ in 0..TRIES {
        let mut device = cloud.connect_with_key("rej-1", key.clone()).await;
        let answer = device.authenticate().await;
        if answer == json!({"status": "rejected"}) {
            assert_eq!(device.expect_close().await.0, REJECTED);
            answers.push("rejected");
        } else {
            assert_handshake_refused(
                &mut device,
                &answer,
                "reconnecting_too_often",
                TRY_AGAIN_LATER,
            )
            .await;
            answers.push("slowed");
        }
    }
    let served = answers.iter().take_while(|a| **a == "rejected").count();
    assert!(
        (LIMIT - 1..=LIMIT).contains(&served) && answers[served..].iter().all(|a| *a == "slowed"),
        "rejected device: {answers:?}"
    );
    let rejected_served = served;

    // Strangers claiming a pending id do not use up its allowance.
    let key = keys::generate();
    let mut device = cloud.connect_with_key("pend-2", key.clone()).await;
    assert_eq!(device.authenticate().await, json!({"status": "pending"}));
    device.drop_connection();
    let (mut strangers_mismatched, mut strangers_slowed) = (0, 0);
    for _ in 0..3 * LIMIT {
        let mut stranger = cloud.connect("pend-2").await;
        let answer = stranger.authenticate().await;
        assert_ne!(answer, json!({"status": "pending"}), "a stranger got in");
        let code = stranger.expect_close().await.0;
        assert!(
            (reason(&answer) == "key_mismatch" && code == KEY_MISMATCH) || code == TRY_AGAIN_LATER,
            "stranger: {answer} then {code}"
        );
        if code == KEY_MISMATCH {
            strangers_mismatched += 1;
        } else {
            strangers_slowed += 1;
        }
    }
    let mut real_reconnects = 0;
    for n in 1..LIMIT {
        let mut device = cloud.connect_with_key("pend-2", key.clone()).await;
        assert_eq!(
            device.authenticate().await,
            json!({"status": "pending"}),
            "reconnect {n} of the real pend-2, after strangers claimed its id"
        );
        device.drop_connection();
        real_reconnects += 1;
    }

    // An accepted device reconnects as often as it needs.
    let mut accepted_reconnects = 0;
    for _ in 0..TRIES {
        let mut again = cloud
            .connect_with_key(BYSTANDER, bystander.key.clone())
            .await;
        assert_eq!(again.authenticate().await, json!({"status": "accepted"}));
        assert_eq!(
            bystander.expect_close().await.0,
            protocol::close_code::REPLACED
        );
        bystander = again;
        accepted_reconnects += 1;
    }
    let attack_time = attack.elapsed();
    assert_bystander_served(&cloud, &mut bystander).await;
    eprintln!(
        "figure: pending reconnects: {} handshakes in {}; pending device {TRIES} reconnects: \
         served {pending_served}, slowed {} (limit {LIMIT}/min); rejected device {TRIES}: \
         served {rejected_served}, slowed {}; {} strangers claiming a pending id: key_mismatch \
         {strangers_mismatched}, slowed {strangers_slowed}, the real device's allowance used by \
         them 0 ({real_reconnects}/{} of its reconnects served after); accepted device \
         reconnects served {accepted_reconnects}/{TRIES}; {}; {}; bystander served 1/1",
        2 * TRIES + 1 + 1 + 3 * LIMIT + (LIMIT - 1) + TRIES,
        secs(attack_time),
        TRIES - pending_served,
        TRIES - rejected_served,
        3 * LIMIT,
        LIMIT - 1,
        database_growth(&cloud, bytes_before),
        refusal_counts(&cloud),
    );
}
