//! The pure part of the OJS conformance runner: JSONPath lookup, `{{steps...}}` templates and
//! the matcher language of the conformance test cases. No I/O here, so it is unit-tested on
//! hand-written JSON without a server (tests/conformance_engine.rs).
//!
//! Where the reference document and the reference runner differ, the engine takes the stricter
//! reading, so that a server passing here passes either way:
//! - `"absent"`, `{"$exists": false}` and `body_absent` need the field to be missing; a JSON
//!   `null` counts as present.
//! - `"exists"`, `"any"` and `{"$exists": true}` need a present, non-null value.
//! - Several operators in one matcher object must all hold.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use regex::Regex;
use serde_json::{Map, Value};

/// Default tolerance of `~N` and `timing_ms.approximate`, in percent of the expected value.
pub const TOLERANCE_PCT: f64 = 50.0;
/// Smallest tolerance of `~N` and `timing_ms.approximate`.
pub const MIN_TOLERANCE: f64 = 100.0;

// ---------------------------------------------------------------------------------------------
// JSONPath
// ---------------------------------------------------------------------------------------------

/// Splits a path (without the leading `$`) on every `.` outside brackets.
pub fn split_path(path: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    for ch in path.chars() {
        match (quote, ch) {
            (Some(q), c) if c == q => {
                quote = None;
                current.push(c);
            }
            (Some(_), c) => current.push(c),
            (None, '\'' | '"') if depth > 0 => {
                quote = Some(ch);
                current.push(ch);
            }
            (None, '[') => {
                depth += 1;
                current.push(ch);
            }
            (None, ']') => {
                depth -= 1;
                current.push(ch);
            }
            (None, '.') if depth == 0 => {
                parts.push(std::mem::take(&mut current));
            }
            (None, c) => current.push(c),
        }
    }
    parts.push(current);
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

/// One bracket selector after a field name.
#[derive(Debug, Clone, PartialEq)]
enum Selector {
    Index(usize),
    Wildcard,
    /// `[?(@.key==value)]`: the first element whose `key` renders (Go `%v`) as `value`.
    Filter(String, String),
}

/// Parses `name[0][*][?(@.k=='v')]` into the name and its selectors.
fn parse_segment(segment: &str) -> Result<(String, Vec<Selector>), String> {
    let (name, mut rest) = match segment.find('[') {
        Some(i) => (&segment[..i], &segment[i..]),
        None => (segment, ""),
    };
    let mut selectors = Vec::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("[?(@.") {
            let end = after
                .find(")]")
                .ok_or_else(|| format!("unclosed filter in path segment {segment:?}"))?;
            let expr = &after[..end];
            let (key, value) = expr
                .split_once("==")
                .ok_or_else(|| format!("only == filters are supported, got {expr:?}"))?;
            let value = value.trim().trim_matches(|c| c == '\'' || c == '"');
            selectors.push(Selector::Filter(key.trim().to_string(), value.to_string()));
            rest = &after[end + 2..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after
                .find(']')
                .ok_or_else(|| format!("unclosed bracket in path segment {segment:?}"))?;
            let inner = after[..end].trim();
            if inner == "*" {
                selectors.push(Selector::Wildcard);
            } else {
                let index = inner
                    .parse::<usize>()
                    .map_err(|_| format!("bad array index {inner:?} in {segment:?}"))?;
                selectors.push(Selector::Index(index));
            }
            rest = &after[end + 1..];
        } else {
            return Err(format!("unexpected {rest:?} in path segment {segment:?}"));
        }
    }
    Ok((name.to_string(), selectors))
}

/// Go's `%v` rendering of a JSON value, as the reference runner compares `contains:` elements
/// and filter values.
pub fn go_format(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => format_number(n),
        Value::Bool(b) => b.to_string(),
        Value::Null => "<nil>".to_string(),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(go_format).collect();
            format!("[{}]", inner.join(" "))
        }
        Value::Object(map) => {
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k}:{}", go_format(v)))
                .collect();
            format!("map[{}]", inner.join(" "))
        }
    }
}

/// Whole numbers without decimals, others in plain decimal notation.
pub fn format_number(n: &serde_json::Number) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    let f = n.as_f64().unwrap_or(f64::NAN);
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        format!("{}", f as i64)
    } else {
        format!("{f}")
    }
}

/// Resolves a JSONPath (`$`, `$.a.b`, `$.a[0]`, `$.a[*].b`, `$.a[?(@.k=='v')].b`) against
/// `root`. `None` means the path does not resolve (missing field, index out of range, no filter
/// match, or stepping into a scalar). `Err` is a malformed path.
pub fn resolve(path: &str, root: &Value) -> Result<Option<Value>, String> {
    let path = path.trim();
    let rest = if path == "$" {
        ""
    } else if let Some(r) = path.strip_prefix("$.") {
        r
    } else if let Some(r) = path.strip_prefix('$') {
        // `$[0]` style
        r
    } else {
        path
    };
    let segments = split_path(rest);
    let mut parsed = Vec::with_capacity(segments.len());
    for segment in &segments {
        parsed.push(parse_segment(segment)?);
    }
    Ok(walk(&parsed, root))
}

fn walk(segments: &[(String, Vec<Selector>)], current: &Value) -> Option<Value> {
    let Some(((name, selectors), rest)) = segments.split_first() else {
        return Some(current.clone());
    };
    let mut value = if name.is_empty() {
        current
    } else {
        current.as_object()?.get(name)?
    };
    for (i, selector) in selectors.iter().enumerate() {
        match selector {
            Selector::Index(index) => value = value.as_array()?.get(*index)?,
            Selector::Filter(key, expected) => {
                let key_path: Vec<(String, Vec<Selector>)> = split_path(key)
                    .iter()
                    .map(|s| (s.clone(), Vec::new()))
                    .collect();
                value = value.as_array()?.iter().find(|item| {
                    item.is_object()
                        && walk(&key_path, item).is_some_and(|v| go_format(&v) == *expected)
                })?;
            }
            Selector::Wildcard => {
                let items = value.as_array()?;
                let mut tail: Vec<(String, Vec<Selector>)> = Vec::new();
                if i + 1 < selectors.len() {
                    tail.push((String::new(), selectors[i + 1..].to_vec()));
                }
                tail.extend(rest.iter().cloned());
                let collected: Vec<Value> = items
                    .iter()
                    .filter_map(|item| walk(&tail, item))
                    .filter(|v| !v.is_null())
                    .collect();
                return Some(Value::Array(collected));
            }
        }
    }
    walk(rest, value)
}

// ---------------------------------------------------------------------------------------------
// Templates
// ---------------------------------------------------------------------------------------------

/// What earlier steps of a test answered, for templates and cross-step assertions.
#[derive(Debug, Default, Clone)]
pub struct StepRecords {
    pub steps: BTreeMap<String, RecordedResponse>,
}

#[derive(Debug, Clone)]
pub struct RecordedResponse {
    pub status: u16,
    /// Lower-case header names; repeated headers joined with `, `.
    pub headers: BTreeMap<String, String>,
    pub raw: String,
    /// The parsed body, when it was JSON.
    pub body: Option<Value>,
}

impl StepRecords {
    pub fn insert(&mut self, id: &str, response: RecordedResponse) {
        self.steps.insert(id.to_string(), response);
    }

    /// `{"steps": {"<id>": {"response": {"status": .., "headers": {..}, "body": ..}}}}`, the
    /// document the left side of an `equality` assertion points into.
    pub fn as_document(&self) -> Value {
        let mut steps = Map::new();
        for (id, r) in &self.steps {
            let headers: Map<String, Value> = r
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            let mut response = Map::new();
            response.insert("status".into(), Value::from(r.status));
            response.insert("headers".into(), Value::Object(headers));
            if let Some(body) = &r.body {
                response.insert("body".into(), body.clone());
            }
            let mut record = Map::new();
            record.insert("response".into(), Value::Object(response));
            steps.insert(id.clone(), Value::Object(record));
        }
        let mut root = Map::new();
        root.insert("steps".into(), Value::Object(steps));
        Value::Object(root)
    }

    /// The value a single template refers to, if it resolves to a non-null value.
    fn lookup(&self, step_id: &str, field_path: Option<&str>) -> Option<Value> {
        let body = self.steps.get(step_id)?.body.as_ref()?;
        let value = match field_path {
            None => Some(body.clone()),
            Some(p) => resolve(p, body).ok().flatten(),
        }?;
        (!value.is_null()).then_some(value)
    }
}

fn template_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"\{\{\s*steps\.([^.}\s]+)\.response\.body(?:\.([^}\s]+))?\s*\}\}").unwrap()
    })
}

/// Renders a resolved template value inside a string.
fn render(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => format_number(n),
        other => other.to_string(),
    }
}

/// Replaces every `{{steps.<id>.response.body[.<path>]}}` in `input`. Unresolvable templates
/// stay as they are.
pub fn resolve_str(input: &str, records: &StepRecords) -> String {
    template_regex()
        .replace_all(input, |caps: &regex::Captures<'_>| {
            let step = caps.get(1).map_or("", |m| m.as_str());
            let path = caps.get(2).map(|m| m.as_str());
            match records.lookup(step, path) {
                Some(v) => render(&v),
                None => caps[0].to_string(),
            }
        })
        .into_owned()
}

/// Resolves templates inside a JSON value: in every string and object key. A string that is
/// exactly one template becomes the referenced JSON value itself (object, array, number...).
pub fn resolve_value(value: &Value, records: &StepRecords) -> Value {
    match value {
        Value::String(s) => {
            let trimmed = s.trim();
            if let Some(caps) = template_regex().captures(trimmed) {
                if caps
                    .get(0)
                    .is_some_and(|m| m.as_str().len() == trimmed.len())
                {
                    let step = caps.get(1).map_or("", |m| m.as_str());
                    let path = caps.get(2).map(|m| m.as_str());
                    if let Some(v) = records.lookup(step, path) {
                        return v;
                    }
                    return value.clone();
                }
            }
            Value::String(resolve_str(s, records))
        }
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| resolve_value(v, records)).collect())
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (resolve_str(k, records), resolve_value(v, records)))
                .collect(),
        ),
        other => other.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// Matchers
// ---------------------------------------------------------------------------------------------

fn re_uuid() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$").unwrap()
    })
}

fn re_uuidv7() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
            .unwrap()
    })
}

fn re_datetime() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$").unwrap()
    })
}

fn re_range() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"^number:range\(\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\)$").unwrap()
    })
}

fn re_approx() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^~\s*(-?\d+(?:\.\d+)?)$").unwrap())
}

/// Short JSON text of an actual value for messages.
pub fn show(actual: Option<&Value>) -> String {
    match actual {
        None => "<missing>".to_string(),
        Some(v) => truncate(&v.to_string(), 300),
    }
}

pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let cut: String = s.chars().take(max).collect();
        format!("{cut}...")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn want_string<'a>(actual: Option<&'a Value>, what: &str) -> Result<&'a str, String> {
    match actual {
        Some(Value::String(s)) => Ok(s),
        other => Err(format!("expected {what}, got {}", show(other))),
    }
}

fn want_number(actual: Option<&Value>, what: &str) -> Result<f64, String> {
    match actual {
        Some(Value::Number(n)) => n.as_f64().ok_or_else(|| format!("bad number {n}")),
        other => Err(format!("expected {what}, got {}", show(other))),
    }
}

fn want_array<'a>(actual: Option<&'a Value>, what: &str) -> Result<&'a Vec<Value>, String> {
    match actual {
        Some(Value::Array(a)) => Ok(a),
        other => Err(format!("expected {what}, got {}", show(other))),
    }
}

fn parse_count(text: &str, matcher: &str) -> Result<usize, String> {
    text.trim()
        .parse::<usize>()
        .map_err(|_| format!("malformed matcher {matcher:?}"))
}

/// `|actual - expected| <= max(expected * pct / 100, floor)`.
pub fn approx_ok(expected: f64, actual: f64) -> bool {
    let tolerance = (expected.abs() * TOLERANCE_PCT / 100.0).max(MIN_TOLERANCE);
    (actual - expected).abs() <= tolerance
}

fn compile(pattern: &str) -> Result<Regex, String> {
    Regex::new(pattern).map_err(|e| format!("invalid regex {pattern:?} in test: {e}"))
}

/// Checks `actual` (`None` = the path did not resolve) against a matcher of the test DSL.
pub fn match_value(matcher: &Value, actual: Option<&Value>) -> Result<(), String> {
    match matcher {
        Value::Null => match actual {
            Some(Value::Null) => Ok(()),
            other => Err(format!("expected null, got {}", show(other))),
        },
        Value::Bool(b) => match actual {
            Some(Value::Bool(a)) if a == b => Ok(()),
            other => Err(format!("expected {b}, got {}", show(other))),
        },
        Value::Number(n) => {
            let expected = n.as_f64().unwrap_or(f64::NAN);
            let got = want_number(actual, &format!("number {n}"))?;
            if numbers_equal(n, actual, expected, got) {
                Ok(())
            } else {
                Err(format!("expected {n}, got {}", show(actual)))
            }
        }
        Value::String(s) => match_string(s, actual),
        Value::Array(items) => {
            let arr = want_array(actual, &format!("array of {} elements", items.len()))?;
            if arr.len() != items.len() {
                return Err(format!(
                    "expected array of length {}, got length {}: {}",
                    items.len(),
                    arr.len(),
                    show(actual)
                ));
            }
            for (i, (m, a)) in items.iter().zip(arr.iter()).enumerate() {
                match_value(m, Some(a)).map_err(|e| format!("[{i}]: {e}"))?;
            }
            Ok(())
        }
        Value::Object(map) => match_object(map, actual),
    }
}

fn numbers_equal(n: &serde_json::Number, actual: Option<&Value>, expected: f64, got: f64) -> bool {
    if let (Some(e), Some(Value::Number(a))) = (n.as_i64(), actual) {
        if let Some(a) = a.as_i64() {
            return a == e;
        }
    }
    (expected - got).abs() <= 1e-9
}

fn match_string(m: &str, actual: Option<&Value>) -> Result<(), String> {
    match m {
        "any" | "exists" => {
            return match actual {
                Some(v) if !v.is_null() => Ok(()),
                other => Err(format!(
                    "expected a present non-null value, got {}",
                    show(other)
                )),
            }
        }
        "absent" => {
            return match actual {
                None => Ok(()),
                other => Err(format!("expected absent, got {}", show(other))),
            }
        }
        "string:nonempty" | "string:non_empty" => {
            let s = want_string(actual, "non-empty string")?;
            return if s.is_empty() {
                Err("expected non-empty string, got \"\"".to_string())
            } else {
                Ok(())
            };
        }
        "string:uuid" | "string:uuidv7" | "string:datetime" => {
            let (re, what) = match m {
                "string:uuid" => (re_uuid(), "UUID"),
                "string:uuidv7" => (re_uuidv7(), "UUIDv7"),
                _ => (re_datetime(), "RFC 3339 datetime"),
            };
            let s = want_string(actual, what)?;
            return if re.is_match(s) {
                Ok(())
            } else {
                Err(format!("expected {what}, got {s:?}"))
            };
        }
        "number:positive" => {
            let n = want_number(actual, "positive number")?;
            return if n > 0.0 {
                Ok(())
            } else {
                Err(format!("expected positive number, got {n}"))
            };
        }
        "number:non_negative" => {
            let n = want_number(actual, "non-negative number")?;
            return if n >= 0.0 {
                Ok(())
            } else {
                Err(format!("expected non-negative number, got {n}"))
            };
        }
        "array:nonempty" | "array:non_empty" => {
            let a = want_array(actual, "non-empty array")?;
            return if a.is_empty() {
                Err("expected non-empty array, got []".to_string())
            } else {
                Ok(())
            };
        }
        "array:empty" => {
            let a = want_array(actual, "empty array")?;
            return if a.is_empty() {
                Ok(())
            } else {
                Err(format!("expected empty array, got {}", show(actual)))
            };
        }
        _ => {}
    }

    let length_exact = m.strip_prefix("array:length:").or_else(|| {
        m.strip_prefix("array:length(")
            .and_then(|r| r.strip_suffix(')'))
    });
    if let Some(n) = length_exact {
        let n = parse_count(n, m)?;
        let a = want_array(actual, &format!("array of length {n}"))?;
        return if a.len() == n {
            Ok(())
        } else {
            Err(format!(
                "expected array of length {n}, got length {}: {}",
                a.len(),
                show(actual)
            ))
        };
    }
    let length_min = m
        .strip_prefix("array:min_length:")
        .or_else(|| m.strip_prefix("array:min:"));
    if let Some(n) = length_min {
        let n = parse_count(n, m)?;
        let a = want_array(actual, &format!("array of at least {n} elements"))?;
        return if a.len() >= n {
            Ok(())
        } else {
            Err(format!(
                "expected array of at least {n} elements, got length {}",
                a.len()
            ))
        };
    }
    if let Some(target) = m.strip_prefix("not_contains:") {
        let a = want_array(actual, "array")?;
        return if a.iter().any(|v| go_format(v) == target) {
            Err(format!(
                "expected array not to contain {target:?}, got {}",
                show(actual)
            ))
        } else {
            Ok(())
        };
    }
    if let Some(sub) = m.strip_prefix("string:contains:") {
        let s = want_string(actual, &format!("string containing {sub:?}"))?;
        return if s.contains(sub) {
            Ok(())
        } else {
            Err(format!("expected string containing {sub:?}, got {s:?}"))
        };
    }
    if let Some(target) = m.strip_prefix("contains:") {
        let a = want_array(actual, &format!("array containing {target:?}"))?;
        return if a.iter().any(|v| go_format(v) == target) {
            Ok(())
        } else {
            Err(format!(
                "expected array containing {target:?}, got {}",
                show(actual)
            ))
        };
    }
    if let Some(caps) = re_range().captures(m) {
        let lo: f64 = caps[1].parse().map_err(|_| format!("malformed {m:?}"))?;
        let hi: f64 = caps[2].parse().map_err(|_| format!("malformed {m:?}"))?;
        let n = want_number(actual, &format!("number in [{lo}, {hi}]"))?;
        return if n >= lo && n <= hi {
            Ok(())
        } else {
            Err(format!("expected number in [{lo}, {hi}], got {n}"))
        };
    }
    if m.starts_with("number:range") {
        return Err(format!("malformed matcher {m:?}"));
    }
    if let Some(list) = m.strip_prefix("one_of:") {
        let got = match actual {
            Some(v) => go_format(v),
            None => return Err(format!("expected one of {list}, got <missing>")),
        };
        return if list.split(',').any(|x| x.trim() == got) {
            Ok(())
        } else {
            Err(format!("expected one of {list}, got {}", show(actual)))
        };
    }
    if let Some(caps) = re_approx().captures(m) {
        let expected: f64 = caps[1].parse().map_err(|_| format!("malformed {m:?}"))?;
        let n = want_number(actual, &format!("number ~{expected}"))?;
        return if approx_ok(expected, n) {
            Ok(())
        } else {
            Err(format!(
                "expected ~{expected} (±{}%, at least ±{MIN_TOLERANCE}), got {n}",
                TOLERANCE_PCT
            ))
        };
    }
    if let Some(pattern) = m
        .strip_prefix("string:pattern(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let re = compile(pattern)?;
        let s = want_string(actual, &format!("string matching {pattern:?}"))?;
        return if re.is_match(s) {
            Ok(())
        } else {
            Err(format!("expected string matching {pattern:?}, got {s:?}"))
        };
    }
    // A literal string.
    match actual {
        Some(Value::String(s)) if s == m => Ok(()),
        other => Err(format!("expected {m:?}, got {}", show(other))),
    }
}

const OPERATORS: &[&str] = &[
    "$exists", "$type", "$match", "$in", "$size", "$or", "$empty", "range", "$gte", "$gt", "$lte",
    "$lt", "$eq", "$ne", "$nin", "$not",
];

fn match_object(map: &Map<String, Value>, actual: Option<&Value>) -> Result<(), String> {
    let is_operator_object = map
        .keys()
        .any(|k| k.starts_with('$') || (k == "range" && map.len() == 1));
    if !is_operator_object {
        // Nested object: each key is matched against the field of the same name.
        let obj = match actual {
            Some(Value::Object(o)) => o,
            other => return Err(format!("expected object, got {}", show(other))),
        };
        for (key, m) in map {
            match_value(m, obj.get(key)).map_err(|e| format!("field {key:?}: {e}"))?;
        }
        return Ok(());
    }
    if let Some(unknown) = map.keys().find(|k| !OPERATORS.contains(&k.as_str())) {
        return Err(format!("unsupported matcher operator {unknown:?} in test"));
    }
    for (op, arg) in map {
        match op.as_str() {
            "$exists" => {
                let want = arg
                    .as_bool()
                    .ok_or_else(|| format!("$exists needs a boolean, got {arg}"))?;
                match (want, actual) {
                    (true, Some(v)) if !v.is_null() => {}
                    (false, None) => {}
                    (true, other) => {
                        return Err(format!(
                            "expected a present non-null value, got {}",
                            show(other)
                        ))
                    }
                    (false, other) => return Err(format!("expected absent, got {}", show(other))),
                }
            }
            "$type" => {
                let want = arg
                    .as_str()
                    .ok_or_else(|| format!("$type needs a string, got {arg}"))?;
                if !["string", "number", "boolean", "null", "array", "object"].contains(&want) {
                    return Err(format!("unknown $type {want:?} in test"));
                }
                match actual {
                    Some(v) if type_name(v) == want => {}
                    Some(v) => {
                        return Err(format!(
                            "expected type {want}, got {} {}",
                            type_name(v),
                            show(actual)
                        ))
                    }
                    None => return Err(format!("expected type {want}, got <missing>")),
                }
            }
            "$match" => {
                let pattern = arg
                    .as_str()
                    .ok_or_else(|| format!("$match needs a string, got {arg}"))?;
                let re = compile(pattern)?;
                let s = want_string(actual, &format!("string matching {pattern:?}"))?;
                if !re.is_match(s) {
                    return Err(format!("expected string matching {pattern:?}, got {s:?}"));
                }
            }
            "$in" | "$or" => {
                let alternatives = arg
                    .as_array()
                    .ok_or_else(|| format!("{op} needs an array, got {arg}"))?;
                if !alternatives
                    .iter()
                    .any(|alt| match_value(alt, actual).is_ok())
                {
                    return Err(format!(
                        "{} matches no alternative of {op} {arg}",
                        show(actual)
                    ));
                }
            }
            "$nin" => {
                let alternatives = arg
                    .as_array()
                    .ok_or_else(|| format!("{op} needs an array, got {arg}"))?;
                if alternatives
                    .iter()
                    .any(|alt| match_value(alt, actual).is_ok())
                {
                    return Err(format!(
                        "{} matches an alternative of $nin {arg}",
                        show(actual)
                    ));
                }
            }
            "$not" => {
                if match_value(arg, actual).is_ok() {
                    return Err(format!("{} matches $not {arg}", show(actual)));
                }
            }
            "$size" => {
                let arr = want_array(actual, "array for $size")?;
                match arg {
                    Value::Number(n) => {
                        let n = n
                            .as_u64()
                            .ok_or_else(|| format!("$size needs a count, got {arg}"))?;
                        if arr.len() as u64 != n {
                            return Err(format!(
                                "expected array of size {n}, got {}: {}",
                                arr.len(),
                                show(actual)
                            ));
                        }
                    }
                    Value::Object(_) => {
                        let len = Value::from(arr.len());
                        match_value(arg, Some(&len))
                            .map_err(|e| format!("array size {}: {e}", arr.len()))?;
                    }
                    _ => return Err(format!("unsupported $size argument {arg}")),
                }
            }
            "$gte" | "$gt" | "$lte" | "$lt" => {
                let bound = arg
                    .as_f64()
                    .ok_or_else(|| format!("{op} needs a number, got {arg}"))?;
                let n = want_number(actual, &format!("number {op} {bound}"))?;
                let ok = match op.as_str() {
                    "$gte" => n >= bound,
                    "$gt" => n > bound,
                    "$lte" => n <= bound,
                    _ => n < bound,
                };
                if !ok {
                    return Err(format!("expected number {op} {bound}, got {n}"));
                }
            }
            "$eq" => match_value(arg, actual)?,
            "$ne" => {
                if match_value(arg, actual).is_ok() {
                    return Err(format!(
                        "expected a value other than {arg}, got {}",
                        show(actual)
                    ));
                }
            }
            "$empty" => {
                let want = arg
                    .as_bool()
                    .ok_or_else(|| format!("$empty needs a boolean, got {arg}"))?;
                if is_empty_value(actual) != want {
                    return Err(format!("expected $empty {want}, got {}", show(actual)));
                }
            }
            "range" => {
                let bounds = arg
                    .as_object()
                    .ok_or_else(|| format!("range needs an object, got {arg}"))?;
                let n = want_number(actual, "number for range")?;
                if let Some(min) = bounds.get("min").and_then(Value::as_f64) {
                    if n < min {
                        return Err(format!("expected number >= {min}, got {n}"));
                    }
                }
                if let Some(max) = bounds.get("max").and_then(Value::as_f64) {
                    if n > max {
                        return Err(format!("expected number <= {max}, got {n}"));
                    }
                }
            }
            _ => return Err(format!("unsupported matcher operator {op:?} in test")),
        }
    }
    Ok(())
}

/// Missing, `null`, `""`, `[]` or `{}`.
fn is_empty_value(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Body assertion maps
// ---------------------------------------------------------------------------------------------

/// One failed assertion.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    /// JSONPath, `status`, `header:<name>`, `timing_ms`, `body_contains`, ...
    pub at: String,
    pub expected: String,
    pub actual: String,
    pub message: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} (expected {}, actual {})",
            self.at, self.message, self.expected, self.actual
        )
    }
}

fn mismatch(at: &str, expected: &Value, actual: Option<&Value>, message: String) -> Mismatch {
    Mismatch {
        at: at.to_string(),
        expected: truncate(&expected.to_string(), 300),
        actual: show(actual),
        message,
    }
}

/// Checks a `body` assertion map (JSONPath → matcher, plus the top-level `$or` of alternative
/// maps and `$empty`) against a parsed body (`None` when the body was not JSON or empty).
pub fn check_body(map: &Map<String, Value>, body: Option<&Value>) -> Result<(), Mismatch> {
    let null = Value::Null;
    for (path, matcher) in map {
        if path == "$or" {
            let alternatives = matcher.as_array().ok_or_else(|| {
                mismatch(path, matcher, None, "top-level $or needs an array".into())
            })?;
            let mut reasons = Vec::new();
            for alt in alternatives {
                let Some(alt_map) = alt.as_object() else {
                    return Err(mismatch(
                        path,
                        matcher,
                        None,
                        "top-level $or alternatives must be objects".into(),
                    ));
                };
                match check_body(alt_map, body) {
                    Ok(()) => {
                        reasons.clear();
                        break;
                    }
                    Err(e) => reasons.push(e.to_string()),
                }
            }
            if !reasons.is_empty() {
                return Err(mismatch(
                    path,
                    matcher,
                    body,
                    format!("no $or alternative matched: {}", reasons.join(" | ")),
                ));
            }
            continue;
        }
        if path == "$empty" {
            let want = matcher.as_bool().unwrap_or(true);
            if is_empty_value(body) != want {
                return Err(mismatch(
                    path,
                    matcher,
                    body,
                    format!("expected $empty {want}"),
                ));
            }
            continue;
        }
        if !(path == "$" || path.starts_with("$.") || path.starts_with("$[")) {
            return Err(mismatch(
                path,
                matcher,
                None,
                format!("unsupported body assertion key {path:?} in test"),
            ));
        }
        let actual = match resolve(path, body.unwrap_or(&null)) {
            Ok(v) => v,
            Err(e) => return Err(mismatch(path, matcher, None, format!("bad JSONPath: {e}"))),
        };
        let actual = if body.is_none() && path == "$" {
            None
        } else {
            actual
        };
        if let Err(e) = match_value(matcher, actual.as_ref()) {
            return Err(mismatch(path, matcher, actual.as_ref(), e));
        }
    }
    Ok(())
}
