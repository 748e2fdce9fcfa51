//! The `/api/v1` router and its OpenAPI document, built from the same
//! declarations: each handler's `#[utoipa::path]` adds both its route and its
//! operation (utoipa-axum), and the request, response and error types derive
//! their schemas. The document is served at `GET /api/v1/openapi.json`.

use axum::body::Bytes;
use axum::http::header;
use axum::response::IntoResponse;
use axum::{Extension, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    Content, OpenApi as OpenApiDocument, PathItem, Ref, RefOr, Response, ResponseBuilder,
};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::api;
use crate::http::state::AppState;

/// Where the API lives.
const API_PREFIX: &str = "/api/v1";
/// The name of the bearer token scheme in the document (also spelled out in `ApiDoc`).
const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "devbridge cloud API",
        description = "Operate a fleet of devices: accept their keys, call JSON-RPC methods on \
                       them, read the audit log. Every operation but `POST /login` and this \
                       document needs `Authorization: Bearer <token>` (an operator's API token \
                       or the admin token), or a session cookie from `POST /login` plus the \
                       session's `X-CSRF-Token` on state-changing requests. Errors are \
                       `{\"error\": {\"kind\", \"message\", \"rpc_error\"?}}`; `kind` is the \
                       label to branch on."
    ),
    modifiers(&BearerToken),
    security(("bearer" = [])),
    tags(
        (name = "devices", description = "The device registry and operator decisions"),
        (name = "rpc", description = "JSON-RPC calls to devices"),
        (name = "audit", description = "The audit log: operator actions and device auth events"),
        (name = "operators", description = "Signing in and out, operator accounts and API tokens"),
        (name = "meta", description = "This document"),
    ),
)]
struct ApiDoc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut OpenApiDocument) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "An operator's API token (`POST /tokens`), or the admin token file's content",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(BEARER, SecurityScheme::Http(scheme));
    }
}

/// The document, pre-serialized once per router.
#[derive(Clone)]
struct DocumentJson(Bytes);

/// `/api/v1`: every route, and the document describing them.
pub(crate) fn api_v1(state: AppState) -> Router<AppState> {
    let (router, mut document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest(
            API_PREFIX,
            OpenApiRouter::new()
                .routes(routes!(openapi_json))
                .merge(api::routes(state)),
        )
        .split_for_parts();
    add_common_responses(&mut document);
    // Serializing plain data into memory cannot fail.
    let json = serde_json::to_vec(&document).expect("the OpenAPI document serializes");
    router.layer(Extension(DocumentJson(Bytes::from(json))))
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json")),
)]
async fn openapi_json(Extension(DocumentJson(json)): Extension<DocumentJson>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json)
}

/// Adds what every operation behind the token may answer, declared once:
/// 401 and 500.
fn add_common_responses(document: &mut OpenApiDocument) {
    let error_body = |description: &str| -> RefOr<Response> {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                Content::new(Some(Ref::from_schema_name("ErrorBody"))),
            )
            .build()
            .into()
    };
    let components = document.components.get_or_insert_with(Default::default);
    components.responses.insert(
        "Unauthorized".into(),
        error_body("`unauthorized`: no bearer token, or not a valid one"),
    );
    components.responses.insert(
        "Internal".into(),
        error_body("`internal`: the cloud failed; its log says why"),
    );
    for item in document.paths.paths.values_mut() {
        for operation in operations(item) {
            let public = operation
                .security
                .as_ref()
                .is_some_and(|any_of| any_of.contains(&SecurityRequirement::default()));
            if public {
                continue;
            }
            let responses = &mut operation.responses.responses;
            responses.insert("401".into(), Ref::from_response_name("Unauthorized").into());
            responses.insert("500".into(), Ref::from_response_name("Internal").into());
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}
