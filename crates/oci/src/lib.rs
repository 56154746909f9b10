//! OCI building blocks for xbuild: [`Digest`] and [`Platform`] newtypes,
//! descriptors, manifests, indexes and image configs, the content store and
//! layer tarballs.
#![warn(missing_docs)]

pub mod platform;

pub use platform::Platform;
