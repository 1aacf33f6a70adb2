//! Admin user accounts: create, change a password, enrol TOTP, disable and enable, list. Each
//! change is recorded before it is made (no record, no change). The HTTP API creates a user
//! with its TOTP at once and returns the enrolment URI; the command line may enrol it later
//! (`bulwark users totp`). Logins, refreshes and logouts stay with [`Accounts`], the session
//! engine: they are authentication, not management.

use std::net::{IpAddr, Ipv4Addr};

use secrecy::SecretString;

use super::Caller;
use crate::audit::Outcome;
use crate::auth::accounts::{AccountError, Accounts};
use crate::auth::users::{valid_username, UserError, UserSummary};
use crate::error::ApiError;

/// The user service.
#[derive(Clone)]
pub struct Users {
    accounts: Accounts,
}

/// Whether a new user gets its TOTP secret now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Totp {
    /// Now: the answer carries the enrolment URI.
    Now,
    /// Later (`bulwark users totp`); until then the user cannot log in.
    Later,
}

impl Users {
    #[must_use]
    pub fn new(accounts: Accounts) -> Self {
        Self { accounts }
    }

    /// Creates a user with a policy-checked password.
    pub async fn create(
        &self,
        caller: &Caller,
        username: &str,
        password: SecretString,
        totp: Totp,
    ) -> Result<(UserSummary, Option<SecretString>), ApiError> {
        if !valid_username(username) {
            return Err(AccountError::User(UserError::InvalidUsername).into());
        }
        let event = caller
            .event("user.created", Outcome::Success)
            .detail("username", username);
        caller
            .trail()
            .guarded(
                event,
                self.accounts
                    .create_user_with(username, password, totp == Totp::Now),
            )
            .await
    }

    /// Changes a password: the user themself with their current password (throttled like a
    /// login), or an administrator without. Every session and refresh token of the user dies.
    pub async fn change_password(
        &self,
        caller: &Caller,
        username: &str,
        current: Option<SecretString>,
        new: SecretString,
    ) -> Result<UserSummary, ApiError> {
        let by_self = caller.principal.id() == format!("user:{username}");
        let event = caller
            .event("user.password_changed", Outcome::Success)
            .detail("username", username)
            .detail("by", if by_self { "self" } else { "admin" });
        let source = caller
            .origin
            .source_ip
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        caller
            .trail()
            .guarded(
                event,
                self.accounts
                    .change_password(source, username, current, new),
            )
            .await
    }

    /// Enrols a new TOTP secret and returns its `otpauth://` URI, to show once.
    pub async fn enrol_totp(
        &self,
        caller: &Caller,
        username: &str,
    ) -> Result<SecretString, ApiError> {
        self.exists(username).await?;
        let event = caller
            .event("user.totp_enrolled", Outcome::Success)
            .detail("username", username);
        caller
            .trail()
            .guarded(event, self.accounts.enrol_totp(username))
            .await
    }

    /// Disables (`true`) or enables a user.
    pub async fn set_disabled(
        &self,
        caller: &Caller,
        username: &str,
        disabled: bool,
    ) -> Result<UserSummary, ApiError> {
        self.exists(username).await?;
        let event_type = if disabled {
            "user.disabled"
        } else {
            "user.enabled"
        };
        let event = caller
            .event(event_type, Outcome::Success)
            .detail("username", username);
        caller
            .trail()
            .guarded(event, self.accounts.set_disabled(username, disabled))
            .await
    }

    /// Every user, without hashes or secrets.
    pub async fn list(&self) -> Result<Vec<UserSummary>, ApiError> {
        Ok(self.accounts.list_users().await?)
    }

    /// 404 for a user that does not exist (before anything is recorded).
    async fn exists(&self, username: &str) -> Result<(), ApiError> {
        if valid_username(username) && self.accounts.user_exists(username).await? {
            Ok(())
        } else {
            Err(AccountError::User(UserError::NotFound).into())
        }
    }
}
