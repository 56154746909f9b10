//! One HTTP client stack for everything xbuild fetches: registries (through
//! `oci-client`, which builds on `reqwest`), `xbuild login`'s probe and
//! `ADD <url>`. The settings live here once: user agent, connect and read
//! timeouts, TLS through rustls, proxies from `HTTPS_PROXY` / `HTTP_PROXY`
//! / `NO_PROXY` (reqwest's system proxy handling, which oci-client uses too).

use std::time::Duration;

/// `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("xbuild/", env!("CARGO_PKG_VERSION"));
/// Time allowed to open a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed between two reads of a response (registries).
pub const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// An async client builder with the shared settings; `total` bounds a
/// whole request when given.
pub fn client_builder(total: Option<Duration>) -> reqwest::ClientBuilder {
    let b = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(CONNECT_TIMEOUT);
    match total {
        Some(t) => b.timeout(t),
        None => b.read_timeout(READ_TIMEOUT),
    }
}

/// A blocking client builder with the same settings, for code that runs
/// on a blocking thread (`ADD <url>` inside a step). Must not be used
/// from async code.
pub fn blocking_client_builder(total: Option<Duration>) -> reqwest::blocking::ClientBuilder {
    let b = reqwest::blocking::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(CONNECT_TIMEOUT);
    match total {
        Some(t) => b.timeout(t),
        None => b.timeout(None),
    }
}
