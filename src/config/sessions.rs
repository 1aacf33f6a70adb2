//! `[sessions]`: admin user sessions (password + TOTP login), their tokens, the password policy
//! and the login throttle.

use anyhow::bail;
use serde::Deserialize;

/// The longest an access token may live (OJS security §6.4: at most one hour).
pub const MAX_ACCESS_TTL_SECS: u64 = 3600;

/// `[sessions]`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    /// Lifetime of a session (access) token, in seconds; at most 3600.
    pub access_ttl_secs: u64,
    /// Lifetime of a refresh token, in seconds (each refresh issues a new one).
    pub refresh_ttl_secs: u64,
    /// Fewest characters a password may have.
    pub password_min_length: usize,
    /// Fewest character classes (lowercase, uppercase, digit, symbol) a password must mix.
    pub password_min_classes: usize,
    /// Login attempts per minute from one source IP (a burst of this many, then one every
    /// 60/N seconds).
    pub login_per_minute_per_ip: u32,
    /// Login attempts per minute for one username, whatever the source.
    pub login_per_minute_per_user: u32,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            access_ttl_secs: 900,
            refresh_ttl_secs: 7 * 24 * 3600,
            password_min_length: 12,
            password_min_classes: 3,
            login_per_minute_per_ip: 5,
            login_per_minute_per_user: 5,
        }
    }
}

impl SessionsConfig {
    /// Refuses meaningless or unsafe values.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.access_ttl_secs == 0 || self.access_ttl_secs > MAX_ACCESS_TTL_SECS {
            bail!("sessions.access_ttl_secs must be from 1 to {MAX_ACCESS_TTL_SECS}");
        }
        if self.refresh_ttl_secs < self.access_ttl_secs || self.refresh_ttl_secs > 90 * 24 * 3600 {
            bail!("sessions.refresh_ttl_secs must be from access_ttl_secs to 90 days");
        }
        if !(8..=crate::auth::users::MAX_PASSWORD_CHARS).contains(&self.password_min_length) {
            bail!("sessions.password_min_length must be from 8 to 1024");
        }
        if !(1..=4).contains(&self.password_min_classes) {
            bail!("sessions.password_min_classes must be from 1 to 4");
        }
        if self.login_per_minute_per_ip == 0 || self.login_per_minute_per_user == 0 {
            bail!(
                "sessions.login_per_minute_per_ip and login_per_minute_per_user must be positive"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_limits_enforced() {
        let d = SessionsConfig::default();
        d.validate().unwrap();
        assert_eq!(d.access_ttl_secs, 900);
        assert_eq!(d.refresh_ttl_secs, 604_800);
        for bad in [
            SessionsConfig {
                access_ttl_secs: 3601,
                ..d.clone()
            },
            SessionsConfig {
                access_ttl_secs: 0,
                ..d.clone()
            },
            SessionsConfig {
                password_min_length: 4,
                ..d.clone()
            },
            SessionsConfig {
                password_min_classes: 5,
                ..d.clone()
            },
            SessionsConfig {
                login_per_minute_per_ip: 0,
                ..d.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
