//! What a node says about itself (`xbuild agent --info`), and whether it
//! could be asked.

use serde::{Deserialize, Serialize};
use xbuild_oci::Platform;

/// The JSON printed by `xbuild agent --info` on a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// xbuild's version on the node.
    pub version: String,
    /// The node's own platform.
    pub native: Platform,
    /// Platforms the node runs through a registered QEMU binfmt handler.
    #[serde(default)]
    pub emulated: Vec<Platform>,
    /// Load averages over 1, 5 and 15 minutes.
    pub load: [f64; 3],
    /// Online CPUs.
    pub cpus: u32,
    /// The node's host name.
    #[serde(default)]
    pub hostname: String,
}

impl AgentInfo {
    /// Does the node run `p` without emulation?
    pub fn runs_natively(&self, p: &Platform) -> bool {
        self.native.same_arch(p)
    }

    /// Does the node run `p` through QEMU?
    pub fn emulates(&self, p: &Platform) -> bool {
        self.emulated.iter().any(|e| e.same_arch(p))
    }

    /// 1-minute load per CPU.
    pub fn load_per_cpu(&self) -> f64 {
        self.load[0] / f64::from(self.cpus.max(1))
    }

    /// Parse the agent's output, naming the node on error.
    pub fn parse(node: &str, stdout: &[u8]) -> Result<AgentInfo, String> {
        serde_json::from_slice(stdout).map_err(|e| {
            let text = String::from_utf8_lossy(stdout);
            let shown: String = text.chars().take(200).collect();
            format!("node {node}: `xbuild agent --info` printed unexpected output ({e}): {shown:?}")
        })
    }
}

/// A node's state when the build starts (or `node ls` runs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum NodeHealth {
    /// Connected and the agent answered.
    Reachable {
        /// What it reported.
        info: AgentInfo,
        /// Time to connect and answer, in milliseconds.
        latency_ms: u64,
    },
    /// Could not connect, authenticate or run the agent.
    Unreachable {
        /// Why (names the host).
        reason: String,
    },
}

impl NodeHealth {
    /// The agent's report, when reachable.
    pub fn info(&self) -> Option<&AgentInfo> {
        match self {
            NodeHealth::Reachable { info, .. } => Some(info),
            NodeHealth::Unreachable { .. } => None,
        }
    }
}

/// Connect to `node` (through `pool`, so the connection is reused for the
/// build) and ask its agent for [`AgentInfo`], within `limit`.
pub async fn probe(
    pool: &crate::ssh::SshPool,
    node: &crate::inventory::NodeSpec,
    limit: std::time::Duration,
) -> NodeHealth {
    let started = std::time::Instant::now();
    let work = async {
        let conn = pool.connection(node).await.map_err(|e| e.to_string())?;
        let command = node.info_command();
        let out = conn.run(&command, limit).await.map_err(|e| e.to_string())?;
        if out.status != Some(0) {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let status = out.status.map_or_else(
                || "no exit status".to_string(),
                |s| format!("exit status {s}"),
            );
            return Err(format!(
                "{}: `{command}` failed ({status}): {}",
                conn.host(),
                stderr.trim()
            ));
        }
        AgentInfo::parse(&node.name, &out.stdout)
    };
    match tokio::time::timeout(limit, work).await {
        Ok(Ok(info)) => NodeHealth::Reachable {
            info,
            latency_ms: started.elapsed().as_millis() as u64,
        },
        Ok(Err(reason)) => NodeHealth::Unreachable { reason },
        Err(_) => NodeHealth::Unreachable {
            reason: format!(
                "{}: no answer within {}s",
                node.address.host_port(),
                limit.as_secs()
            ),
        },
    }
}
