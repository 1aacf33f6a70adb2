//! Panics are bugs, and a bug in one handler must not take a worker or the process with it:
//! the edge catches the panic, answers 500 with the OJS error envelope and the request id,
//! audits it (`http.panic`), and the same worker answers the next request normally. Built with
//! the server's own middleware, wrapped around each resource as `access::register` does, around
//! a handler that panics (no such route exists in the server).

use actix_web::{test, web, App, HttpResponse};
use bulwark::audit::{AuditConfig, AuditHandle};
use bulwark::clock::Clock;
use bulwark::http::middleware::{catch_panics, standard_headers};

async fn boom() -> HttpResponse {
    panic!("a handler bug");
}

async fn fine() -> HttpResponse {
    HttpResponse::Ok().body("fine")
}

#[actix_web::test]
async fn a_panicking_handler_is_answered_500_audited_and_the_worker_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let config = AuditConfig::at(dir.path().join("audit.log"));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7u8; 32]);
    let (audit, thread) = AuditHandle::spawn(&config, key, None, Clock::system()).unwrap();
    let app = test::init_service(
        App::new()
            .app_data(web::Data::new(audit.clone()))
            .service(
                web::resource("/boom")
                    .route(web::post().to(boom))
                    .wrap(actix_web::middleware::from_fn(catch_panics)),
            )
            .service(
                web::resource("/fine")
                    .route(web::get().to(fine))
                    .wrap(actix_web::middleware::from_fn(catch_panics)),
            )
            .wrap(actix_web::middleware::from_fn(standard_headers)),
    )
    .await;

    let res = test::call_service(
        &app,
        test::TestRequest::post()
            .uri("/boom")
            .insert_header(("x-request-id", "panic-test-1"))
            .to_request(),
    )
    .await;
    assert_eq!(res.status(), 500);
    assert_eq!(res.headers().get("x-request-id").unwrap(), "panic-test-1");
    let body: serde_json::Value = test::read_body_json(res).await;
    assert_eq!(body["error"]["code"], "internal_error");
    assert!(
        !body.to_string().contains("a handler bug"),
        "the panic text leaked: {body}"
    );

    // The same service, the next request: served.
    let res = test::call_service(&app, test::TestRequest::get().uri("/fine").to_request()).await;
    assert_eq!(res.status(), 200);
    assert_eq!(test::read_body(res).await, "fine");

    drop(app);
    drop(audit);
    thread.join().unwrap();
    let log = std::fs::read_to_string(&config.log_file).unwrap();
    let record: serde_json::Value = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["event_type"] == "http.panic")
        .expect("no http.panic record");
    assert_eq!(record["outcome"], "failure");
    assert_eq!(record["correlation_id"], "panic-test-1");
    assert_eq!(record["detail"]["route"], "/boom");
}
