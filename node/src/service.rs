//! Object operations on top of the tier actors: what the HTTP handlers (and later the LETL
//! routes and remote nodes) call. Single-tier operations go to that tier's actor; copies and
//! moves go through the [`Mover`], which runs them exactly once.

use crate::error::ApiError;
use crate::moves::{Mover, Transferred};
use crate::places::{Listing, Places};
use letl_actors::TierStatus;
use letl_storage::{
    ByteStream, KeyPrefix, ObjectKey, ObjectMeta, ObjectReader, ObjectUri, PrefixUri, StorageError,
    TierName,
};

#[derive(Clone, Debug)]
pub struct ObjectService {
    places: Places,
    mover: Mover,
}

impl ObjectService {
    pub fn new(places: Places, mover: Mover) -> Self {
        Self { places, mover }
    }

    pub async fn put(
        &self,
        uri: &ObjectUri,
        body: ByteStream,
        declared_len: Option<u64>,
    ) -> Result<ObjectMeta, ApiError> {
        Ok(self.places.put(uri, body, declared_len, None).await?)
    }

    /// The checks a put would fail right away (tier, key, size, capacity), without its body.
    pub async fn check_put(
        &self,
        uri: &ObjectUri,
        declared_len: Option<u64>,
    ) -> Result<(), ApiError> {
        Ok(self.places.check_put(uri, declared_len).await?)
    }

    pub async fn get(&self, uri: &ObjectUri) -> Result<(ObjectMeta, ObjectReader), ApiError> {
        Ok(self.places.get(uri).await?)
    }

    pub async fn head(&self, uri: &ObjectUri) -> Result<ObjectMeta, ApiError> {
        Ok(self.places.head(uri).await?)
    }

    pub async fn list(
        &self,
        tier: &TierName,
        prefix: KeyPrefix,
        start_after: Option<ObjectKey>,
        limit: usize,
    ) -> Result<Listing, ApiError> {
        Ok(self.places.list(tier, prefix, start_after, limit).await?)
    }

    pub async fn delete(&self, uri: &ObjectUri) -> Result<ObjectMeta, ApiError> {
        Ok(self.places.delete(uri, None).await?)
    }

    /// Copies (or moves) `source` to `destination` exactly once under `request_id`; a
    /// destination naming a place (`ssd:/`, `hdd:/out/`) takes the source's basename.
    pub async fn transfer(
        &self,
        source: &str,
        destination: &str,
        remove_source: bool,
        request_id: Option<String>,
    ) -> Result<Transferred, ApiError> {
        let source = ObjectUri::parse(source)?;
        let destination = resolve_destination(destination, source.key.basename())?;
        self.mover
            .transfer(source, destination, remove_source, request_id)
            .await
    }

    pub fn mover(&self) -> &Mover {
        &self.mover
    }

    pub fn places(&self) -> &Places {
        &self.places
    }

    /// Every tier, in name order; a down tier is listed with its reason, never hiding the rest.
    pub async fn tiers(&self) -> Vec<TierStatus> {
        self.places
            .directory()
            .statuses()
            .await
            .into_iter()
            .map(|(_, status)| status)
            .collect()
    }
}

/// `tier:/key`, or `tier:/dir/` (and `tier:/`) meaning "`name` in there".
pub fn resolve_destination(destination: &str, name: &str) -> Result<ObjectUri, StorageError> {
    let place = PrefixUri::parse(destination)?;
    if place.is_directory() {
        place.join(name)
    } else {
        ObjectUri::parse(destination)
    }
}
