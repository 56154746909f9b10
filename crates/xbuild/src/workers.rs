//! Which worker builds a platform, and building it there.
//!
//! [`worker_for`] is the scheduling hook: today it knows the local machine
//! and agents started as local child processes through the undocumented
//! `XBUILD_LOCAL_AGENT` variable (tests); nodes reached over SSH plug in
//! here. [`solve`] runs a platform on its worker and, when a remote worker
//! is lost or fails outside a Dockerfile step, builds it locally instead.

use crate::nodes::NodePlan;
use anyhow::{anyhow, bail, Context, Result};
use std::path::PathBuf;
use xbuild_engine::events::Event;
use xbuild_engine::{Engine, EngineError, SolveRequest, SolveResult};
use xbuild_oci::Platform;
use xbuild_remote::client::{RemoteSolve, RemoteWorker};
use xbuild_remote::protocol::SecretValues;
use xbuild_remote::AgentStream;

/// Env var: `PLATFORM=[NAME:]DIR[;...]` sends PLATFORM to an agent
/// started as `xbuild agent --stdio --root DIR` (worker `node NAME`,
/// default name `local-agent`).
pub const LOCAL_AGENT_ENV: &str = "XBUILD_LOCAL_AGENT";

/// Where a platform is built.
#[derive(Debug)]
pub enum Worker {
    /// This machine (natively or through QEMU).
    Local,
    /// An agent at the end of a stream, with the node's name.
    Remote(AgentStream, String),
}

/// One `XBUILD_LOCAL_AGENT` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LocalAgentSpec {
    platform: Platform,
    name: String,
    root: PathBuf,
}

fn parse_local_agents(value: &str) -> Result<Vec<LocalAgentSpec>> {
    let mut out = Vec::new();
    for entry in value.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (p, rest) = entry
            .split_once('=')
            .ok_or_else(|| anyhow!("{LOCAL_AGENT_ENV}: {entry:?} is not PLATFORM=[NAME:]DIR"))?;
        let platform =
            Platform::parse(p.trim()).map_err(|e| anyhow!("{LOCAL_AGENT_ENV}: {p:?}: {e}"))?;
        let (name, root) = match rest.split_once(':') {
            Some((n, r)) if !n.contains('/') => (n.to_string(), r),
            _ => ("local-agent".to_string(), rest),
        };
        if root.is_empty() || name.is_empty() {
            bail!("{LOCAL_AGENT_ENV}: {entry:?} is not PLATFORM=[NAME:]DIR");
        }
        out.push(LocalAgentSpec {
            platform,
            name,
            root: PathBuf::from(root),
        });
    }
    Ok(out)
}

/// The worker for `platform`: an `XBUILD_LOCAL_AGENT` agent (tests), else
/// the node the scheduling plan chose (its agent started over the node's
/// SSH connection), else this machine.
pub async fn worker_for(platform: &Platform, nodes: Option<&NodePlan>) -> Result<Worker> {
    if let Some((plan, name)) = nodes.and_then(|n| Some((n, n.node_for(platform)?))) {
        let stream = plan
            .open_agent(name)
            .await
            .with_context(|| format!("starting the agent on node {name}"))?;
        return Ok(Worker::Remote(stream, name.to_string()));
    }
    let Ok(value) = std::env::var(LOCAL_AGENT_ENV) else {
        return Ok(Worker::Local);
    };
    let Some(spec) = parse_local_agents(&value)?
        .into_iter()
        .find(|s| s.platform == *platform)
    else {
        return Ok(Worker::Local);
    };
    let exe = std::env::current_exe()
        .map_err(|e| anyhow!("locating the xbuild binary to start an agent: {e}"))?;
    let agent = xbuild_remote::local::spawn(
        &exe,
        &xbuild_remote::local::agent_args(&spec.root),
        &format!("root {}", spec.root.display()),
    )
    .map_err(|e| anyhow!("starting a local agent for {platform}: {e}"))?;
    Ok(Worker::Remote(agent.stream, spec.name))
}

/// A platform built by some worker; its image is in the local store.
#[derive(Debug)]
pub struct Solved {
    /// The result.
    pub result: SolveResult,
    /// Who built it (`local`, `qemu`, `node amd1`).
    pub worker: String,
    /// Bytes sent to a remote worker.
    pub bytes_sent: Option<u64>,
}

fn same_request<'a>(r: &SolveRequest<'a>) -> SolveRequest<'a> {
    SolveRequest {
        graph: r.graph,
        context_dir: r.context_dir,
        context: r.context,
        source: r.source,
        events: r.events,
        ids: r.ids,
        no_cache: r.no_cache,
        no_cache_filter: r.no_cache_filter,
        secrets: r.secrets,
        source_date_epoch: r.source_date_epoch,
    }
}

async fn solve_remote(
    engine: &Engine,
    req: &SolveRequest<'_>,
    stream: AgentStream,
    name: &str,
    agent_pid: &mut Option<u32>,
) -> Result<Solved, xbuild_remote::client::SolveError> {
    let limit = xbuild_remote::liveness::node_timeout().map_err(|e| {
        xbuild_remote::protocol::RemoteError::Remote {
            peer: format!("node {name}"),
            message: e.to_string(),
        }
    })?;
    let mut worker = RemoteWorker::connect_with(stream, name, limit).await?;
    *agent_pid = worker.info().pid;
    let secrets = SecretValues(
        req.secrets
            .ids()
            .filter_map(|id| Some((id.to_string(), req.secrets.get(id)?.to_vec())))
            .collect(),
    );
    let out = worker
        .solve(RemoteSolve {
            engine,
            graph: req.graph,
            context_dir: req.context_dir,
            context: req.context,
            source: req.source,
            events: req.events,
            ids: req.ids,
            no_cache: req.no_cache,
            no_cache_filter: req.no_cache_filter,
            secrets,
            source_date_epoch: req.source_date_epoch,
        })
        .await?;
    let name = worker.worker_name();
    worker.close(std::time::Duration::from_secs(5)).await;
    Ok(Solved {
        result: out.result,
        worker: name,
        bytes_sent: Some(out.bytes_sent),
    })
}

async fn solve_here(engine: &Engine, req: SolveRequest<'_>) -> Result<Solved, EngineError> {
    let worker = crate::coordinator::local_worker(&req.graph.platform).to_string();
    engine.solve(req).await.map(|result| Solved {
        result,
        worker,
        bytes_sent: None,
    })
}

/// Builds `req`'s platform on its worker; `engine` is this machine's
/// engine for the platform (it receives remote results, and builds the
/// platform when the remote worker is lost).
pub async fn solve(
    engine: &Engine,
    req: SolveRequest<'_>,
    nodes: Option<&NodePlan>,
) -> Result<Solved, EngineError> {
    let platform = req.graph.platform.clone();
    match worker_for(&platform, nodes).await {
        Ok(Worker::Local) => solve_here(engine, req).await,
        Ok(Worker::Remote(stream, name)) => {
            let mut pid = None;
            let r = solve_remote(engine, &req, stream, &name, &mut pid).await;
            if let (Err(e), Some(plan), Some(pid)) = (&r, nodes, pid) {
                // A hung agent behind a live sshd stays stopped when its
                // channel closes: kill it through the node's connection.
                if e.reschedule() && plan.node_for(&platform) == Some(name.as_str()) {
                    if let Err(k) = plan.kill_agent(&name, pid).await {
                        req.events.emit(Event::Warning {
                            message: format!("could not stop the agent on node {name}: {k:#}"),
                        });
                    }
                }
            }
            remote_outcome(engine, req, r, &name, &platform).await
        }
        Err(e) => {
            req.events.emit(Event::Warning {
                message: format!("{e:#}; building {platform} on this machine instead"),
            });
            solve_here(engine, req).await
        }
    }
}

/// What a remote build's outcome means: its result, a local rebuild with
/// a warning (the worker was lost or failed outside a Dockerfile step), or
/// the build's error.
async fn remote_outcome(
    engine: &Engine,
    req: SolveRequest<'_>,
    r: Result<Solved, xbuild_remote::client::SolveError>,
    name: &str,
    platform: &Platform,
) -> Result<Solved, EngineError> {
    match r {
        Ok(s) => Ok(s),
        Err(e) if e.reschedule() => {
            req.events.emit(Event::Warning {
                message: format!(
                    "{e}; building {platform} on this machine ({}) instead",
                    crate::coordinator::local_worker(platform)
                ),
            });
            solve_here(engine, same_request(&req)).await
        }
        Err(xbuild_remote::client::SolveError::Build(e)) => Err(e),
        Err(e) => Err(EngineError::Remote {
            worker: format!("node {name}"),
            message: e.to_string(),
        }),
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
        assert!(parse_local_agents("nope/=x").is_err());
    }
}
