//! Admin sessions: login (password and TOTP), refresh, logout. No credential comes with these
//! requests (the body carries it), so the service takes the request's [`Origin`] rather than a
//! caller. Every login, throttle, refresh, reuse and logout is recorded; records name the user
//! and a truncated session id, never a password, code or token. A login failure answers the
//! same whatever the cause; the cause goes to the record. A session is issued only once its
//! record is on disk.

use secrecy::SecretString;

use super::caller::origin_event;
use super::{Origin, Trail};
use crate::audit::{AuditEvent, Outcome};
use crate::auth::accounts::{AccountError, Accounts, Issued};
use crate::auth::login_throttle::Scope;
use crate::auth::session::display_family;
use crate::auth::users::valid_username;
use crate::auth::Principal;
use crate::config::sessions::SessionsConfig;
use crate::error::ApiError;

/// The session service.
#[derive(Clone)]
pub struct Sessions {
    accounts: Accounts,
    trail: Trail,
    /// Login attempts a minute per source address and per username.
    per_ip: u32,
    per_user: u32,
}

/// Why a login was refused.
pub enum LoginRefused {
    /// The address or the username is over its login budget (`limit` a minute).
    Throttled {
        limit: u32,
        retry_after_secs: u64,
        error: ApiError,
    },
    /// Anything else (all alike to the client).
    Refused(ApiError),
}

impl Sessions {
    #[must_use]
    pub fn new(accounts: Accounts, trail: Trail, config: &SessionsConfig) -> Self {
        Self {
            accounts,
            trail,
            per_ip: config.login_per_minute_per_ip,
            per_user: config.login_per_minute_per_user,
        }
    }

    /// A session token and a refresh token for a user's password and TOTP code.
    pub async fn login(
        &self,
        origin: &Origin,
        username: &str,
        password: SecretString,
        code: SecretString,
    ) -> Result<Issued, LoginRefused> {
        let source = origin
            .source_ip
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let result = self.accounts.login(source, username, password, code).await;
        let outcome = match &result {
            Ok(_) => "success",
            Err(AccountError::Throttled(_)) => "throttled",
            Err(_) => "failure",
        };
        metrics::counter!(crate::metrics::LOGINS, "outcome" => outcome).increment(1);
        match result {
            Ok(issued) => {
                let event = user_event(origin, "auth.login", Outcome::Success, &issued.username)
                    .detail("session", display_family(&issued.family))
                    .detail("totp_confirmed", issued.confirmed_totp);
                // No record, no session.
                self.trail
                    .record_or_refuse(event)
                    .await
                    .map_err(LoginRefused::Refused)?;
                Ok(issued)
            }
            Err(AccountError::Throttled(t)) => {
                let limit = match t.scope {
                    Scope::SourceIp => self.per_ip,
                    Scope::Username => self.per_user,
                };
                // Aggregated per source and limit; every refusal is counted in the metrics too.
                let event = origin_event(origin, "auth.login_throttled", Outcome::Failure)
                    .detail("limit", t.scope.as_str())
                    .detail("retry_after_secs", t.retry_after_secs);
                let key = format!(
                    "{}|{}",
                    event.source_ip.as_deref().unwrap_or_default(),
                    t.scope.as_str()
                );
                self.trail
                    .aggregate(key, with_claimed(event, username))
                    .await;
                let retry_after_secs = t.retry_after_secs;
                Err(LoginRefused::Throttled {
                    limit,
                    retry_after_secs,
                    error: AccountError::Throttled(t).into(),
                })
            }
            Err(e) => {
                let event = origin_event(origin, "auth.login", Outcome::Failure)
                    .detail("reason", e.to_string());
                self.trail.emit(with_claimed(event, username)).await;
                Err(LoginRefused::Refused(e.into()))
            }
        }
    }

    /// A new session token and the next refresh token; the presented one is spent. A refresh
    /// token used twice revokes its whole session.
    pub async fn refresh(&self, origin: &Origin, token: SecretString) -> Result<Issued, ApiError> {
        let result = self.accounts.refresh(token).await;
        let outcome = match &result {
            Ok(_) => "success",
            Err(AccountError::RefreshReuse { .. }) => "reuse",
            Err(_) => "failure",
        };
        metrics::counter!(crate::metrics::TOKEN_REFRESHES, "outcome" => outcome).increment(1);
        match result {
            Ok(issued) => {
                let event = user_event(origin, "auth.refresh", Outcome::Success, &issued.username)
                    .detail("session", display_family(&issued.family));
                self.trail.record_or_refuse(event).await?;
                Ok(issued)
            }
            Err(AccountError::RefreshReuse { username, family }) => {
                let event = user_event(origin, "auth.refresh_reuse", Outcome::Failure, &username)
                    .detail("session", display_family(&family))
                    .detail("action", "session revoked");
                self.trail.emit(event).await;
                Err(AccountError::RefreshReuse { username, family }.into())
            }
            Err(e) => {
                let event = origin_event(origin, "auth.refresh", Outcome::Failure)
                    .detail("reason", e.to_string());
                self.trail.emit(event).await;
                Err(e.into())
            }
        }
    }

    /// Ends a session: its refresh family and its session tokens.
    pub async fn logout(&self, origin: &Origin, token: SecretString) -> Result<(), ApiError> {
        match self.accounts.logout(token).await {
            Ok((username, family)) => {
                let event = user_event(origin, "auth.logout", Outcome::Success, &username)
                    .detail("session", display_family(&family));
                self.trail.emit(event).await;
                Ok(())
            }
            Err(e) => {
                let event = origin_event(origin, "auth.logout", Outcome::Failure)
                    .detail("reason", e.to_string());
                self.trail.emit(event).await;
                Err(e.into())
            }
        }
    }
}

/// A record about an admin user (its audit identity, `user:<name>`).
fn user_event(
    origin: &Origin,
    event_type: &'static str,
    outcome: Outcome,
    username: &str,
) -> AuditEvent {
    let user = Principal::admin_user(username);
    let mut event = origin_event(origin, event_type, outcome);
    event.principal = Some(user.name().to_string());
    event.tenant = user.tenant().map(str::to_string);
    event.detail("credential", user.credential_id())
}

/// Adds the claimed username to a record when it has the shape of one (a password typed into
/// the username field does not, as a rule, and is then left out).
fn with_claimed(event: AuditEvent, username: &str) -> AuditEvent {
    if valid_username(username) {
        event.detail("username", username)
    } else {
        event.detail("username", "(malformed)")
    }
}
