//! Which worker builds which platform: a healthy native node first, then
//! this machine natively, then this machine through QEMU. `--node
//! PLATFORM=NAME` pins a platform; among several native nodes the least
//! busy one (platforms already given to it in this plan, then load per CPU)
//! that is under its `max-parallel` wins. Pure: the caller probes the nodes.

use crate::health::NodeHealth;
use crate::inventory::{NodeSpec, LOCAL};
use std::collections::HashMap;
use std::fmt;
use xbuild_oci::Platform;

/// Errors making a plan: bad pins, or a platform nothing can build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// `--node` is not `PLATFORM=NODE`.
    #[error(
        "invalid --node {0:?}: expected PLATFORM=NODE (e.g. linux/amd64=amd1, or PLATFORM=local)"
    )]
    BadPin(String),
    /// Pinned to a node that is not configured.
    #[error("--node {platform}={node}: no node named {node:?} (known: {known})")]
    UnknownNode {
        /// The platform.
        platform: String,
        /// The node.
        node: String,
        /// Configured nodes.
        known: String,
    },
    /// Pinned for a platform the build does not target.
    #[error(
        "--node {platform}={node}: {platform} is not one of the build's platforms ({platforms})"
    )]
    PinNotBuilt {
        /// The platform.
        platform: String,
        /// The node.
        node: String,
        /// The build's platforms.
        platforms: String,
    },
    /// Two pins for one platform.
    #[error("--node pins {platform} twice ({a} and {b})")]
    PinnedTwice {
        /// The platform.
        platform: String,
        /// First node.
        a: String,
        /// Second node.
        b: String,
    },
    /// Pinned to an unreachable node.
    #[error("{platform} is pinned to node {node}, which is unreachable: {reason}")]
    PinnedUnreachable {
        /// The platform.
        platform: String,
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
    /// Pinned to a worker that cannot run the platform.
    #[error("{platform} is pinned to {worker}, which cannot run it: {why}")]
    PinnedIncapable {
        /// The platform.
        platform: String,
        /// `node amd1` or `this machine`.
        worker: String,
        /// What it can run.
        why: String,
    },
    /// Nothing can build a platform.
    #[error(
        "no worker can build {platform}: {why}, this machine is {native}, and no QEMU emulator \
         is registered for it (`xbuild binfmt install {platform}`)"
    )]
    NoWorker {
        /// The platform.
        platform: String,
        /// Why no node.
        why: String,
        /// This machine's platform.
        native: String,
    },
}

/// A `--node PLATFORM=NODE` pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The platform.
    pub platform: Platform,
    /// A node name, or `local` for this machine.
    pub node: String,
}

impl Pin {
    /// Parse `PLATFORM=NODE`.
    pub fn parse(s: &str) -> Result<Pin, ScheduleError> {
        let bad = || ScheduleError::BadPin(s.to_string());
        let (p, n) = s.split_once('=').ok_or_else(bad)?;
        let platform = Platform::parse(p.trim()).map_err(|_| bad())?;
        let node = n.trim();
        if node.is_empty() {
            return Err(bad());
        }
        Ok(Pin {
            platform,
            node: node.to_string(),
        })
    }
}

/// What this machine runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCaps {
    /// Its platform.
    pub native: Platform,
    /// Platforms with a registered QEMU handler.
    pub emulated: Vec<Platform>,
}

/// Who builds a platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Worker {
    /// A node, by name.
    Node(String),
    /// This machine, natively.
    Local,
    /// This machine, through QEMU.
    LocalQemu,
}

impl fmt::Display for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Worker::Node(n) => write!(f, "node {n}"),
            Worker::Local => f.write_str("local"),
            Worker::LocalQemu => f.write_str("local qemu"),
        }
    }
}

/// One platform's worker and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The platform.
    pub platform: Platform,
    /// Who builds it.
    pub worker: Worker,
    /// Why (`native`, `pinned by --node`, `no linux/arm64 node`, …).
    pub reason: String,
}

impl fmt::Display for Assignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} → {} ({})", self.platform, self.worker, self.reason)
    }
}

/// The plan and the warnings met making it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// One per platform, in the build's order.
    pub assignments: Vec<Assignment>,
    /// E.g. unreachable nodes that were skipped.
    pub warnings: Vec<String>,
}

impl Plan {
    /// The worker of `platform`.
    pub fn worker(&self, platform: &Platform) -> Option<&Worker> {
        self.assignments
            .iter()
            .find(|a| &a.platform == platform)
            .map(|a| &a.worker)
    }
}

/// Decide who builds each of `platforms`.
pub fn plan_workers(
    platforms: &[Platform],
    nodes: &[(NodeSpec, NodeHealth)],
    pins: &[Pin],
    local: &LocalCaps,
) -> Result<Plan, ScheduleError> {
    let list = |v: &mut dyn Iterator<Item = String>| {
        let v: Vec<String> = v.collect();
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    // Validate pins.
    let mut pinned: HashMap<&Platform, &str> = HashMap::new();
    for pin in pins {
        if pin.node != LOCAL && !nodes.iter().any(|(n, _)| n.name == pin.node) {
            return Err(ScheduleError::UnknownNode {
                platform: pin.platform.to_string(),
                node: pin.node.clone(),
                known: list(&mut nodes.iter().map(|(n, _)| n.name.clone())),
            });
        }
        if !platforms.contains(&pin.platform) {
            return Err(ScheduleError::PinNotBuilt {
                platform: pin.platform.to_string(),
                node: pin.node.clone(),
                platforms: list(&mut platforms.iter().map(|p| p.to_string())),
            });
        }
        if let Some(prev) = pinned.insert(&pin.platform, &pin.node) {
            if prev != pin.node {
                return Err(ScheduleError::PinnedTwice {
                    platform: pin.platform.to_string(),
                    a: prev.to_string(),
                    b: pin.node.clone(),
                });
            }
        }
    }

    let mut plan = Plan::default();
    let relevant = |n: &NodeSpec| {
        n.platforms
            .iter()
            .any(|p| platforms.iter().any(|q| q.same_arch(p)))
    };
    for (n, h) in nodes {
        match h {
            NodeHealth::Unreachable { reason } if relevant(n) => plan.warnings.push(format!(
                "node {} is unreachable and is skipped: {reason}",
                n.name
            )),
            NodeHealth::Reachable { info, .. } => {
                for p in &n.platforms {
                    if platforms.iter().any(|q| q.same_arch(p)) && !info.runs_natively(p) {
                        plan.warnings.push(format!(
                            "node {} is configured for {p} but reports native {}; \
                             it is not used for {p} unless pinned",
                            n.name, info.native
                        ));
                    }
                }
            }
            _ => {}
        }
    }

    let mut load: HashMap<&str, u32> = HashMap::new();
    for p in platforms {
        let a = if let Some(node) = pinned.get(p) {
            pinned_assignment(p, node, nodes, local)?
        } else {
            choose(p, nodes, local, &load)?
        };
        if let Worker::Node(n) = &a.worker {
            let name = nodes
                .iter()
                .find(|(s, _)| &s.name == n)
                .map(|(s, _)| s.name.as_str())
                .unwrap_or_default();
            *load.entry(name).or_default() += 1;
        }
        plan.assignments.push(a);
    }
    Ok(plan)
}

fn pinned_assignment(
    p: &Platform,
    node: &str,
    nodes: &[(NodeSpec, NodeHealth)],
    local: &LocalCaps,
) -> Result<Assignment, ScheduleError> {
    let done = |worker, reason: &str| {
        Ok(Assignment {
            platform: p.clone(),
            worker,
            reason: reason.to_string(),
        })
    };
    if node == LOCAL {
        if local.native.same_arch(p) {
            return done(Worker::Local, "pinned by --node, native");
        }
        if local.emulated.iter().any(|e| e.same_arch(p)) {
            return done(Worker::LocalQemu, "pinned by --node, emulated");
        }
        return Err(ScheduleError::PinnedIncapable {
            platform: p.to_string(),
            worker: "this machine".into(),
            why: format!("it is {} with no QEMU emulator for {p}", local.native),
        });
    }
    let Some((spec, health)) = nodes.iter().find(|(n, _)| n.name == node) else {
        return Err(ScheduleError::UnknownNode {
            platform: p.to_string(),
            node: node.to_string(),
            known: String::new(),
        });
    };
    match health {
        NodeHealth::Unreachable { reason } => Err(ScheduleError::PinnedUnreachable {
            platform: p.to_string(),
            node: spec.name.clone(),
            reason: reason.clone(),
        }),
        NodeHealth::Reachable { info, .. } => {
            if info.runs_natively(p) {
                done(Worker::Node(spec.name.clone()), "pinned by --node, native")
            } else if info.emulates(p) {
                done(
                    Worker::Node(spec.name.clone()),
                    "pinned by --node, emulated on the node",
                )
            } else {
                Err(ScheduleError::PinnedIncapable {
                    platform: p.to_string(),
                    worker: format!("node {}", spec.name),
                    why: format!("it is {} with no QEMU emulator for {p}", info.native),
                })
            }
        }
    }
}

fn choose(
    p: &Platform,
    nodes: &[(NodeSpec, NodeHealth)],
    local: &LocalCaps,
    assigned: &HashMap<&str, u32>,
) -> Result<Assignment, ScheduleError> {
    let configured: Vec<&(NodeSpec, NodeHealth)> = nodes
        .iter()
        .filter(|(n, _)| n.platforms.iter().any(|q| q.same_arch(p)))
        .collect();
    let mut candidates = Vec::new();
    let mut full = Vec::new();
    for (spec, health) in &configured {
        let Some(info) = health.info() else { continue };
        if !info.runs_natively(p) {
            continue;
        }
        let used = assigned.get(spec.name.as_str()).copied().unwrap_or(0);
        if spec.max_parallel.is_some_and(|m| used >= m) {
            full.push(spec.name.clone());
            continue;
        }
        candidates.push((used, info.load_per_cpu(), spec.name.clone(), info.load[0]));
    }
    candidates.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(a.1.total_cmp(&b.1))
            .then_with(|| a.2.cmp(&b.2))
    });
    if let Some((_, _, name, load1)) = candidates.first() {
        let reason = if candidates.len() > 1 {
            format!(
                "native; least busy of {} nodes, load {load1:.2}",
                candidates.len()
            )
        } else {
            "native".to_string()
        };
        return Ok(Assignment {
            platform: p.clone(),
            worker: Worker::Node(name.clone()),
            reason,
        });
    }
    // Why no node: for the reason text.
    let why = if configured.is_empty() {
        format!("no {} node", p.architecture())
    } else if !full.is_empty() {
        format!(
            "{} node(s) at max-parallel: {}",
            p.architecture(),
            full.join(", ")
        )
    } else if configured.iter().all(|(_, h)| h.info().is_none()) {
        let names: Vec<&str> = configured.iter().map(|(n, _)| n.name.as_str()).collect();
        format!(
            "{} node(s) unreachable: {}",
            p.architecture(),
            names.join(", ")
        )
    } else {
        format!("no node runs {p} natively")
    };
    if local.native.same_arch(p) {
        return Ok(Assignment {
            platform: p.clone(),
            worker: Worker::Local,
            reason: format!("native; {why}"),
        });
    }
    if local.emulated.iter().any(|e| e.same_arch(p)) {
        return Ok(Assignment {
            platform: p.clone(),
            worker: Worker::LocalQemu,
            reason: why,
        });
    }
    Err(ScheduleError::NoWorker {
        platform: p.to_string(),
        why,
        native: local.native.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::AgentInfo;

    fn plat(s: &str) -> Platform {
        Platform::parse(s).unwrap()
    }

    fn node(name: &str, plats: &[&str], max: Option<u32>) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            address: format!("ssh://root@{name}:22").parse().unwrap(),
            platforms: plats.iter().map(|p| plat(p)).collect(),
            identity: None,
            max_parallel: max,
            agent_command: None,
            known_hosts: None,
        }
    }

    fn up(native: &str, load: f64, cpus: u32) -> NodeHealth {
        NodeHealth::Reachable {
            info: AgentInfo {
                version: "0.1.0".into(),
                native: plat(native),
                emulated: vec![plat("linux/riscv64")],
                load: [load, load, load],
                cpus,
                hostname: "h".into(),
            },
            latency_ms: 3,
        }
    }

    fn down() -> NodeHealth {
        NodeHealth::Unreachable {
            reason: "cannot connect to 127.0.0.9:22: Connection refused".into(),
        }
    }

    fn amd_host() -> LocalCaps {
        LocalCaps {
            native: plat("linux/amd64"),
            emulated: vec![plat("linux/arm64")],
        }
    }

    fn arm_laptop() -> LocalCaps {
        LocalCaps {
            native: plat("linux/arm64"),
            emulated: vec![],
        }
    }

    fn workers(plan: &Plan) -> Vec<String> {
        plan.assignments.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn native_node_then_local_then_qemu() {
        let nodes = vec![(
            node("amd1", &["linux/amd64"], None),
            up("linux/amd64", 0.5, 4),
        )];
        let ps = [plat("linux/amd64"), plat("linux/arm64")];
        let plan = plan_workers(&ps, &nodes, &[], &arm_laptop()).unwrap();
        assert_eq!(
            workers(&plan),
            [
                "linux/amd64 → node amd1 (native)",
                "linux/arm64 → local (native; no arm64 node)"
            ]
        );
        let plan = plan_workers(&ps, &[], &[], &amd_host()).unwrap();
        assert_eq!(
            workers(&plan),
            [
                "linux/amd64 → local (native; no amd64 node)",
                "linux/arm64 → local qemu (no arm64 node)"
            ]
        );
        assert!(plan.warnings.is_empty());
    }

    #[test]
    fn unreachable_node_is_skipped_with_a_warning() {
        let nodes = vec![(node("amd1", &["linux/amd64"], None), down())];
        let plan = plan_workers(&[plat("linux/amd64")], &nodes, &[], &arm_laptop());
        // Nothing can build amd64 then on an arm64 laptop without QEMU.
        let e = plan.unwrap_err().to_string();
        assert!(e.contains("amd64 node(s) unreachable: amd1"), "{e}");
        assert!(e.contains("xbuild binfmt install linux/amd64"), "{e}");
        let plan = plan_workers(&[plat("linux/amd64")], &nodes, &[], &amd_host()).unwrap();
        assert_eq!(plan.assignments[0].worker, Worker::Local);
        assert_eq!(plan.warnings.len(), 1);
        assert!(plan.warnings[0].contains("node amd1 is unreachable"));
        assert!(plan.warnings[0].contains("Connection refused"));
    }

    #[test]
    fn least_loaded_and_max_parallel() {
        let nodes = vec![
            (
                node("a", &["linux/amd64", "linux/386"], Some(1)),
                up("linux/amd64", 3.0, 4),
            ),
            (
                node("b", &["linux/amd64", "linux/386"], None),
                up("linux/amd64", 1.0, 2),
            ),
            (node("c", &["linux/amd64"], None), down()),
        ];
        // b: 0.5/cpu beats a: 0.75/cpu.
        let plan = plan_workers(&[plat("linux/amd64")], &nodes, &[], &arm_laptop()).unwrap();
        assert_eq!(plan.assignments[0].worker, Worker::Node("b".into()));
        assert!(plan.assignments[0].reason.contains("least busy of 2"));
        assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
        // Load per CPU ties break by the work already given in this plan.
        let nodes2 = vec![
            (
                node("a", &["linux/amd64"], Some(1)),
                up("linux/amd64", 1.0, 2),
            ),
            (
                node("b", &["linux/amd64"], Some(1)),
                up("linux/amd64", 1.0, 2),
            ),
        ];
        let three = [
            plat("linux/amd64"),
            plat("linux/amd64/v2"),
            plat("linux/amd64/v3"),
        ];
        let local = LocalCaps {
            native: plat("linux/arm64"),
            emulated: vec![plat("linux/amd64")],
        };
        let plan = plan_workers(&three[..2], &nodes2, &[], &local).unwrap();
        assert_eq!(plan.assignments[0].worker, Worker::Node("a".into()));
        assert_eq!(plan.assignments[1].worker, Worker::Node("b".into()));
        // A third one finds both at max-parallel and falls back to QEMU.
        let plan = plan_workers(&three, &nodes2, &[], &local).unwrap();
        assert_eq!(plan.assignments[2].worker, Worker::LocalQemu);
        assert!(
            plan.assignments[2].reason.contains("max-parallel: a, b"),
            "{}",
            plan.assignments[2]
        );
    }

    #[test]
    fn pins() {
        let nodes = vec![
            (
                node("amd1", &["linux/amd64"], None),
                up("linux/amd64", 0.1, 4),
            ),
            (
                node("amd2", &["linux/amd64"], None),
                up("linux/amd64", 0.0, 4),
            ),
            (node("gone", &["linux/amd64"], None), down()),
        ];
        let ps = [plat("linux/amd64"), plat("linux/arm64")];
        let pin = |s: &str| Pin::parse(s).unwrap();
        let plan = plan_workers(
            &ps,
            &nodes,
            &[pin("linux/amd64=amd1"), pin("linux/arm64=local")],
            &amd_host(),
        )
        .unwrap();
        assert_eq!(
            workers(&plan),
            [
                "linux/amd64 → node amd1 (pinned by --node, native)",
                "linux/arm64 → local qemu (pinned by --node, emulated)"
            ]
        );
        let plan = plan_workers(&ps, &nodes, &[pin("linux/amd64=local")], &amd_host()).unwrap();
        assert_eq!(plan.assignments[0].worker, Worker::Local);
        // Pinned to a node that emulates the platform.
        let plan = plan_workers(
            &[plat("linux/riscv64")],
            &nodes,
            &[pin("linux/riscv64=amd2")],
            &arm_laptop(),
        )
        .unwrap();
        assert_eq!(
            plan.assignments[0].reason,
            "pinned by --node, emulated on the node"
        );
        let err = |pins: &[Pin]| plan_workers(&ps, &nodes, pins, &amd_host()).unwrap_err();
        assert!(matches!(
            err(&[pin("linux/amd64=nope")]),
            ScheduleError::UnknownNode { .. }
        ));
        assert!(matches!(
            err(&[pin("linux/amd64=gone")]),
            ScheduleError::PinnedUnreachable { .. }
        ));
        assert!(matches!(
            err(&[pin("linux/s390x=amd1")]),
            ScheduleError::PinNotBuilt { .. }
        ));
        assert!(matches!(
            err(&[pin("linux/amd64=amd1"), pin("linux/amd64=amd2")]),
            ScheduleError::PinnedTwice { .. }
        ));
        assert!(matches!(
            err(&[pin("linux/arm64=amd1")]),
            ScheduleError::PinnedIncapable { .. }
        ));
        assert!(Pin::parse("linux/amd64").is_err());
        assert!(Pin::parse("linux/amd64=").is_err());
        assert!(Pin::parse("=amd1").is_err());
    }

    #[test]
    fn misconfigured_node_warns_and_is_not_used() {
        // Configured for arm64 but reports amd64.
        let nodes = vec![(node("n", &["linux/arm64"], None), up("linux/amd64", 0.0, 1))];
        let plan = plan_workers(&[plat("linux/arm64")], &nodes, &[], &amd_host()).unwrap();
        assert_eq!(plan.assignments[0].worker, Worker::LocalQemu);
        assert_eq!(
            plan.assignments[0].reason,
            "no node runs linux/arm64 natively"
        );
        assert!(plan.warnings[0].contains("reports native linux/amd64"));
    }
}
