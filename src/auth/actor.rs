//! The auth store's loop: verifies cache misses on the blocking pool, one verification per
//! distinct key at a time, and publishes verified principals to the shared cache. It is the only
//! writer of the cache.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::{key, records, AuthError, Cache, Digest, Msg, Principal};
use crate::clock::now_ms;
use crate::store::Store;

type Waiters = Vec<oneshot::Sender<Result<Arc<Principal>, AuthError>>>;

pub(super) struct AuthActor {
    store: Store,
    cache: Arc<ArcSwap<Cache>>,
    pending: HashMap<Digest, Waiters>,
    /// For verification tasks to report back; weak so the loop ends when the handles go.
    me: mpsc::WeakSender<Msg>,
}

impl AuthActor {
    pub(super) fn new(store: Store, cache: Arc<ArcSwap<Cache>>, me: mpsc::WeakSender<Msg>) -> Self {
        Self {
            store,
            cache,
            pending: HashMap::new(),
            me,
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        while let Some(msg) = rx.recv().await {
            match msg {
                Msg::Verify {
                    digest,
                    token,
                    reply,
                } => self.verify(digest, token, reply),
                Msg::Verified { digest, result } => self.verified(digest, result),
            }
        }
        debug!("auth store stopped");
    }

    fn verify(
        &mut self,
        digest: Digest,
        token: SecretString,
        reply: oneshot::Sender<Result<Arc<Principal>, AuthError>>,
    ) {
        // Verified while this message waited in the mailbox.
        if let Some(p) = self.cache.load().get(&digest) {
            let _ = reply.send(Ok(p.clone()));
            return;
        }
        if let Some(waiters) = self.pending.get_mut(&digest) {
            waiters.push(reply);
            return;
        }
        self.pending.insert(digest, vec![reply]);
        let Some(me) = self.me.upgrade() else { return };
        let store = self.store.clone();
        tokio::spawn(async move {
            let result = tokio::task::spawn_blocking(move || check(&store, &token))
                .await
                .unwrap_or(Err(AuthError::Unavailable));
            let _ = me.send(Msg::Verified { digest, result }).await;
        });
    }

    fn verified(&mut self, digest: Digest, result: Result<Arc<Principal>, AuthError>) {
        match &result {
            Ok(p) => {
                let mut next = Cache::clone(&self.cache.load());
                next.insert(digest, p.clone());
                self.cache.store(Arc::new(next));
            }
            Err(e) => debug!(reason = %e, "api key refused"),
        }
        for waiter in self.pending.remove(&digest).unwrap_or_default() {
            let _ = waiter.send(match &result {
                Ok(p) => Ok(p.clone()),
                Err(AuthError::Storage(_) | AuthError::Unavailable) => Err(AuthError::Unavailable),
                Err(_) => Err(AuthError::WrongSecret),
            });
        }
    }
}

/// A PHC string of a key nobody has, so that an unknown key id costs the same argon2 work as a
/// wrong secret (no timing oracle for valid ids).
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        key::generate("decoy")
            .ok()
            .and_then(|k| key::hash(&k.token).ok())
            .unwrap_or_default()
    })
}

/// Verifies a presented key against the store. Blocking: argon2 and redb.
fn check(store: &Store, token: &SecretString) -> Result<Arc<Principal>, AuthError> {
    let Some(parsed) = key::parse(token.expose_secret()) else {
        return Err(AuthError::Malformed);
    };
    let record = records::get(store, parsed.id)?;
    let Some(record) = record else {
        let _ = key::verify(token, decoy_hash());
        return Err(AuthError::UnknownKey);
    };
    // The hash is checked before the record's status so every refusal costs the same.
    let matches = key::verify(token, &record.hash);
    if !matches {
        warn!(key = %key::display_id(&record.id), "api key with a wrong secret");
        return Err(AuthError::WrongSecret);
    }
    if record.revoked_at.is_some() {
        return Err(AuthError::Revoked);
    }
    if record.expires_at.is_some_and(|at| at <= now_ms()) {
        return Err(AuthError::Expired);
    }
    Ok(Arc::new(Principal {
        id: record.id,
        name: record.name,
        roles: record.roles,
        tenant: record.tenant,
    }))
}
