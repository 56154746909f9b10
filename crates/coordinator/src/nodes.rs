//! The nodes a build uses: the scheduling decision and the live SSH
//! connections opened while checking the nodes (reused for their agents).
//! Finding and probing the configured nodes is the caller's business.

use std::sync::Arc;
use xbuild_oci::Platform;
use xbuild_remote::inventory::NodeSpec;
use xbuild_remote::schedule::{Plan, Worker};
use xbuild_remote::ssh::{SshError, SshPool};

/// Why a node's agent could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The plan names a node the configuration does not have.
    #[error("no node named {name:?}")]
    Unknown {
        /// The node's name.
        name: String,
    },
    /// The SSH connection or command failed (the error names the node).
    #[error(transparent)]
    Ssh(#[from] SshError),
}

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

    fn spec(&self, name: &str) -> Result<&NodeSpec, NodeError> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| NodeError::Unknown {
                name: name.to_string(),
            })
    }

    /// Start the agent of node `name` on a new channel of the connection
    /// the health check opened.
    pub async fn open_agent(&self, name: &str) -> Result<xbuild_remote::AgentStream, NodeError> {
        let node = self.spec(name)?;
        Ok(self.pool.connect_agent(node).await?)
    }

    /// Kill the agent process `pid` on node `name` (with its build
    /// processes, which die with it), through the node's SSH connection.
    pub async fn kill_agent(&self, name: &str, pid: u32) -> Result<(), NodeError> {
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
