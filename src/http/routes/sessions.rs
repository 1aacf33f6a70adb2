//! Admin user sessions: `/ojs/v1/auth/{login,refresh,logout}` (no credential needed: the body
//! carries it) and user management under `/ojs/v1/admin/users`. The session and user services
//! ([`crate::services::sessions`], [`crate::services::users`]) hold the rules and the records;
//! these handlers read the body and render the tokens.
//!
//! Every login, throttle, refresh, reuse, logout, user creation and password change is audited;
//! records name the user and a truncated session id, never a password, code or token. A login
//! failure gets the same 401 body whatever the cause; the cause goes to the audit record.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::SecretString;
use serde_json::{json, Map, Value};

use super::{created, ok};
use crate::auth::accounts::Issued;
use crate::http::auth::origin;
use crate::http::auth::Authenticated;
use crate::http::body::OjsJson;
use crate::http::error::ApiError;
use crate::services::sessions::LoginRefused;
use crate::services::users::Totp;
use crate::services::Services;

/// The body as an object with only `allowed` fields.
fn object(body: OjsJson, allowed: &[&str]) -> Result<Map<String, Value>, ApiError> {
    let Value::Object(map) = body.0 else {
        return Err(ApiError::invalid_payload(
            "the request body must be a JSON object",
        ));
    };
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            unknown,
            format!("unknown field; expected only: {}", allowed.join(", ")),
        ));
    }
    Ok(map)
}

/// A required string field. Its value is never quoted back.
fn string(map: &mut Map<String, Value>, field: &str) -> Result<String, ApiError> {
    match map.remove(field) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ApiError::invalid(
            field,
            format!("{field} must be a string"),
        )),
        None => Err(ApiError::invalid(field, format!("{field} is required"))),
    }
}

/// A required secret field (password, code, token).
fn secret(map: &mut Map<String, Value>, field: &str) -> Result<SecretString, ApiError> {
    string(map, field).map(SecretString::from)
}

/// A response carrying a credential: never cached.
fn no_store(mut res: HttpResponse) -> HttpResponse {
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    res.headers_mut()
        .insert(header::PRAGMA, header::HeaderValue::from_static("no-cache"));
    res
}

fn tokens(issued: &Issued) -> HttpResponse {
    use secrecy::ExposeSecret;
    no_store(ok(&json!({
        "access_token": issued.access_token.expose_secret(),
        "token_type": "Bearer",
        "expires_in": issued.access_ttl_secs,
        "refresh_token": issued.refresh_token.expose_secret(),
        "refresh_expires_in": issued.refresh_ttl_secs,
    })))
}

/// `POST /ojs/v1/auth/login` `{username, password, totp}`: a session token and a refresh token.
pub async fn login(
    req: HttpRequest,
    services: web::Data<Services>,
    body: OjsJson,
) -> Result<HttpResponse, ApiError> {
    let mut body = object(body, &["username", "password", "totp"])?;
    let username = string(&mut body, "username")?;
    let password = secret(&mut body, "password")?;
    let code = secret(&mut body, "totp")?;
    match services
        .sessions
        .login(&origin(&req), &username, password, code)
        .await
    {
        Ok(issued) => Ok(tokens(&issued)),
        Err(LoginRefused::Throttled {
            limit,
            retry_after_secs,
            error,
        }) => {
            crate::http::limits::record_refusal(
                &req,
                crate::limiter::rates::RateInfo {
                    scope: crate::limiter::rates::Scope::Login,
                    limit,
                    remaining: 0,
                    reset_in_secs: retry_after_secs,
                },
            );
            crate::http::limits::delay_refusal(&req, retry_after_secs).await;
            Err(error)
        }
        Err(LoginRefused::Refused(error)) => Err(error),
    }
}

/// `POST /ojs/v1/auth/refresh` `{refresh_token}`: a new session token and the next refresh
/// token; the presented one is spent.
pub async fn refresh(
    req: HttpRequest,
    services: web::Data<Services>,
    body: OjsJson,
) -> Result<HttpResponse, ApiError> {
    let mut body = object(body, &["refresh_token"])?;
    let token = secret(&mut body, "refresh_token")?;
    let issued = services.sessions.refresh(&origin(&req), token).await?;
    Ok(tokens(&issued))
}

/// `POST /ojs/v1/auth/logout` `{refresh_token}`: revokes the session (its refresh family and
/// session tokens). 204.
pub async fn logout(
    req: HttpRequest,
    services: web::Data<Services>,
    body: OjsJson,
) -> Result<HttpResponse, ApiError> {
    let mut body = object(body, &["refresh_token"])?;
    let token = secret(&mut body, "refresh_token")?;
    services.sessions.logout(&origin(&req), token).await?;
    Ok(super::no_content())
}

/// `POST /ojs/v1/admin/users` `{username, password}` (admin): creates a user and returns its
/// TOTP enrolment URI, once. The first login with a valid code confirms the enrolment.
pub async fn create_user(
    caller: Authenticated,
    services: web::Data<Services>,
    body: OjsJson,
) -> Result<HttpResponse, ApiError> {
    let mut body = object(body, &["username", "password"])?;
    let username = string(&mut body, "username")?;
    let password = secret(&mut body, "password")?;
    let (user, uri) = services
        .users
        .create(&caller, &username, password, Totp::Now)
        .await?;
    let mut out = serde_json::to_value(&user).map_err(|_| ApiError::unavailable())?;
    if let (Value::Object(map), Some(uri)) = (&mut out, uri) {
        use secrecy::ExposeSecret;
        map.insert("otpauth_uri".into(), uri.expose_secret().into());
    }
    Ok(no_store(created(&out)))
}

/// `POST /ojs/v1/admin/users/{name}/password` `{current_password?, new_password}`: the user
/// themself (with their current password) or an admin (without). Every session and refresh
/// token of the user dies.
pub async fn change_password(
    caller: Authenticated,
    services: web::Data<Services>,
    path: web::Path<String>,
    body: OjsJson,
) -> Result<HttpResponse, ApiError> {
    let username = path.into_inner();
    let mut body = object(body, &["current_password", "new_password"])?;
    let is_self = caller.principal.id() == format!("user:{username}");
    let current = if is_self {
        Some(secret(&mut body, "current_password").map_err(|_| {
            ApiError::invalid(
                "current_password",
                "current_password is required to change your own password",
            )
        })?)
    } else {
        body.remove("current_password");
        None
    };
    let new = secret(&mut body, "new_password")?;
    let user = services
        .users
        .change_password(&caller, &username, current, new)
        .await?;
    Ok(ok(&user))
}

/// `GET /ojs/v1/admin/users` (admin): every user, without hashes or secrets.
pub async fn list_users(
    _caller: Authenticated,
    services: web::Data<Services>,
) -> Result<HttpResponse, ApiError> {
    let users = services.users.list().await?;
    Ok(ok(&json!({ "users": users })))
}
