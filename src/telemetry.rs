//! Operational logging: `tracing` to stderr, JSON by default, through a redaction pass.
//!
//! Handlers log from an allow-list of fields, and the redaction pass is the safety net behind
//! it, for our code and every dependency at every level:
//! - fields named like credentials (`password`, `secret`, `token`, `authorization`, `cookie`,
//!   `key`, `*_key`) are masked, unless the value is already a truncated key id (`bwk_…a1b2`);
//! - payload fields (`args`, `meta`, `result`, `body`, `payload`, `details`) become
//!   `<redacted, N bytes>`;
//! - in every string, API keys are cut to their truncated id, bearer tokens and URL query
//!   strings are removed.
//!
//! Job metadata marked `data_classification` is never logged at all: payloads are masked
//! whatever their classification.

use std::io::Write;

use serde_json::Value;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. `RUST_LOG` overrides the configured level.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactingStderr);
    let _ = match config.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}

/// Field names whose values are credentials.
fn is_secret_field(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "secret",
        "token",
        "authorization",
        "cookie",
        "credential",
        "api_key",
        "apikey",
        "private",
    ]
    .iter()
    .any(|w| n.contains(w))
        || n == "key"
        || n.ends_with("_key")
}

/// Field names whose values are job data.
fn is_payload_field(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "args" | "meta" | "result" | "body" | "payload" | "details" | "data"
    )
}

fn is_truncated_key_id(value: &str) -> bool {
    value.starts_with("bwk_…") && value.chars().count() <= 9
}

fn redacted(len: usize) -> Value {
    Value::String(format!("<redacted, {len} bytes>"))
}

/// Cuts API keys to their truncated id, drops bearer tokens and URL query strings.
#[must_use]
pub fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("bwk_") {
        out.push_str(&rest[..pos]);
        let candidate = &rest[pos..];
        let end = candidate
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(candidate.len());
        let token = &candidate[..end];
        let mut parts = token.splitn(4, '_');
        let (_, _, id) = (parts.next(), parts.next(), parts.next());
        match id {
            Some(id) if id.len() >= 4 => {
                out.push_str("bwk_…");
                out.push_str(&id[id.len() - 4..]);
            }
            _ => out.push_str("bwk_…"),
        }
        rest = &candidate[end..];
    }
    out.push_str(rest);
    let mut text = out;
    for scheme in ["Bearer ", "bearer ", "Basic ", "basic "] {
        let mut from = 0;
        while let Some(found) = text[from..].find(scheme) {
            let start = from + found + scheme.len();
            let end = text[start..]
                .find(|c: char| c.is_whitespace() || c == '"' || c == ',')
                .map_or(text.len(), |e| start + e);
            text.replace_range(start..end, "<redacted>");
            from = start + "<redacted>".len();
        }
    }
    // Query strings of logged URLs (`/path?token=...`).
    let mut from = 0;
    while let Some(found) = text[from..].find('?') {
        let q = from + found;
        let token_start = text[..q]
            .rfind(|c: char| c.is_whitespace() || c == '"' || c == '\'')
            .map_or(0, |i| i + 1);
        let end = text[q..]
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
            .map_or(text.len(), |e| q + e);
        if text[token_start..q].contains('/') && end > q + 1 {
            text.replace_range(q..end, "?<redacted>");
            from = q + "?<redacted>".len();
        } else {
            from = q + 1;
        }
    }
    text
}

/// Redacts one JSON value in place, by field name and content.
pub fn redact_value(name: Option<&str>, value: &mut Value) {
    if let Some(name) = name {
        if is_secret_field(name) {
            let keep = value.as_str().is_some_and(is_truncated_key_id);
            if !keep && !value.is_null() {
                *value = Value::String("<redacted>".into());
            }
            return;
        }
        if is_payload_field(name) && !value.is_null() {
            let len = value
                .as_str()
                .map_or_else(|| value.to_string().len(), str::len);
            *value = redacted(len);
            return;
        }
    }
    match value {
        Value::String(s) => {
            let clean = scrub(s);
            if clean != *s {
                *s = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_value(None, v)),
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                redact_value(Some(k), v);
            }
        }
        _ => {}
    }
}

/// Redacts one log line: JSON lines field by field, anything else as text.
#[must_use]
pub fn redact_line(line: &str) -> String {
    match serde_json::from_str::<Value>(line) {
        Ok(mut value @ Value::Object(_)) => {
            redact_value(None, &mut value);
            value.to_string()
        }
        _ => scrub(line),
    }
}

/// Stderr behind the redaction pass.
struct RedactingStderr;

/// One event's output, redacted line by line when the formatter is done with it.
struct RedactingWriter {
    buf: Vec<u8>,
}

impl Write for RedactingWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&self.buf);
        let mut out = String::with_capacity(text.len());
        for line in text.split_inclusive('\n') {
            let (body, newline) = line.strip_suffix('\n').map_or((line, ""), |b| (b, "\n"));
            out.push_str(&redact_line(body));
            out.push_str(newline);
        }
        self.buf.clear();
        std::io::stderr().lock().write_all(out.as_bytes())
    }
}

impl Drop for RedactingWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingWriter;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter { buf: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn credentials_payloads_and_urls_are_redacted() {
        let key = "bwk_live_0123456789abcdef_SECRETSECRETSECRETSECRETSECRETSECRET-_abcd";
        let line = json!({
            "message": format!("got {key} in Authorization: Bearer abc.def.ghi"),
            "password": "hunter2",
            "token": "t0k3n",
            "key": "bwk_…cdef",
            "signing_key": "k3y",
            "args": ["CANARY"],
            "meta": {"a": "CANARY"},
            "url": "/ojs/v1/jobs?token=CANARY",
            "nested": {"client_secret": "CANARY", "ok": 1},
        })
        .to_string();
        let out = redact_line(&line);
        for leaked in ["SECRET", "hunter2", "t0k3n", "k3y", "CANARY", "abc.def.ghi"] {
            assert!(!out.contains(leaked), "{leaked} leaked: {out}");
        }
        assert!(out.contains("bwk_…cdef"), "{out}");
        assert!(out.contains("<redacted, 10 bytes>"), "{out}");
        assert!(out.contains("\"ok\":1"));
        assert_eq!(scrub("plain text? yes"), "plain text? yes");
        assert_eq!(
            scrub("GET /ojs/v1/events?after=SECRET HTTP/1.1"),
            "GET /ojs/v1/events?<redacted> HTTP/1.1"
        );
        assert_eq!(
            scrub("a Bearer x, b Bearer y"),
            "a Bearer <redacted>, b Bearer <redacted>"
        );
        assert_eq!(
            redact_line("not json bwk_live_0123456789abcdef_x"),
            "not json bwk_…cdef"
        );
    }
}
