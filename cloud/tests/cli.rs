//! The operator CLI (the real `cloud` binary) against a running cloud.

mod support;

use cloud::roles::Role;
use protocol::Message;
use serde_json::{json, Value};
use support::TestCloud;
use tokio::process::Command;

/// Runs `cloud ARGS --url ... --token <admin token>`; returns (success, stdout, stderr).
async fn cloud_cli(cloud: &TestCloud, args: &[&str]) -> (bool, String, String) {
    cloud_cli_with_token(cloud, &cloud.token, args).await
}

/// Runs `cloud ARGS --url ... --token TOKEN`; returns (success, stdout, stderr).
async fn cloud_cli_with_token(
    cloud: &TestCloud,
    token: &str,
    args: &[&str],
) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(args)
        .arg(format!("--url={}", cloud.url("")))
        // One argument: a token may begin with `-`.
        .arg(format!("--token={token}"))
        .env_remove("CLOUD_URL")
        .env_remove("CLOUD_TOKEN")
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[tokio::test]
async fn devices_list_accept_and_rpc() {
    let cloud = TestCloud::start().await;
    let mut device = cloud.connect("dev-1").await;
    device.authenticate().await;

    let (ok, stdout, stderr) = cloud_cli(&cloud, &["devices", "list", "--json"]).await;
    assert!(ok, "{stderr}");
    let devices: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(devices[0]["id"], "dev-1");
    assert_eq!(devices[0]["status"], "pending");
    assert_eq!(devices[0]["online"], true);

    let (ok, stdout, stderr) = cloud_cli(&cloud, &["devices", "list"]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("ID"), "{stdout}");
    assert!(
        stdout.contains("dev-1") && stdout.contains(&device.fingerprint()),
        "{stdout}"
    );

    let (ok, stdout, stderr) = cloud_cli(&cloud, &["devices", "accept", "dev-1"]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("accepted dev-1"), "{stdout}");
    device.expect_status_notification("accepted").await;

    // The device answers one call, echoing what it was asked.
    let responder = tokio::spawn(async move {
        let Message::Request { id, method, params } = device.recv().await else {
            panic!("expected a request");
        };
        let answer = json!({"method": method, "params": params});
        device.send_message(&Message::result(id, answer)).await;
        device
    });
    let (ok, stdout, stderr) = cloud_cli(
        &cloud,
        &[
            "rpc",
            "dev-1",
            "containers.list",
            r#"{"all":true}"#,
            "--timeout-ms",
            "5000",
        ],
    )
    .await;
    assert!(ok, "{stderr}");
    let result: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        result,
        json!({"method": "containers.list", "params": {"all": true}})
    );
    responder.await.unwrap();
}

#[tokio::test]
async fn rpc_errors_are_printed_and_exit_non_zero() {
    let cloud = TestCloud::start().await;
    let (ok, stdout, stderr) = cloud_cli(&cloud, &["rpc", "nobody", "containers.list"]).await;
    assert!(!ok);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("unknown_device"), "{stderr}");
}

#[tokio::test]
async fn a_wrong_token_is_reported() {
    let cloud = TestCloud::start().await;
    let output = Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args([
            "devices",
            "list",
            "--url",
            &cloud.url(""),
            "--token",
            "wrong",
        ])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unauthorized"));
}

/// Runs `cloud ARGS` with `stdin` as its input; returns (success, stdout, stderr).
async fn cloud_cli_with_stdin(args: &[&str], stdin: &str) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(args)
        .env_remove("DATABASE_URL")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let output = child.wait_with_output().await.unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[tokio::test]
async fn the_first_operator_is_made_on_the_host_then_signs_in_and_makes_a_token() {
    let cloud = TestCloud::start().await;
    let database = cloud.state.ops().config().database_url.clone();
    let db = ["--database", database.as_str()];

    let add = [&["operators", "add", "alice", "--password-stdin"][..], &db].concat();
    let (ok, stdout, stderr) = cloud_cli_with_stdin(&add, "correct horse battery\n").await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "added admin alice");
    let (ok, _, stderr) = cloud_cli_with_stdin(&add, "correct horse battery\n").await;
    assert!(!ok);
    assert!(stderr.contains("already exists"), "{stderr}");
    let weak = [&["operators", "add", "bob", "--password-stdin"][..], &db].concat();
    let (ok, _, stderr) = cloud_cli_with_stdin(&weak, "short\n").await;
    assert!(!ok);
    assert!(stderr.contains("at least 10"), "{stderr}");
    // Without --password-stdin a password is made up and shown once.
    let made_up = [&["operators", "add", "carol"][..], &db].concat();
    let (ok, stdout, stderr) = cloud_cli_with_stdin(&made_up, "").await;
    assert!(ok, "{stderr}");
    let carol_password = stdout.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(carol_password.len() >= 20, "{stdout}");
    let list = [&["operators", "list", "--json"][..], &db].concat();
    let (_, stdout, _) = cloud_cli_with_stdin(&list, "").await;
    let names: Vec<String> = serde_json::from_str::<Value>(&stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["alice", "carol"]);

    // Both sign in to the running cloud with those passwords.
    for (name, password) in [
        ("alice", "correct horse battery"),
        ("carol", &carol_password),
    ] {
        let response = cloud
            .http
            .post(cloud.url("/api/v1/login"))
            .json(&json!({ "name": name, "password": password }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{name}");
    }

    // An operator's API token, made through the API, drives the CLI.
    let alice = cloud
        .state
        .ops()
        .store()
        .accounts
        .check_password("alice", "correct horse battery")
        .await
        .unwrap()
        .unwrap();
    let (_, secret) = cloud
        .state
        .ops()
        .store()
        .accounts
        .create_token(&alice, "laptop", Role::Admin, 0)
        .await
        .unwrap();
    let (ok, stdout, stderr) =
        cloud_cli_with_token(&cloud, &secret, &["tokens", "create", "ci"]).await;
    assert!(ok, "{stderr}");
    let ci_secret = stdout.trim().to_owned();
    assert!(ci_secret.starts_with("dbt_"), "{stdout}");
    let (ok, stdout, _) = cloud_cli_with_token(&cloud, &secret, &["tokens", "list"]).await;
    assert!(ok);
    assert!(stdout.starts_with("ID"), "{stdout}");
    assert!(
        stdout.contains("laptop") && stdout.contains("ci"),
        "{stdout}"
    );
    assert!(!stdout.contains(&ci_secret));
    let (_, stdout, _) = cloud_cli_with_token(&cloud, &secret, &["tokens", "list", "--json"]).await;
    let tokens: Value = serde_json::from_str(&stdout).unwrap();
    let ci_id = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ci")
        .unwrap()["id"]
        .to_string();
    let (ok, stdout, _) =
        cloud_cli_with_token(&cloud, &secret, &["tokens", "revoke", &ci_id]).await;
    assert!(ok);
    assert!(stdout.contains("revoked"), "{stdout}");
    let (_, stdout, _) = cloud_cli_with_token(&cloud, &secret, &["tokens", "list"]).await;
    assert!(stdout.contains("revoked"), "{stdout}");

    // The audit log, as a table and as JSON, shows what alice did.
    let (ok, stdout, stderr) =
        cloud_cli_with_token(&cloud, &secret, &["audit", "--actor", "alice"]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("WHEN"), "{stdout}");
    assert!(
        stdout.contains("token.create") && stdout.contains("token.revoke"),
        "{stdout}"
    );
    let (_, stdout, _) =
        cloud_cli_with_token(&cloud, &secret, &["audit", "--action", "login", "--json"]).await;
    let page: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(page["total"], 2);
}

#[tokio::test]
async fn devices_show_prints_the_device_and_its_auth_events() {
    let cloud = TestCloud::start().await;
    let mut device = cloud.connect("dev-1").await;
    device.authenticate().await;
    let (ok, stdout, stderr) = cloud_cli(&cloud, &["devices", "show", "dev-1"]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("pending"), "{stdout}");
    assert!(stdout.contains(&device.fingerprint()), "{stdout}");
    assert!(stdout.contains("new_key"), "{stdout}");
    let (ok, _, stderr) = cloud_cli(&cloud, &["devices", "show", "nobody"]).await;
    assert!(!ok);
    assert!(stderr.contains("unknown_device"), "{stderr}");
}

#[tokio::test]
async fn passwd_changes_the_password_and_ends_sessions_and_remove_removes() {
    let cloud = TestCloud::start().await;
    let database = cloud.state.ops().config().database_url.clone();
    let db = ["--database", database.as_str()];
    let login = |password: String| {
        let request = cloud
            .http
            .post(cloud.url("/api/v1/login"))
            .json(&json!({ "name": "alice", "password": password }));
        async move { request.send().await.unwrap() }
    };
    let add = [&["operators", "add", "alice", "--password-stdin"][..], &db].concat();
    let (ok, _, stderr) = cloud_cli_with_stdin(&add, "correct horse battery\n").await;
    assert!(ok, "{stderr}");
    let session = login("correct horse battery".into()).await;
    assert_eq!(session.status(), 200);
    let cookie = session.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();

    let passwd = [&["operators", "passwd", "alice"][..], &db].concat();
    let (ok, stdout, stderr) = cloud_cli_with_stdin(&passwd, "").await;
    assert!(ok, "{stderr}");
    let new_password = stdout.trim().rsplit(' ').next().unwrap().to_owned();
    assert_eq!(login("correct horse battery".into()).await.status(), 401);
    let me = cloud
        .http
        .get(cloud.url("/api/v1/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 401, "the old session ended");
    assert_eq!(login(new_password.clone()).await.status(), 200);

    let remove = [&["operators", "remove", "alice"][..], &db].concat();
    let (ok, stdout, stderr) = cloud_cli_with_stdin(&remove, "").await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("removed operator alice"), "{stdout}");
    assert_eq!(login(new_password).await.status(), 401);
    let (ok, _, stderr) = cloud_cli_with_stdin(&remove, "").await;
    assert!(!ok);
    assert!(stderr.contains("no operator named"), "{stderr}");
}

#[tokio::test]
async fn the_host_gives_roles_and_an_admin_preauthorizes_a_device_that_a_viewer_cannot() {
    let cloud = TestCloud::start().await;
    let database = cloud.state.ops().config().database_url.clone();
    let db = ["--database", database.as_str()];
    let add = [&["operators", "add", "vera", "--role", "viewer"][..], &db].concat();
    let (ok, stdout, stderr) = cloud_cli_with_stdin(&add, "").await;
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("added viewer vera"), "{stdout}");
    let bad = [
        &["operators", "add", "root", "--role", "superuser"][..],
        &db,
    ]
    .concat();
    let (ok, _, stderr) = cloud_cli_with_stdin(&bad, "").await;
    assert!(!ok);
    assert!(stderr.contains("viewer, operator and admin"), "{stderr}");
    let (_, stdout, _) =
        cloud_cli_with_stdin(&[&["operators", "list"][..], &db].concat(), "").await;
    assert!(
        stdout.contains("ROLE") && stdout.contains("viewer"),
        "{stdout}"
    );

    let key_file = cloud.dir().join("device_public.pem");
    let key = protocol::keys::generate();
    protocol::keys::write_public_key(&key_file, &key.verifying_key()).unwrap();
    let preauthorize = [
        "devices",
        "preauthorize",
        "dev-7",
        "--key",
        key_file.to_str().unwrap(),
    ];

    let vera = cloud
        .state
        .ops()
        .store()
        .accounts
        .operator("vera")
        .await
        .unwrap()
        .unwrap();
    let (_, viewer_token) = cloud
        .state
        .ops()
        .store()
        .accounts
        .create_token(&vera, "cli", Role::Viewer, 0)
        .await
        .unwrap();
    let (ok, _, stderr) = cloud_cli_with_token(&cloud, &viewer_token, &preauthorize).await;
    assert!(!ok);
    assert!(
        stderr.contains("forbidden") && stderr.contains("admin role"),
        "{stderr}"
    );

    let (ok, stdout, stderr) = cloud_cli(&cloud, &preauthorize).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("preauthorized dev-7"), "{stdout}");
    let mut device = cloud.connect_with_key("dev-7", key).await;
    assert_eq!(device.authenticate().await, json!({"status": "accepted"}));
}

#[tokio::test]
async fn tags_a_job_over_a_tag_and_a_queued_call_from_the_command_line() {
    let cloud = TestCloud::start().await;
    let (called, _calls) = tokio::sync::mpsc::unbounded_channel();
    for id in ["berlin-1", "berlin-2", "paris-1"] {
        support::answer_calls(cloud.accepted_device(id).await, id, called.clone());
    }
    for (id, site) in [
        ("berlin-1", "berlin"),
        ("berlin-2", "berlin"),
        ("paris-1", "paris"),
    ] {
        let (ok, stdout, stderr) = cloud_cli(
            &cloud,
            &["devices", "tag", id, &format!("site={site}"), "env=prod"],
        )
        .await;
        assert!(ok, "{stderr}");
        assert_eq!(stdout.trim(), format!("{id}: env=prod,site={site}"));
    }
    let (ok, stdout, _) = cloud_cli(&cloud, &["devices", "untag", "paris-1", "env"]).await;
    assert!(ok);
    assert_eq!(stdout.trim(), "paris-1: site=paris");
    let (ok, _, stderr) = cloud_cli(&cloud, &["devices", "tag", "paris-1", "site"]).await;
    assert!(!ok && stderr.contains("key=value"), "{stderr}");

    let (ok, stdout, stderr) =
        cloud_cli(&cloud, &["devices", "list", "--tag", "site=berlin"]).await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("berlin-1") && stdout.contains("berlin-2"),
        "{stdout}"
    );
    assert!(!stdout.contains("paris-1"), "{stdout}");
    assert!(
        stdout.contains("env=prod,site=berlin"),
        "the TAGS column: {stdout}"
    );

    // One method on every matching device, each outcome printed as it comes.
    let (ok, stdout, stderr) =
        cloud_cli(&cloud, &["rpc", "--tag", "site=berlin", "containers.list"]).await;
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for id in ["berlin-1", "berlin-2"] {
        let line = lines
            .iter()
            .find(|l| l.starts_with(id))
            .expect("a line each");
        assert!(
            line.contains("\tok\t") && line.contains(&format!("\"device\":\"{id}\"")),
            "{line}"
        );
    }
    assert!(
        stderr.contains("on 2 devices") && stderr.contains("finished"),
        "{stderr}"
    );
    let (ok, stdout, _) = cloud_cli(&cloud, &["jobs"]).await;
    assert!(
        ok && stdout.contains("containers.list") && stdout.contains("tag=site%3Dberlin"),
        "{stdout}"
    );
    let (ok, _, stderr) = cloud_cli(
        &cloud,
        &["rpc", "--tag", "site=berlin", "berlin-1", "containers.list"],
    )
    .await;
    assert!(!ok && stderr.contains("no device"), "{stderr}");

    // A call queued for an offline device, submitted twice with one key.
    let key = protocol::keys::generate();
    cloud
        .api()
        .preauthorize(
            "van-1",
            &protocol::keys::public_key_to_pem(&key.verifying_key()),
        )
        .await
        .unwrap();
    let queue = [
        "rpc",
        "van-1",
        "containers.restart",
        r#"{"id": "web"}"#,
        "--ttl",
        "2h",
        "--idempotency-key",
        "restart-web",
    ];
    let (ok, first, stderr) = cloud_cli(&cloud, &queue).await;
    assert!(ok, "{stderr}");
    let (ok, second, _) = cloud_cli(&cloud, &queue).await;
    assert!(ok);
    let (first, second): (Value, Value) = (
        serde_json::from_str(&first).unwrap(),
        serde_json::from_str(&second).unwrap(),
    );
    assert_eq!(first["state"], "queued");
    assert_eq!(first["id"], second["id"], "one call for one key");
    let ttl = first["expires_at"].as_i64().unwrap() - first["created_at"].as_i64().unwrap();
    assert_eq!(ttl, 2 * 3_600_000);
    let (ok, stdout, _) = cloud_cli(&cloud, &["calls", "van-1"]).await;
    assert!(
        ok && stdout.contains("containers.restart") && stdout.contains("queued"),
        "{stdout}"
    );
}
