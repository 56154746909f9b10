//! plan -> schedule -> solve -> assemble on fake workers: no binary, no
//! sandbox, no network.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use xbuild_coordinator::worker::WorkerFuture;
use xbuild_coordinator::{
    assemble, plan, schedule_with, solve, AssembleOptions, Assignment, BuildRequest,
    DockerfileSource, Planned, PlatformState, Session, SolveInputs, Solved, Worker, WorkerError,
    WorkerOutput,
};
use xbuild_engine::events::{Event, EventSink};
use xbuild_engine::{EngineError, Secrets, SolveRequest, SolveResult, StoreSource, VertexIds};
use xbuild_oci::manifest::{ImageIndex, Manifest};
use xbuild_oci::{BlobStore, Descriptor, Platform};
use xbuild_plan::PlanOptions;
use xbuild_registry::{Registry, RegistryConfig};

/// A generous bound for waits that should end at once (loaded machines).
const PATIENCE: Duration = Duration::from_secs(60);

fn platform(s: &str) -> Platform {
    Platform::parse(s).unwrap()
}

/// Events kept in memory.
#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

impl EventSink for Recorder {
    fn emit(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }
}

impl Recorder {
    fn warnings(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::Warning { message } => Some(message.clone()),
                _ => None,
            })
            .collect()
    }
}

/// What a fake worker does.
#[derive(Clone)]
enum Behaviour {
    /// Yield `n` times, then succeed.
    Succeed(usize),
    /// Yield `n` times, then fail the build.
    Fail(usize),
    /// Report a lost connection.
    Lose,
    /// Never finish; set the flag when cancelled (dropped).
    Hang(Arc<AtomicBool>),
    /// Wait until every platform has started (proves fan-out), then succeed.
    Rendezvous(Arc<tokio::sync::Barrier>),
}

struct Fake {
    name: String,
    behaviour: Behaviour,
    calls: Arc<AtomicUsize>,
}

fn fake(name: &str, behaviour: Behaviour) -> Box<dyn Worker> {
    Box::new(Fake {
        name: name.to_string(),
        behaviour,
        calls: Arc::new(AtomicUsize::new(0)),
    })
}

/// Sets its flag when dropped (the future holding it was cancelled).
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn output(name: &str, p: &Platform) -> WorkerOutput {
    // A manifest descriptor unique to the platform; assembly only needs
    // descriptors with platforms.
    let manifest = Descriptor::of_bytes(
        "application/vnd.oci.image.manifest.v1+json",
        format!("manifest of {p}").as_bytes(),
    )
    .with_platform(p);
    WorkerOutput {
        result: SolveResult {
            platform: p.clone(),
            manifest,
            config: Default::default(),
            steps: 1,
            cached: 0,
            duration: Duration::from_millis(1),
        },
        worker: name.to_string(),
        bytes_sent: None,
    }
}

impl Worker for Fake {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn solve<'a>(&'a self, req: SolveRequest<'a>) -> WorkerFuture<'a> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let p = req.graph.platform.clone();
        Box::pin(async move {
            match &self.behaviour {
                Behaviour::Succeed(n) => {
                    for _ in 0..*n {
                        tokio::task::yield_now().await;
                    }
                    Ok(output(&self.name, &p))
                }
                Behaviour::Fail(n) => {
                    for _ in 0..*n {
                        tokio::task::yield_now().await;
                    }
                    Err(WorkerError::Build(EngineError::Remote {
                        worker: self.name.clone(),
                        message: format!("step failed on {p}"),
                    }))
                }
                Behaviour::Lose => Err(WorkerError::Lost(format!(
                    "{} (test pipe): connection lost",
                    self.name
                ))),
                Behaviour::Hang(flag) => {
                    let _guard = DropFlag(flag.clone());
                    std::future::pending::<()>().await;
                    unreachable!()
                }
                Behaviour::Rendezvous(b) => {
                    b.wait().await;
                    Ok(output(&self.name, &p))
                }
            }
        })
    }
}

struct Bed {
    _dir: tempfile::TempDir,
    session: Session,
    store: BlobStore,
}

fn bed() -> Bed {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().join("store")).unwrap();
    Bed {
        session: Session {
            root: dir.path().to_path_buf(),
            registry: Registry::new(RegistryConfig::default()),
        },
        store,
        _dir: dir,
    }
}

fn request(platforms: &[&str]) -> BuildRequest {
    BuildRequest {
        dockerfile: DockerfileSource {
            display: "Dockerfile".into(),
            text: "FROM scratch\nENV A=1\nLABEL b=2\n".into(),
        },
        dockerfile_in_context: None,
        plan: PlanOptions::new("Dockerfile"),
        context_dir: None,
        platforms: platforms.iter().map(|p| platform(p)).collect(),
        tags: Vec::new(),
        secrets: Secrets::new(),
        outputs: Vec::new(),
        cache_from: Vec::new(),
        cache_to: Vec::new(),
        node_pins: Vec::new(),
        no_cache: false,
        no_cache_filter: Vec::new(),
        labels: Default::default(),
        pull: false,
        source_date_epoch: None,
        attest: Default::default(),
    }
}

/// Plan `platforms`, give each the worker `pick` names, and solve.
async fn run(
    bed: &Bed,
    platforms: &[&str],
    events: &Recorder,
    mut pick: impl FnMut(&Platform) -> (Box<dyn Worker>, Option<Box<dyn Worker>>),
) -> (Planned, Solved) {
    let planned = plan(&request(platforms), &bed.session).await.unwrap();
    assert_eq!(
        planned
            .graphs
            .iter()
            .map(|g| g.platform.to_string())
            .collect::<Vec<_>>(),
        platforms,
        "one graph per platform, in the requested order"
    );
    let schedule = schedule_with(&planned, |g| {
        let (worker, fallback) = pick(&g.platform);
        Ok(Assignment {
            platform: g.platform.clone(),
            worker,
            fallback,
        })
    })
    .unwrap();
    let ids = VertexIds::new();
    let secrets = Secrets::new();
    let inputs = SolveInputs {
        graphs: &planned.graphs,
        context_dir: None,
        context: None,
        source: &StoreSource,
        events,
        ids: &ids,
        no_cache: false,
        no_cache_filter: &[],
        secrets: &secrets,
        source_date_epoch: None,
    };
    let solved = tokio::time::timeout(PATIENCE, solve(&schedule, &inputs))
        .await
        .expect("solve did not finish");
    (planned, solved)
}

fn states(solved: &Solved) -> Vec<(String, &'static str)> {
    solved
        .platforms
        .iter()
        .map(|p| {
            let s = match &p.state {
                PlatformState::Done(_) => "done",
                PlatformState::Failed { .. } => "failed",
                PlatformState::Cancelled => "cancelled",
            };
            (p.platform.to_string(), s)
        })
        .collect()
}

#[tokio::test]
async fn every_platform_runs_at_once() {
    let bed = bed();
    let events = Recorder::default();
    let platforms = ["linux/amd64", "linux/arm64", "linux/arm/v7"];
    // Each worker waits for all three to have started: a sequential solve
    // would never finish.
    let barrier = Arc::new(tokio::sync::Barrier::new(platforms.len()));
    let (_, solved) = run(&bed, &platforms, &events, |_| {
        (fake("local", Behaviour::Rendezvous(barrier.clone())), None)
    })
    .await;
    assert!(solved.ok(), "{:?}", states(&solved));
    assert_eq!(solved.done().len(), 3);
}

#[tokio::test]
async fn one_failing_platform_cancels_the_others_at_once() {
    let bed = bed();
    let events = Recorder::default();
    let cancelled = Arc::new(AtomicBool::new(false));
    let (_, solved) = run(
        &bed,
        &["linux/amd64", "linux/arm64", "linux/s390x"],
        &events,
        |p| match p.architecture() {
            // The quick one is done before the failure.
            "amd64" => (fake("local", Behaviour::Succeed(0)), None),
            "arm64" => (fake("qemu", Behaviour::Fail(3)), None),
            _ => (fake("qemu", Behaviour::Hang(cancelled.clone())), None),
        },
    )
    .await;
    // `solve` returned although the s390x build never ends: it was dropped.
    assert!(
        cancelled.load(Ordering::SeqCst),
        "the hanging build was not cancelled"
    );
    assert_eq!(
        states(&solved),
        vec![
            ("linux/amd64".to_string(), "done"),
            ("linux/arm64".to_string(), "failed"),
            ("linux/s390x".to_string(), "cancelled"),
        ]
    );
    let failed = &solved.platforms[1].state;
    assert!(
        matches!(failed, PlatformState::Failed { worker, error }
            if worker == "qemu" && error.to_string().contains("step failed on linux/arm64")),
        "{failed:?}"
    );
}

#[tokio::test]
async fn a_lost_node_falls_back_to_this_machine() {
    let bed = bed();
    let events = Recorder::default();
    let (_, solved) = run(&bed, &["linux/amd64", "linux/arm64"], &events, |p| {
        if p.architecture() == "arm64" {
            (
                fake("node arm1", Behaviour::Lose),
                Some(fake("qemu", Behaviour::Succeed(1))),
            )
        } else {
            (fake("local", Behaviour::Succeed(0)), None)
        }
    })
    .await;
    assert!(solved.ok(), "{:?}", states(&solved));
    let workers: Vec<_> = solved.done().iter().map(|d| d.worker.clone()).collect();
    assert_eq!(workers, ["local", "qemu"]);
    let w = events.warnings();
    assert_eq!(
        w,
        ["node arm1 (test pipe): connection lost; building linux/arm64 on this machine (qemu) instead"]
    );
}

#[tokio::test]
async fn a_lost_worker_without_fallback_fails_the_platform() {
    let bed = bed();
    let events = Recorder::default();
    let (_, solved) = run(&bed, &["linux/arm64"], &events, |_| {
        (fake("node arm1", Behaviour::Lose), None)
    })
    .await;
    assert_eq!(states(&solved), [("linux/arm64".to_string(), "failed")]);
}

#[tokio::test]
async fn the_index_lists_platforms_in_the_requested_order() {
    let bed = bed();
    let events = Recorder::default();
    let order = ["linux/arm64", "linux/amd64", "linux/arm/v7"];
    // Finish in the reverse order of the request.
    let (_, solved) = run(&bed, &order, &events, |p| {
        let delay = match p.architecture() {
            "arm64" => 20,
            "amd64" => 10,
            _ => 0,
        };
        (fake("local", Behaviour::Succeed(delay)), None)
    })
    .await;
    let done: Vec<_> = solved.done().into_iter().cloned().collect();
    let assembled = assemble(
        &bed.store,
        &done,
        &AssembleOptions {
            single_platform: false,
            ..Default::default()
        },
    )
    .unwrap();
    let bytes = bed.store.read_to_vec(&assembled.oci.digest).unwrap();
    let Manifest::Index(ImageIndex { manifests, .. }) = Manifest::parse(&bytes, None).unwrap()
    else {
        panic!("not an index");
    };
    let listed: Vec<String> = manifests
        .iter()
        .map(|d| d.platform().unwrap().to_string())
        .collect();
    assert_eq!(listed, order);
    assert_eq!(assembled.result(), &assembled.oci);
}

#[tokio::test]
async fn one_requested_platform_is_its_manifest() {
    let bed = bed();
    let events = Recorder::default();
    let (_, solved) = run(&bed, &["linux/amd64"], &events, |_| {
        (fake("local", Behaviour::Succeed(0)), None)
    })
    .await;
    let done: Vec<_> = solved.done().into_iter().cloned().collect();
    let assembled = assemble(
        &bed.store,
        &done,
        &AssembleOptions {
            single_platform: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(assembled.oci, done[0].manifest);
}

/// Assemble with max provenance: one attestation manifest per platform
/// after the platforms (buildx's layout), each statement about its platform
/// manifest and recording the worker that built it; or, in the referrers
/// layout, none in the index and one artifact per platform.
#[tokio::test]
async fn attestations_follow_the_platforms() {
    use xbuild_attest::provenance::{Mode, PredicateOptions};
    use xbuild_coordinator::attest::{Prepared, Timing};
    use xbuild_coordinator::Attach;
    let bed = bed();
    let events = Recorder::default();
    let order = ["linux/amd64", "linux/arm64"];
    let (planned, solved) = run(&bed, &order, &events, |p| {
        let name = if p.architecture() == "arm64" {
            "node arm1"
        } else {
            "local"
        };
        (fake(name, Behaviour::Succeed(0)), None)
    })
    .await;
    let done: Vec<_> = solved.done().into_iter().cloned().collect();
    let mut req = request(&order);
    req.tags = vec!["localhost:5000/app:1".into()];
    req.attest.provenance = Some(PredicateOptions {
        mode: Mode::Max,
        ..Default::default()
    });
    let now = std::time::SystemTime::now();
    let timing = Timing {
        started: now,
        finished: now,
    };
    let prepared = Prepared::prepare(
        &req,
        &planned.graphs,
        &done,
        &bed.store,
        &bed.session.root.join("tmp"),
        &timing,
    )
    .unwrap()
    .expect("provenance asked for");
    let statements = |m: &Descriptor| prepared.statements(m);
    for referrers in [false, true] {
        let assembled = assemble(
            &bed.store,
            &done,
            &AssembleOptions {
                single_platform: false,
                attestations: Some(Attach {
                    referrers,
                    statements: &statements,
                }),
                ..Default::default()
            },
        )
        .unwrap();
        let bytes = bed.store.read_to_vec(&assembled.oci.digest).unwrap();
        let Manifest::Index(idx) = Manifest::parse(&bytes, None).unwrap() else {
            panic!("not an index");
        };
        let attestation_manifests: Vec<Descriptor> = if referrers {
            assert_eq!(idx.manifests.len(), 2, "only the platforms");
            assert_eq!(assembled.oci_referrers.len(), 2);
            for (art, subject) in &assembled.oci_referrers {
                let m = bed.store.read_to_vec(&art.digest).unwrap();
                let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
                assert_eq!(v["subject"]["digest"], subject.digest.as_str());
            }
            assembled
                .oci_referrers
                .iter()
                .map(|(a, _)| a.clone())
                .collect()
        } else {
            assert_eq!(idx.manifests.len(), 4);
            for (i, d) in idx.manifests[2..].iter().enumerate() {
                assert_eq!(
                    d.annotations["vnd.docker.reference.digest"],
                    done[i].manifest.digest.as_str()
                );
                assert_eq!(d.platform.as_ref().unwrap().os, "unknown");
            }
            idx.manifests[2..].to_vec()
        };
        for (i, a) in attestation_manifests.iter().enumerate() {
            let m: serde_json::Value =
                serde_json::from_slice(&bed.store.read_to_vec(&a.digest).unwrap()).unwrap();
            let layer = m["layers"][0]["digest"].as_str().unwrap();
            let st: serde_json::Value = serde_json::from_slice(
                &bed.store
                    .read_to_vec(&xbuild_oci::Digest::parse(layer).unwrap())
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(
                st["subject"][0]["digest"]["sha256"],
                done[i].manifest.digest.hex()
            );
            assert_eq!(
                st["subject"][0]["name"],
                format!(
                    "pkg:docker/localhost:5000/app@1?platform={}",
                    order[i].replace('/', "%2F")
                )
            );
            let ip = &st["predicate"]["buildDefinition"]["internalParameters"];
            assert_eq!(ip["targetPlatform"], order[i]);
            let worker = &ip["worker"];
            if i == 1 {
                assert_eq!(worker["kind"], "node");
                assert_eq!(worker["name"], "arm1");
            } else {
                assert_eq!(worker["kind"], "local");
            }
            // mode=max: the steps (FROM, ENV, LABEL) with their lines.
            let steps = ip["buildConfig"]["llbDefinition"].as_array().unwrap();
            assert_eq!(steps.len(), 3, "{steps:?}");
            assert_eq!(steps[2]["inputs"][0], "step1:0");
        }
        // Each platform's statements are kept for local exports.
        assert_eq!(assembled.statements.len(), 2);
    }
    // One platform with attestations becomes an index, as with buildx.
    let one = assemble(
        &bed.store,
        &done[..1],
        &AssembleOptions {
            single_platform: true,
            attestations: Some(Attach {
                referrers: false,
                statements: &statements,
            }),
            ..Default::default()
        },
    )
    .unwrap();
    assert_ne!(one.oci, done[0].manifest);
    assert_eq!(one.oci_manifests.len(), 2);
}
