//! Remote nodes in the binary: `xbuild node add|ls|inspect|rm`,
//! `xbuild agent --info`, and the scheduling plan a build prints before it
//! starts (which platform goes to which node, or stays here, and why).

use crate::cli::{AgentArgs, NodeCommand};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use xbuild_coordinator::NodePlan;
use xbuild_oci::Platform;
use xbuild_remote::health::{self, AgentInfo, NodeHealth};
use xbuild_remote::inventory::{Inventory, NodeSpec, SshAddress, DEFAULT_AGENT_COMMAND};
use xbuild_remote::schedule::{self, LocalCaps, Pin};
use xbuild_remote::ssh::{ConnectOptions, HostKeyPolicy, SshPool};
use xbuild_sandbox::binfmt::{self, Support};

/// How long a health check may take per node.
const PROBE_LIMIT: Duration = Duration::from_secs(15);

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn inventory() -> Result<Inventory> {
    let path = crate::paths::config_file()?;
    Ok(Inventory::load(&path)?)
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(std::env::current_dir()
        .context("reading the current directory")?
        .join(p))
}

/// `xbuild node ...`.
pub fn cmd_node(cmd: NodeCommand) -> Result<()> {
    match cmd {
        NodeCommand::Add {
            name,
            endpoint,
            platform,
            identity,
            max_parallel,
            accept_new_host_key,
            agent_command,
            known_hosts,
            no_check,
        } => {
            let address: SshAddress = endpoint.parse()?;
            let platforms = Platform::parse_list(&platform.join(","))
                .map_err(|e| anyhow!("invalid --platform: {e}"))?;
            if let Some(id) = &identity {
                if !id.is_file() {
                    bail!("identity file {} does not exist", id.display());
                }
            }
            let spec = NodeSpec {
                name,
                address,
                platforms,
                identity: identity.as_deref().map(absolute).transpose()?,
                max_parallel,
                agent_command: (agent_command != DEFAULT_AGENT_COMMAND).then_some(agent_command),
                known_hosts: known_hosts.as_deref().map(absolute).transpose()?,
            };
            let policy = if accept_new_host_key {
                HostKeyPolicy::AcceptNew
            } else {
                HostKeyPolicy::Strict
            };
            cmd_add(spec, policy, no_check)
        }
        NodeCommand::Ls { format } => cmd_ls(format == "json"),
        NodeCommand::Inspect { name } => cmd_inspect(&name),
        NodeCommand::Rm { name } => {
            let mut inv = inventory()?;
            let node = inv.remove(&name)?;
            inv.save()?;
            println!("removed node {} ({})", node.name, node.address);
            Ok(())
        }
    }
}

fn cmd_add(spec: NodeSpec, policy: HostKeyPolicy, no_check: bool) -> Result<()> {
    let mut inv = inventory()?;
    // Fail on a taken name before connecting anywhere.
    inv.add(spec.clone())?;
    if !no_check {
        let pool = SshPool::new(ConnectOptions {
            host_key_policy: policy,
            ..Default::default()
        });
        let info = runtime()?.block_on(async {
            let conn = pool.connection(&spec).await?;
            let command = spec.info_command();
            let out = conn.run(&command, PROBE_LIMIT).await?;
            pool.close_all().await;
            if out.status != Some(0) {
                bail!(
                    "{}: connected, but `{command}` failed ({}): {}\n\
                     is xbuild installed on the node? (set the command with --agent-command)",
                    spec.label(),
                    out.status
                        .map_or_else(|| "no exit status".into(), |s| format!("exit status {s}")),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            AgentInfo::parse(&spec.name, &out.stdout).map_err(|e| anyhow!(e))
        })?;
        for p in &spec.platforms {
            if !info.runs_natively(p) {
                eprintln!(
                    "warning: node {} reports native {}, not {p}: it will build {p} only when pinned with --node",
                    spec.name, info.native
                );
            }
        }
        println!(
            "added node {} ({}): {}, xbuild {}, {} CPUs",
            spec.name,
            spec.address,
            platforms_text(&info),
            info.version,
            info.cpus
        );
    } else {
        println!(
            "added node {} ({}) without checking it",
            spec.name, spec.address
        );
    }
    inv.save()?;
    Ok(())
}

fn platforms_text(info: &AgentInfo) -> String {
    let mut v = vec![format!("{} (native)", info.native)];
    v.extend(info.emulated.iter().map(|p| format!("{p} (qemu)")));
    v.join(", ")
}

/// Probe every node at once, reusing `pool`'s connections.
async fn probe_all(pool: &SshPool, nodes: &[NodeSpec]) -> Vec<(NodeSpec, NodeHealth)> {
    let checks = nodes.iter().map(|n| async move {
        let h = health::probe(pool, n, PROBE_LIMIT).await;
        (n.clone(), h)
    });
    futures_util::future::join_all(checks).await
}

fn node_json(spec: &NodeSpec, health: &NodeHealth) -> serde_json::Value {
    serde_json::json!({
        "name": spec.name,
        "address": spec.address.to_string(),
        "platforms": spec.platforms,
        "identity": spec.identity,
        "max_parallel": spec.max_parallel,
        "agent_command": spec.agent_command(),
        "known_hosts": spec.known_hosts,
        "health": health,
    })
}

fn cmd_ls(json: bool) -> Result<()> {
    let inv = inventory()?;
    if inv.nodes().is_empty() && !json {
        println!(
            "no nodes in {} (add one with `xbuild node add NAME ssh://HOST --platform P`)",
            inv.path().display()
        );
        return Ok(());
    }
    let rt = runtime()?;
    let pool = SshPool::default();
    let results = rt.block_on(async {
        let r = probe_all(&pool, inv.nodes()).await;
        pool.close_all().await;
        r
    });
    if json {
        let v: Vec<_> = results.iter().map(|(s, h)| node_json(s, h)).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:<12} {:<28} {:<44} {:<16} {:<9} STATUS",
        "NAME", "ADDRESS", "PLATFORMS", "LOAD", "VERSION"
    );
    for (spec, h) in &results {
        match h {
            NodeHealth::Reachable { info, latency_ms } => println!(
                "{:<12} {:<28} {:<44} {:<16} {:<9} ok ({latency_ms} ms)",
                spec.name,
                spec.address.to_string(),
                platforms_text(info),
                format!("{:.2} ({} CPUs)", info.load[0], info.cpus),
                info.version,
            ),
            NodeHealth::Unreachable { reason } => println!(
                "{:<12} {:<28} {:<44} {:<16} {:<9} unreachable: {reason}",
                spec.name,
                spec.address.to_string(),
                spec.platforms
                    .iter()
                    .map(|p| format!("{p} (configured)"))
                    .collect::<Vec<_>>()
                    .join(", "),
                "-",
                "-",
            ),
        }
    }
    Ok(())
}

fn cmd_inspect(name: &str) -> Result<()> {
    let inv = inventory()?;
    let spec = inv.get(name)?.clone();
    let pool = SshPool::default();
    let h = runtime()?.block_on(async {
        let h = health::probe(&pool, &spec, PROBE_LIMIT).await;
        pool.close_all().await;
        h
    });
    println!("{}", serde_json::to_string_pretty(&node_json(&spec, &h))?);
    Ok(())
}

/// The platforms this machine runs through a registered QEMU handler
/// (what an agent reports, and what local scheduling may fall back on).
pub fn local_emulated() -> Vec<Platform> {
    crate::binfmt_cmd::KNOWN
        .iter()
        .filter_map(|p| Platform::parse(p).ok())
        .filter(|p| matches!(binfmt::can_run(p.architecture()), Support::Emulated { .. }))
        .collect()
}

/// What this machine reports as an agent.
pub fn agent_info() -> AgentInfo {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut l = load
        .split_whitespace()
        .take(3)
        .map(|v| v.parse::<f64>().unwrap_or(0.0));
    let load = [
        l.next().unwrap_or(0.0),
        l.next().unwrap_or(0.0),
        l.next().unwrap_or(0.0),
    ];
    AgentInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        native: Platform::host_linux(),
        emulated: local_emulated(),
        load,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default(),
    }
}

/// `xbuild agent --info`, and `--root` for the agent's state directory.
pub fn cmd_agent(args: &AgentArgs) -> Result<bool> {
    if let Some(root) = &args.root {
        // The agent is single-purpose: every later path lookup uses it.
        std::env::set_var("XBUILD_ROOT", root);
    }
    if args.info {
        println!("{}", serde_json::to_string(&agent_info())?);
        return Ok(true);
    }
    Ok(false)
}

/// Check the configured nodes and decide where each platform builds;
/// print the plan (and warnings for skipped nodes) on stderr. `None` when
/// no node is configured and nothing is pinned: the build stays local as
/// always.
///
/// The plan and warnings go to `say`, one line per call (the progress
/// renderer during a build, so they land above the live view).
pub async fn plan_build(
    platforms: &[Platform],
    pins: &[String],
    show_plan: bool,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Option<NodePlan>> {
    let pins = pins
        .iter()
        .map(|p| Pin::parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    // Without HOME and XBUILD_CONFIG there is no configuration: no nodes.
    let inv = match crate::paths::config_file() {
        Ok(path) => Inventory::load(&path)?,
        Err(_) if pins.is_empty() => return Ok(None),
        Err(e) => return Err(e),
    };
    if inv.nodes().is_empty() && pins.is_empty() {
        return Ok(None);
    }
    let pool = Arc::new(SshPool::default());
    // Only nodes that could build one of the platforms are contacted.
    let wanted: Vec<NodeSpec> = inv
        .nodes()
        .iter()
        .filter(|n| {
            pins.iter().any(|p| p.node == n.name)
                || n.platforms
                    .iter()
                    .any(|p| platforms.iter().any(|q| q.same_arch(p)))
        })
        .cloned()
        .collect();
    let health = probe_all(&pool, &wanted).await;
    let local = LocalCaps {
        native: Platform::host_linux(),
        emulated: local_emulated(),
    };
    let plan = schedule::plan_workers(platforms, &health, &pins, &local)?;
    for w in &plan.warnings {
        say(&format!("warning: {w}"));
    }
    if show_plan {
        say("scheduling:");
        for a in &plan.assignments {
            say(&format!("  {a}"));
        }
    }
    Ok(Some(NodePlan {
        plan,
        pool,
        nodes: inv.nodes().to_vec(),
    }))
}

/// Run [`plan_build`] on its own runtime and close the connections: for
/// `--call outline`, which shows where each platform would build.
pub fn plan_build_blocking(platforms: &[Platform], pins: &[String], show_plan: bool) -> Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        let plan = plan_build(platforms, pins, show_plan, &|l| eprintln!("{l}")).await;
        if let Ok(Some(p)) = &plan {
            p.pool.close_all().await;
        }
        plan
    })?;
    Ok(())
}
