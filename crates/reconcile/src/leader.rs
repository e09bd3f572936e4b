//! Leader election over a `coordination.k8s.io/v1` Lease, with client-go's `leaderelection`
//! semantics, so that of the controllers' replicas only one acts at a time.
//!
//! A candidate takes the lease when it does not exist (create), when it already names this
//! candidate, when nobody holds it (a leader released it on its way out), or when the holder
//! has not renewed it for its `leaseDurationSeconds`. That wait is measured on this
//! candidate's own clock from when it saw the lease record last change, never from the
//! timestamps written in it, so clock skew between machines cannot shorten it. Every write
//! carries the resourceVersion that was read: of two candidates racing for a free lease one
//! gets 409 Conflict and tries again later. The leader renews every retry period and stops
//! leading when it has not renewed for the renew deadline, which is shorter than the lease
//! duration: it has stopped before anyone else may take over.

use std::future::Future;
use std::hash::BuildHasher;
use std::pin::{pin, Pin};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::time::Instant;

use crate::{api_call_on, log_failure};

/// client-go's `JitterFactor`: a candidate waits between one and 2.2 retry periods between
/// attempts to acquire, so candidates started together do not stay in step.
const JITTER_FACTOR: f64 = 1.2;

/// Which lease, who this candidate is, and the timings (client-go's `LeaderElectionConfig`).
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Unique among the candidates (a pod's name).
    pub identity: String,
    /// How long other candidates wait, from when they saw the lease last renewed, before
    /// taking it over. Written to the lease rounded up to whole seconds.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it stops leading.
    pub renew_deadline: Duration,
    /// Between two renewals, and between attempts to acquire (plus up to 1.2 times as much).
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// client-go's (and virt-controller's) defaults: lease 15 s, renew deadline 10 s,
    /// retry period 2 s.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> LeaseConfig {
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// The checks client-go's `NewLeaderElector` makes: timings that let a leader still act
    /// while another candidate may already take over are refused.
    fn validate(&self) -> Result<(), LeaderError> {
        let invalid = |reason| Err(LeaderError::InvalidConfig { reason });
        if self.identity.is_empty() {
            return invalid("the identity is empty");
        }
        if self.name.is_empty() {
            return invalid("the lease name is empty");
        }
        if self.retry_period.is_zero() {
            return invalid("the retry period is zero");
        }
        if self.lease_duration <= self.renew_deadline {
            return invalid("the lease duration must be longer than the renew deadline");
        }
        if self.renew_deadline.as_secs_f64() <= JITTER_FACTOR * self.retry_period.as_secs_f64() {
            return invalid("the renew deadline must be longer than 1.2 retry periods");
        }
        if i32::try_from(self.lease_duration.as_secs()).is_err() {
            return invalid("the lease duration does not fit in leaseDurationSeconds");
        }
        Ok(())
    }

    /// `leaseDurationSeconds` as written: rounded up, so others never wait less than
    /// `lease_duration`.
    fn lease_duration_seconds(&self) -> i32 {
        let secs =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }

    fn lease_ref(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// Leadership was lost: the lease was not renewed within the renew deadline, or another
    /// candidate holds it now. The process should exit so that its replacement starts clean.
    #[error("lost leadership of lease {namespace}/{name} held as {identity}")]
    LostLease {
        namespace: String,
        name: String,
        identity: String,
    },
    /// The configuration cannot keep two leaders apart.
    #[error("invalid leader election configuration: {reason}")]
    InvalidConfig { reason: &'static str },
}

/// Runs `lead` while this process holds the lease `cfg` names.
///
/// Waits (retrying every retry period, with jitter) until it acquires the lease, then runs
/// the future `lead()` returns while renewing the lease beside it. Returns `Ok(())` when
/// `stop` resolves or the `lead` future ends, after dropping that future and then releasing
/// the lease if held (clearing `holderIdentity`, client-go's `ReleaseOnCancel`), so a
/// successor takes over at once. Returns `Err(LostLease)` when leadership was lost, having
/// dropped the `lead` future; the caller (a process) should exit so that its replacement
/// starts clean, as client-go's `OnStoppedLeading` callers do.
///
/// `lead` runs in the calling task, beside the renewals: it should spawn or await, not
/// block the thread. API errors are logged and retried, never returned.
pub async fn run_as_leader<F, Fut>(
    client: Client,
    cfg: LeaseConfig,
    stop: impl Future<Output = ()>,
    lead: F,
) -> Result<(), LeaderError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    cfg.validate()?;
    let mut stop = pin!(stop);
    let mut elector = Elector::new(client, cfg);

    let Some(renewed_at) = elector.acquire(stop.as_mut()).await else {
        // An attempt cut short by `stop` may still have taken the lease.
        elector.release().await;
        return Ok(());
    };
    tracing::info!(
        identity = %elector.cfg.identity,
        lease = %elector.cfg.lease_ref(),
        "acquired leadership"
    );

    enum Outcome {
        Stopped,
        Finished,
        Lost,
    }
    // Every branch's future is dropped when the first one completes: `lead` has stopped
    // before the lease is released.
    let outcome = tokio::select! {
        () = stop.as_mut() => Outcome::Stopped,
        () = lead() => Outcome::Finished,
        () = elector.keep_renewing(renewed_at) => Outcome::Lost,
    };
    let cfg = &elector.cfg;
    match outcome {
        Outcome::Lost => {
            tracing::info!(identity = %cfg.identity, lease = %cfg.lease_ref(), "lost leadership");
            Err(LeaderError::LostLease {
                namespace: cfg.namespace.clone(),
                name: cfg.name.clone(),
                identity: cfg.identity.clone(),
            })
        }
        Outcome::Stopped | Outcome::Finished => {
            tracing::info!(
                identity = %cfg.identity,
                lease = %cfg.lease_ref(),
                "stopped leading; releasing the lease"
            );
            elector.release().await;
            Ok(())
        }
    }
}

/// What this candidate last saw of the lease record, and when (on its own clock) it saw
/// that record change: client-go's `observedRecord` and `observedTime`.
#[derive(Debug, Clone)]
struct Observation {
    spec: LeaseSpec,
    since: Instant,
}

impl Observation {
    /// While the record is unchanged the time it was first seen is kept: the lease expires
    /// `leaseDurationSeconds` after that, whatever its timestamps say.
    fn new(previous: Option<&Observation>, spec: LeaseSpec, now: Instant) -> Observation {
        let since = match previous {
            Some(p) if p.spec == spec => p.since,
            _ => now,
        };
        Observation { spec, since }
    }

    fn holder(&self) -> Option<&str> {
        holder(&self.spec)
    }

    fn expired(&self, now: Instant) -> bool {
        let secs = u64::try_from(self.spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0);
        now >= self.since + Duration::from_secs(secs)
    }
}

fn holder(spec: &LeaseSpec) -> Option<&str> {
    spec.holder_identity.as_deref().filter(|h| !h.is_empty())
}

/// What a candidate does about the lease it observed.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// It names this candidate: renew it.
    Renew,
    /// Nobody holds it, or its holder let it expire: take it over.
    TakeOver,
    /// Another candidate holds it and has renewed it recently enough.
    Wait { holder: String },
}

fn decide(observed: &Observation, identity: &str, now: Instant) -> Decision {
    match observed.holder() {
        Some(h) if h == identity => Decision::Renew,
        Some(h) if !observed.expired(now) => Decision::Wait {
            holder: h.to_string(),
        },
        _ => Decision::TakeOver,
    }
}

/// The record naming `identity` to write over `current` (or to create, when there is none),
/// renewed at `now`. Renewing keeps the acquire time and transition count; taking over from
/// anyone else (or from nobody, after a release) counts one more transition.
fn claimed_spec(
    current: Option<&LeaseSpec>,
    identity: &str,
    lease_duration_seconds: i32,
    now: Timestamp,
) -> LeaseSpec {
    let now = MicroTime(now);
    let (acquire_time, transitions) = match current {
        None => (now.clone(), 0),
        Some(c) if holder(c) == Some(identity) => (
            c.acquire_time.clone().unwrap_or_else(|| now.clone()),
            c.lease_transitions.unwrap_or(0),
        ),
        Some(c) => (
            now.clone(),
            c.lease_transitions.unwrap_or(0).saturating_add(1),
        ),
    };
    LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(lease_duration_seconds),
        acquire_time: Some(acquire_time),
        renew_time: Some(now),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

/// The record a leader leaves behind on its way out: held by nobody, so the next candidate
/// to look takes it over without waiting (client-go's `release`).
fn released_spec(current: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    let now = MicroTime(now);
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        acquire_time: Some(now.clone()),
        renew_time: Some(now),
        lease_transitions: current.lease_transitions,
        ..LeaseSpec::default()
    }
}

/// Now, cut to the microseconds a MicroTime keeps, so a record reads back as it was written.
fn now_micros() -> Timestamp {
    let now = Timestamp::now();
    Timestamp::from_microsecond(now.as_microsecond()).unwrap_or(now)
}

/// `period` plus up to 1.2 times `period` at random (client-go's `wait.Jitter`).
fn jittered(period: Duration) -> Duration {
    // Each RandomState has fresh keys: hashing anything gives a new pseudo-random number.
    let random = std::collections::hash_map::RandomState::new().hash_one(0u8);
    let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
    period + period.mul_f64(JITTER_FACTOR * fraction)
}

/// The outcome of one attempt to acquire or renew.
#[derive(Debug)]
enum Attempt {
    /// This candidate holds the lease now.
    Held,
    /// Another candidate holds it.
    HeldBy(String),
    /// An API call failed or lost a race: try again later.
    Failed,
}

/// One candidate's view of the lease and its API (client-go's `LeaderElector`).
struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    /// The lease as last read or written: its resourceVersion guards the next write.
    lease: Option<Lease>,
    observed: Option<Observation>,
}

impl Elector {
    fn new(client: Client, cfg: LeaseConfig) -> Elector {
        Elector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            lease: None,
            observed: None,
        }
    }

    fn is_leader(&self) -> bool {
        self.observed
            .as_ref()
            .is_some_and(|o| o.holder() == Some(self.cfg.identity.as_str()))
    }

    /// Records the lease as the API returned it.
    fn remember(&mut self, lease: Lease) {
        let spec = lease.spec.clone().unwrap_or_default();
        self.observed = Some(Observation::new(
            self.observed.as_ref(),
            spec,
            Instant::now(),
        ));
        self.lease = Some(lease);
    }

    fn log_failure(&self, action: &'static str, source: kube::Error) {
        let cfg = &self.cfg;
        let error = api_call_on(action, "Lease", &cfg.namespace, &cfg.name)(source);
        log_failure(
            "leader election",
            &cfg.lease_ref(),
            &error,
            error.is_conflict(),
        );
    }

    /// Tries until this candidate holds the lease, returning when it sent the write that won
    /// it; None when `stop` resolved first.
    async fn acquire(&mut self, mut stop: Pin<&mut impl Future<Output = ()>>) -> Option<Instant> {
        loop {
            let sent = Instant::now();
            let attempt = tokio::select! {
                () = stop.as_mut() => return None,
                a = tokio::time::timeout(self.cfg.renew_deadline, self.try_acquire_or_renew()) => a,
            };
            match attempt {
                Ok(Attempt::Held) => return Some(sent),
                Ok(Attempt::HeldBy(holder)) => tracing::debug!(
                    identity = %self.cfg.identity,
                    lease = %self.cfg.lease_ref(),
                    %holder,
                    "lease held by another candidate"
                ),
                Ok(Attempt::Failed) => {}
                Err(_elapsed) => tracing::warn!(
                    lease = %self.cfg.lease_ref(),
                    "leader election: no answer within the renew deadline"
                ),
            }
            tokio::select! {
                () = stop.as_mut() => return None,
                () = tokio::time::sleep(jittered(self.cfg.retry_period)) => {}
            }
        }
    }

    /// Renews every retry period; returns when leadership is lost: no renewal since the
    /// write sent at `renewed_at` for the renew deadline, or another candidate holds the
    /// lease.
    async fn keep_renewing(&mut self, mut renewed_at: Instant) {
        loop {
            tokio::time::sleep(self.cfg.retry_period).await;
            let deadline = renewed_at + self.cfg.renew_deadline;
            let sent = Instant::now();
            if sent >= deadline {
                tracing::warn!(
                    lease = %self.cfg.lease_ref(),
                    "leader election: could not renew within the renew deadline"
                );
                return;
            }
            match tokio::time::timeout_at(deadline, self.try_acquire_or_renew()).await {
                Ok(Attempt::Held) => renewed_at = sent,
                Ok(Attempt::HeldBy(holder)) => {
                    tracing::warn!(
                        lease = %self.cfg.lease_ref(),
                        %holder,
                        "leader election: another candidate holds the lease"
                    );
                    return;
                }
                // Retried after the next retry period until the deadline.
                Ok(Attempt::Failed) | Err(_) => {}
            }
        }
    }

    /// One attempt to acquire or renew the lease (client-go's `tryAcquireOrRenew`).
    async fn try_acquire_or_renew(&mut self) -> Attempt {
        let duration_secs = self.cfg.lease_duration_seconds();
        let identity = self.cfg.identity.clone();

        // The leader's usual path: write over the version it wrote last, without reading.
        if let (true, Some(observed), Some(lease)) = (
            self.is_leader(),
            self.observed.as_ref(),
            self.lease.as_ref(),
        ) {
            if !observed.expired(Instant::now()) {
                let mut renewed = lease.clone();
                renewed.spec = Some(claimed_spec(
                    Some(&observed.spec),
                    &identity,
                    duration_secs,
                    now_micros(),
                ));
                match self
                    .api
                    .replace(&self.cfg.name, &PostParams::default(), &renewed)
                    .await
                {
                    Ok(written) => {
                        self.remember(written);
                        return Attempt::Held;
                    }
                    // Read the lease to see why.
                    Err(e) => self.log_failure("renewing", e),
                }
            }
        }

        let current = match self.api.get_opt(&self.cfg.name).await {
            Ok(current) => current,
            Err(e) => {
                self.log_failure("reading", e);
                return Attempt::Failed;
            }
        };
        let Some(current) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(claimed_spec(None, &identity, duration_secs, now_micros())),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.remember(created);
                    Attempt::Held
                }
                // 409 when another candidate created it first.
                Err(e) => {
                    self.log_failure("creating", e);
                    Attempt::Failed
                }
            };
        };
        self.remember(current.clone());
        let Some(observed) = self.observed.as_ref() else {
            return Attempt::Failed;
        };
        if let Decision::Wait { holder } = decide(observed, &identity, Instant::now()) {
            return Attempt::HeldBy(holder);
        }
        let mut claimed = current;
        claimed.spec = Some(claimed_spec(
            Some(&observed.spec),
            &identity,
            duration_secs,
            now_micros(),
        ));
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &claimed)
            .await
        {
            Ok(written) => {
                self.remember(written);
                Attempt::Held
            }
            // 409 when another candidate wrote it since it was read.
            Err(e) => {
                self.log_failure("acquiring", e);
                Attempt::Failed
            }
        }
    }

    /// Clears `holderIdentity` if this candidate holds the lease, within the renew deadline.
    async fn release(&mut self) {
        if tokio::time::timeout(self.cfg.renew_deadline, self.try_release())
            .await
            .is_err()
        {
            tracing::warn!(
                lease = %self.cfg.lease_ref(),
                "leader election: could not release the lease within the renew deadline"
            );
        }
    }

    async fn try_release(&mut self) {
        // Read first rather than trust the version last seen: a renewal cut short by the stop
        // may have been written after it. A second try covers a renewal landing meanwhile.
        for _ in 0..2 {
            let current = match self.api.get_opt(&self.cfg.name).await {
                Ok(Some(current)) => current,
                Ok(None) => return,
                Err(e) => {
                    self.log_failure("reading", e);
                    return;
                }
            };
            let spec = current.spec.clone().unwrap_or_default();
            if holder(&spec) != Some(self.cfg.identity.as_str()) {
                return;
            }
            let mut released = current;
            released.spec = Some(released_spec(&spec, now_micros()));
            match self
                .api
                .replace(&self.cfg.name, &PostParams::default(), &released)
                .await
            {
                Ok(written) => {
                    tracing::info!(
                        identity = %self.cfg.identity,
                        lease = %self.cfg.lease_ref(),
                        "released the lease"
                    );
                    self.remember(written);
                    return;
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => {
                    self.log_failure("releasing", e);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, duration: i32, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(duration),
            acquire_time: Some(MicroTime(Timestamp::from_second(1_000).unwrap())),
            renew_time: Some(MicroTime(Timestamp::from_second(1_010).unwrap())),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    fn seen(spec: LeaseSpec, at: Instant) -> Observation {
        Observation::new(None, spec, at)
    }

    #[test]
    fn defaults_are_client_gos_and_valid() {
        let cfg = LeaseConfig::new("kubevirt", "virt-controller", "pod-a");
        assert_eq!(cfg.lease_duration, Duration::from_secs(15));
        assert_eq!(cfg.renew_deadline, Duration::from_secs(10));
        assert_eq!(cfg.retry_period, Duration::from_secs(2));
        assert_eq!(cfg.lease_duration_seconds(), 15);
        cfg.validate().unwrap();
    }

    #[test]
    fn timings_that_could_overlap_leaders_are_refused() {
        let base = LeaseConfig::new("ns", "lease", "a");
        let cases = [
            LeaseConfig {
                renew_deadline: Duration::from_secs(15),
                ..base.clone()
            },
            LeaseConfig {
                retry_period: Duration::from_secs(9),
                ..base.clone()
            },
            LeaseConfig {
                retry_period: Duration::ZERO,
                ..base.clone()
            },
            LeaseConfig {
                identity: String::new(),
                ..base.clone()
            },
        ];
        for cfg in cases {
            assert!(
                matches!(cfg.validate(), Err(LeaderError::InvalidConfig { .. })),
                "{cfg:?}"
            );
        }
    }

    #[test]
    fn a_fractional_lease_duration_is_written_rounded_up() {
        let cfg = LeaseConfig {
            lease_duration: Duration::from_millis(2_500),
            ..LeaseConfig::new("ns", "lease", "a")
        };
        assert_eq!(cfg.lease_duration_seconds(), 3);
    }

    #[test]
    fn expiry_counts_from_when_the_record_was_seen_to_change() {
        let t0 = Instant::now();
        let first = seen(spec(Some("b"), 15, 0), t0);
        assert!(!first.expired(t0 + Duration::from_secs(14)));
        assert!(first.expired(t0 + Duration::from_secs(15)));

        // Read again unchanged later: still counted from t0.
        let again = Observation::new(
            Some(&first),
            spec(Some("b"), 15, 0),
            t0 + Duration::from_secs(10),
        );
        assert_eq!(again.since, t0);
        assert!(again.expired(t0 + Duration::from_secs(15)));

        // Renewed (the record changed): counted from when that was seen.
        let mut renewed = spec(Some("b"), 15, 0);
        renewed.renew_time = Some(MicroTime(Timestamp::from_second(1_012).unwrap()));
        let later = t0 + Duration::from_secs(12);
        let after = Observation::new(Some(&again), renewed, later);
        assert_eq!(after.since, later);
        assert!(!after.expired(t0 + Duration::from_secs(26)));
        assert!(after.expired(t0 + Duration::from_secs(27)));
    }

    #[test]
    fn remote_timestamps_do_not_shorten_the_wait() {
        // The holder's clock is far behind: its renewTime is ages ago, yet the lease was
        // just seen renewed.
        let now = Instant::now();
        let mut skewed = spec(Some("b"), 15, 3);
        skewed.renew_time = Some(MicroTime(Timestamp::from_second(0).unwrap()));
        assert_eq!(
            decide(&seen(skewed, now), "a", now + Duration::from_secs(1)),
            Decision::Wait { holder: "b".into() }
        );
    }

    #[test]
    fn a_lease_without_a_duration_is_expired() {
        let now = Instant::now();
        let mut s = spec(Some("b"), 0, 0);
        s.lease_duration_seconds = None;
        assert!(seen(s, now).expired(now));
    }

    #[test]
    fn who_acquires() {
        let now = Instant::now();
        let later = now + Duration::from_secs(16);
        let held_by_b = seen(spec(Some("b"), 15, 0), now);
        assert_eq!(
            decide(&held_by_b, "a", now),
            Decision::Wait { holder: "b".into() }
        );
        assert_eq!(decide(&held_by_b, "a", later), Decision::TakeOver);
        assert_eq!(decide(&held_by_b, "b", later), Decision::Renew);
        // Released (no holder, or an empty one as client-go writes): free at once.
        assert_eq!(
            decide(&seen(spec(None, 1, 2), now), "a", now),
            Decision::TakeOver
        );
        assert_eq!(
            decide(&seen(spec(Some(""), 1, 2), now), "a", now),
            Decision::TakeOver
        );
    }

    #[test]
    fn a_created_lease_starts_with_no_transitions() {
        let now = Timestamp::from_second(2_000).unwrap();
        let s = claimed_spec(None, "a", 15, now);
        assert_eq!(s.holder_identity.as_deref(), Some("a"));
        assert_eq!(s.lease_duration_seconds, Some(15));
        assert_eq!(s.lease_transitions, Some(0));
        assert_eq!(s.acquire_time, Some(MicroTime(now)));
        assert_eq!(s.renew_time, Some(MicroTime(now)));
    }

    #[test]
    fn renewing_keeps_acquire_time_and_transitions() {
        let now = Timestamp::from_second(2_000).unwrap();
        let current = spec(Some("a"), 15, 4);
        let s = claimed_spec(Some(&current), "a", 15, now);
        assert_eq!(s.acquire_time, current.acquire_time);
        assert_eq!(s.lease_transitions, Some(4));
        assert_eq!(s.renew_time, Some(MicroTime(now)));
    }

    #[test]
    fn taking_over_counts_a_transition() {
        let now = Timestamp::from_second(2_000).unwrap();
        for current in [
            spec(Some("b"), 15, 4),
            released_spec(&spec(Some("b"), 15, 4), now),
        ] {
            let s = claimed_spec(Some(&current), "a", 15, now);
            assert_eq!(s.holder_identity.as_deref(), Some("a"));
            assert_eq!(s.lease_transitions, Some(5));
            assert_eq!(s.acquire_time, Some(MicroTime(now)));
        }
    }

    #[test]
    fn releasing_clears_the_holder_and_keeps_the_count() {
        let now = Timestamp::from_second(2_000).unwrap();
        let s = released_spec(&spec(Some("a"), 15, 4), now);
        assert_eq!(holder(&s), None);
        assert_eq!(s.lease_transitions, Some(4));
        assert_eq!(s.lease_duration_seconds, Some(1));
    }

    #[test]
    fn timestamps_are_written_as_microtime() {
        let now = now_micros();
        assert_eq!(now.subsec_nanosecond() % 1_000, 0);
        let json = serde_json::to_value(claimed_spec(None, "a", 15, now)).unwrap();
        let renew = json["renewTime"].as_str().unwrap();
        // RFC 3339 with six fractional digits, in UTC.
        assert_eq!(renew.len(), "2006-01-02T15:04:05.000000Z".len(), "{renew}");
        let back: LeaseSpec = serde_json::from_value(json).unwrap();
        assert_eq!(back.renew_time, Some(MicroTime(now)));
    }

    #[test]
    fn retries_are_jittered_up_to_2_2_periods() {
        let period = Duration::from_secs(2);
        let waits: Vec<_> = (0..100).map(|_| jittered(period)).collect();
        assert!(waits
            .iter()
            .all(|w| *w >= period && *w <= period.mul_f64(2.2)));
        assert!(waits.iter().any(|w| *w != waits[0]));
    }
}
