//! S3 and S3-compatible object storage through rust-s3. Configured by the
//! `storage` block and the standard AWS variables (AWS_ENDPOINT_URL,
//! AWS_REGION / AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
//! AWS_SESSION_TOKEN, AWS_S3_USE_PATH_STYLE). Conditional writes use
//! `If-None-Match: *` and `If-Match: "<etag>"`.

use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use s3::creds::Credentials;
use s3::error::S3Error;
use s3::{Bucket, Region};

use super::{BoxFut, Condition, Listed, ObjError, Object, ObjectStore};
use crate::config::cluster::StorageConfig;

/// Each request's own timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Objects up to this size are uploaded in one request (with the storage
/// class and encryption headers); larger ones are streamed in parts.
const SINGLE_PUT_LIMIT: u64 = 256 * 1024 * 1024;

pub struct S3Store {
    bucket: Box<Bucket>,
    /// Storage class and server-side encryption, sent with every write.
    write_headers: HeaderMap,
}

fn header(name: &'static str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let v = HeaderValue::from_str(value).map_err(|e| format!("invalid value for {name}: {e}"))?;
    Ok((HeaderName::from_static(name), v))
}

impl S3Store {
    pub fn from_config(
        cfg: &StorageConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<S3Store, String> {
        let region_name = env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "us-east-1".to_string());
        let region = match env("AWS_ENDPOINT_URL_S3")
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .filter(|e| !e.is_empty())
        {
            Some(endpoint) => Region::Custom {
                region: region_name,
                endpoint,
            },
            None => region_name
                .parse()
                .map_err(|e| format!("AWS_REGION {region_name:?} is not a known region: {e}"))?,
        };
        let credentials = match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(access), Some(secret)) => Credentials::new(
                Some(&access),
                Some(&secret),
                None,
                env("AWS_SESSION_TOKEN").as_deref(),
                None,
            )
            .map_err(|e| format!("AWS credentials: {e}"))?,
            (Some(_), None) | (None, Some(_)) => {
                return Err(
                    "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither".into(),
                )
            }
            // Instance profiles, web identity and the shared config files.
            (None, None) => Credentials::default().map_err(|e| {
                format!("no AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY): {e}")
            })?,
        };
        let mut bucket = Bucket::new(&cfg.bucket_name, region, credentials)
            .map_err(|e| format!("storage.bucket_name {:?}: {e}", cfg.bucket_name))?;
        if env("AWS_S3_USE_PATH_STYLE").as_deref() == Some("true") {
            bucket = bucket.with_path_style();
        }
        bucket.set_request_timeout(Some(REQUEST_TIMEOUT));
        let mut write_headers = HeaderMap::new();
        let (k, v) = header("x-amz-storage-class", &cfg.class)?;
        write_headers.insert(k, v);
        if cfg.encryption == "customer-managed" {
            let (k, v) = header("x-amz-server-side-encryption", "aws:kms")?;
            write_headers.insert(k, v);
            if !cfg.kms_key_id.is_empty() {
                let (k, v) = header(
                    "x-amz-server-side-encryption-aws-kms-key-id",
                    &cfg.kms_key_id,
                )?;
                write_headers.insert(k, v);
            }
        } else {
            let (k, v) = header("x-amz-server-side-encryption", "AES256")?;
            write_headers.insert(k, v);
        }
        Ok(S3Store {
            bucket,
            write_headers,
        })
    }
}

/// Maps a rust-s3 error to ours. 404 is NotFound; 412 (or a body naming
/// PreconditionFailed) is a lost condition; 5xx, 429, 409 conflicting
/// conditional writes and transport errors are transient.
fn map_err(key: &str, e: S3Error) -> ObjError {
    let key_s = key.to_string();
    match e {
        S3Error::HttpFailWithBody(status, body) => {
            if status == 404 {
                ObjError::NotFound(key_s)
            } else if status == 412 || body.contains("PreconditionFailed") {
                ObjError::PreconditionFailed(key_s)
            } else if status >= 500 || status == 429 || status == 409 {
                ObjError::Transient {
                    key: key_s,
                    message: format!("HTTP {status}: {}", first_line(&body)),
                }
            } else {
                ObjError::Fatal {
                    key: key_s,
                    message: format!("HTTP {status}: {}", first_line(&body)),
                }
            }
        }
        S3Error::Reqwest(e) => ObjError::Transient {
            key: key_s,
            message: format!("request failed: {e}"),
        },
        S3Error::Io(e) => ObjError::Transient {
            key: key_s,
            message: format!("i/o: {e}"),
        },
        S3Error::Credentials(e) => ObjError::Fatal {
            key: key_s,
            message: format!("credentials: {e}"),
        },
        other => ObjError::Fatal {
            key: key_s,
            message: other.to_string(),
        },
    }
}

fn first_line(body: &str) -> String {
    // S3 errors are XML; the Code and Message elements are what matter.
    let pick = |tag: &str| {
        let open = format!("<{tag}>");
        let close = format!("</{tag}>");
        body.find(&open).and_then(|i| {
            body[i + open.len()..]
                .find(&close)
                .map(|j| body[i + open.len()..i + open.len() + j].to_string())
        })
    };
    match (pick("Code"), pick("Message")) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c,
        _ => body
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect(),
    }
}

fn etag_of(headers: &std::collections::HashMap<String, String>) -> String {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("etag"))
        .map(|(_, v)| v.trim_matches('"').to_string())
        .unwrap_or_default()
}

impl ObjectStore for S3Store {
    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Object, ObjError>> {
        Box::pin(async move {
            let resp = self
                .bucket
                .get_object(key)
                .await
                .map_err(|e| map_err(key, e))?;
            Ok(Object {
                etag: etag_of(&resp.headers()),
                data: resp.bytes().clone(),
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
            let mut headers = self.write_headers.clone();
            match &condition {
                Condition::None => {}
                Condition::IfAbsent => {
                    headers.insert(http::header::IF_NONE_MATCH, HeaderValue::from_static("*"));
                }
                Condition::IfMatch(etag) => {
                    let v = HeaderValue::from_str(&format!("\"{etag}\"")).map_err(|e| {
                        ObjError::Fatal {
                            key: key.to_string(),
                            message: format!("invalid etag {etag:?}: {e}"),
                        }
                    })?;
                    headers.insert(http::header::IF_MATCH, v);
                }
            }
            let resp = self
                .bucket
                .put_object_with_headers(key, &data, Some(headers))
                .await
                .map_err(|e| match (map_err(key, e), &condition) {
                    // S3 answers If-Match on a missing object with 404: for
                    // us that is the condition failing.
                    (ObjError::NotFound(k), Condition::IfMatch(_)) => {
                        ObjError::PreconditionFailed(k)
                    }
                    (other, _) => other,
                })?;
            Ok(etag_of(&resp.headers()))
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), ObjError>> {
        Box::pin(async move {
            match self.bucket.delete_object(key).await {
                Ok(_) => Ok(()),
                Err(e) => match map_err(key, e) {
                    ObjError::NotFound(_) => Ok(()),
                    other => Err(other),
                },
            }
        })
    }

    fn delete_batch<'a>(&'a self, keys: &'a [String]) -> BoxFut<'a, Result<Vec<String>, ObjError>> {
        Box::pin(async move {
            let mut failed = Vec::new();
            for chunk in keys.chunks(1000) {
                let ids: Vec<s3::serde_types::ObjectIdentifier> = chunk
                    .iter()
                    .map(|k| s3::serde_types::ObjectIdentifier {
                        key: k.clone(),
                        version_id: None,
                    })
                    .collect();
                match self.bucket.delete_objects(ids).await {
                    Ok(result) => failed.extend(result.errors.into_iter().map(|e| e.key)),
                    Err(e) => return Err(map_err(chunk.first().map_or("", |k| k.as_str()), e)),
                }
            }
            Ok(failed)
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Result<Vec<Listed>, ObjError>> {
        Box::pin(async move {
            let pages = self
                .bucket
                .list(prefix.to_string(), None)
                .await
                .map_err(|e| map_err(prefix, e))?;
            let mut out: Vec<Listed> = pages
                .into_iter()
                .flat_map(|p| p.contents)
                .map(|o| Listed {
                    key: o.key,
                    size: o.size,
                })
                .collect();
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
    }

    fn bulk_delete_limit(&self) -> usize {
        1000
    }

    fn get_to_file<'a>(
        &'a self,
        key: &'a str,
        path: &'a Path,
    ) -> BoxFut<'a, Result<u64, ObjError>> {
        Box::pin(async move {
            let mut file = tokio::fs::File::create(path)
                .await
                .map_err(|e| ObjError::Fatal {
                    key: key.to_string(),
                    message: format!("creating {}: {e}", path.display()),
                })?;
            self.bucket
                .get_object_to_writer(key, &mut file)
                .await
                .map_err(|e| map_err(key, e))?;
            let local = |e: std::io::Error| ObjError::Fatal {
                key: key.to_string(),
                message: format!("writing {}: {e}", path.display()),
            };
            // tokio's File writes in the background: finish before measuring.
            file.flush().await.map_err(local)?;
            file.sync_all().await.map_err(local)?;
            Ok(file.metadata().await.map_err(local)?.len())
        })
    }

    fn put_file<'a>(
        &'a self,
        key: &'a str,
        path: &'a Path,
    ) -> BoxFut<'a, Result<String, ObjError>> {
        Box::pin(async move {
            let io_err = |e: std::io::Error| ObjError::Fatal {
                key: key.to_string(),
                message: format!("reading {}: {e}", path.display()),
            };
            let size = tokio::fs::metadata(path).await.map_err(io_err)?.len();
            if size <= SINGLE_PUT_LIMIT {
                let data = tokio::fs::read(path).await.map_err(io_err)?;
                return self.put(key, Bytes::from(data), Condition::None).await;
            }
            log::warn!("uploading {key} ({size} bytes) in parts: storage class and encryption headers are not sent");
            let mut file = tokio::fs::File::open(path).await.map_err(io_err)?;
            self.bucket
                .put_object_stream(&mut file, key)
                .await
                .map_err(|e| map_err(key, e))?;
            Ok(String::new())
        })
    }

    fn describe(&self) -> String {
        format!("s3://{}", self.bucket.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16, body: &str) -> ObjError {
        map_err("chunks/k", S3Error::HttpFailWithBody(status, body.into()))
    }

    #[test]
    fn http_failures_are_classified_for_retries() {
        assert_eq!(http(404, ""), ObjError::NotFound("chunks/k".into()));
        assert_eq!(
            http(412, "<Error><Code>PreconditionFailed</Code></Error>"),
            ObjError::PreconditionFailed("chunks/k".into())
        );
        for status in [500, 503, 429, 409] {
            assert!(http(status, "").is_transient(), "HTTP {status}");
        }
        let denied = http(
            403,
            "<Error><Code>AccessDenied</Code><Message>no</Message></Error>",
        );
        assert_eq!(
            denied,
            ObjError::Fatal {
                key: "chunks/k".into(),
                message: "HTTP 403: AccessDenied: no".into()
            }
        );
    }
}
