//! Automatic syncs: every `state.auto_sync_poll_secs` each worker leases the stored data
//! sources that are due (their customer has auto-sync on, and an interval has passed since
//! their last sync), enqueues a `sync_files` of what they were last synced with, and releases
//! them with the next sync an interval away. Leases are taken by one statement in the store, so
//! with several replicas exactly one enqueues each due sync; a worker that dies holding a lease
//! delays that sync by at most `state.auto_sync_lease_secs`.

use super::jobs::{Context, Outputs};
use crate::job::{
    DataSource, Job, JobKind, ObjectSelector, SCHEMA_VERSION, SyncFiles, SyncOptions,
};
use crate::sink::amqp::Publisher;
use crate::state::{Due, now_secs};

/// Data sources leased per round: few enough to enqueue well within a lease.
const PER_ROUND: usize = 20;

/// Longest wait for the broker to confirm one scheduled job.
const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The prefix of the `request_id` (and `job_id`) of automatic syncs.
pub const SCHEDULED_PREFIX: &str = "scheduled:";

/// One round: lease what is due, enqueue each, release each. `Err` means the broker connection
/// is unusable (the leases then run out on their own).
pub(super) async fn round(ctx: &Context, publisher: &Publisher) -> Result<(), String> {
    let Some(store) = &ctx.state else {
        return Ok(());
    };
    let lease = i64::try_from(ctx.config.state.auto_sync_lease_secs).unwrap_or(i64::MAX);
    let due = match store.claim_due(&ctx.worker_id, lease, PER_ROUND).await {
        Ok(due) => due,
        Err(err) => {
            tracing::warn!(error = %err, "auto-sync: the state store is unavailable");
            return Ok(());
        }
    };
    for due in due {
        let Some(job) = job_for(&due) else {
            tracing::warn!(
                data_source = due.data_source_id,
                "auto-sync: the stored selectors or options do not parse; skipped until its next sync"
            );
            let _ = store.scheduled(&due.data_source_id, &ctx.worker_id).await;
            continue;
        };
        let mut out = Outputs::new(publisher, &ctx.config.worker);
        let sent = async {
            out.job(&job).await?;
            out.finish().await
        };
        match tokio::time::timeout(CONFIRM_TIMEOUT, sent).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => return Err(format!("auto-sync: enqueueing a sync: {err}")),
            Err(_) => return Err("auto-sync: the broker did not confirm a sync in time".to_owned()),
        }
        tracing::info!(
            data_source = due.data_source_id,
            request_id = job.request_id.as_deref().unwrap_or(""),
            "auto-sync: sync enqueued"
        );
        if let Err(err) = store.scheduled(&due.data_source_id, &ctx.worker_id).await {
            // The lease runs out and the sync is enqueued again: a duplicate, not a loss.
            tracing::warn!(error = %err, data_source = due.data_source_id, "auto-sync: not released");
        }
    }
    Ok(())
}

/// The `sync_files` job of a due data source: by id alone (its credentials stay in the store),
/// with the selectors and options of its syncs.
fn job_for(due: &Due) -> Option<Job> {
    let ids: Vec<ObjectSelector> = serde_json::from_str(&due.selectors).ok()?;
    let options: SyncOptions = serde_json::from_str(&due.options).ok()?;
    if ids.is_empty() {
        return None;
    }
    let id = format!("{SCHEDULED_PREFIX}{}:{}", due.data_source_id, now_secs());
    Some(Job {
        schema_version: SCHEMA_VERSION,
        job_id: Some(id.clone()),
        request_id: Some(id),
        customer_id: due.customer_id.clone(),
        kind: JobKind::SyncFiles(SyncFiles {
            data_source: DataSource {
                id: Some(due.data_source_id.clone()),
                ..DataSource::default()
            },
            ids,
            options,
        }),
    })
}
