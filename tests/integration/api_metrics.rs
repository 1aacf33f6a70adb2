//! `GET /metrics` serves Prometheus text to an authorized caller, with the security counters
//! moving as real requests happen.

use crate::common;

use common::{ServerOptions, TestServer};
use reqwest::StatusCode;
use serde_json::json;

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_authentication_audit_and_jobs() {
    let server = TestServer::start(ServerOptions {
        process: true,
        ..ServerOptions::default()
    });
    let client = server.client();
    let auth = server.auth();
    for _ in 0..3 {
        let res = client
            .get(server.url("/ojs/v1/queues"))
            .header(
                "Authorization",
                "Bearer bwk_live_00000000000000ab_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    let res = client.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    for n in 0..2 {
        let res = client
            .post(server.url("/ojs/v1/jobs"))
            .header("Authorization", &auth)
            .json(&json!({"type": "m.x", "args": [n]}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    let res = client
        .get(server.url("/metrics"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = res.text().await.unwrap();
    assert_eq!(
        value(
            &text,
            "bulwark_auth_attempts_total{outcome=\"failure\",reason=\"invalid\"}"
        ),
        3.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "bulwark_auth_attempts_total{outcome=\"failure\",reason=\"missing\"}"
        ),
        1.0,
        "{text}"
    );
    assert!(
        value(
            &text,
            "bulwark_auth_attempts_total{outcome=\"success\",reason=\"\"}"
        ) >= 3.0,
        "{text}"
    );
    assert_eq!(
        value(&text, "bulwark_jobs{state=\"available\"}"),
        2.0,
        "{text}"
    );
    assert!(value(&text, "bulwark_audit_records_total") >= 1.0, "{text}");
    assert!(
        value(&text, "bulwark_credential_uses_total{kind=\"api_key\"}") >= 2.0,
        "{text}"
    );
    assert!(
        value(
            &text,
            "bulwark_api_key_verifications_total{result=\"refused\"}"
        ) >= 1.0,
        "{text}"
    );
    assert!(!text.contains(common::key_secret(&server.admin_key)));
}
