//! The HTTP edge: actix-web serving the OJS HTTP binding. Handlers authenticate through
//! [`auth::Authenticated`], read bodies through [`body::OjsJson`], call one actor handle, and
//! return [`error::ApiError`] on failure; [`middleware`] adds the standard headers.

pub mod access;
pub mod actions;
pub mod audit;
pub mod auth;
pub mod body;
pub mod error;
pub mod middleware;
pub mod routes;
pub mod strict_json;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};

use crate::audit::AuditHandle;
use crate::auth::AuthHandle;
use crate::config::Config;
use crate::queue::QueueHandle;
use error::ApiError;
use routes::{admin, dead_letter, jobs, keys, queues, sessions, system, vault, workers};

/// What every worker of the HTTP server shares.
#[derive(Clone)]
pub struct Shared {
    /// Payload limits, validation rules and quotas; swapped by a config reload.
    pub rules: crate::rules::RulesHandle,
    pub config: Arc<Config>,
    pub queue: QueueHandle,
    pub auth: AuthHandle,
    pub audit: AuditHandle,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The database and the audit log, for the audit query route.
    pub store: crate::store::Store,
    pub audit_log: std::path::PathBuf,
    pub started: Instant,
    /// Admin user accounts and their sessions.
    pub accounts: crate::auth::accounts::Accounts,
    /// Which job types are actions, and their policy-token check.
    pub actions: Arc<crate::auth::actions::ActionGuard>,
    /// Rate limits, connection limits and abuse detection.
    pub limiter: crate::limiter::LimiterHandle,
    /// The key vault (status and re-wrap routes, unreadable-job counts).
    pub vault: crate::vault::VaultHandle,
    /// The secret watcher, where further reloadable secrets are registered.
    pub watcher: crate::vault::watch::SecretWatcher,
}

/// Registers every route on an actix `ServiceConfig`.
pub fn configure(shared: &Shared) -> impl Fn(&mut web::ServiceConfig) + Clone {
    let shared = shared.clone();
    move |cfg: &mut web::ServiceConfig| {
        let config = shared.config.clone();
        cfg.app_data(web::Data::new(shared.queue.clone()))
            .app_data(web::Data::new(shared.auth.clone()))
            .app_data(web::Data::new(shared.audit.clone()))
            .app_data(web::Data::new(shared.accounts.clone()))
            .app_data(web::Data::new(shared.limiter.clone()))
            .app_data(web::Data::new(shared.accounts.sessions()))
            .app_data(web::Data::new(shared.metrics.clone()))
            .app_data(web::Data::new(shared.vault.clone()))
            .app_data(web::Data::new(routes::admin::AuditSource {
                store: shared.store.clone(),
                log_file: shared.audit_log.clone(),
            }))
            .app_data(web::Data::from(config.clone()))
            .app_data(web::Data::from(shared.actions.clone()))
            .app_data(web::Data::new(shared.rules.clone()))
            .app_data(web::Data::new(system::StartedAt(shared.started)))
            .app_data(web::QueryConfig::default().error_handler(|_, _| {
                ApiError::invalid("query", "the query string is malformed").into()
            }))
            .app_data(
                web::PathConfig::default().error_handler(|_, _| {
                    ApiError::invalid("path", "the path is malformed").into()
                }),
            );
        let resource = |path: &str| {
            web::resource(path.to_string()).default_service(web::to(routes::method_not_allowed))
        };
        cfg.service(resource("/ojs/manifest").route(web::get().to(system::manifest)))
            .service(resource("/metrics").route(web::get().to(system::metrics)))
            .service(resource("/ojs/v1/health").route(web::get().to(system::health)))
            .service(resource("/ojs/v1/queues").route(web::get().to(system::list_queues)))
            .service(resource("/ojs/v1/queues/{name}/stats").route(web::get().to(queues::stats)))
            .service(resource("/ojs/v1/events").route(web::get().to(system::list_events)))
            .service(resource("/ojs/v1/jobs").route(web::post().to(jobs::enqueue)))
            // Before `{id}`, which would otherwise match `batch`.
            .service(resource("/ojs/v1/jobs/batch").route(web::post().to(jobs::enqueue_batch)))
            .service(
                resource("/ojs/v1/jobs/{id}")
                    .route(web::get().to(jobs::info))
                    .route(web::delete().to(jobs::cancel)),
            )
            .service(resource("/ojs/v1/jobs/{id}/activate").route(web::post().to(jobs::activate)))
            .service(resource("/ojs/v1/workers/fetch").route(web::post().to(workers::fetch)))
            .service(resource("/ojs/v1/workers/ack").route(web::post().to(workers::ack)))
            .service(resource("/ojs/v1/workers/nack").route(web::post().to(workers::nack)))
            .service(
                resource("/ojs/v1/workers/heartbeat").route(web::post().to(workers::heartbeat)),
            )
            .service(resource("/ojs/v1/dead-letter").route(web::get().to(dead_letter::list)))
            .service(
                resource("/ojs/v1/dead-letter/{id}").route(web::delete().to(dead_letter::delete)),
            )
            .service(
                resource("/ojs/v1/dead-letter/{id}/retry")
                    .route(web::post().to(dead_letter::retry)),
            );
        cfg.service(resource("/ojs/v1/admin/audit").route(web::get().to(admin::audit)))
            .service(
                resource("/ojs/v1/admin/queues/{name}/config")
                    .route(web::get().to(queues::config))
                    .route(web::put().to(queues::set_config)),
            )
            .service(
                resource("/ojs/v1/admin/keys")
                    .route(web::get().to(keys::list))
                    .route(web::post().to(keys::create)),
            )
            // Before `{id}`, which would otherwise match `revoke`.
            .service(resource("/ojs/v1/admin/keys/revoke").route(web::post().to(keys::revoke_many)))
            .service(resource("/ojs/v1/admin/keys/{id}").route(web::delete().to(keys::revoke)))
            .service(
                resource("/ojs/v1/admin/keys/{id}/rotate").route(web::post().to(keys::rotate)),
            );
        cfg.service(resource("/ojs/v1/auth/login").route(web::post().to(sessions::login)))
            .service(resource("/ojs/v1/auth/refresh").route(web::post().to(sessions::refresh)))
            .service(resource("/ojs/v1/auth/logout").route(web::post().to(sessions::logout)))
            .service(
                resource("/ojs/v1/admin/users")
                    .route(web::get().to(sessions::list_users))
                    .route(web::post().to(sessions::create_user)),
            )
            .service(
                resource("/ojs/v1/admin/users/{name}/password")
                    .route(web::post().to(sessions::change_password)),
            );
        cfg.service(resource("/ojs/v1/admin/vault").route(web::get().to(vault::status)))
            .service(resource("/ojs/v1/admin/vault/rewrap").route(web::post().to(vault::rewrap)));
        if config.testing.allow_reset {
            cfg.service(resource("/ojs/v1/admin/reset").route(web::post().to(admin::reset)));
        }
    }
}

/// Builds the server on an already bound listener. The caller runs it and stops it.
pub fn server(shared: Shared, listener: TcpListener) -> std::io::Result<Server> {
    let config = shared.config.clone();
    let routes = configure(&shared);
    let limiter = shared.limiter.clone();
    let mut server = HttpServer::new(move || {
        App::new()
            .configure(routes.clone())
            .default_service(web::to(routes::not_found))
            .wrap(actix_web::middleware::from_fn(
                crate::limiter::middleware::limits,
            ))
            .wrap(actix_web::middleware::from_fn(middleware::standard_headers))
    })
    // Registered before the listener is added, or it would not apply to it.
    .on_connect(move |io, data| crate::limiter::connections::on_connect(&limiter, io, data))
    .client_request_timeout(Duration::from_secs(config.server.request_head_timeout_secs))
    .client_disconnect_timeout(Duration::from_secs(1))
    .keep_alive(Duration::from_secs(config.server.keep_alive_secs))
    .shutdown_timeout(config.server.shutdown_timeout_secs)
    .disable_signals();
    if config.server.workers > 0 {
        server = server.workers(config.server.workers);
    }
    Ok(server.listen(listener)?.run())
}
