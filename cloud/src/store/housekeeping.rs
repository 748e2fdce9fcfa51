//! What the cloud forgets by itself, so that what it holds stays bounded:
//! audit log entries beyond `AUDIT_RETENTION_DAYS` or `AUDIT_MAX_ROWS`,
//! pending devices not seen for `PENDING_EXPIRY_DAYS` (which frees their
//! places under `MAX_PENDING_DEVICES`), and the database's write-ahead log.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::store::Store;

/// How often the cloud forgets what is past its time.
const PERIOD: Duration = Duration::from_secs(600);
/// How often the write-ahead log is emptied: at a few thousand calls a
/// second, each audited, it grows by tens of megabytes a second.
const CHECKPOINT_PERIOD: Duration = Duration::from_secs(5);

/// Prunes the audit log to its retention, and forgets pending devices not
/// seen for `PENDING_EXPIRY_DAYS`, at start and every [`PERIOD`]; empties the
/// write-ahead log every [`CHECKPOINT_PERIOD`]; until `shutdown`.
pub(crate) async fn run(store: Store, limits: Limits, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(PERIOD);
    let mut checkpoints = tokio::time::interval(CHECKPOINT_PERIOD);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = checkpoints.tick() => {
                if let Err(e) = store.registry.checkpoint().await {
                    tracing::warn!(error = %e, "cannot checkpoint the database's write-ahead log");
                }
                continue;
            }
            _ = ticks.tick() => {}
        }
        let now = protocol::now_ms() as i64;
        match store
            .audit
            .prune(now, limits.audit_retention, limits.audit_max_rows)
            .await
        {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "audit log entries beyond the retention pruned"),
            Err(e) => tracing::warn!(error = %e, "cannot prune the audit log"),
        }
        let seen_before = now.saturating_sub(limits.pending_expiry.as_millis() as i64);
        match store.registry.forget_stale_pending(seen_before, now).await {
            Ok(ids) if ids.is_empty() => {}
            Ok(ids) => tracing::info!(
                count = ids.len(),
                "pending devices not seen for PENDING_EXPIRY_DAYS forgotten"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot forget stale pending devices"),
        }
    }
}
