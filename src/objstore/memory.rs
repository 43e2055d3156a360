//! In-memory object store for unit tests of logic. Never the only proof of a
//! feature: the same behaviour tests run against fs and a real S3 server.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;

use super::{content_etag, BoxFut, Condition, Listed, ObjError, Object, ObjectStore};

#[derive(Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, Bytes>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Bytes>> {
        match self.objects.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

impl ObjectStore for MemoryStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Object, ObjError>> {
        Box::pin(async move {
            let objects = self.lock();
            let data = objects
                .get(key)
                .cloned()
                .ok_or_else(|| ObjError::NotFound(key.to_string()))?;
            Ok(Object {
                etag: content_etag(&data),
                data,
            })
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        data: Bytes,
        condition: Condition,
    ) -> BoxFut<'a, Result<String, ObjError>> {
        Box::pin(async move {
            let mut objects = self.lock();
            let ok = match (&condition, objects.get(key)) {
                (Condition::None, _) => true,
                (Condition::IfAbsent, existing) => existing.is_none(),
                (Condition::IfMatch(etag), Some(existing)) => &content_etag(existing) == etag,
                (Condition::IfMatch(_), None) => false,
            };
            if !ok {
                return Err(ObjError::PreconditionFailed(key.to_string()));
            }
            let etag = content_etag(&data);
            objects.insert(key.to_string(), data);
            Ok(etag)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), ObjError>> {
        Box::pin(async move {
            self.lock().remove(key);
            Ok(())
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Result<Vec<Listed>, ObjError>> {
        Box::pin(async move {
            Ok(self
                .lock()
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| Listed {
                    key: k.clone(),
                    size: v.len() as u64,
                })
                .collect())
        })
    }

    fn bulk_delete_limit(&self) -> usize {
        1000
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}
