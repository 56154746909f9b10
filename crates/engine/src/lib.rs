//! The xbuild engine: solves one platform's [`xbuild_plan::BuildGraph`] on
//! this machine. It computes cache keys, reuses cached results, runs RUN
//! steps through [`xbuild_sandbox`], applies COPY/ADD, stacks snapshots
//! with overlayfs and writes the resulting image into the content store.
//! It never prints: everything it has to say goes through [`events`].
#![warn(missing_docs)]

mod bindctx;
pub mod cache;
pub mod context;
pub mod copy;
pub mod copyfs;
mod engine;
pub mod events;
pub mod exec;
pub mod explain;
pub mod housekeeping;
pub mod image;
mod keys;
pub mod mount;
pub mod redact;
pub mod remote;
pub mod secrets;
pub mod snapshot;
mod solve;
pub mod sshproxy;
pub use solve::{check_platforms, check_platforms_except};
pub mod source;

pub use copyfs::Snapshotter;
pub use engine::{Engine, EngineConfig, EngineError, SolveRequest, SolveResult, VertexIds};
pub use secrets::Secrets;
pub use source::{ImageSource, PullFuture, PulledImage, StoreSource};
