//! JSON parsing that refuses duplicate object keys.
//!
//! `serde_json::Value` keeps the last of two equal keys, while other JWT libraries keep the
//! first or refuse. A token that means one thing to an issuer or proxy and another to us is a
//! known attack shape (RFC 8725 §3.11 on ambiguous JSON), so header, payload and JWKS files are
//! read with a visitor that fails on the second occurrence, at any depth.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// A JSON value read with duplicate keys refused.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                // The key itself stays out of the message: it may come from a token.
                return Err(de::Error::custom("duplicate object key"));
            }
            let Strict(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// Parses a JSON object, refusing duplicate keys anywhere inside it. `None` for anything else
/// (invalid JSON, trailing data, a non-object, a duplicate key).
pub(crate) fn parse_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Strict>(bytes) {
        Ok(Strict(Value::Object(object))) => Some(object),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_parse_like_serde_json() {
        let text =
            br#"{"a": 1, "b": [true, null, -2, 1.5, "x", {"c": {}}], "d": 18446744073709551615}"#;
        let strict = parse_object(text).unwrap();
        let plain: Value = serde_json::from_slice(text).unwrap();
        assert_eq!(Value::Object(strict), plain);
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(parse_object(br#"{"a": 1, "a": 2}"#).is_none());
        assert!(parse_object(br#"{"a": 1, "b": {"c": 1, "c": 1}}"#).is_none());
        assert!(parse_object(br#"{"a": [{"c": 1, "c": 2}]}"#).is_none());
        // An escaped spelling of the same key is the same key.
        assert!(parse_object(br#"{"a": 1, "\u0061": 2}"#).is_none());
        assert!(parse_object(br#"{"a": 1, "A": 2}"#).is_some());
    }

    #[test]
    fn non_objects_and_trailing_data_are_refused() {
        for bad in [
            &b"[]"[..],
            b"\"x\"",
            b"1",
            b"null",
            b"{} {}",
            b"{",
            b"",
            b"{\"a\":1}x",
        ] {
            assert!(
                parse_object(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
