//! The HTTP edge: actix-web serving the OJS HTTP binding. Handlers authenticate through
//! [`auth::Authenticated`], read bodies through [`body::OjsJson`], call one actor handle, and
//! return [`error::ApiError`] on failure; [`middleware`] adds the standard headers.

pub mod access;
pub mod audit;
pub mod auth;
pub mod body;
pub mod edge;
pub mod error;
pub mod guard;
pub mod limits;
pub mod middleware;
pub mod routes;
pub mod strict_json;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::Server;
use actix_web::{web, App, ResponseError as _};

use crate::audit::AuditHandle;
use crate::auth::AuthHandle;
use crate::config::Config;
use crate::queue::QueueHandle;
use error::ApiError;
use routes::system;

/// What every worker of the HTTP server shares.
#[derive(Clone)]
pub struct Shared {
    /// The services every handler calls.
    pub services: crate::services::Services,
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
    pub watcher: crate::secrets::watch::SecretWatcher,
    /// TLS, when `[tls]` is on.
    pub tls: Option<Arc<crate::tls::TlsRuntime>>,
    /// The server's clock (app data for handlers that judge times).
    pub clock: crate::clock::Clock,
}

/// What the auth extractor needs to know about client certificates (app data).
#[derive(Clone, Debug, Default)]
pub struct CertificatePolicy {
    /// Roles usable only over a connection with a client certificate mapped to the same
    /// principal.
    pub required_for_roles: Arc<Vec<String>>,
}

/// Registers every route on an actix `ServiceConfig`.
pub fn configure(shared: &Shared) -> impl Fn(&mut web::ServiceConfig) + Clone {
    let shared = shared.clone();
    move |cfg: &mut web::ServiceConfig| {
        let config = shared.config.clone();
        cfg.app_data(web::Data::new(shared.services.clone()))
            .app_data(web::Data::new(shared.queue.clone()))
            .app_data(web::Data::new(shared.auth.clone()))
            .app_data(web::Data::new(shared.audit.clone()))
            .app_data(web::Data::new(shared.accounts.clone()))
            .app_data(web::Data::new(shared.limiter.clone()))
            .app_data(web::Data::new(shared.accounts.sessions()))
            .app_data(web::Data::new(shared.metrics.clone()))
            .app_data(web::Data::new(shared.vault.clone()))
            .app_data(web::Data::from(config.clone()))
            .app_data(web::Data::new(shared.rules.clone()))
            .app_data(web::Data::new(system::StartedAt(shared.started)))
            .app_data(web::Data::new(shared.tls.clone()))
            .app_data(web::Data::new(CertificatePolicy {
                required_for_roles: shared
                    .tls
                    .as_ref()
                    .map(|t| t.require_certificate_for_roles.clone())
                    .unwrap_or_default(),
            }))
            .app_data(web::QueryConfig::default().error_handler(|_, _| {
                ApiError::invalid("query", "the query string is malformed").into()
            }))
            .app_data(
                web::PathConfig::default().error_handler(|_, _| {
                    ApiError::invalid("path", "the path is malformed").into()
                }),
            );
        access::register(cfg, config.testing.allow_reset);
    }
}

/// Builds the server on an already bound listener: HTTPS when `shared.tls` is set, plain HTTP
/// otherwise. The caller runs it and stops it.
pub fn server(shared: Shared, listener: TcpListener) -> std::io::Result<Server> {
    match shared.tls.clone() {
        Some(tls) => tls_server(shared, listener, &tls),
        None => plain_server(shared, listener),
    }
}

/// The app: the routes, the not-found fallback and the middleware, outermost last (standard
/// headers, then limits, then the edge checks).
fn app(
    routes: impl Fn(&mut web::ServiceConfig) + Clone + 'static,
) -> App<
    impl actix_service::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .configure(routes)
        .default_service(web::to(routes::not_found))
        .wrap(actix_web::middleware::from_fn(edge::edge))
        .wrap(actix_web::middleware::from_fn(crate::http::limits::limits))
        .wrap(actix_web::middleware::from_fn(middleware::standard_headers))
}

/// The `Expect: 100-continue` service: a declared body over the route's limit is refused 413
/// before `100 Continue` is sent (actix-http sends the refusal itself, so it is given the
/// envelope and the standard headers here).
fn expect_service(
    rules: crate::rules::RulesHandle,
    secure: bool,
) -> impl actix_service::ServiceFactory<
    actix_http::Request,
    Config = (),
    Response = actix_http::Request,
    Error = actix_http::Response<actix_web::body::BoxBody>,
    InitError = (),
> + Clone {
    actix_service::fn_service(move |req: actix_http::Request| {
        use actix_http::HttpMessage as _;
        let declared = req
            .headers()
            .get(actix_web::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let verdict = body::may_continue(&rules.current(), req.path(), declared);
        std::future::ready(match verdict {
            Ok(()) => Ok(req),
            Err(e) => {
                let mut res: actix_http::Response<actix_web::body::BoxBody> =
                    e.error_response().into();
                middleware::apply(
                    res.headers_mut(),
                    &middleware::request_id(req.headers()),
                    secure,
                );
                Err(res)
            }
        })
    })
}

/// actix-http's own head timer answers a bare 408; the guard's fires first and answers with
/// the envelope, so actix-http's is set a little later as a backstop.
fn backstop(head_timeout: Duration) -> Duration {
    head_timeout + Duration::from_secs(2)
}

/// The plain-HTTP server (loopback, or with the named insecure switch). Like the HTTPS one, it
/// is assembled from actix-server and actix-http so that every connection passes through the
/// HTTP/1 guard and the `Expect` check.
fn plain_server(shared: Shared, listener: TcpListener) -> std::io::Result<Server> {
    use actix_http::{HttpService, Protocol};
    use actix_service::{fn_service, map_config, ServiceFactoryExt as _};
    use actix_web::rt::net::TcpStream;

    use guard::Guarded;

    let config = shared.config.clone();
    let addr = listener.local_addr()?;
    let routes = configure(&shared);
    let limiter = shared.limiter.clone();
    let rules = shared.rules.clone();
    let limits = config.edge_limits();
    let keep_alive = Duration::from_secs(config.server.keep_alive_secs);
    let head_timeout = Duration::from_secs(config.server.request_head_timeout_secs);
    let host = addr.to_string();

    let mut builder = actix_server::Server::build()
        .shutdown_timeout(config.server.shutdown_timeout_secs)
        .disable_signals();
    if config.server.workers > 0 {
        builder = builder.workers(config.server.workers);
    }
    builder = builder.listen("bulwark-http", listener, move || {
        let limiter = limiter.clone();
        let host = host.clone();
        let http = HttpService::build()
            .keep_alive(keep_alive)
            .client_request_timeout(backstop(head_timeout))
            .client_disconnect_timeout(Duration::from_secs(1))
            .expect(expect_service(rules.clone(), false))
            .on_connect_ext(move |io: &Guarded<TcpStream>, ext| {
                crate::limiter::connections::on_connect(&limiter, io.get_ref(), ext);
                ext.insert(io.conn());
            })
            .finish(map_config(
                actix_service::IntoServiceFactory::into_factory(app(routes.clone()))
                    .map_err(|err: actix_web::Error| err.error_response()),
                move |()| actix_web::dev::AppConfig::__priv_test_new(false, host.clone(), addr),
            ))
            .map_err(|_| ())
            .map_init_err(|_| ());
        fn_service(move |tcp: TcpStream| {
            let _ = tcp.set_nodelay(true);
            let peer = tcp.peer_addr().ok();
            let io = Guarded::http1(tcp, limits, head_timeout);
            std::future::ready(Ok::<_, ()>((io, Protocol::Http1, peer)))
        })
        .and_then(http)
    })?;
    Ok(builder.run())
}

/// The HTTPS server. It is assembled from actix-server and actix-http directly rather than
/// through `HttpServer::listen_rustls_0_23`, whose TLS acceptor drops handshake errors: here
/// every failed handshake reaches [`crate::tls::accept::HandshakeReporter`] with the peer
/// address. After the handshake, the connection passes through its guard (HTTP/1 or HTTP/2 by
/// ALPN), and the connection hook stores the verified client certificate and its principal in
/// the connection's data.
fn tls_server(
    shared: Shared,
    listener: TcpListener,
    tls: &Arc<crate::tls::TlsRuntime>,
) -> std::io::Result<Server> {
    use actix_http::{HttpService, Protocol};
    use actix_service::{apply_fn_factory, fn_service, map_config, ServiceFactoryExt as _};
    use actix_tls::accept::rustls_0_23::{Acceptor, TlsStream};
    use actix_tls::accept::TlsError;
    use actix_web::rt::net::TcpStream;

    use crate::tls::accept::{classify, HandshakeReporter};
    use guard::Guarded;

    let config = shared.config.clone();
    let addr = listener.local_addr()?;
    let mut rustls_config = tls
        .server_config()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    rustls_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let rustls_config = Arc::new(rustls_config);
    let handshake_timeout = tls.handshake_timeout();
    let identities = tls.identities.clone();
    let reporter = Arc::new(HandshakeReporter::new(shared.audit.clone()));
    let routes = configure(&shared);
    let keep_alive = Duration::from_secs(config.server.keep_alive_secs);
    let head_timeout = Duration::from_secs(config.server.request_head_timeout_secs);
    let host = addr.to_string();
    let limiter = shared.limiter.clone();
    let rules = shared.rules.clone();
    let limits = config.edge_limits();

    let mut builder = actix_server::Server::build()
        .shutdown_timeout(config.server.shutdown_timeout_secs)
        .disable_signals();
    if config.server.workers > 0 {
        builder = builder.workers(config.server.workers);
    }
    builder = builder.listen("bulwark-https", listener, move || {
        let identities = identities.clone();
        let limiter = limiter.clone();
        let host = host.clone();
        let http = HttpService::build()
            .keep_alive(keep_alive)
            .client_request_timeout(backstop(head_timeout))
            .expect(expect_service(rules.clone(), true))
            .on_connect_ext(move |io: &Guarded<TlsStream<TcpStream>>, ext| {
                // The connection limits count it (per address and in all), then the client
                // certificate and its principal are stored, and the guard's shared state.
                crate::limiter::connections::on_connect(&limiter, io.get_ref(), ext);
                crate::tls::accept::on_connect(io.get_ref().get_ref().1, &identities, ext);
                ext.insert(io.conn());
            })
            .finish(map_config(
                actix_service::IntoServiceFactory::into_factory(app(routes.clone()))
                    .map_err(|err: actix_web::Error| err.error_response()),
                // `AppConfig::new` is crate-private; this is its public (doc-hidden) twin, the
                // one actix-test uses. `secure = true` is what turns HSTS on in the middleware.
                move |()| actix_web::dev::AppConfig::__priv_test_new(true, host.clone(), addr),
            ))
            .map_err(|_| ())
            .map_init_err(|_| ());
        let mut acceptor = Acceptor::new((*rustls_config).clone());
        acceptor.set_handshake_timeout(handshake_timeout);
        let reporter = reporter.clone();
        apply_fn_factory::<_, Acceptor, _, _, TcpStream, TcpStream, _, _>(
            acceptor,
            move |tcp: TcpStream, service: &actix_tls::accept::rustls_0_23::AcceptorService| {
                let peer = tcp.peer_addr().ok();
                let handshake = actix_service::Service::call(service, tcp);
                let reporter = reporter.clone();
                async move {
                    match handshake.await {
                        Ok(stream) => Ok(stream),
                        Err(e) => {
                            let failure = match &e {
                                TlsError::Timeout => classify(true, None),
                                TlsError::Tls(io) => classify(false, Some(io)),
                                TlsError::Service(never) => match *never {},
                            };
                            reporter.report(peer, failure).await;
                            Err(e)
                        }
                    }
                }
            },
        )
        .map_err(|_| ())
        .map_init_err(|_| ())
        .and_then(fn_service(move |stream: TlsStream<TcpStream>| async move {
            let (tcp, conn) = stream.get_ref();
            let h2 = conn.alpn_protocol() == Some(b"h2");
            let _ = tcp.set_nodelay(true);
            let peer = tcp.peer_addr().ok();
            Ok::<_, ()>(if h2 {
                (
                    Guarded::http2(stream, limits, head_timeout),
                    Protocol::Http2,
                    peer,
                )
            } else {
                (
                    Guarded::http1(stream, limits, head_timeout),
                    Protocol::Http1,
                    peer,
                )
            })
        }))
        .and_then(http)
    })?;
    Ok(builder.run())
}
