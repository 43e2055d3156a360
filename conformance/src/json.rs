//! Small helpers to read scenario JSON strictly (unknown fields are errors,
//! so a typo cannot silently change a scenario).

use bytes::Bytes;
use serde_json::{Map, Value};

pub type Obj = Map<String, Value>;

pub fn obj<'a>(v: &'a Value, what: &str) -> Result<&'a Obj, String> {
    v.as_object()
        .ok_or_else(|| format!("{what} must be an object, got {v}"))
}

/// Fails on fields other than `allowed`.
pub fn only(o: &Obj, allowed: &[&str], what: &str) -> Result<(), String> {
    for k in o.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(format!(
                "unknown field {k:?} in {what} (allowed: {allowed:?})"
            ));
        }
    }
    Ok(())
}

pub fn int(o: &Obj, key: &str) -> Result<i64, String> {
    match o.get(key) {
        None => Ok(0),
        Some(v) => v
            .as_i64()
            .ok_or_else(|| format!("{key} must be an integer, got {v}")),
    }
}

pub fn flag(o: &Obj, key: &str) -> Result<bool, String> {
    match o.get(key) {
        None => Ok(false),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| format!("{key} must be true or false, got {v}")),
    }
}

pub fn string(o: &Obj, key: &str) -> Result<Option<String>, String> {
    match o.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(format!("{key} must be a string, got {v}")),
    }
}

/// Bytes written as a UTF-8 string, `{"hex": "00ff"}` or
/// `{"repeat": "x", "times": N}`.
pub fn bytes(v: &Value) -> Result<Bytes, String> {
    match v {
        Value::String(s) => Ok(Bytes::copy_from_slice(s.as_bytes())),
        Value::Object(o) if o.contains_key("hex") => {
            let h = o["hex"].as_str().ok_or("hex must be a string")?;
            if h.len() % 2 != 0 {
                return Err(format!("odd-length hex {h:?}"));
            }
            (0..h.len())
                .step_by(2)
                .map(|i| {
                    u8::from_str_radix(&h[i..i + 2], 16).map_err(|e| format!("bad hex {h:?}: {e}"))
                })
                .collect::<Result<Vec<u8>, _>>()
                .map(Bytes::from)
        }
        Value::Object(o) if o.contains_key("repeat") => {
            let unit = o["repeat"].as_str().ok_or("repeat must be a string")?;
            let times = o
                .get("times")
                .and_then(Value::as_u64)
                .ok_or("times must be a count")?;
            Ok(Bytes::from(unit.repeat(times as usize)))
        }
        other => Err(format!(
            "expected bytes (string, hex or repeat), got {other}"
        )),
    }
}

pub fn bytes_field(o: &Obj, key: &str) -> Result<Bytes, String> {
    match o.get(key) {
        None => Ok(Bytes::new()),
        Some(v) => bytes(v),
    }
}

/// Bytes as they appear in normalised output: readable text when possible,
/// hex otherwise, and a length plus a hash for large values.
pub fn show(b: &[u8]) -> Value {
    if b.len() > 256 {
        return serde_json::json!({"len": b.len(), "fnv1a64": format!("{:016x}", fnv(b))});
    }
    match std::str::from_utf8(b) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => Value::String(s.to_string()),
        _ => serde_json::json!({"hex": b.iter().map(|x| format!("{x:02x}")).collect::<String>()}),
    }
}

fn fnv(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= *x as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub fn fnv_str(s: &str) -> String {
    format!("{:016x}", fnv(s.as_bytes()))
}
