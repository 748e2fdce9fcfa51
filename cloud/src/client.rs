//! A client of the cloud's HTTP API (`/api/v1`) with a bearer token: the
//! CLI's, and the tests'. Each operation has a method; `request` is the raw
//! form, for callers that look at refusals themselves.

use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::Method;
use serde_json::{json, Value};

/// Why an API call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the cloud at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    /// The cloud answered with an error (`{"error": {"kind", "message"}}`).
    #[error("{kind} ({status}): {message}{}", rpc_error.as_ref().map(|e| format!("\n{e:#}")).unwrap_or_default())]
    Refused {
        status: u16,
        kind: String,
        message: String,
        /// The device's own JSON-RPC error, with `device_error`.
        rpc_error: Option<Value>,
    },
}

impl ApiError {
    /// The HTTP status, if the cloud answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Refused { status, .. } => Some(*status),
            ApiError::Unreachable { .. } => None,
        }
    }

    /// The error's `kind` (`offline`, `timed_out`, …), if the cloud answered.
    pub fn kind(&self) -> Option<&str> {
        match self {
            ApiError::Refused { kind, .. } => Some(kind),
            ApiError::Unreachable { .. } => None,
        }
    }

    /// The device's own JSON-RPC error (`{"code", "message", ...}`), if the
    /// cloud passed one on.
    pub fn rpc_error(&self) -> Option<&Value> {
        match self {
            ApiError::Refused { rpc_error, .. } => rpc_error.as_ref(),
            ApiError::Unreachable { .. } => None,
        }
    }
}

/// The cloud's API at one base URL, as one caller.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    /// `http://host:port/api/v1`.
    base: String,
    token: String,
}

/// Never prints the token.
impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// The API of the cloud at `url` (`http://host:port`), called with the
    /// bearer `token`. The server bounds every call itself; `timeout` only
    /// guards against a hung server.
    pub fn new(url: &str, token: &str, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .unwrap_or_default();
        Self::with_http(http, url, token)
    }

    /// As [`ApiClient::new`], over `http`: its settings and its pool of
    /// connections, shared with the caller's other requests.
    pub fn with_http(http: reqwest::Client, url: &str, token: &str) -> Self {
        ApiClient {
            http,
            base: format!("{}/api/v1", url.trim_end_matches('/')),
            token: token.trim().to_owned(),
        }
    }

    /// Sends one request; answers with the status and the JSON body (null if
    /// empty or not JSON), whatever the status.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ApiError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let unreachable = |source| ApiError::Unreachable {
            url: url.clone(),
            source,
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(unreachable)?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// `request`, with any status but 2xx turned into [`ApiError::Refused`].
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let (status, answer) = self.request(method, path, body).await?;
        if (200..300).contains(&status) {
            return Ok(answer);
        }
        let error = &answer["error"];
        Err(ApiError::Refused {
            status,
            kind: error["kind"].as_str().unwrap_or("http_error").to_owned(),
            message: error["message"]
                .as_str()
                .map_or_else(|| format!("HTTP {status}"), str::to_owned),
            rpc_error: error.get("rpc_error").cloned(),
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.send(Method::GET, path, None).await
    }

    /// Every device, pending ones first (`{"devices": [...]}`).
    pub async fn devices(&self) -> Result<Value, ApiError> {
        self.get("/devices").await
    }

    /// One device with its recent events (`{"device", "auth_events", ...}`).
    pub async fn device(&self, id: &str) -> Result<Value, ApiError> {
        self.get(&device_path(id, "")).await
    }

    /// Registers a device's id and public key (PEM) before it connects.
    pub async fn preauthorize(&self, id: &str, public_key_pem: &str) -> Result<Value, ApiError> {
        let body = json!({ "id": id, "public_key": public_key_pem });
        self.send(Method::POST, "/devices", Some(&body)).await
    }

    /// Requires a device to rotate its key (`{"device_id", "asked_now", …}`).
    pub async fn require_rotation(&self, id: &str) -> Result<Value, ApiError> {
        self.send(
            Method::POST,
            &device_path(id, "/require-key-rotation"),
            None,
        )
        .await
    }

    pub async fn accept(&self, id: &str) -> Result<Value, ApiError> {
        self.send(Method::POST, &device_path(id, "/accept"), None)
            .await
    }

    pub async fn reject(&self, id: &str) -> Result<Value, ApiError> {
        self.send(Method::POST, &device_path(id, "/reject"), None)
            .await
    }

    pub async fn delete(&self, id: &str) -> Result<(), ApiError> {
        self.send(Method::DELETE, &device_path(id, ""), None)
            .await
            .map(drop)
    }

    /// Calls `method` on a device; answers with its result.
    pub async fn rpc(
        &self,
        id: &str,
        method: &str,
        params: Option<Value>,
        timeout: Option<Duration>,
    ) -> Result<Value, ApiError> {
        let mut body = json!({ "method": method });
        if let Some(params) = params {
            body["params"] = params;
        }
        if let Some(timeout) = timeout {
            body["timeout_ms"] = json!(timeout.as_millis() as u64);
        }
        let answer = self
            .send(Method::POST, &device_path(id, "/rpc"), Some(&body))
            .await?;
        Ok(answer["result"].clone())
    }

    /// Sends a device the event `event` (a notification, no answer);
    /// answers with `{"status": "sent"}` once its connection took it.
    pub async fn notify(
        &self,
        id: &str,
        event: &str,
        params: Option<Value>,
    ) -> Result<Value, ApiError> {
        let mut body = json!({ "event": event });
        if let Some(params) = params {
            body["params"] = params;
        }
        self.send(Method::POST, &device_path(id, "/events"), Some(&body))
            .await
    }

    /// One page of the audit log; `query` is the URL query (`actor=…&limit=…`).
    pub async fn audit(&self, query: &str) -> Result<Value, ApiError> {
        self.get(&format!("/audit?{query}")).await
    }

    /// Every API token (`{"tokens": [...]}`).
    pub async fn tokens(&self) -> Result<Value, ApiError> {
        self.get("/tokens").await
    }

    /// A new token for the calling operator (`{"token", "secret"}`), acting
    /// with `role` (the caller's if None).
    pub async fn create_token(&self, name: &str, role: Option<&str>) -> Result<Value, ApiError> {
        let body = json!({ "name": name, "role": role });
        self.send(Method::POST, "/tokens", Some(&body)).await
    }

    pub async fn revoke_token(&self, id: i64) -> Result<Value, ApiError> {
        self.send(Method::DELETE, &format!("/tokens/{id}"), None)
            .await
    }
}

/// What a path segment keeps as it is: device ids are plain
/// (`[A-Za-z0-9._-]`), but the CLI takes any input.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'.').remove(b'_').remove(b'-');

/// `/devices/{id}{rest}`, the id percent-encoded as one path segment.
pub fn device_path(id: &str, rest: &str) -> String {
    format!("/devices/{}{rest}", utf8_percent_encode(id, PATH_SEGMENT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_encoded_as_one_path_segment() {
        assert_eq!(device_path("dev-1.a_b", "/rpc"), "/devices/dev-1.a_b/rpc");
        assert_eq!(device_path("a/b c", ""), "/devices/a%2Fb%20c");
    }
}
