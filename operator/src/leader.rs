//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas are safe:
//! only the lease holder runs the controller, the other waits to take over.
//!
//! The protocol is client-go's:
//! - The holder renews `spec.renewTime` every `retry_period`. Every write is a `replace`
//!   carrying the resourceVersion read just before, so of two candidates racing for the same
//!   lease exactly one wins (the other gets 409 Conflict and stays a follower).
//! - A follower takes the lease over when the record (holder, renewTime) has not changed for
//!   `leaseDurationSeconds`, measured on the follower's own monotonic clock from when it first
//!   saw that record. Comparing renewTime with the local wall clock would trust the two
//!   machines' clocks to agree; this only trusts both to measure durations.
//! - A holder that cannot renew for `renew_deadline` (shorter than the lease duration) stops
//!   its controller before anyone else may take over.
//! - On shutdown the holder releases the lease (empty holder, 1 s duration) so a successor
//!   starts at once instead of waiting for expiry.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Lease timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Name of the Lease object.
    pub name: String,
    /// Namespace of the Lease object.
    pub namespace: String,
    /// This candidate's identity, written as holderIdentity (the pod name).
    pub identity: String,
    /// How long a lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How long the holder keeps trying to renew before it steps down.
    pub renew_deadline: Duration,
    /// Interval between renewals, and between attempts to acquire.
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(
        name: impl Into<String>,
        namespace: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Errors talking to the API server about the lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("cannot read or write Lease {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl LeaderError {
    /// Low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        "lease_api"
    }
}

/// What a candidate should do with the lease it just read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// It holds the lease: renew it.
    Renew,
    /// Nobody holds a valid lease: take it.
    Acquire,
    /// Someone else holds a valid lease.
    Follow { holder: String },
}

/// Decides from the lease record. `unchanged_for` is how long this candidate has seen the
/// same (holder, renewTime) record.
pub fn decide(
    spec: Option<&LeaseSpec>,
    identity: &str,
    unchanged_for: Duration,
    default_duration: Duration,
) -> Decision {
    let holder = spec
        .and_then(|spec| spec.holder_identity.as_deref())
        .filter(|holder| !holder.is_empty());
    let Some(holder) = holder else {
        return Decision::Acquire;
    };
    if holder == identity {
        return Decision::Renew;
    }
    let duration = spec
        .and_then(|spec| spec.lease_duration_seconds)
        .and_then(|seconds| u64::try_from(seconds).ok())
        .map(Duration::from_secs)
        .unwrap_or(default_duration);
    if unchanged_for >= duration {
        Decision::Acquire
    } else {
        Decision::Follow {
            holder: holder.to_string(),
        }
    }
}

/// What a follower watches for changes: holder and renewTime.
type LeaseRecord = (Option<String>, Option<MicroTime>);

/// The record a follower watches for changes.
fn record(spec: Option<&LeaseSpec>) -> LeaseRecord {
    (
        spec.and_then(|spec| spec.holder_identity.clone()),
        spec.and_then(|spec| spec.renew_time.clone()),
    )
}

/// A candidate for the lease.
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The last record seen and when it was first seen.
    observed: Option<(LeaseRecord, Instant)>,
}

impl LeaderElector {
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
        }
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    fn error(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            namespace: self.settings.namespace.clone(),
            name: self.settings.name.clone(),
            source,
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.settings.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// One attempt to acquire or renew the lease. `Ok(true)` while this candidate holds it.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaderError> {
        let now = MicroTime(Timestamp::now());
        let existing = self
            .api
            .get_opt(&self.settings.name)
            .await
            .map_err(|source| self.error(source))?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.settings.identity.clone()),
                    lease_duration_seconds: Some(self.duration_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(false),
                Err(source) => Err(self.error(source)),
            };
        };

        let current = record(lease.spec.as_ref());
        let first_seen = match &self.observed {
            Some((seen, since)) if *seen == current => *since,
            _ => {
                let since = Instant::now();
                self.observed = Some((current, since));
                since
            }
        };
        let decision = decide(
            lease.spec.as_ref(),
            &self.settings.identity,
            first_seen.elapsed(),
            self.settings.lease_duration,
        );
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        match decision {
            Decision::Follow { .. } => return Ok(false),
            Decision::Renew => {
                spec.renew_time = Some(now);
                spec.lease_duration_seconds = Some(self.duration_seconds());
            }
            Decision::Acquire => {
                spec.holder_identity = Some(self.settings.identity.clone());
                spec.lease_duration_seconds = Some(self.duration_seconds());
                spec.acquire_time = Some(now.clone());
                spec.renew_time = Some(now);
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
        }
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            // Someone else wrote the lease since we read it: they won this round.
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(false),
            Err(source) => Err(self.error(source)),
        }
    }

    /// Gives the lease up if this candidate holds it, so a successor need not wait for expiry.
    pub async fn release(&mut self) -> Result<(), LeaderError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.settings.name)
            .await
            .map_err(|source| self.error(source))?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(()),
            Err(source) => Err(self.error(source)),
        }
    }

    /// Keeps renewing; returns when renewal has failed for `renew_deadline` (leadership lost).
    async fn keep_renewing(&mut self) {
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(self.settings.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewal = Instant::now(),
                Ok(false) => {
                    warn!("another candidate holds the lease");
                    return;
                }
                Err(error) => warn!(%error, "cannot renew the lease"),
            }
            if last_renewal.elapsed() >= self.settings.renew_deadline {
                return;
            }
        }
    }
}

/// Runs `lead` while this candidate holds the lease, until `shutdown` is cancelled.
///
/// `lead` gets a token cancelled when leadership is lost or on shutdown; its future should
/// then wind down (the controller finishes in-flight reconciliations). After losing the lease
/// the candidate goes back to waiting for it. `on_change(true/false)` reports the role.
pub async fn run_elected<F, Fut>(
    mut elector: LeaderElector,
    shutdown: CancellationToken,
    mut on_change: impl FnMut(bool),
    mut lead: F,
) where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    let settings = elector.settings().clone();
    info!(lease = %format!("{}/{}", settings.namespace, settings.name), identity = %settings.identity, "waiting for the leader lease");
    loop {
        // Follower: try until the lease is ours.
        loop {
            match elector.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(error) => warn!(%error, "cannot acquire the lease"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(settings.retry_period) => {}
            }
        }
        info!(identity = %settings.identity, "acquired the leader lease; starting the controller");
        on_change(true);

        let leading = shutdown.child_token();
        let work = lead(leading.clone());
        tokio::pin!(work);
        let lost = tokio::select! {
            () = &mut work => false,
            () = elector.keep_renewing() => true,
        };
        on_change(false);
        if lost {
            warn!("lost the leader lease; stopping the controller");
            leading.cancel();
            // In-flight reconciliations finish; a successor may start meanwhile, which is
            // harmless because every write is an idempotent server-side apply.
            if tokio::time::timeout(settings.renew_deadline, &mut work)
                .await
                .is_err()
            {
                warn!("the controller did not stop in time");
            }
            continue;
        }
        if let Err(error) = elector.release().await {
            warn!(%error, "cannot release the lease; a successor waits for it to expire");
        } else {
            info!("released the leader lease");
        }
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DURATION: Duration = Duration::from_secs(15);

    fn lease(holder: Option<&str>, seconds: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: seconds,
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn missing_or_released_lease_is_acquired() {
        assert_eq!(
            decide(None, "me", Duration::ZERO, DURATION),
            Decision::Acquire
        );
        let released = lease(None, Some(1));
        assert_eq!(
            decide(Some(&released), "me", Duration::ZERO, DURATION),
            Decision::Acquire
        );
        let empty = lease(Some(""), Some(15));
        assert_eq!(
            decide(Some(&empty), "me", Duration::ZERO, DURATION),
            Decision::Acquire
        );
    }

    #[test]
    fn own_lease_is_renewed() {
        let mine = lease(Some("me"), Some(15));
        assert_eq!(
            decide(Some(&mine), "me", Duration::from_secs(60), DURATION),
            Decision::Renew
        );
    }

    #[test]
    fn valid_foreign_lease_is_followed_until_it_expires() {
        let theirs = lease(Some("other"), Some(15));
        assert_eq!(
            decide(Some(&theirs), "me", Duration::from_secs(14), DURATION),
            Decision::Follow {
                holder: "other".into()
            }
        );
        assert_eq!(
            decide(Some(&theirs), "me", Duration::from_secs(15), DURATION),
            Decision::Acquire
        );
    }

    #[test]
    fn lease_duration_comes_from_the_record() {
        let short = lease(Some("other"), Some(5));
        assert_eq!(
            decide(Some(&short), "me", Duration::from_secs(6), DURATION),
            Decision::Acquire
        );
        let unspecified = lease(Some("other"), None);
        assert!(matches!(
            decide(Some(&unspecified), "me", Duration::from_secs(6), DURATION),
            Decision::Follow { .. }
        ));
    }
}
