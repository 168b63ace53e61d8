//! The cache actor (the seed's cache): records held in memory for a while, by key.
//!
//! A record lives until its time-to-live runs out; when the cache is full (by count or by bytes)
//! the least recently used records make room. Records are whole in memory (that is what a cache
//! is for), so a record larger than the byte bound is refused. Pipelines load into and extract
//! from keys under a prefix (`cache:stage1/`), so they can be chained without touching a disk.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use letl_storage::ContentHash;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::time::Instant;
use tracing::debug;

/// Longest time-to-live a record may have.
pub const CACHE_EXPIRE_IN_MAX: Duration = Duration::from_secs(30 * 24 * 3600);

/// How a cache is bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheLimits {
    /// Time-to-live of records put without their own.
    pub expire_in: Duration,
    pub max_records: usize,
    pub max_bytes: u64,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self {
            expire_in: Duration::from_secs(60),
            max_records: 1000,
            max_bytes: 256 << 20,
        }
    }
}

/// A record's description (without its bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    pub key: String,
    pub size: u64,
    pub hash: ContentHash,
    /// Time left to live.
    pub expires_in: Duration,
}

#[derive(Debug)]
struct Record {
    data: Bytes,
    hash: ContentHash,
    expires_at: Instant,
    /// Larger is more recent.
    used: u64,
}

/// Why a put was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    #[error("the record is {size} bytes, more than the cache holds ({max} bytes)")]
    TooLarge { size: u64, max: u64 },
    #[error("the cache actor is not running")]
    Down,
}

pub enum CacheMsg {
    Put {
        key: String,
        data: Bytes,
        expire_in: Option<Duration>,
        reply: RpcReplyPort<Result<CacheEntry, CacheError>>,
    },
    Get {
        key: String,
        reply: RpcReplyPort<Option<(CacheEntry, Bytes)>>,
    },
    /// Live records whose key starts with `prefix`, in key order, after `after`.
    List {
        prefix: String,
        after: Option<String>,
        limit: usize,
        reply: RpcReplyPort<Vec<CacheEntry>>,
    },
    Remove {
        key: String,
        reply: RpcReplyPort<bool>,
    },
}

impl std::fmt::Debug for CacheMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Put { key, data, .. } => write!(f, "Put({key}, {} bytes)", data.len()),
            Self::Get { key, .. } => write!(f, "Get({key})"),
            Self::List { prefix, .. } => write!(f, "List({prefix})"),
            Self::Remove { key, .. } => write!(f, "Remove({key})"),
        }
    }
}

#[derive(Debug, Default)]
pub struct CacheActor;

#[derive(Debug)]
pub struct CacheState {
    limits: CacheLimits,
    records: BTreeMap<String, Record>,
    bytes: u64,
    clock: u64,
}

impl CacheState {
    fn entry(key: &str, record: &Record, now: Instant) -> CacheEntry {
        CacheEntry {
            key: key.to_string(),
            size: record.data.len() as u64,
            hash: record.hash,
            expires_in: record.expires_at.saturating_duration_since(now),
        }
    }

    fn expire(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .records
            .iter()
            .filter(|(_, r)| r.expires_at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.remove(&key);
        }
    }

    fn remove(&mut self, key: &str) -> bool {
        match self.records.remove(key) {
            Some(record) => {
                self.bytes -= record.data.len() as u64;
                true
            }
            None => false,
        }
    }

    /// Evicts least recently used records until `size` more bytes and one more record fit.
    fn make_room(&mut self, size: u64) {
        while !self.records.is_empty()
            && (self.records.len() >= self.limits.max_records
                || self.bytes + size > self.limits.max_bytes)
        {
            let Some(oldest) = self
                .records
                .iter()
                .min_by_key(|(_, r)| r.used)
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            debug!(key = %oldest, "cache full; evicting the least recently used record");
            self.remove(&oldest);
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
}

impl Actor for CacheActor {
    type Msg = CacheMsg;
    type State = CacheState;
    type Arguments = CacheLimits;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        limits: CacheLimits,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(CacheState {
            limits,
            records: BTreeMap::new(),
            bytes: 0,
            clock: 0,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        state.expire(now);
        match message {
            CacheMsg::Put {
                key,
                data,
                expire_in,
                reply,
            } => {
                let size = data.len() as u64;
                if size > state.limits.max_bytes {
                    let _ = reply.send(Err(CacheError::TooLarge {
                        size,
                        max: state.limits.max_bytes,
                    }));
                    return Ok(());
                }
                state.remove(&key);
                state.make_room(size);
                let used = state.tick();
                let record = Record {
                    hash: ContentHash::of(&data),
                    data,
                    expires_at: now
                        + expire_in
                            .unwrap_or(state.limits.expire_in)
                            .min(CACHE_EXPIRE_IN_MAX),
                    used,
                };
                let entry = CacheState::entry(&key, &record, now);
                state.bytes += size;
                state.records.insert(key, record);
                let _ = reply.send(Ok(entry));
            }
            CacheMsg::Get { key, reply } => {
                let used = state.tick();
                let found = state.records.get_mut(&key).map(|record| {
                    record.used = used;
                    (CacheState::entry(&key, record, now), record.data.clone())
                });
                let _ = reply.send(found);
            }
            CacheMsg::List {
                prefix,
                after,
                limit,
                reply,
            } => {
                let from = match after {
                    Some(after) => std::ops::Bound::Excluded(after),
                    None => std::ops::Bound::Included(prefix.clone()),
                };
                let listed = state
                    .records
                    .range::<String, _>((from, std::ops::Bound::Unbounded))
                    .skip_while(|(k, _)| !k.starts_with(&prefix) && k.as_str() < prefix.as_str())
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .take(limit)
                    .map(|(k, r)| CacheState::entry(k, r, now))
                    .collect();
                let _ = reply.send(listed);
            }
            CacheMsg::Remove { key, reply } => {
                let _ = reply.send(state.remove(&key));
            }
        }
        Ok(())
    }
}

/// A typed front to the cache actor.
#[derive(Clone, Debug)]
pub struct CacheHandle {
    actor: ActorRef<CacheMsg>,
}

impl CacheHandle {
    /// Starts a cache actor (unnamed: ractor's registry is process-global).
    pub async fn start(limits: CacheLimits) -> Result<Self, String> {
        let (actor, _) = Actor::spawn(None, CacheActor, limits)
            .await
            .map_err(|e| format!("starting the cache actor: {e}"))?;
        Ok(Self { actor })
    }

    pub async fn put(
        &self,
        key: String,
        data: Bytes,
        expire_in: Option<Duration>,
    ) -> Result<CacheEntry, CacheError> {
        ractor::call!(self.actor, |reply| CacheMsg::Put {
            key,
            data,
            expire_in,
            reply
        })
        .map_err(|_| CacheError::Down)?
    }

    pub async fn get(&self, key: &str) -> Result<Option<(CacheEntry, Bytes)>, CacheError> {
        let key = key.to_string();
        ractor::call!(self.actor, |reply| CacheMsg::Get { key, reply })
            .map_err(|_| CacheError::Down)
    }

    pub async fn list(
        &self,
        prefix: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<CacheEntry>, CacheError> {
        let prefix = prefix.to_string();
        ractor::call!(self.actor, |reply| CacheMsg::List {
            prefix,
            after,
            limit,
            reply
        })
        .map_err(|_| CacheError::Down)
    }

    pub async fn remove(&self, key: &str) -> Result<bool, CacheError> {
        let key = key.to_string();
        ractor::call!(self.actor, |reply| CacheMsg::Remove { key, reply })
            .map_err(|_| CacheError::Down)
    }

    pub fn stop(&self) {
        self.actor.stop(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_records: usize, max_bytes: u64) -> CacheLimits {
        CacheLimits {
            expire_in: Duration::from_secs(60),
            max_records,
            max_bytes,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn records_expire_after_their_time_to_live() {
        let cache = CacheHandle::start(CacheLimits::default()).await.unwrap();
        cache
            .put("a".into(), Bytes::from_static(b"one"), None)
            .await
            .unwrap();
        cache
            .put(
                "b".into(),
                Bytes::from_static(b"two"),
                Some(Duration::from_secs(5)),
            )
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(cache.get("b").await.unwrap().is_none(), "b expired");
        assert_eq!(
            cache.get("a").await.unwrap().unwrap().1,
            Bytes::from_static(b"one")
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(
            cache.get("a").await.unwrap().is_none(),
            "the default time-to-live is a minute"
        );
    }

    #[tokio::test]
    async fn the_least_recently_used_records_make_room() {
        let cache = CacheHandle::start(limits(2, 1000)).await.unwrap();
        cache
            .put("a".into(), Bytes::from_static(b"1"), None)
            .await
            .unwrap();
        cache
            .put("b".into(), Bytes::from_static(b"2"), None)
            .await
            .unwrap();
        cache.get("a").await.unwrap().unwrap(); // a is now more recent than b
        cache
            .put("c".into(), Bytes::from_static(b"3"), None)
            .await
            .unwrap();
        assert!(
            cache.get("b").await.unwrap().is_none(),
            "b was least recently used"
        );
        assert!(cache.get("a").await.unwrap().is_some());

        // By bytes as well; a record larger than the cache is refused.
        let small = CacheHandle::start(limits(100, 10)).await.unwrap();
        small
            .put("x".into(), Bytes::from(vec![0; 6]), None)
            .await
            .unwrap();
        small
            .put("y".into(), Bytes::from(vec![0; 6]), None)
            .await
            .unwrap();
        assert!(small.get("x").await.unwrap().is_none());
        assert_eq!(
            small
                .put("z".into(), Bytes::from(vec![0; 11]), None)
                .await
                .unwrap_err(),
            CacheError::TooLarge { size: 11, max: 10 }
        );
        let listed: Vec<String> = small
            .list("", None, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(listed, ["y"]);
    }

    #[tokio::test]
    async fn listing_pages_by_prefix() {
        let cache = CacheHandle::start(CacheLimits::default()).await.unwrap();
        for key in ["s1/a", "s1/b", "s1/c", "s2/a"] {
            cache
                .put(key.into(), Bytes::from_static(b"."), None)
                .await
                .unwrap();
        }
        let keys =
            |entries: Vec<CacheEntry>| entries.into_iter().map(|e| e.key).collect::<Vec<_>>();
        assert_eq!(
            keys(cache.list("s1/", None, 2).await.unwrap()),
            ["s1/a", "s1/b"]
        );
        assert_eq!(
            keys(cache.list("s1/", Some("s1/b".into()), 2).await.unwrap()),
            ["s1/c"]
        );
        assert!(cache.remove("s1/a").await.unwrap());
        assert_eq!(
            keys(cache.list("s1/", None, 10).await.unwrap()),
            ["s1/b", "s1/c"]
        );
    }
}
