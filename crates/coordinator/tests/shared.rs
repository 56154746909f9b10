//! Shared steps on fake workers: the start of a `$BUILDPLATFORM` stage that
//! does not depend on the target is solved once, on the worker picked for
//! its execution platform, before the targets; each target's solve is told
//! which prefix it takes from the cache; a failure there stops the build
//! before any target starts.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use xbuild_coordinator::worker::WorkerFuture;
use xbuild_coordinator::{
    plan, schedule_with, solve, Assignment, BuildRequest, DockerfileSource, PlatformState, Session,
    SolveInputs, Worker, WorkerError, WorkerOutput,
};
use xbuild_engine::events::{Event, EventSink, VertexId};
use xbuild_engine::{EngineError, Secrets, SolveRequest, SolveResult, StoreSource, VertexIds};
use xbuild_oci::{Descriptor, Platform};
use xbuild_plan::PlanOptions;
use xbuild_registry::{Registry, RegistryConfig};

const PATIENCE: Duration = Duration::from_secs(60);

/// A build-platform stage: FROM and `ENV TOOL=1` are the same for every
/// target; from `ARG TARGETARCH` on, the steps are the target's.
const CROSS: &str = "FROM --platform=$BUILDPLATFORM scratch AS build\n\
    ENV TOOL=1\n\
    ARG TARGETARCH\n\
    ENV ARCH=$TARGETARCH\n\
    FROM scratch\n\
    COPY --from=build / /\n";

#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

impl EventSink for Recorder {
    fn emit(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }
}

/// One solve a fake worker saw.
#[derive(Debug, Clone, PartialEq)]
struct Call {
    worker: String,
    platform: String,
    stages: usize,
    presolved: Vec<(usize, usize)>,
}

struct Fake {
    name: String,
    fail: bool,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Worker for Fake {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn solve<'a>(&'a self, req: SolveRequest<'a>) -> WorkerFuture<'a> {
        let p = req.graph.platform.clone();
        self.calls.lock().unwrap().push(Call {
            worker: self.name.clone(),
            platform: p.to_string(),
            stages: req.graph.stages.len(),
            presolved: req.presolved.to_vec(),
        });
        // Like the engine: one vertex per stage, labelled with its platform.
        req.events.emit(Event::Started {
            id: VertexId(self.calls.lock().unwrap().len() as u64),
            platform: p.clone(),
            stage: req.graph.stages[0].display_name(),
            index: 1,
            total: req.graph.stages[0].steps.len() + 1,
            name: req.graph.stages[0].from_text.clone(),
            worker: self.name.clone(),
            shared_by: Vec::new(),
        });
        let fail = self.fail;
        Box::pin(async move {
            tokio::task::yield_now().await;
            if fail {
                return Err(WorkerError::Build(EngineError::Remote {
                    worker: self.name.clone(),
                    message: "toolchain failed".into(),
                }));
            }
            let manifest = Descriptor::of_bytes(
                "application/vnd.oci.image.manifest.v1+json",
                format!("manifest of {p} by {}", self.name).as_bytes(),
            )
            .with_platform(&p);
            Ok(WorkerOutput {
                result: SolveResult {
                    platform: p.clone(),
                    manifest,
                    config: Default::default(),
                    steps: 1,
                    cached: 0,
                    duration: Duration::from_millis(1),
                },
                worker: self.name.clone(),
                bytes_sent: None,
            })
        })
    }
}

fn request(text: &str, platforms: &[&str]) -> BuildRequest {
    let mut opts = PlanOptions::new("Dockerfile");
    opts.build_platform = Platform::parse("linux/amd64").unwrap();
    BuildRequest {
        dockerfile: DockerfileSource {
            display: "Dockerfile".into(),
            text: text.into(),
        },
        dockerfile_in_context: None,
        plan: opts,
        context_dir: None,
        platforms: platforms
            .iter()
            .map(|p| Platform::parse(p).unwrap())
            .collect(),
        tags: Vec::new(),
        secrets: Secrets::new(),
        outputs: Vec::new(),
        cache_from: Vec::new(),
        cache_to: Vec::new(),
        node_pins: Vec::new(),
        no_cache: false,
        no_cache_filter: Vec::new(),
        pull: false,
        source_date_epoch: None,
        labels: Default::default(),
        attest: Default::default(),
    }
}

/// Plan, schedule on fakes (worker `w-<platform>`, failing for
/// `fail_on`), solve; returns the calls, the events and the outcome.
async fn run(
    text: &str,
    platforms: &[&str],
    fail_on: Option<&str>,
) -> (Vec<Call>, Vec<Event>, xbuild_coordinator::Solved) {
    let dir = tempfile::tempdir().unwrap();
    let session = Session {
        root: dir.path().to_path_buf(),
        registry: Registry::new(RegistryConfig::default()),
    };
    let planned = plan(&request(text, platforms), &session).await.unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let schedule = schedule_with(&planned, |g| {
        let p = g.platform.to_string();
        Ok(Assignment {
            platform: g.platform.clone(),
            worker: Box::new(Fake {
                name: format!("w-{p}"),
                fail: fail_on == Some(p.as_str()),
                calls: calls.clone(),
            }),
            fallback: None,
        })
    })
    .unwrap();
    let events = Recorder::default();
    let ids = VertexIds::new();
    let secrets = Secrets::new();
    let inputs = SolveInputs {
        graphs: &planned.graphs,
        context_dir: None,
        context: None,
        source: &StoreSource,
        events: &events,
        ids: &ids,
        no_cache: false,
        no_cache_filter: &[],
        secrets: &secrets,
        source_date_epoch: None,
    };
    let solved = tokio::time::timeout(PATIENCE, solve(&schedule, &inputs))
        .await
        .expect("solve did not finish");
    let calls = calls.lock().unwrap().clone();
    let events = events.0.lock().unwrap().clone();
    (calls, events, solved)
}

#[tokio::test]
async fn the_shared_prefix_is_solved_once_first_on_its_execution_platform() {
    let (calls, events, solved) = run(CROSS, &["linux/arm64", "linux/amd64"], None).await;
    assert!(solved.ok(), "{solved:?}");
    assert_eq!(calls.len(), 3, "{calls:?}");
    // First the shared graph (the build stage's FROM and ENV TOOL=1), on
    // the worker picked for linux/amd64, the build platform.
    assert_eq!(calls[0].worker, "w-linux/amd64");
    assert_eq!(calls[0].platform, "linux/amd64");
    assert_eq!(calls[0].stages, 1);
    assert!(calls[0].presolved.is_empty());
    // Then each target, told to take stage 0's FROM + 1 step from the cache.
    let mut targets: Vec<&Call> = calls[1..].iter().collect();
    targets.sort_by(|a, b| a.platform.cmp(&b.platform));
    for (c, p) in targets.iter().zip(["linux/amd64", "linux/arm64"]) {
        assert_eq!(c.platform, p);
        assert_eq!(c.worker, format!("w-{p}"));
        assert_eq!(c.presolved, vec![(0, 1)], "{c:?}");
    }
    // The shared vertex is labelled with the targets it serves, in request
    // order, and counted against its whole stage.
    match &events[0] {
        Event::Started {
            shared_by, total, ..
        } => {
            let by: Vec<String> = shared_by.iter().map(|p| p.to_string()).collect();
            assert_eq!(by, ["linux/arm64", "linux/amd64"]);
            assert_eq!(*total, 4);
        }
        other => panic!("{other:?}"),
    }
    let shared = solved.shared.expect("the shared run is reported");
    assert_eq!(shared.platform.to_string(), "linux/amd64");
    assert_eq!(shared.worker, "w-linux/amd64");
    assert_eq!(shared.stages, ["build"]);
}

#[tokio::test]
async fn a_failing_shared_step_fails_the_first_target_and_starts_no_other() {
    let (calls, _, solved) = run(CROSS, &["linux/arm64", "linux/amd64"], Some("linux/amd64")).await;
    assert_eq!(calls.len(), 1, "only the shared solve ran: {calls:?}");
    assert!(matches!(
        solved.platforms[0].state,
        PlatformState::Failed { .. }
    ));
    assert!(matches!(
        solved.platforms[1].state,
        PlatformState::Cancelled
    ));
    assert!(solved.shared.is_none());
}

#[tokio::test]
async fn without_shared_steps_each_target_solves_alone() {
    let (calls, _, solved) = run(
        "FROM scratch\nENV A=1\n",
        &["linux/amd64", "linux/arm64"],
        None,
    )
    .await;
    assert!(solved.ok());
    assert_eq!(calls.len(), 2);
    assert!(calls.iter().all(|c| c.presolved.is_empty()));
    assert!(solved.shared.is_none());
}
