//! Typed records by string key in one tree of the node's database: the control state the node keeps locally
//! (pipeline registrations, pipeline jobs, provenance of produced objects) until the raft
//! control plane takes it over.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec;
use crate::error::Result;
use crate::kv::Tree;

/// Records of one type, by key, in key order.
#[derive(Debug)]
pub struct DbRecords<T> {
    tree: Tree,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for DbRecords<T> {
    fn clone(&self) -> Self {
        Self {
            tree: self.tree.clone(),
            _type: PhantomData,
        }
    }
}

impl crate::index::IndexDb {
    /// The records in tree `name` (created if new).
    pub fn records<T: Serialize + DeserializeOwned>(&self, name: &str) -> Result<DbRecords<T>> {
        Ok(DbRecords {
            tree: self.open_tree(&format!("records/{name}"))?,
            _type: PhantomData,
        })
    }
}

impl<T: Serialize + DeserializeOwned> DbRecords<T> {
    pub fn get(&self, key: &str) -> Result<Option<T>> {
        self.tree
            .get(key.as_bytes())?
            .map(|v| codec::decode(&v))
            .transpose()
    }

    pub fn put(&self, key: &str, value: &T) -> Result<()> {
        self.tree.insert(key.as_bytes(), codec::encode(value)?)?;
        Ok(())
    }

    pub fn remove(&self, key: &str) -> Result<Option<T>> {
        self.tree
            .remove(key.as_bytes())?
            .map(|v| codec::decode(&v))
            .transpose()
    }

    /// Every record whose key starts with `prefix`, in key order, with its key.
    pub fn scan(&self, prefix: &str) -> Result<Vec<(String, T)>> {
        self.tree
            .scan_prefix(prefix.as_bytes())
            .map(|item| {
                let (key, value) = item?;
                Ok((
                    String::from_utf8_lossy(&key).into_owned(),
                    codec::decode(&value)?,
                ))
            })
            .collect()
    }

    pub async fn flush(&self) -> Result<()> {
        self.tree.flush().await
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn records_round_trip_by_key_and_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::index::IndexDb::open(&dir.path().join("index")).unwrap();
        let records = db.records::<(String, u64)>("things").unwrap();
        records.put("a/1", &("one".to_string(), 1)).unwrap();
        records.put("a/2", &("two".to_string(), 2)).unwrap();
        records.put("b/1", &("three".to_string(), 3)).unwrap();
        records.flush().await.unwrap();
        assert_eq!(records.get("a/2").unwrap(), Some(("two".to_string(), 2)));
        let scanned: Vec<String> = records
            .scan("a/")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(scanned, ["a/1", "a/2"]);
        assert_eq!(records.remove("a/1").unwrap(), Some(("one".to_string(), 1)));
        assert_eq!(records.get("a/1").unwrap(), None);
    }
}
