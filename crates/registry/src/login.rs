//! [`Registry::login`] and [`Registry::logout`]: check credentials against
//! the registry the way `docker login` does, then record or forget them.

use crate::auth::{normalize_registry_key, remove_login, store_login, Secret};
use crate::error::Ctx;
use crate::{Registry, RegistryError};
use std::collections::BTreeMap;
use std::time::Duration;
use xbuild_oci::reference::api_host;

/// One `WWW-Authenticate` challenge: scheme and parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

/// Parse the first challenge of a `WWW-Authenticate` header
/// (`Bearer realm="https://auth/token",service="reg"` or `Basic realm="x"`).
pub(crate) fn parse_challenge(h: &str) -> Option<Challenge> {
    let h = h.trim();
    let (scheme, rest) = match h.find(char::is_whitespace) {
        Some(i) => (&h[..i], h[i..].trim_start()),
        None => (h, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.trim().is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

impl Registry {
    /// Check `user`/`password` against `registry` (`docker.io`,
    /// `localhost:5000`, ...), then store them in the docker config (or its
    /// credential helper), as `docker login` does.
    pub async fn login(
        &self,
        registry: &str,
        user: &str,
        password: &str,
    ) -> Result<(), RegistryError> {
        let reg = normalize_registry_key(registry);
        let secret = Secret::new(password);
        self.verify_login(&reg, user, &secret).await?;
        let path = self.docker_config_path().to_path_buf();
        let (r2, u2, s2) = (reg.clone(), user.to_string(), secret.clone());
        tokio::task::spawn_blocking(move || store_login(&path, &r2, &u2, &s2))
            .await
            .map_err(|e| RegistryError::DockerConfig {
                path: self.docker_config_path().to_path_buf(),
                detail: e.to_string(),
            })??;
        self.forget_host(&reg);
        Ok(())
    }

    /// Forget the credentials of `registry` (docker config and credential
    /// helper). Not being logged in is not an error: the result says
    /// whether there was anything to forget.
    pub fn logout(&self, registry: &str) -> Result<bool, RegistryError> {
        let reg = normalize_registry_key(registry);
        let removed = remove_login(self.docker_config_path(), &reg)?;
        self.forget_host(&reg);
        Ok(removed)
    }

    async fn verify_login(
        &self,
        registry: &str,
        user: &str,
        password: &Secret,
    ) -> Result<(), RegistryError> {
        let scheme = if self.is_plain_http(registry) {
            "http"
        } else {
            "https"
        };
        let url = format!("{scheme}://{}/v2/", api_host(registry));
        let c = Ctx {
            registry,
            reference: registry.to_string(),
            what: "registry API /v2/".into(),
        };
        let http = crate::http::client_builder(Some(Duration::from_secs(60)))
            .build()
            .map_err(|e| c.protocol(None, e.to_string()))?;
        let first = self
            .retry(|| async { http.get(&url).send().await.map_err(|e| c.reqwest(&e)) })
            .await?;
        let status = first.status().as_u16();
        if status == 200 {
            // The registry asks for no credentials; docker accepts these.
            return Ok(());
        }
        if status != 401 {
            return Err(c.protocol(Some(status), format!("GET {url} answered HTTP {status}")));
        }
        let challenge = first
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .and_then(parse_challenge)
            .ok_or_else(|| c.protocol(Some(401), "401 without a WWW-Authenticate challenge"))?;
        let check = match challenge.scheme.as_str() {
            "basic" => http.get(&url),
            "bearer" => {
                let realm = challenge
                    .params
                    .get("realm")
                    .ok_or_else(|| c.protocol(Some(401), "bearer challenge without realm"))?;
                let mut q: Vec<(&str, &str)> = vec![("account", user)];
                if let Some(s) = challenge.params.get("service") {
                    q.push(("service", s));
                }
                http.get(realm).query(&q)
            }
            other => {
                return Err(c.protocol(
                    Some(401),
                    format!("unsupported authentication scheme {other:?}"),
                ))
            }
        };
        let check = check.basic_auth(user, Some(password.expose()));
        let res = self
            .retry(|| async {
                let req = check
                    .try_clone()
                    .ok_or_else(|| c.protocol(None, "request cannot be retried"))?;
                req.send().await.map_err(|e| c.reqwest(&e))
            })
            .await?;
        match res.status().as_u16() {
            200 => Ok(()),
            401 | 403 => Err(c.unauthorized(format!("user {user:?}: wrong user name or password"))),
            s => Err(c.status(s, format!("credential check answered HTTP {s}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["service"], "registry.docker.io");
        assert_eq!(c.params["scope"], "repository:a:pull,push");
        let b = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(b.scheme, "basic");
        assert_eq!(b.params["realm"], "Registry Realm");
        let t = parse_challenge("Basic").unwrap();
        assert!(t.params.is_empty());
        assert!(parse_challenge("").is_none());
    }
}
