//! The auth store's loop: hands cache misses to a fixed set of verifier threads, one
//! verification per distinct key at a time, and publishes verified principals to the shared
//! cache. It is the only writer of the cache.
//!
//! The verifier threads are the only place argon2 runs. There are few of them, each with one
//! reusable 19 MiB working memory, so a flood of well-formed wrong keys costs bounded memory and
//! CPU (and a full verification queue answers 503 rather than growing).

use std::collections::HashMap;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::{key, records, AuthError, Cache, Digest, Msg, Principal};
use crate::clock::now_ms;
use crate::store::Store;

type Waiters = Vec<oneshot::Sender<Result<Arc<Principal>, AuthError>>>;

/// Threads that run argon2 (each holds 19 MiB of working memory for its whole life).
const VERIFIER_THREADS: usize = 2;
/// Verifications waiting for a thread before new ones are refused with 503.
const VERIFY_QUEUE: usize = 256;

struct VerifyJob {
    digest: Digest,
    token: SecretString,
}

pub(super) struct AuthActor {
    cache: Arc<ArcSwap<Cache>>,
    pending: HashMap<Digest, Waiters>,
    jobs: SyncSender<VerifyJob>,
}

impl AuthActor {
    /// `me` lets the verifier threads report back; it is weak so that the loop still ends when
    /// every handle is gone.
    pub(super) fn new(
        store: Store,
        cache: Arc<ArcSwap<Cache>>,
        me: mpsc::WeakSender<Msg>,
    ) -> std::io::Result<Self> {
        let (jobs, queue) = sync_channel(VERIFY_QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..VERIFIER_THREADS {
            let (store, queue, me) = (store.clone(), queue.clone(), me.clone());
            std::thread::Builder::new()
                .name(format!("bulwark-verify-{n}"))
                .spawn(move || verifier_loop(&store, &queue, &me))?;
        }
        Ok(Self {
            cache,
            pending: HashMap::new(),
            jobs,
        })
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
        match self.jobs.try_send(VerifyJob { digest, token }) {
            Ok(()) => {
                self.pending.insert(digest, vec![reply]);
            }
            Err(TrySendError::Full(_)) => {
                warn!("api key verification queue full, refusing");
                let _ = reply.send(Err(AuthError::Unavailable));
            }
            Err(TrySendError::Disconnected(_)) => {
                let _ = reply.send(Err(AuthError::Unavailable));
            }
        }
    }

    fn verified(&mut self, digest: Digest, result: Result<Arc<Principal>, AuthError>) {
        let label = match &result {
            Ok(_) => "accepted",
            Err(AuthError::Storage(_) | AuthError::Unavailable) => "error",
            Err(_) => "refused",
        };
        metrics::counter!(crate::metrics::KEY_VERIFICATIONS, "result" => label).increment(1);
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

/// One verifier thread: takes jobs until the actor is gone.
fn verifier_loop(store: &Store, queue: &Mutex<Receiver<VerifyJob>>, me: &mpsc::WeakSender<Msg>) {
    let mut verifier = key::Verifier::new();
    loop {
        let job = match queue.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let result = check(store, &mut verifier, &job.token);
        let Some(me) = me.upgrade() else { return };
        if me
            .blocking_send(Msg::Verified {
                digest: job.digest,
                result,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Verifies a presented key against the store. Blocking: argon2 and redb.
fn check(
    store: &Store,
    verifier: &mut key::Verifier,
    token: &SecretString,
) -> Result<Arc<Principal>, AuthError> {
    let Some(parsed) = key::parse(token.expose_secret()) else {
        return Err(AuthError::Malformed);
    };
    let record = records::get(store, parsed.id)?;
    let Some(record) = record else {
        let _ = verifier.verify(token, decoy_hash());
        return Err(AuthError::UnknownKey);
    };
    // The hash is checked before the record's status so every refusal costs the same.
    let matches = verifier.verify(token, &record.hash);
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
