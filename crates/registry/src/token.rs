//! Bearer tokens, fetched here with capped reads and handed to oci-client.
//!
//! oci-client (0.18) fetches a token itself when its cache has none for a
//! repository and operation (`Client::_auth`): it reads the token service's
//! whole answer into memory with `Response::text()`, without a limit, and
//! its requests cannot be given another HTTP client. So before every
//! request that authenticates (oci-client's, and the ones made here), `Registry::prime_token` makes
//! sure oci-client's cache holds a fresh token for that repository and
//! operation: it does the `/v2/` challenge and the token GET itself, reading
//! at most [`MAX_TOKEN_RESPONSE`] bytes of a token and [`MAX_ERROR_BODY`]
//! bytes of an error, and stores the token in oci-client's cache through
//! `Client::auth` with a bearer credential (which oci-client takes as is,
//! with no request). An endless or huge token answer fails the operation
//! at the cap, naming the registry and the token service.
//!
//! The sizes: containerd decodes token answers without a limit and reads at
//! most 64,000 bytes of an error body; real tokens are a few KiB (Docker
//! Hub's JWTs about 1–5 KiB), so 1 MiB leaves ample room.

use crate::error::Ctx;
use crate::login::parse_challenge;
use crate::{oci_ref, HostClient, Registry, RegistryError};
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;
use std::time::{Duration, Instant};
use xbuild_oci::Reference;

/// Largest token answer read (1 MiB).
pub const MAX_TOKEN_RESPONSE: u64 = 1 << 20;
/// Largest error body read from a registry or token service (containerd's
/// 64,000 bytes).
pub const MAX_ERROR_BODY: u64 = 64_000;
/// Token lifetime when the service gives none (the distribution spec's).
const DEFAULT_EXPIRES_IN: u64 = 60;
/// Tokens are renewed this long before they expire, so that oci-client never
/// finds one expired and fetches its own.
const RENEW_MARGIN: u64 = 15;
/// How long a registry found to need no bearer token is not asked again.
const NO_TOKEN_TTL: Duration = Duration::from_secs(60);

/// What the token cache holds for one repository and operation.
#[derive(Clone)]
pub(crate) enum Cached {
    /// A bearer token, used until `until`.
    Token { token: String, until: Instant },
    /// The registry asks for no bearer token (none, or HTTP basic).
    NoToken { until: Instant },
}

impl Cached {
    fn fresh(&self, now: Instant) -> bool {
        match self {
            Cached::Token { until, .. } | Cached::NoToken { until } => now < *until,
        }
    }
}

/// The answer of a token service (distribution's token spec; OAuth2 names
/// it `access_token`).
#[derive(serde::Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Reads at most `cap` bytes of `res`'s body. `Err(n)` when the body is
/// longer (`n` bytes seen, from `Content-Length` or counted); the rest is
/// never read.
pub(crate) async fn read_capped(
    res: &mut reqwest::Response,
    cap: u64,
) -> Result<Result<Vec<u8>, u64>, reqwest::Error> {
    if let Some(n) = res.content_length().filter(|n| *n > cap) {
        return Ok(Err(n));
    }
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await? {
        let n = body.len() as u64 + chunk.len() as u64;
        if n > cap {
            return Ok(Err(n));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Ok(body))
}

/// The start of an error body, for a message: up to 200 characters of
/// printable text.
fn snippet(body: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    text.trim().to_string()
}

impl Registry {
    /// Makes sure oci-client holds a fresh bearer token for `r`'s
    /// repository and `op` (when the registry uses bearer tokens), fetched
    /// with capped reads; returns it.
    pub(crate) async fn prime_token(
        &self,
        hc: &HostClient,
        r: &Reference,
        op: RegistryOperation,
        c: &Ctx<'_>,
    ) -> Result<Option<String>, RegistryError> {
        if let RegistryAuth::Bearer(t) = &hc.auth {
            // A registry token from config.json: oci-client uses it as is.
            return Ok(Some(t.clone()));
        }
        let push = matches!(op, RegistryOperation::Push);
        let key = (r.repository().to_string(), push);
        let now = Instant::now();
        let cached = hc
            .tokens
            .lock()
            .expect("token cache lock")
            .get(&key)
            .filter(|t| t.fresh(now))
            .cloned();
        let cached = match cached {
            Some(c) => c,
            None => {
                let fetched = self.fetch_token(hc, r, push, c).await?;
                hc.tokens
                    .lock()
                    .expect("token cache lock")
                    .insert(key, fetched.clone());
                fetched
            }
        };
        match cached {
            Cached::NoToken { .. } => Ok(None),
            Cached::Token { token, .. } => {
                // Into oci-client's cache (a bearer credential is not sent
                // anywhere by `auth`: it is the token).
                hc.client
                    .auth(&oci_ref(r), &RegistryAuth::Bearer(token.clone()), op)
                    .await
                    .map_err(|e| c.oci(e))?;
                Ok(Some(token))
            }
        }
    }

    /// The `/v2/` challenge, then the token GET, both with capped reads.
    async fn fetch_token(
        &self,
        hc: &HostClient,
        r: &Reference,
        push: bool,
        c: &Ctx<'_>,
    ) -> Result<Cached, RegistryError> {
        let scheme = if self.is_plain_http(r.registry()) {
            "http"
        } else {
            "https"
        };
        let url = format!("{scheme}://{}/v2/", r.api_registry());
        let http = self.http().map_err(|e| c.reqwest(&e))?;
        // The challenge is in the headers; the body is never read.
        let ping = http.get(&url).send().await.map_err(|e| c.reqwest(&e))?;
        let challenge = ping
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .and_then(parse_challenge);
        drop(ping);
        let no_token = Cached::NoToken {
            until: Instant::now() + NO_TOKEN_TTL,
        };
        let Some(ch) = challenge.filter(|ch| ch.scheme == "bearer") else {
            return Ok(no_token);
        };
        let Some(realm) = ch.params.get("realm") else {
            return Ok(no_token);
        };
        // The scopes oci-client asks for, so the token fits its requests.
        let scope = if push {
            format!("repository:{}:pull,push", r.repository())
        } else {
            format!("repository:{}:pull", r.repository())
        };
        let mut query = vec![("scope", scope.as_str())];
        if let Some(s) = ch.params.get("service") {
            query.push(("service", s));
        }
        let mut req = http.get(realm).query(&query);
        if let RegistryAuth::Basic(user, pass) = &hc.auth {
            req = req.basic_auth(user, Some(pass));
        }
        let mut res = req.send().await.map_err(|e| c.reqwest(&e))?;
        let status = res.status().as_u16();
        let cap = if status == 200 {
            MAX_TOKEN_RESPONSE
        } else {
            MAX_ERROR_BODY
        };
        let body = read_capped(&mut res, cap)
            .await
            .map_err(|e| c.reqwest(&e))?;
        let service = realm_host(realm);
        let body = match body {
            Ok(b) => b,
            Err(n) if status == 200 => {
                return Err(c.protocol(
                    None,
                    format!(
                        "the token service {service} answered more than {MAX_TOKEN_RESPONSE} \
                         bytes ({n} bytes seen); a token is a few KiB, refusing it"
                    ),
                ))
            }
            // An error body past the cap: the status says enough.
            Err(_) => Vec::new(),
        };
        if status != 200 {
            let said = snippet(&body);
            let detail = if said.is_empty() {
                format!("token service {service} answered HTTP {status}")
            } else {
                format!("token service {service} answered HTTP {status}: {said}")
            };
            return Err(match status {
                401 | 403 => c.unauthorized(detail),
                _ => c.protocol(Some(status), detail),
            });
        }
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
            c.protocol(
                None,
                format!("the token service {service} answered no token JSON: {e}"),
            )
        })?;
        let token = answer
            .token
            .filter(|t| !t.is_empty())
            .or(answer.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| {
                c.protocol(
                    None,
                    format!("the token service {service} answered no token"),
                )
            })?;
        let life = answer
            .expires_in
            .unwrap_or(DEFAULT_EXPIRES_IN)
            .saturating_sub(RENEW_MARGIN);
        Ok(Cached::Token {
            token,
            until: Instant::now() + Duration::from_secs(life),
        })
    }
}

/// `scheme://host[:port]` of a token realm, for messages (no path or query).
fn realm_host(realm: &str) -> String {
    match reqwest::Url::parse(realm) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{}://{h}:{p}", u.scheme()),
            (Some(h), None) => format!("{}://{h}", u.scheme()),
            _ => realm.to_string(),
        },
        Err(_) => realm.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realm_hosts_drop_paths_and_queries() {
        assert_eq!(
            realm_host("https://auth.docker.io/token?x=1"),
            "https://auth.docker.io"
        );
        assert_eq!(
            realm_host("http://127.0.0.1:5001/token"),
            "http://127.0.0.1:5001"
        );
        assert_eq!(realm_host("not a url"), "not a url");
    }

    #[test]
    fn snippets_are_short_and_printable() {
        assert_eq!(snippet(b"  bad\ncreds\x1b[31m "), "bad creds [31m");
        assert_eq!(snippet(&[b'a'; 500]).len(), 200);
    }
}
