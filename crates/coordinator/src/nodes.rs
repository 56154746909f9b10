//! The nodes a build uses: the scheduling decision and the live SSH
//! connections opened while checking the nodes (reused for their agents).
//! Finding and probing the configured nodes is the caller's business.

use anyhow::{anyhow, Result};
use std::sync::Arc;
use xbuild_oci::Platform;
use xbuild_remote::inventory::NodeSpec;
use xbuild_remote::schedule::{Plan, Worker};
use xbuild_remote::ssh::SshPool;

/// The scheduling decision for a build, with the live connections to the
/// nodes it uses (reused for their agents).
pub struct NodePlan {
    /// Who builds what.
    pub plan: Plan,
    /// Connections opened while checking the nodes.
    pub pool: Arc<SshPool>,
    /// The configured nodes.
    pub nodes: Vec<NodeSpec>,
}

impl NodePlan {
    /// The node `platform` is scheduled on, if any.
    pub fn node_for(&self, platform: &Platform) -> Option<&str> {
        match self.plan.worker(platform)? {
            Worker::Node(name) => Some(name),
            _ => None,
        }
    }

    fn spec(&self, name: &str) -> Result<&NodeSpec> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| anyhow!("no node named {name:?}"))
    }

    /// Start the agent of node `name` on a new channel of the connection
    /// the health check opened.
    pub async fn open_agent(&self, name: &str) -> Result<xbuild_remote::AgentStream> {
        let node = self.spec(name)?;
        Ok(self.pool.connect_agent(node).await?)
    }

    /// Kill the agent process `pid` on node `name` (with its build
    /// processes, which die with it), through the node's SSH connection.
    pub async fn kill_agent(&self, name: &str, pid: u32) -> Result<()> {
        let node = self.spec(name)?;
        let conn = self.pool.connection(node).await?;
        conn.run(
            &format!("kill -KILL {pid}"),
            std::time::Duration::from_secs(10),
        )
        .await?;
        Ok(())
    }

    /// Close every connection of the pool.
    pub async fn close(&self) {
        self.pool.close_all().await;
    }
}
