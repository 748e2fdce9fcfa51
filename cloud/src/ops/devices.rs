//! Operations on devices: reading them with their live state, deciding on
//! their keys, removing them, and calling their methods. Decisions are
//! stored first and then delivered to a connected device, so that a device
//! told "accepted" is accepted in the registry too.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use crate::store::registry::{AuthEvent, DeviceEvent, HealthSample};
use crate::store::{Action, AuditFilter, AuditPage, DeviceRecord, DeviceStatus, TagSet};
use protocol::now_ms;

use super::tags::TagSelector;
use super::{Caller, ErrorKind, OpError, Operations, Permission};

/// Auth events shown with a device.
const DEVICE_AUTH_EVENTS: i64 = 50;
/// Container events shown with a device.
const DEVICE_CONTAINER_EVENTS: i64 = 50;
/// Most auth events one read returns.
const MAX_AUTH_EVENTS: i64 = 1000;
/// Largest params a queued call or a job keeps, in bytes of JSON.
const MAX_STORED_PARAMS_BYTES: usize = 16 * 1024;
/// Longest public key an admin may paste, in bytes; an Ed25519 SPKI PEM is
/// about 113.
const MAX_PUBLIC_KEY_PEM_BYTES: usize = 1024;

/// A device as operators see it: the registry record plus live state.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceView {
    pub id: String,
    pub status: DeviceStatus,
    pub fingerprint: String,
    pub public_key: String,
    pub first_seen: i64,
    pub last_seen: i64,
    /// Whether the device has an authenticated connection right now.
    pub online: bool,
    /// The cloud instance holding that connection (null when offline).
    #[schema(required = true)]
    pub instance: Option<String>,
    // Always sent, null when unknown: required, and nullable.
    #[schema(required = true)]
    pub bridge_version: Option<String>,
    /// The latest `system.health` report the device sent.
    #[schema(required = true)]
    pub last_health: Option<Value>,
    #[schema(required = true)]
    pub last_health_at: Option<i64>,
    /// The admin who registered the key before the device first connected;
    /// `last_seen` is 0 until it does.
    #[schema(required = true)]
    pub preauthorized_by: Option<String>,
    /// When an admin required the device to rotate its key; null once it has.
    #[schema(required = true)]
    pub key_rotation_required_at: Option<i64>,
    /// The newest cloud key the device said it trusts (null until it says).
    #[schema(required = true)]
    pub cloud_key_fingerprint: Option<String>,
    /// Operators' labels, `key: value`.
    pub tags: TagSet,
}

impl DeviceView {
    fn new(record: DeviceRecord, instance: Option<String>, tags: TagSet) -> Self {
        DeviceView {
            id: record.id,
            status: record.status,
            fingerprint: record.fingerprint,
            public_key: record.public_key,
            first_seen: record.first_seen,
            last_seen: record.last_seen,
            online: instance.is_some(),
            instance,
            bridge_version: record.bridge_version,
            last_health: record.last_health,
            last_health_at: record.last_health_at,
            preauthorized_by: record.preauthorized_by,
            key_rotation_required_at: record.key_rotation_required_at,
            cloud_key_fingerprint: record.cloud_key_fingerprint,
            tags,
        }
    }
}

/// One device with its recent history.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceDetails {
    pub device: DeviceView,
    /// The latest auth events of this device, newest first.
    pub auth_events: Vec<AuthEvent>,
    /// The latest container events the device reported, newest first.
    pub container_events: Vec<DeviceEvent>,
}

/// Which devices to list (the API's query and the dashboard's filter form).
#[derive(Debug, Default, Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct DeviceFilter {
    /// `pending`, `accepted`, `rejected`, `online` or `offline`.
    pub state: Option<String>,
    /// Part of the device id, any case.
    pub q: Option<String>,
    /// Tags the device must carry, comma-separated: `site=berlin,env`
    /// (`env` alone: any value).
    pub tag: Option<String>,
}

impl DeviceFilter {
    /// This filter as the device list's query string: a saved view.
    pub fn to_query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (name, value) in [("state", &self.state), ("q", &self.q), ("tag", &self.tag)] {
            if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
                query.append_pair(name, value);
            }
        }
        query.finish()
    }
}

/// A call to a device's method.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RpcRequest {
    /// Dotted method name, e.g. `containers.list`.
    #[schema(example = "containers.list")]
    pub method: String,
    /// A JSON object or array.
    #[serde(default)]
    pub params: Option<Value>,
    /// Defaults to the cloud's RPC timeout; at most its maximum.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub timeout_ms: Option<u64>,
}

impl Operations {
    /// Devices matching `filter`, pending ones first.
    pub async fn devices(&self, filter: &DeviceFilter) -> Result<Vec<DeviceView>, OpError> {
        let wanted = filter.state.as_deref().filter(|s| !s.is_empty());
        if let Some(wanted) = wanted {
            if !["pending", "accepted", "rejected", "online", "offline"].contains(&wanted) {
                return Err(OpError::bad_request(format!(
                    "unknown state {wanted:?}: use pending, accepted, rejected, online or offline"
                )));
            }
        }
        let needle = filter.q.as_deref().unwrap_or("").trim().to_lowercase();
        let selector = TagSelector::parse(filter.tag.as_deref().unwrap_or(""))?;
        let records = self.store().registry.devices().await?;
        let mut tags = self.store().tags.all().await?;
        let mut connections = self.device_layer().fleet().connections().await;
        Ok(records
            .into_iter()
            .map(|record| {
                let instance = connections.remove(&record.id);
                let tags = tags.remove(&record.id).unwrap_or_default();
                DeviceView::new(record, instance, tags)
            })
            .filter(|device| selector.matches(&device.tags))
            .filter(|device| match wanted {
                None => true,
                Some("online") => device.online,
                Some("offline") => !device.online,
                Some(status) => device.status.as_str() == status,
            })
            .filter(|device| needle.is_empty() || device.id.to_lowercase().contains(&needle))
            .collect())
    }

    /// One device with its latest auth and container events.
    pub async fn device(&self, id: &str) -> Result<DeviceDetails, OpError> {
        let registry = &self.store().registry;
        let record = registry
            .device(id)
            .await?
            .ok_or_else(|| OpError::unknown_device(id))?;
        let auth_events = registry.auth_events(Some(id), DEVICE_AUTH_EVENTS).await?;
        let container_events = registry.device_events(id, DEVICE_CONTAINER_EVENTS).await?;
        let instance = self.device_layer().fleet().connection_of(id).await;
        let tags = self.store().tags.of(id).await?;
        Ok(DeviceDetails {
            device: DeviceView::new(record, instance, tags),
            auth_events,
            container_events,
        })
    }

    /// A device's health reports of the last hour, oldest first.
    pub async fn health_history(&self, id: &str) -> Result<Vec<HealthSample>, OpError> {
        let registry = &self.store().registry;
        if registry.device(id).await?.is_none() {
            return Err(OpError::unknown_device(id));
        }
        Ok(registry.health_history(id).await?)
    }

    /// The latest device auth events (of one device, or all), newest first.
    pub async fn auth_events(
        &self,
        device_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AuthEvent>, OpError> {
        let limit = limit.clamp(1, MAX_AUTH_EVENTS);
        Ok(self.store().registry.auth_events(device_id, limit).await?)
    }

    /// One page of the audit log, newest first.
    pub async fn audit_page(
        &self,
        filter: &AuditFilter,
        offset: i64,
        limit: i64,
    ) -> Result<AuditPage, OpError> {
        Ok(self.store().audit.page(filter, offset, limit).await?)
    }

    /// An operator's decision on a device's key (accepted or rejected).
    pub async fn decide(
        &self,
        caller: &Caller,
        id: &str,
        status: DeviceStatus,
    ) -> Result<DeviceView, OpError> {
        let action = match status {
            DeviceStatus::Accepted => "device.accept",
            _ => "device.reject",
        };
        self.auditor()
            .authorize(caller, Permission::DecideKeys, action, id, "")
            .await?;
        let detail = format!("by {}", caller.name);
        let record = self
            .store()
            .registry
            .set_status(id, status, &detail, now_ms() as i64)
            .await?;
        let outcome = if record.is_some() {
            "ok"
        } else {
            "unknown_device"
        };
        self.auditor()
            .record_simple(&caller.name, action, outcome, id)
            .await;
        let record = record.ok_or_else(|| OpError::unknown_device(id))?;
        tracing::info!(device_id = %id, %status, operator = %caller.name, "operator decision");
        let fleet = self.device_layer().fleet();
        fleet.apply_status(id, status).await;
        self.device_layer()
            .events()
            .device("device.status", id, json!({ "status": status }));
        let tags = self.store().tags.of(id).await?;
        Ok(DeviceView::new(record, fleet.connection_of(id).await, tags))
    }

    /// Registers a device's id and public key (SPKI PEM) before the device
    /// exists: its first connection with that key is accepted at once.
    pub async fn preauthorize(
        &self,
        caller: &Caller,
        id: &str,
        public_key_pem: &str,
    ) -> Result<DeviceView, OpError> {
        let action = "device.preauthorize";
        self.auditor()
            .authorize(caller, Permission::DecideKeys, action, id, "")
            .await?;
        if !protocol::is_valid_device_id(id) {
            return Err(OpError::bad_request(format!(
                "a device id is 1 to {} characters of letters, digits, '.', '_' or '-'",
                protocol::method::MAX_DEVICE_ID_LEN
            )));
        }
        if public_key_pem.len() > MAX_PUBLIC_KEY_PEM_BYTES {
            return Err(OpError::bad_request(format!(
                "a public key is at most {MAX_PUBLIC_KEY_PEM_BYTES} bytes of PEM"
            )));
        }
        // The parser's own words (e.g. about a PEM preamble) mean nothing to
        // whoever pasted the wrong file.
        let key = protocol::keys::public_key_from_pem(public_key_pem.trim()).map_err(|_| {
            OpError::bad_request(
                "not an Ed25519 public key: paste the device's device_public.pem \
                 (-----BEGIN PUBLIC KEY-----)",
            )
        })?;
        let fingerprint = protocol::keys::fingerprint(&key);
        let record = self
            .store()
            .registry
            .preauthorize(
                id,
                &protocol::keys::public_key_to_pem(&key),
                &fingerprint,
                &caller.name,
                now_ms() as i64,
            )
            .await?;
        let outcome = if record.is_some() {
            "ok"
        } else {
            "device_exists"
        };
        self.auditor()
            .record(&Action {
                actor: &caller.name,
                action,
                target: id,
                outcome,
                detail: &fingerprint,
                latency_ms: None,
            })
            .await;
        let Some(record) = record else {
            return Err(OpError::new(
                ErrorKind::DeviceExists,
                format!("device {id:?} is registered already; accept, reject or delete it instead"),
            ));
        };
        tracing::info!(device_id = %id, %fingerprint, operator = %caller.name, "device preauthorized");
        self.device_layer().events().device(
            "device.status",
            id,
            json!({ "status": DeviceStatus::Accepted, "preauthorized": true }),
        );
        Ok(DeviceView::new(record, None, TagSet::new()))
    }

    /// Forgets a device (the audit log keeps it) and cuts its connection; it
    /// may register again as pending.
    pub async fn remove_device(&self, caller: &Caller, id: &str) -> Result<(), OpError> {
        self.auditor()
            .authorize(caller, Permission::DecideKeys, "device.delete", id, "")
            .await?;
        let detail = format!("by {}", caller.name);
        let deleted = self
            .store()
            .registry
            .delete(id, &detail, now_ms() as i64)
            .await?;
        let outcome = if deleted { "ok" } else { "unknown_device" };
        self.auditor()
            .record_simple(&caller.name, "device.delete", outcome, id)
            .await;
        if !deleted {
            return Err(OpError::unknown_device(id));
        }
        tracing::info!(device_id = %id, operator = %caller.name, "device deleted");
        self.device_layer().fleet().disconnect(id).await;
        self.device_layer()
            .events()
            .device("device.deleted", id, Value::Null);
        Ok(())
    }

    /// Calls a device's method for `caller`, and records the call, its
    /// outcome and its latency in the audit log.
    pub async fn call(
        &self,
        caller: &Caller,
        id: &str,
        request: RpcRequest,
    ) -> Result<Value, OpError> {
        let method = request.method.clone();
        let needed = self.config().method_roles.needed_for(&method);
        self.auditor()
            .authorize(caller, Permission::Call(needed), "rpc", id, &method)
            .await?;
        let started = Instant::now();
        let outcome = self.call_unaudited(id, request).await;
        self.auditor()
            .record(&Action {
                actor: &caller.name,
                action: "rpc",
                target: id,
                outcome: outcome.as_ref().map_or_else(|e| e.kind.as_str(), |_| "ok"),
                detail: &method,
                latency_ms: Some(started.elapsed().as_millis() as i64),
            })
            .await;
        outcome
    }

    pub(super) async fn call_unaudited(
        &self,
        id: &str,
        request: RpcRequest,
    ) -> Result<Value, OpError> {
        let timeout = self.call_timeout(request.timeout_ms)?;
        Ok(self
            .device_layer()
            .fleet()
            .call(id, &request.method, request.params, timeout)
            .await?)
    }

    /// How long a call's device has to answer: `timeout_ms`, or the
    /// cloud's RPC timeout; at most its maximum.
    pub(super) fn call_timeout(&self, timeout_ms: Option<u64>) -> Result<Duration, OpError> {
        let config = self.config();
        let max = config.max_rpc_timeout();
        match timeout_ms {
            None => Ok(config.rpc_timeout),
            Some(0) => Err(OpError::bad_request("timeout_ms must be positive")),
            Some(ms) if Duration::from_millis(ms) > max => Err(OpError::bad_request(format!(
                "timeout_ms must be at most {}",
                max.as_millis()
            ))),
            Some(ms) => Ok(Duration::from_millis(ms)),
        }
    }

    /// Checks a call that will be kept (queued, or a job's) before it is
    /// stored: its method name, and params a JSON object or array of at most
    /// [`MAX_STORED_PARAMS_BYTES`].
    pub(super) fn check_stored_call(method: &str, params: Option<&Value>) -> Result<(), OpError> {
        protocol::method::check_method_name(method)
            .map_err(|refusal| OpError::bad_request(refusal.to_string()))?;
        if let Some(params) = params {
            crate::device::fleet::check_params(params)?;
            if params.to_string().len() > MAX_STORED_PARAMS_BYTES {
                return Err(OpError::bad_request(format!(
                    "params of a queued call or a job are at most {MAX_STORED_PARAMS_BYTES} bytes"
                )));
            }
        }
        Ok(())
    }
}
