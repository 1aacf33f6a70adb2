//! The auth store's loop: hands cache misses to a fixed set of verifier threads, one
//! verification per distinct key at a time, and publishes verified principals to the shared
//! cache. It is the only writer of the cache.
//!
//! The verifier threads are the only place argon2 runs. There are few of them, each with one
//! reusable 19 MiB working memory, so a flood of well-formed wrong keys costs bounded memory and
//! CPU (and a full verification queue answers 503 rather than growing).
//!
//! Revocation is immediate: [`Msg::Forget`] removes the key's cached principals and bumps an
//! epoch, and a verification that started before the bump is answered but never cached. Once a
//! minute the loop also prunes the throttle, drops expired principals and writes last-used
//! times to the store.

use std::collections::HashMap;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::policy::Policy;
use super::throttle::Throttle;
use super::{key, records, AuthError, Cache, Credential, Digest, Msg, Principal};
use crate::audit::{AuditEvent, AuditHandle, Outcome};
use crate::clock::{Clock, Millis};
use crate::store::Store;

type Waiters = Vec<oneshot::Sender<Result<Arc<Principal>, AuthError>>>;

/// Threads that run argon2 (each holds 19 MiB of working memory for its whole life).
const VERIFIER_THREADS: usize = 2;
/// Verifications waiting for a thread before new ones are refused with 503.
const VERIFY_QUEUE: usize = 256;

/// How often the loop prunes the throttle, sweeps expired principals and flushes last-used
/// times.
const HOUSEKEEPING: Duration = Duration::from_secs(60);

struct VerifyJob {
    digest: Digest,
    epoch: u64,
    token: SecretString,
}

pub(super) struct AuthActor {
    store: Store,
    cache: Arc<ArcSwap<Cache>>,
    throttle: Arc<Throttle>,
    /// Verifications under way: who waits, and the address of the request that started it.
    pending: HashMap<Digest, (Waiters, Option<std::net::IpAddr>)>,
    /// Where `auth.success` records go (once per key per process: the first verification).
    audit: Option<AuditHandle>,
    jobs: SyncSender<VerifyJob>,
    /// Bumped by every [`Msg::Forget`]; verifications from an older epoch are not cached.
    epoch: u64,
    /// Last-used times already in the store, by key id.
    flushed: HashMap<String, Millis>,
    /// The time cached principals expire at (the verifier threads hold clones).
    clock: Clock,
}

impl AuthActor {
    /// `me` lets the verifier threads report back; it is weak so that the loop still ends when
    /// every handle is gone.
    pub(super) fn new(
        store: Store,
        policy: Arc<Policy>,
        cache: Arc<ArcSwap<Cache>>,
        throttle: Arc<Throttle>,
        audit: Option<AuditHandle>,
        me: mpsc::WeakSender<Msg>,
        clock: Clock,
    ) -> std::io::Result<Self> {
        let (jobs, queue) = sync_channel(VERIFY_QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..VERIFIER_THREADS {
            let (store, policy, queue, me, clock) = (
                store.clone(),
                policy.clone(),
                queue.clone(),
                me.clone(),
                clock.clone(),
            );
            std::thread::Builder::new()
                .name(format!("bulwark-verify-{n}"))
                .spawn(move || verifier_loop(&store, &policy, &queue, &me, &clock))?;
        }
        Ok(Self {
            store,
            cache,
            throttle,
            pending: HashMap::new(),
            audit,
            jobs,
            epoch: 0,
            flushed: HashMap::new(),
            clock,
        })
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut tick = tokio::time::interval(HOUSEKEEPING);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let msg = tokio::select! {
                msg = rx.recv() => msg,
                _ = tick.tick() => {
                    self.housekeeping().await;
                    continue;
                }
            };
            let Some(msg) = msg else { break };
            match msg {
                Msg::Verify {
                    digest,
                    token,
                    source,
                    reply,
                } => self.verify(digest, token, source, reply),
                Msg::Verified {
                    digest,
                    epoch,
                    result,
                } => self.verified(digest, epoch, result),
                Msg::Forget { key_ids, reply } => {
                    self.forget(&key_ids);
                    let _ = reply.send(());
                }
                Msg::LastUsed { reply } => {
                    let _ = reply.send(self.unflushed().into_iter().collect());
                }
            }
        }
        self.housekeeping().await;
        debug!("auth store stopped");
    }

    fn forget(&mut self, key_ids: &[String]) {
        self.epoch += 1;
        let mut next = Cache::clone(&self.cache.load());
        next.retain(|_, p| match &p.credential {
            Credential::ApiKey { id } if key_ids.contains(id) => {
                p.invalidate();
                false
            }
            _ => true,
        });
        self.cache.store(Arc::new(next));
    }

    /// Last-used times of cached keys that the store does not have yet.
    fn unflushed(&self) -> Vec<(String, Millis)> {
        self.cache
            .load()
            .values()
            .filter_map(|p| match &p.credential {
                Credential::ApiKey { id } => {
                    let used = p.last_used();
                    (used > 0 && self.flushed.get(id).is_none_or(|at| *at < used))
                        .then(|| (id.clone(), used))
                }
                _ => None,
            })
            .collect()
    }

    async fn housekeeping(&mut self) {
        self.throttle.prune();
        let now = self.clock.now_ms();
        if self.cache.load().values().any(|p| p.expired_at(now)) {
            let mut next = Cache::clone(&self.cache.load());
            next.retain(|_, p| !p.expired_at(now));
            self.cache.store(Arc::new(next));
        }
        let uses = self.unflushed();
        if uses.is_empty() {
            return;
        }
        let store = self.store.clone();
        let written = uses.clone();
        match tokio::task::spawn_blocking(move || records::record_use(&store, &written)).await {
            Ok(Ok(())) => self.flushed.extend(uses),
            Ok(Err(e)) => warn!(error = %e, "could not store api key last-used times"),
            Err(_) => warn!("could not store api key last-used times"),
        }
    }

    fn verify(
        &mut self,
        digest: Digest,
        token: SecretString,
        source: Option<std::net::IpAddr>,
        reply: oneshot::Sender<Result<Arc<Principal>, AuthError>>,
    ) {
        // Verified while this message waited in the mailbox.
        if let Some(p) = self.cache.load().get(&digest) {
            let _ = reply.send(Ok(p.clone()));
            return;
        }
        if let Some((waiters, _)) = self.pending.get_mut(&digest) {
            waiters.push(reply);
            return;
        }
        // A new verification: it costs argon2 work, so it spends from the source's budget.
        if let Some(ip) = source {
            if let Err(throttled) = self.throttle.spend(ip) {
                let _ = reply.send(Err(throttled));
                return;
            }
        }
        match self.jobs.try_send(VerifyJob {
            digest,
            epoch: self.epoch,
            token,
        }) {
            Ok(()) => {
                self.pending.insert(digest, (vec![reply], source));
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

    fn verified(&mut self, digest: Digest, epoch: u64, result: Result<Arc<Principal>, AuthError>) {
        let label = match &result {
            Ok(_) => "accepted",
            Err(AuthError::Storage(_) | AuthError::Unavailable) => "error",
            Err(_) => "refused",
        };
        metrics::counter!(crate::metrics::KEY_VERIFICATIONS, "result" => label).increment(1);
        match &result {
            // Verified against a record that a revocation may since have changed: answer, but
            // do not cache.
            Ok(_) if epoch != self.epoch => {}
            Ok(p) => {
                let mut next = Cache::clone(&self.cache.load());
                next.insert(digest, p.clone());
                self.cache.store(Arc::new(next));
            }
            Err(e) => debug!(reason = %e, "api key refused"),
        }
        let (waiters, source) = self.pending.remove(&digest).unwrap_or_default();
        if let (Ok(p), Some(audit)) = (&result, &self.audit) {
            // Once per key per process: later requests are served from the cache unrecorded.
            let mut event = AuditEvent::new("auth.success", Outcome::Success)
                .detail("credential", p.credential_id())
                .detail("first_use_in_process", true);
            event.principal = Some(p.name().to_string());
            event.tenant = p.tenant().map(str::to_string);
            event.source_ip = source.map(|ip| ip.to_string());
            let audit = audit.clone();
            tokio::spawn(async move { audit.emit(event).await });
        }
        for waiter in waiters {
            let _ = waiter.send(match &result {
                Ok(p) => Ok(p.clone()),
                Err(AuthError::Storage(_) | AuthError::Unavailable) => Err(AuthError::Unavailable),
                Err(AuthError::Expired) => Err(AuthError::Expired),
                Err(AuthError::Revoked) => Err(AuthError::Revoked),
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
fn verifier_loop(
    store: &Store,
    policy: &Policy,
    queue: &Mutex<Receiver<VerifyJob>>,
    me: &mpsc::WeakSender<Msg>,
    clock: &Clock,
) {
    // Made before the first job, not at the first unknown id, so that one costs no more than
    // the others.
    let _ = decoy_hash();
    let mut verifier = key::Verifier::new();
    loop {
        let job = match queue.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let result = check(store, policy, &mut verifier, &job.token, clock);
        let Some(me) = me.upgrade() else { return };
        if me
            .blocking_send(Msg::Verified {
                digest: job.digest,
                epoch: job.epoch,
                result,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Verifies a presented key against the store; its expiry is checked at `clock`'s time after
/// the hash. Blocking: argon2 and redb.
fn check(
    store: &Store,
    policy: &Policy,
    verifier: &mut key::Verifier,
    token: &SecretString,
    clock: &Clock,
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
    if record.expires_at.is_some_and(|at| at <= clock.now_ms()) {
        return Err(AuthError::Expired);
    }
    Ok(Arc::new(Principal::from_key(&record, policy)))
}
