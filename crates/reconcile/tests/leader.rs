//! Leader election against the embedded API server: candidates in one process, each with
//! its own `run_as_leader`, sharing a counter of running `lead` futures.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use kubevirt_apiserver::{ServerConfig, ServerHandle};
use kubevirt_reconcile::leader::{run_as_leader, LeaderError, LeaseConfig};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

const NAMESPACE: &str = "default";
const LEASE_DURATION: Duration = Duration::from_secs(3);
const RENEW_DEADLINE: Duration = Duration::from_secs(2);
const RETRY_PERIOD: Duration = Duration::from_millis(250);

struct Server {
    _dir: tempfile::TempDir,
    handle: ServerHandle,
    client: Client,
}

async fn start_server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ServerConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    let handle = kubevirt_apiserver::start(cfg).await.unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&handle.kubeconfig_path).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = Client::try_from(cfg).unwrap();
    Server {
        _dir: dir,
        handle,
        client,
    }
}

impl Server {
    async fn lease(&self, name: &str) -> LeaseSpec {
        Api::<Lease>::namespaced(self.client.clone(), NAMESPACE)
            .get(name)
            .await
            .unwrap()
            .spec
            .unwrap()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Event {
    Started(String),
    Stopped(String),
}

/// What the candidates' `lead` futures report: how many run at once (and the most ever),
/// and when each starts and stops.
#[derive(Clone)]
struct Probe {
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    events: mpsc::UnboundedSender<Event>,
}

/// One `lead` future running; dropping it (the future stopped) counts it out.
struct Running {
    probe: Probe,
    identity: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.probe.running.fetch_sub(1, Ordering::SeqCst);
        let _ = self
            .probe
            .events
            .send(Event::Stopped(self.identity.clone()));
    }
}

impl Probe {
    fn new() -> (Probe, mpsc::UnboundedReceiver<Event>) {
        let (events, rx) = mpsc::unbounded_channel();
        let probe = Probe {
            running: Arc::default(),
            most: Arc::default(),
            events,
        };
        (probe, rx)
    }

    /// A controller's work: runs until dropped.
    async fn lead(self, identity: String) {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        let _ = self.events.send(Event::Started(identity.clone()));
        let _running = Running {
            probe: self,
            identity,
        };
        std::future::pending::<()>().await
    }

    fn most(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }
}

struct Candidate {
    identity: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), LeaderError>>,
}

fn candidate(server: &Server, probe: &Probe, lease: &str, identity: &str) -> Candidate {
    let cfg = LeaseConfig {
        lease_duration: LEASE_DURATION,
        renew_deadline: RENEW_DEADLINE,
        retry_period: RETRY_PERIOD,
        ..LeaseConfig::new(NAMESPACE, lease, identity)
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let stop = async move {
        let _ = stop_rx.await;
    };
    let (probe, id) = (probe.clone(), identity.to_string());
    let task = tokio::spawn(run_as_leader(server.client.clone(), cfg, stop, move || {
        probe.lead(id)
    }));
    Candidate {
        identity: identity.to_string(),
        stop: Some(stop_tx),
        task,
    }
}

impl Candidate {
    /// Fires `stop` and waits for `run_as_leader` to return.
    async fn stop(mut self) -> Result<(), LeaderError> {
        let _ = self.stop.take().unwrap().send(());
        timeout(Duration::from_secs(10), self.task)
            .await
            .expect("run_as_leader returns after stop")
            .unwrap()
    }

    /// Kills the candidate: its task ends where it is, releasing nothing.
    async fn kill(self) {
        self.task.abort();
        assert!(self.task.await.unwrap_err().is_cancelled());
    }
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<Event>, within: Duration) -> Event {
    timeout(within, events.recv())
        .await
        .expect("an event in time")
        .unwrap()
}

/// Starts candidates `a` and `b` and waits for one to lead; returns (leader, follower).
async fn elect(
    server: &Server,
    probe: &Probe,
    events: &mut mpsc::UnboundedReceiver<Event>,
    lease: &str,
) -> (Candidate, Candidate) {
    let a = candidate(server, probe, lease, "a");
    let b = candidate(server, probe, lease, "b");
    let Event::Started(first) = next_event(events, Duration::from_secs(20)).await else {
        panic!("a candidate stopped before any started");
    };
    // The follower must not lead while the leader keeps renewing, even past the lease
    // duration.
    assert!(
        timeout(LEASE_DURATION * 2, events.recv()).await.is_err(),
        "leadership changed while the leader was renewing"
    );
    let spec = server.lease(lease).await;
    assert_eq!(spec.holder_identity.as_deref(), Some(first.as_str()));
    assert_eq!(spec.lease_transitions, Some(0));
    assert_eq!(spec.lease_duration_seconds, Some(3));
    if first == a.identity {
        (a, b)
    } else {
        (b, a)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_leader_hands_over_at_once() {
    let server = start_server().await;
    let (probe, mut events) = Probe::new();
    let (leader, follower) = elect(&server, &probe, &mut events, "handover").await;

    let stopped_at = Instant::now();
    let leader_id = leader.identity.clone();
    assert!(leader.stop().await.is_ok());
    assert_eq!(
        next_event(&mut events, Duration::from_secs(5)).await,
        Event::Stopped(leader_id)
    );
    assert_eq!(
        next_event(&mut events, LEASE_DURATION).await,
        Event::Started(follower.identity.clone())
    );
    let waited = stopped_at.elapsed();
    assert!(
        waited < Duration::from_millis(1_500),
        "the follower took over after {waited:?}: the lease was not released"
    );

    let spec = server.lease("handover").await;
    assert_eq!(
        spec.holder_identity.as_deref(),
        Some(follower.identity.as_str())
    );
    assert_eq!(spec.lease_transitions, Some(1));

    assert!(follower.stop().await.is_ok());
    assert_eq!(probe.most(), 1);
    let spec = server.lease("handover").await;
    assert_eq!(spec.holder_identity, None);
    assert_eq!(spec.lease_transitions, Some(1));
    server.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_after_the_lease_duration() {
    let server = start_server().await;
    let (probe, mut events) = Probe::new();
    let (leader, follower) = elect(&server, &probe, &mut events, "killed").await;

    let leader_id = leader.identity.clone();
    leader.kill().await;
    let killed_at = Instant::now();
    assert_eq!(
        next_event(&mut events, Duration::from_secs(1)).await,
        Event::Stopped(leader_id.clone())
    );
    // Not released: the holder stays until the follower takes over.
    let spec = server.lease("killed").await;
    assert_eq!(spec.holder_identity.as_deref(), Some(leader_id.as_str()));

    assert_eq!(
        next_event(&mut events, LEASE_DURATION * 3).await,
        Event::Started(follower.identity.clone())
    );
    let waited = killed_at.elapsed();
    // The last renewal the follower saw may predate the kill by up to about a retry period.
    assert!(
        waited >= LEASE_DURATION - RETRY_PERIOD * 2,
        "the follower took over after {waited:?}, before the lease expired"
    );

    let spec = server.lease("killed").await;
    assert_eq!(
        spec.holder_identity.as_deref(),
        Some(follower.identity.as_str())
    );
    assert_eq!(spec.lease_transitions, Some(1));

    assert!(follower.stop().await.is_ok());
    assert_eq!(probe.most(), 1);
    server.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_sees_another_holder_stops_leading() {
    let server = start_server().await;
    let (probe, mut events) = Probe::new();
    let leader = candidate(&server, &probe, "taken", "a");
    assert_eq!(
        next_event(&mut events, Duration::from_secs(20)).await,
        Event::Started("a".into())
    );

    // A follower that is stopped while waiting returns Ok and leaves the lease alone.
    let follower = candidate(&server, &probe, "taken", "b");
    tokio::time::sleep(RETRY_PERIOD * 3).await;
    assert!(follower.stop().await.is_ok());
    let spec = server.lease("taken").await;
    assert_eq!(spec.holder_identity.as_deref(), Some("a"));

    // Someone else writes the lease as theirs (as an operator, or a partitioned leader's
    // successor would).
    let api = Api::<Lease>::namespaced(server.client.clone(), NAMESPACE);
    let mut lease = api.get("taken").await.unwrap();
    let spec = lease.spec.as_mut().unwrap();
    spec.holder_identity = Some("intruder".into());
    spec.lease_duration_seconds = Some(60);
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    api.replace("taken", &PostParams::default(), &lease)
        .await
        .unwrap();

    let result = timeout(Duration::from_secs(5), leader.task)
        .await
        .expect("the leader notices at its next renewal")
        .unwrap();
    assert!(
        matches!(&result, Err(LeaderError::LostLease { identity, .. }) if identity == "a"),
        "{result:?}"
    );
    assert_eq!(
        next_event(&mut events, Duration::from_secs(1)).await,
        Event::Stopped("a".into())
    );
    assert_eq!(probe.most(), 1);
    // The lost leader did not release (or otherwise touch) the lease it no longer holds.
    let spec = server.lease("taken").await;
    assert_eq!(spec.holder_identity.as_deref(), Some("intruder"));
    server.handle.shutdown().await;
}
