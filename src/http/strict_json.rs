//! Strict JSON for request bodies: valid UTF-8, no object with the same key twice, and no
//! nesting deeper than a configured depth. `serde_json::Value` on its own keeps the last of two
//! duplicate keys (so two readers of the same body can disagree on its meaning) and only stops
//! nesting at 128 levels; this parser builds the same `Value` while checking both.
//!
//! Errors name where in the document they happened (a JSON pointer whose keys are shown only
//! when they are plain names) and never quote the input.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::error::{field_details, Code, ErrorCode};

/// The deepest nesting any configuration may allow: serde_json stops at 128 on its own.
pub const DEPTH_CEILING: usize = 100;

/// Why a body is not acceptable JSON.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StrictError {
    #[error("the request body is not valid UTF-8")]
    Utf8,
    #[error("the request body is not valid JSON (line {line}, column {column})")]
    Syntax { line: usize, column: usize },
    #[error("the request body nests deeper than {max} levels at {path}")]
    TooDeep { max: usize, path: String },
    #[error("the request body repeats an object key at {path}")]
    DuplicateKey { path: String },
}

impl StrictError {
    /// The JSON pointer of the offending place, when there is one.
    #[must_use]
    pub fn path(&self) -> Option<&str> {
        match self {
            Self::TooDeep { path, .. } | Self::DuplicateKey { path } => Some(path),
            _ => None,
        }
    }
}

/// A refused body is `invalid_payload`, naming the place when there is one.
impl ErrorCode for StrictError {
    fn code(&self) -> Code {
        Code::InvalidPayload
    }

    fn message(&self) -> Cow<'static, str> {
        self.to_string().into()
    }

    fn details(&self) -> Option<Value> {
        self.path().map(field_details)
    }
}

/// What went wrong deep inside, and the path segments collected on the way out (innermost
/// first).
enum Failure {
    TooDeep,
    DuplicateKey,
}

struct Ctx {
    max_depth: usize,
    failure: RefCell<Option<(Failure, Vec<String>)>>,
}

impl Ctx {
    fn fail<E: de::Error>(&self, failure: Failure, segment: String) -> E {
        *self.failure.borrow_mut() = Some((failure, vec![segment]));
        E::custom("strict json")
    }

    /// Adds the segment of a level an error passed through on its way out.
    fn through(&self, segment: impl FnOnce() -> String) {
        if let Some((_, path)) = self.failure.borrow_mut().as_mut() {
            path.push(segment());
        }
    }
}

/// A pointer segment: the key itself when plain, a placeholder otherwise.
fn key_segment(key: &str) -> String {
    let plain = (1..=64).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if plain {
        key.to_string()
    } else {
        "<key>".to_string()
    }
}

struct Seed<'a> {
    ctx: &'a Ctx,
    /// Containers around the value about to be read.
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
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
        let depth = self.depth + 1;
        if depth > self.ctx.max_depth {
            return Err(self.ctx.fail(Failure::TooDeep, String::new()));
        }
        let mut items = Vec::new();
        loop {
            let index = items.len();
            match seq.next_element_seed(Seed {
                ctx: self.ctx,
                depth,
            }) {
                Ok(Some(v)) => items.push(v),
                Ok(None) => break,
                Err(e) => {
                    self.ctx.through(|| index.to_string());
                    return Err(e);
                }
            }
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let depth = self.depth + 1;
        if depth > self.ctx.max_depth {
            return Err(self.ctx.fail(Failure::TooDeep, String::new()));
        }
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(self.ctx.fail(Failure::DuplicateKey, key_segment(&key)));
            }
            match map.next_value_seed(Seed {
                ctx: self.ctx,
                depth,
            }) {
                Ok(v) => {
                    out.insert(key, v);
                }
                Err(e) => {
                    self.ctx.through(|| key_segment(&key));
                    return Err(e);
                }
            }
        }
        Ok(Value::Object(out))
    }
}

/// Parses a body strictly. `max_depth` counts containers: `{}` is depth 1, `{"a": []}` depth 2.
pub fn parse(bytes: &[u8], max_depth: usize) -> Result<Value, StrictError> {
    let text = std::str::from_utf8(bytes).map_err(|_| StrictError::Utf8)?;
    let ctx = Ctx {
        max_depth: max_depth.min(DEPTH_CEILING),
        failure: RefCell::new(None),
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let result = Seed {
        ctx: &ctx,
        depth: 0,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v));
    match result {
        Ok(v) => Ok(v),
        Err(e) => match ctx.failure.into_inner() {
            Some((failure, mut segments)) => {
                segments.retain(|s| !s.is_empty());
                segments.reverse();
                let path = if segments.is_empty() {
                    "/".to_string()
                } else {
                    segments.iter().fold(String::new(), |mut p, s| {
                        p.push('/');
                        p.push_str(s);
                        p
                    })
                };
                Err(match failure {
                    Failure::TooDeep => StrictError::TooDeep {
                        max: max_depth.min(DEPTH_CEILING),
                        path,
                    },
                    Failure::DuplicateKey => StrictError::DuplicateKey { path },
                })
            }
            None => Err(StrictError::Syntax {
                line: e.line(),
                column: e.column(),
            }),
        },
    }
}

/// The depth of a parsed value, counted as [`parse`] counts it.
#[must_use]
pub fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn parses_like_serde_json() {
        let text = r#"{"a": [1, -2, 3.5, "x", null, true, {"b": {}}], "c": "é"}"#;
        let strict = parse(text.as_bytes(), 32).unwrap();
        let loose: Value = serde_json::from_str(text).unwrap();
        assert_eq!(strict, loose);
    }

    #[test]
    fn depth_at_the_limit_passes_and_one_over_fails() {
        assert_eq!(depth(&parse(nested(32).as_bytes(), 32).unwrap()), 32);
        let err = parse(nested(33).as_bytes(), 32).unwrap_err();
        assert!(
            matches!(err, StrictError::TooDeep { max: 32, .. }),
            "{err:?}"
        );
        let err = parse(br#"{"a": {"b": [[1]]}}"#, 3).unwrap_err();
        assert_eq!(err.path(), Some("/a/b/0"));
        // Deeper than serde_json's own limit still gives our error, not a syntax error.
        let err = parse(nested(500).as_bytes(), 32).unwrap_err();
        assert!(matches!(err, StrictError::TooDeep { .. }));
    }

    #[test]
    fn duplicate_keys_are_refused_with_their_path() {
        let err = parse(br#"{"a": 1, "a": 2}"#, 32).unwrap_err();
        assert_eq!(err, StrictError::DuplicateKey { path: "/a".into() });
        let err = parse(br#"{"x": [{"k": 1}, {"k": 1, "k": 2}]}"#, 32).unwrap_err();
        assert_eq!(err.path(), Some("/x/1/k"));
        // Same key in sibling objects is fine.
        parse(br#"[{"k": 1}, {"k": 2}]"#, 32).unwrap();
        // Keys that differ only after escapes are the same key.
        assert!(parse(br#"{"a": 1, "\u0061": 2}"#, 32).is_err());
    }

    #[test]
    fn errors_never_quote_the_input() {
        let err = parse(br#"{"<script>": 1, "<script>": 2}"#, 32).unwrap_err();
        assert!(!err.to_string().contains("script"), "{err}");
        let err = parse(br#"{"secret-value" 1}"#, 32).unwrap_err();
        assert!(matches!(err, StrictError::Syntax { line: 1, .. }));
        assert!(!err.to_string().contains("secret"));
    }

    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e12f64..1e12).prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,8}", inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Whatever serde_json writes (never a duplicate key), the strict parser reads as
        /// serde_json does, and refuses exactly when the nesting is over the limit.
        #[test]
        fn round_trips_what_serde_json_writes(v in any_json(), max in 1usize..8) {
            let text = serde_json::to_vec(&v).unwrap();
            match parse(&text, max) {
                Ok(parsed) => {
                    proptest::prop_assert!(depth(&v) <= max);
                    let loose: Value = serde_json::from_slice(&text).unwrap();
                    proptest::prop_assert_eq!(parsed, loose);
                }
                Err(StrictError::TooDeep { .. }) => proptest::prop_assert!(depth(&v) > max),
                Err(e) => proptest::prop_assert!(false, "unexpected {:?}", e),
            }
        }
    }

    #[test]
    fn invalid_utf8_and_trailing_garbage() {
        assert_eq!(parse(b"{\"a\": \"\xff\"}", 32), Err(StrictError::Utf8));
        assert!(matches!(
            parse(b"{} {}", 32),
            Err(StrictError::Syntax { .. })
        ));
    }
}
