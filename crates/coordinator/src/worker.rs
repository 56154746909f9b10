//! Workers: what builds one platform's graph. [`LocalWorker`] is this
//! machine (native or QEMU); [`AgentWorker`] an `xbuild agent` on a node
//! over SSH, or started as a local child process through the undocumented
//! `XBUILD_LOCAL_AGENT` variable (tests). The [`Worker`] trait lets tests
//! inject fakes.

use crate::nodes::{NodeError, NodePlan};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use xbuild_engine::events::Event;
use xbuild_engine::{Engine, EngineError, SolveRequest, SolveResult};
use xbuild_oci::Platform;
use xbuild_remote::client::{RemoteWorker, SolveError};
use xbuild_remote::AgentStream;

/// Env var: `PLATFORM=[NAME:]DIR[;...]` sends PLATFORM to an agent
/// started as `xbuild agent --stdio --root DIR` (worker `node NAME`,
/// default name `local-agent`).
pub const LOCAL_AGENT_ENV: &str = "XBUILD_LOCAL_AGENT";

/// An `XBUILD_LOCAL_AGENT` value that cannot be parsed.
#[derive(Debug, thiserror::Error)]
pub enum LocalAgentError {
    /// An entry is not `PLATFORM=[NAME:]DIR`.
    #[error("{LOCAL_AGENT_ENV}: {entry:?} is not PLATFORM=[NAME:]DIR")]
    Syntax {
        /// The entry.
        entry: String,
    },
    /// An entry's platform is not a platform.
    #[error("{LOCAL_AGENT_ENV}: {platform:?}")]
    Platform {
        /// The platform as written.
        platform: String,
        /// Why.
        #[source]
        source: xbuild_oci::platform::PlatformError,
    },
}

/// Why an agent could not be started.
#[derive(Debug, thiserror::Error)]
pub enum AgentStartError {
    /// The node's agent could not be started over its SSH connection.
    #[error("starting the agent on node {node}")]
    Node {
        /// The node.
        node: String,
        /// Why.
        #[source]
        source: NodeError,
    },
    /// The path of this binary is unknown.
    #[error("locating the xbuild binary to start an agent")]
    Exe(#[source] std::io::Error),
    /// `xbuild agent --stdio` could not be started here.
    #[error("starting a local agent for {platform}")]
    Spawn {
        /// The platform it was to build.
        platform: Platform,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// One `XBUILD_LOCAL_AGENT` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LocalAgentSpec {
    platform: Platform,
    name: String,
    root: PathBuf,
}

fn parse_local_agents(value: &str) -> Result<Vec<LocalAgentSpec>, LocalAgentError> {
    let mut out = Vec::new();
    for entry in value.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let syntax = || LocalAgentError::Syntax {
            entry: entry.to_string(),
        };
        let (p, rest) = entry.split_once('=').ok_or_else(syntax)?;
        let platform = Platform::parse(p.trim()).map_err(|source| LocalAgentError::Platform {
            platform: p.to_string(),
            source,
        })?;
        let (name, root) = match rest.split_once(':') {
            Some((n, r)) if !n.contains('/') => (n.to_string(), r),
            _ => ("local-agent".to_string(), rest),
        };
        if root.is_empty() || name.is_empty() {
            return Err(syntax());
        }
        out.push(LocalAgentSpec {
            platform,
            name,
            root: PathBuf::from(root),
        });
    }
    Ok(out)
}

/// The agent `XBUILD_LOCAL_AGENT` names for `platform`, if any.
pub fn local_agent_for(platform: &Platform) -> Result<Option<(String, PathBuf)>, LocalAgentError> {
    let Ok(value) = std::env::var(LOCAL_AGENT_ENV) else {
        return Ok(None);
    };
    Ok(parse_local_agents(&value)?
        .into_iter()
        .find(|s| s.platform == *platform)
        .map(|s| (s.name, s.root)))
}

/// A boxed future of a worker (not `Send`: platforms run concurrently on
/// one task, so the engine's futures need not be).
pub type WorkerFuture<'a> = Pin<Box<dyn Future<Output = Result<WorkerOutput, WorkerError>> + 'a>>;

/// Something that builds one platform's graph and leaves the image in the
/// coordinator's store. Tests inject fakes.
pub trait Worker: Send + Sync {
    /// The name progress shows (`local`, `qemu`, `node amd1`).
    fn name(&self) -> String;
    /// Build `req`'s graph. Dropping the future cancels the build.
    fn solve<'a>(&'a self, req: SolveRequest<'a>) -> WorkerFuture<'a>;
}

/// A platform built by some worker; its image is in the local store.
#[derive(Debug)]
pub struct WorkerOutput {
    /// The result.
    pub result: SolveResult,
    /// Who built it (`local`, `qemu`, `node amd1`).
    pub worker: String,
    /// Bytes sent to a remote worker.
    pub bytes_sent: Option<u64>,
}

/// Why a worker produced no image.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The worker could not be reached: the platform is built by the fallback.
    #[error("{0}")]
    Unreachable(String),
    /// The worker was lost, or failed outside a Dockerfile step: the
    /// platform is built by the fallback.
    #[error("{0}")]
    Lost(String),
    /// The build failed (a Dockerfile step, a base image, ...).
    #[error(transparent)]
    Build(EngineError),
}

/// This machine: natively or through QEMU.
#[derive(Debug, Clone)]
pub struct LocalWorker {
    engine: Engine,
    name: String,
}

impl LocalWorker {
    /// The worker over `engine` for `platform` (named `local` or `qemu`).
    pub fn new(engine: Engine, platform: &Platform) -> Self {
        LocalWorker {
            engine,
            name: crate::resolve::local_worker(platform).to_string(),
        }
    }
}

impl Worker for LocalWorker {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn solve<'a>(&'a self, req: SolveRequest<'a>) -> WorkerFuture<'a> {
        Box::pin(async move {
            let result = self.engine.solve(req).await.map_err(WorkerError::Build)?;
            Ok(WorkerOutput {
                result,
                worker: self.name.clone(),
                bytes_sent: None,
            })
        })
    }
}

/// How an agent is reached.
pub enum AgentAccess {
    /// A node of the scheduling plan, over its SSH connection.
    Node(Arc<NodePlan>),
    /// A child process `xbuild agent --stdio --root DIR` (tests).
    Spawn(PathBuf),
}

/// An `xbuild agent`: on a node over SSH, or a local child process.
pub struct AgentWorker {
    engine: Engine,
    name: String,
    access: AgentAccess,
}

impl AgentWorker {
    /// The agent `name` reached through `access`; `engine` is this
    /// machine's engine for the platform (its store receives the image).
    pub fn new(engine: Engine, name: String, access: AgentAccess) -> Self {
        AgentWorker {
            engine,
            name,
            access,
        }
    }

    async fn open(&self, platform: &Platform) -> Result<AgentStream, AgentStartError> {
        match &self.access {
            AgentAccess::Node(plan) => {
                plan.open_agent(&self.name)
                    .await
                    .map_err(|source| AgentStartError::Node {
                        node: self.name.clone(),
                        source,
                    })
            }
            AgentAccess::Spawn(root) => {
                let exe = std::env::current_exe().map_err(AgentStartError::Exe)?;
                let agent = xbuild_remote::local::spawn(
                    &exe,
                    &xbuild_remote::local::agent_args(root),
                    &format!("root {}", root.display()),
                )
                .map_err(|source| AgentStartError::Spawn {
                    platform: platform.clone(),
                    source,
                })?;
                Ok(agent.stream)
            }
        }
    }

    async fn run(
        &self,
        req: SolveRequest<'_>,
        stream: AgentStream,
        agent_pid: &mut Option<u32>,
    ) -> Result<WorkerOutput, SolveError> {
        let name = &self.name;
        let limit = xbuild_remote::liveness::node_timeout().map_err(|e| {
            xbuild_remote::protocol::RemoteError::Remote {
                peer: format!("node {name}"),
                message: e.to_string(),
            }
        })?;
        let mut worker = RemoteWorker::connect_with(stream, name, limit).await?;
        *agent_pid = worker.info().pid;
        let out = worker.solve(&self.engine, req).await?;
        let name = worker.worker_name();
        worker.close(std::time::Duration::from_secs(5)).await;
        Ok(WorkerOutput {
            result: out.result,
            worker: name,
            bytes_sent: Some(out.bytes_sent),
        })
    }
}

impl Worker for AgentWorker {
    fn name(&self) -> String {
        format!("node {}", self.name)
    }

    fn solve<'a>(&'a self, req: SolveRequest<'a>) -> WorkerFuture<'a> {
        Box::pin(async move {
            let platform = req.graph.platform.clone();
            let events = req.events;
            let stream = self
                .open(&platform)
                .await
                .map_err(|e| WorkerError::Unreachable(crate::error_chain(&e)))?;
            let mut pid = None;
            let r = self.run(req, stream, &mut pid).await;
            if let (Err(e), AgentAccess::Node(plan), Some(pid)) = (&r, &self.access, pid) {
                // A hung agent behind a live sshd stays stopped when its
                // channel closes: kill it through the node's connection.
                if e.reschedule() && plan.node_for(&platform) == Some(self.name.as_str()) {
                    if let Err(k) = plan.kill_agent(&self.name, pid).await {
                        events.emit(Event::Warning {
                            message: format!(
                                "could not stop the agent on node {}: {}",
                                self.name,
                                crate::error_chain(&k)
                            ),
                        });
                    }
                }
            }
            match r {
                Ok(out) => Ok(out),
                Err(e) if e.reschedule() => Err(WorkerError::Lost(e.to_string())),
                Err(SolveError::Build(e)) => Err(WorkerError::Build(e)),
                Err(e) => Err(WorkerError::Build(EngineError::Remote {
                    worker: format!("node {}", self.name),
                    message: e.to_string(),
                })),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_agent_specs_parse() {
        let v = parse_local_agents("linux/amd64=/tmp/a; linux/arm64=arm1:/tmp/b").unwrap();
        assert_eq!(
            v,
            vec![
                LocalAgentSpec {
                    platform: Platform::parse("linux/amd64").unwrap(),
                    name: "local-agent".into(),
                    root: "/tmp/a".into(),
                },
                LocalAgentSpec {
                    platform: Platform::parse("linux/arm64").unwrap(),
                    name: "arm1".into(),
                    root: "/tmp/b".into(),
                },
            ]
        );
        let e = parse_local_agents("linux/amd64").unwrap_err().to_string();
        assert!(
            e.contains("XBUILD_LOCAL_AGENT") && e.contains("PLATFORM=[NAME:]DIR"),
            "{e}"
        );
        let e = parse_local_agents("nope/=x").unwrap_err();
        assert!(
            matches!(&e, LocalAgentError::Platform { platform, .. } if platform == "nope/"),
            "{e:?}"
        );
        let text = crate::error_chain(&e);
        assert!(
            text.starts_with("XBUILD_LOCAL_AGENT: \"nope/\": "),
            "{text}"
        );
    }
}
