//! The OpenAPI document: served without a token, valid OpenAPI by an
//! independent validator, and listing exactly the routes `/api/v1` serves.

mod support;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use support::{python, TestCloud};
use tower::ServiceExt;

const DOCUMENT_PATH: &str = "/api/v1/openapi.json";

/// Validates with openapi-spec-validator (the version is read from the document).
const VALIDATE: &str = "
import json, sys
from openapi_spec_validator import validate
validate(json.load(sys.stdin))
";

/// Methods OpenAPI can describe, as the document spells them.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

async fn document(cloud: &TestCloud) -> Value {
    // No token: the document is public.
    let response = cloud
        .http
        .get(cloud.url(DOCUMENT_PATH))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.unwrap()
}

#[tokio::test]
async fn the_document_is_valid_openapi() {
    let cloud = TestCloud::start().await;
    let document = document(&cloud).await;
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));

    let (valid, report) = python::run(VALIDATE, document.to_string().as_bytes());
    assert!(
        valid,
        "the validator refuses the document:\n{report}\n{document:#}"
    );

    // The validator does refuse a broken document: this check can fail.
    let mut broken = document.clone();
    broken["paths"]["/api/v1/devices"]["get"]["responses"] = json!("none");
    let (valid, _) = python::run(VALIDATE, broken.to_string().as_bytes());
    assert!(!valid, "the validator accepted a broken document");
}

/// `(path, method)` of every operation in the document.
fn documented(document: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(method).is_some() {
                operations.insert((path.clone(), method.to_uppercase()));
            }
        }
    }
    operations
}

/// `(path, method)` of every route `router` serves under `/api/v1`. The paths
/// are those the router lists in its `Debug` form; the methods of each are
/// those its 405 answer allows (`HEAD` comes with `GET` in axum).
async fn served_routes(router: Router, token: &str) -> BTreeSet<(String, String)> {
    let debug = format!("{router:?}");
    let paths: BTreeSet<&str> = debug
        .match_indices("\"/api/v1")
        .filter_map(|(start, _)| debug[start + 1..].split('"').next())
        .filter(|path| !path.contains("__private__axum"))
        .collect();
    assert!(
        paths.contains("/api/v1/devices"),
        "cannot read the routes from the router's Debug form: {debug}"
    );
    let mut operations = BTreeSet::new();
    for path in paths {
        let concrete = fill_params(path);
        let response = router
            .clone()
            .oneshot(
                Request::builder()
                    .method(Method::from_bytes(b"PROPFIND").unwrap())
                    .uri(&concrete)
                    .header("authorization", format!("Bearer {token}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{path} answers any method"
        );
        let allow = response.headers()["allow"].to_str().unwrap().to_owned();
        let methods: BTreeSet<&str> = allow.split(',').map(str::trim).collect();
        for method in &methods {
            if *method == "HEAD" && methods.contains("GET") {
                continue;
            }
            operations.insert((path.to_owned(), method.to_string()));
        }
    }
    operations
}

/// `/a/{id}/b` → `/a/x/b`.
fn fill_params(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "x"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn the_document_lists_every_route_with_its_methods() {
    let cloud = TestCloud::start().await;
    let documented = documented(&document(&cloud).await);
    let served = served_routes(cloud::app(cloud.state.clone()), &cloud.token).await;
    assert_eq!(
        served.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "served but not documented"
    );
    assert_eq!(
        documented.difference(&served).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented but not served"
    );
    for operation in [
        ("/api/v1/devices/{id}/rpc", "POST"),
        ("/api/v1/devices/{id}", "DELETE"),
        ("/api/v1/openapi.json", "GET"),
    ] {
        let operation = (operation.0.to_owned(), operation.1.to_owned());
        assert!(documented.contains(&operation), "{operation:?}");
    }

    // A route added beside the documented ones is caught.
    let extra = cloud::app(cloud.state.clone())
        .route("/api/v1/undocumented", get(|| async {}))
        .route("/api/v1/devices/{id}/extra", get(|| async {}));
    let with_extra = served_routes(extra, &cloud.token).await;
    let caught: Vec<_> = with_extra.difference(&documented).collect();
    assert_eq!(
        caught,
        [
            &("/api/v1/devices/{id}/extra".to_owned(), "GET".to_owned()),
            &("/api/v1/undocumented".to_owned(), "GET".to_owned()),
        ]
    );
}

#[tokio::test]
async fn every_operation_but_the_document_and_sign_in_needs_the_bearer_token() {
    let cloud = TestCloud::start().await;
    let document = document(&cloud).await;
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"],
        json!({"type": "http", "scheme": "bearer", "description": "An operator's API token (`POST /tokens`), or the admin token file's content"})
    );
    assert_eq!(document["security"], json!([{"bearer": []}]));
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let public = operation.get("security") == Some(&json!([{}]));
            let sign_in = path == "/api/v1/login" && method == "post";
            assert_eq!(public, path == DOCUMENT_PATH || sign_in, "{method} {path}");
            let unauthorized = &operation["responses"]["401"];
            if sign_in {
                // Its own 401 is a wrong password, not a missing token.
                assert!(unauthorized["description"]
                    .as_str()
                    .unwrap()
                    .contains("wrong_password"));
            } else if public {
                assert!(unauthorized.is_null(), "{method} {path}");
            } else {
                assert_eq!(
                    unauthorized,
                    &json!({"$ref": "#/components/responses/Unauthorized"}),
                    "{method} {path}"
                );
            }
        }
    }
    // And the document says the truth: an operation it guards refuses no token.
    let response = cloud
        .http
        .get(cloud.url("/api/v1/devices"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn errors_are_documented_with_their_shape_and_status_codes() {
    let cloud = TestCloud::start().await;
    let document = document(&cloud).await;
    let schemas = &document["components"]["schemas"];
    assert_eq!(
        schemas["ErrorBody"]["properties"]["error"]["$ref"],
        "#/components/schemas/ErrorDetail"
    );
    let detail = &schemas["ErrorDetail"];
    assert_eq!(detail["required"], json!(["kind", "message"]));
    let properties: BTreeSet<&str> = detail["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(properties, BTreeSet::from(["kind", "message", "rpc_error"]));
    assert!(schemas["JsonRpcError"]["properties"]["code"].is_object());

    let rpc = &document["paths"]["/api/v1/devices/{id}/rpc"]["post"];
    let statuses: BTreeSet<&str> = rpc["responses"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        statuses,
        BTreeSet::from(["200", "400", "401", "403", "404", "409", "500", "502", "503", "504"])
    );
    for status in ["400", "403", "404", "409", "502", "503", "504"] {
        assert_eq!(
            rpc["responses"][status]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody",
            "{status}"
        );
    }
    assert_eq!(
        rpc["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/RpcRequest"
    );

    // The documented error shape is the one the API sends.
    let (status, body) = cloud
        .api()
        .request(
            Method::POST,
            "/devices/nobody/rpc",
            Some(&json!({"method": "a.b"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 404);
    let keys: BTreeSet<&str> = body["error"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, BTreeSet::from(["kind", "message"]));
}

#[tokio::test]
async fn the_device_schema_matches_what_the_api_sends() {
    let cloud = TestCloud::start().await;
    let _device = cloud.accepted_device("dev-1").await;
    let document = document(&cloud).await;
    let schema = &document["components"]["schemas"]["DeviceView"];
    let documented: BTreeSet<&str> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let (status, body) = cloud
        .api()
        .request(Method::GET, "/devices", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let sent: BTreeSet<&str> = body["devices"][0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(sent, documented);
    let required: BTreeSet<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| name.as_str().unwrap())
        .collect();
    assert_eq!(required, sent, "every field is always sent");
    assert_eq!(
        schema["properties"]["status"]["$ref"],
        "#/components/schemas/DeviceStatus"
    );
    assert_eq!(
        document["components"]["schemas"]["DeviceStatus"]["enum"],
        json!(["pending", "accepted", "rejected"])
    );
}
