//! The auth extractor: a handler that takes [`Authenticated`] only runs for a caller whose
//! bearer token the auth store accepted.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use secrecy::SecretString;
use tracing::info;

use super::error::ApiError;
use crate::audit::Outcome;
use crate::auth::session::{self, SessionVerifier};
use crate::auth::{key, AuthHandle, Principal};

/// The longest bearer token looked at; anything longer is refused unread.
const MAX_TOKEN_LEN: usize = 512;

/// An authenticated caller.
pub struct Authenticated(pub Arc<Principal>);

fn bearer(req: &HttpRequest) -> Option<SecretString> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= MAX_TOKEN_LEN)
        .then(|| SecretString::from(token.to_string()))
}

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let auth = req.app_data::<web::Data<AuthHandle>>().cloned();
        let sessions = req.app_data::<web::Data<SessionVerifier>>().cloned();
        let token = bearer(req);
        let req = req.clone();
        Box::pin(async move {
            let auth = auth.ok_or_else(ApiError::unavailable)?;
            let peer = req
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            let Some(token) = token else {
                info!(source_ip = %peer, "request without credentials refused");
                metrics::counter!(crate::metrics::AUTH_ATTEMPTS, "outcome" => "failure", "reason" => "missing").increment(1);
                let event = super::audit::event(&req, "auth.failure", Outcome::Failure, None)
                    .detail("reason", "missing credentials");
                super::audit::emit(&req, event).await;
                return Err(ApiError::unauthenticated());
            };
            // The public key id, if the token has the shape of a key, for the record.
            let key_id = key::parse(secrecy::ExposeSecret::expose_secret(&token))
                .map(|k| key::display_id(k.id));
            // Admin user sessions are checked by their own verifier: one HMAC, no argon2.
            let is_session =
                secrecy::ExposeSecret::expose_secret(&token).starts_with(session::ACCESS_PREFIX);
            let result = match (is_session, sessions) {
                (true, Some(sessions)) => sessions.authenticate(&token),
                (true, None) => Err(crate::auth::AuthError::Unavailable),
                (false, _) => auth.authenticate(token).await,
            };
            match result {
                Ok(principal) => {
                    metrics::counter!(crate::metrics::AUTH_ATTEMPTS, "outcome" => "success", "reason" => "").increment(1);
                    Ok(Authenticated(principal))
                }
                Err(e) => {
                    info!(source_ip = %peer, reason = %e, "authentication failed");
                    metrics::counter!(crate::metrics::AUTH_ATTEMPTS, "outcome" => "failure", "reason" => e.metric_reason()).increment(1);
                    let mut event =
                        super::audit::event(&req, "auth.failure", Outcome::Failure, None)
                            .detail("reason", e.to_string());
                    if let Some(id) = key_id {
                        event = event.detail("key", id);
                    }
                    super::audit::emit(&req, event).await;
                    Err(e.into())
                }
            }
        })
    }
}
