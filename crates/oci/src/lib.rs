//! OCI building blocks for xbuild: [`Digest`] and [`Platform`] newtypes,
//! descriptors, manifests, indexes and image configs, the content store and
//! layer tarballs.
#![warn(missing_docs)]

pub mod annotation;
pub mod archive;
pub mod compress;
pub mod config;
pub mod descriptor;
pub mod digest;
pub mod gc;
pub mod layer;
pub mod manifest;
pub mod media_types;
pub mod platform;
pub mod reference;
pub mod store;

pub use config::{ContainerConfig, Healthcheck, History, ImageConfig, RootFs};
pub use descriptor::{Descriptor, Encoded, PlatformSpec};
pub use digest::{Digest, DigestWriter};
pub use manifest::{ImageIndex, ImageManifest, Manifest};
pub use platform::Platform;
pub use reference::{Reference, ReferenceError};
pub use store::BlobStore;
