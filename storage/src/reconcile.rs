//! Brings a tier's index back in line with its backend after a crash or outside changes.
//!
//! For fs tiers the files are the truth: a put is durable once its rename is synced, but a crash
//! can come before its index entry is. Walking both in key order (a merge of two sorted lists,
//! one page at a time) adds entries for objects the index lacks, rehashing their bytes, drops
//! entries whose object is gone, and rehashes objects whose size or stamp changed (replaced
//! after their entry was written, by a crash before the index flush or by another tool).

use std::collections::VecDeque;

use tracing::{info, warn};

use crate::backend::{BackendObject, TierBackend, hash_stream};
use crate::error::{Result, StorageError};
use crate::index::{ObjectIndex, ObjectMeta};
use crate::uri::{KeyPrefix, ObjectKey};

/// Entries fetched from each side per page.
const RECONCILE_PAGE_ENTRIES: usize = 1_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub checked: u64,
    pub added: u64,
    pub removed: u64,
    pub rehashed: u64,
}

pub async fn reconcile(
    backend: &dyn TierBackend,
    index: &dyn ObjectIndex,
) -> Result<ReconcileReport> {
    let tier = backend.describe().name;
    let all = KeyPrefix::default();
    let mut report = ReconcileReport::default();
    let mut objects: VecDeque<BackendObject> = VecDeque::new();
    let mut entries: VecDeque<(ObjectKey, ObjectMeta)> = VecDeque::new();
    let mut objects_after: Option<ObjectKey> = None;
    let mut entries_after: Option<ObjectKey> = None;
    let mut objects_done = false;
    let mut entries_done = false;
    loop {
        if objects.is_empty() && !objects_done {
            let page = backend
                .list(&all, objects_after.as_ref(), RECONCILE_PAGE_ENTRIES)
                .await?;
            objects_done = page.len() < RECONCILE_PAGE_ENTRIES;
            objects_after = page.last().map(|o| o.key.clone());
            objects.extend(page);
        }
        if entries.is_empty() && !entries_done {
            let page = index.list(&all, entries_after.as_ref(), RECONCILE_PAGE_ENTRIES)?;
            entries_done = page.len() < RECONCILE_PAGE_ENTRIES;
            entries_after = page.last().map(|(k, _)| k.clone());
            entries.extend(page);
        }
        let order = match (objects.front(), entries.front()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(object), Some((key, _))) => object.key.cmp(key),
        };
        report.checked += 1;
        match order {
            std::cmp::Ordering::Less => {
                let Some(object) = objects.pop_front() else {
                    break;
                };
                index_object(backend, index, &object, None).await?;
                report.added += 1;
            }
            std::cmp::Ordering::Greater => {
                let Some((key, _)) = entries.pop_front() else {
                    break;
                };
                index.remove(&key)?;
                report.removed += 1;
            }
            std::cmp::Ordering::Equal => {
                let (Some(object), Some((_, meta))) = (objects.pop_front(), entries.pop_front())
                else {
                    break;
                };
                if object.size != meta.size || object.stamp != meta.stamp {
                    index_object(backend, index, &object, Some(&meta)).await?;
                    report.rehashed += 1;
                }
            }
        }
    }
    if report.added + report.removed + report.rehashed > 0 {
        index.flush().await?;
        warn!(%tier, added = report.added, removed = report.removed, rehashed = report.rehashed,
            "index repaired from tier contents");
    } else {
        info!(%tier, objects = report.checked, "index matches tier contents");
    }
    Ok(report)
}

async fn index_object(
    backend: &dyn TierBackend,
    index: &dyn ObjectIndex,
    object: &BackendObject,
    previous: Option<&ObjectMeta>,
) -> Result<()> {
    let reader = match backend.get(&object.key).await {
        Ok(reader) => reader,
        // Gone since the listing: nothing to index.
        Err(StorageError::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    let (size, hash) = hash_stream(reader.body.into_stream())
        .await
        .map_err(|e| StorageError::io(format!("rehash `{}`", object.key), e))?;
    let meta = ObjectMeta {
        size,
        hash,
        created_ms: previous.map_or(object.modified_ms, |p| p.created_ms),
        modified_ms: object.modified_ms,
        version: previous.map_or(1, |p| p.version + 1),
        stamp: object.stamp,
    };
    index.insert(&object.key, &meta)?;
    Ok(())
}
