//! Authorization answers reused for a short time (the hot paths ask the same Check again and
//! again), safely:
//!
//! - only while this service is subscribed to the authorization service's change stream
//!   (`WatchAuthorizationChanges`); without it every Check goes to the authorization service;
//! - every answer is dropped at each change that stream reports (a grant revoked, a business
//!   unit updated, ...: the authorization replica's own changes at once, other replicas'
//!   within `workflow.authz_change_poll_ms`, read from the database's change count), and
//!   when the stream breaks;
//! - an answer fetched while a change came in is not kept;
//! - and none is older than `clients.authz_cache_ttl_ms`: a backstop, for a change the
//!   count does not show (written into the database by hand).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use sspm_proto::internal::v1::WatchAuthorizationChangesRequest;
use sspm_proto::internal::v1::authorization_service_client::AuthorizationServiceClient;
use sspm_proto::v1::CheckResponse;
use tokio::time::Instant;

use crate::client::InternalChannel;
use crate::identity::ServiceIdentity;

/// Principal, action, business unit.
type Key = (String, i32, String);

/// The answers, and what makes them safe to use.
#[derive(Debug)]
pub struct CheckCache {
    entries: quick_cache::sync::Cache<Key, (Instant, CheckResponse)>,
    ttl: Duration,
    /// Bumped at every change (and break of the stream).
    generation: AtomicU64,
    subscribed: AtomicBool,
}

/// At most this many answers are kept (a few hundred bytes each).
const CAPACITY: usize = 100_000;

impl CheckCache {
    /// A cache of answers at most `ttl` old, kept up to date over `client`'s change stream
    /// by a background task that ends once the cache is dropped.
    pub fn start(
        ttl: Duration,
        client: AuthorizationServiceClient<InternalChannel>,
        identity: ServiceIdentity,
    ) -> Arc<Self> {
        let cache = Arc::new(Self {
            entries: quick_cache::sync::Cache::new(CAPACITY),
            ttl,
            generation: AtomicU64::new(0),
            subscribed: AtomicBool::new(false),
        });
        tokio::spawn(follow_changes(Arc::downgrade(&cache), client, identity));
        cache
    }

    /// The generation to pass to [`CheckCache::put`] for an answer about to be fetched.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A usable answer, if there is one.
    pub fn get(&self, key: &Key) -> Option<CheckResponse> {
        if !self.subscribed.load(Ordering::Acquire) {
            return None;
        }
        match self.entries.get(key) {
            Some((at, answer)) if at.elapsed() < self.ttl => Some(answer),
            _ => None,
        }
    }

    /// Keeps `answer`, fetched from `generation` on, unless something changed meanwhile.
    pub fn put(&self, key: Key, generation: u64, fetched_at: Instant, answer: CheckResponse) {
        if self.subscribed.load(Ordering::Acquire) && self.generation() == generation {
            self.entries.insert(key, (fetched_at, answer));
            // A change that came in between the test above and the insert: drop it again.
            if self.generation() != generation {
                self.entries.clear();
            }
        }
    }

    fn changed(&self, subscribed: bool) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.subscribed.store(subscribed, Ordering::Release);
        self.entries.clear();
    }

    /// Whether answers are used now (subscribed to the change stream).
    pub fn is_active(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }
}

/// Follows the change stream: every message drops every answer; a broken stream stops the
/// cache until it is back (retried with a growing delay, up to 5 s).
async fn follow_changes(
    cache: Weak<CheckCache>,
    client: AuthorizationServiceClient<InternalChannel>,
    identity: ServiceIdentity,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        let opened = client
            .clone()
            .watch_authorization_changes(identity.request(WatchAuthorizationChangesRequest {}, None))
            .await;
        if let Ok(stream) = opened {
            let mut stream = stream.into_inner();
            while let Ok(Some(_)) = stream.message().await {
                let Some(c) = cache.upgrade() else { return };
                c.changed(true);
                delay = Duration::from_millis(100);
            }
        }
        let Some(c) = cache.upgrade() else { return };
        if c.is_active() {
            tracing::warn!("authorization change stream lost: authorization answers are not reused until it is back");
        }
        c.changed(false);
        drop(c);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
