//! Uploads (blob sessions, cross-repository mounts, manifest PUTs) with our
//! own HTTP client, so that an error answer is read with a cap: oci-client
//! reads the body of every unexpected answer of these requests with
//! `Response::text()` (`extract_location_header`), without a limit. The
//! requests are the ones oci-client sends: a chunked upload is a POST that
//! opens the session, one PATCH per chunk of at most [`PATCH_CHUNK`] bytes
//! (with `Content-Range`), and a PUT with the digest that closes it.

use crate::error::Ctx;
use crate::token::{read_capped, MAX_ERROR_BODY};
use crate::{HostClient, Registry, RegistryError};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;
use reqwest::StatusCode;
use xbuild_oci::{Digest, Reference};

/// The largest PATCH body of a chunked upload (oci-client's default push
/// chunk size).
pub(crate) const PATCH_CHUNK: usize = 4 << 20;

/// `r`'s registry API base, `scheme://host`.
fn base(reg: &Registry, r: &Reference) -> String {
    let scheme = if reg.is_plain_http(r.registry()) {
        "http"
    } else {
        "https"
    };
    format!("{scheme}://{}", r.api_registry())
}

/// `req` with the bearer token, else the basic credentials.
fn authorize(
    req: reqwest::RequestBuilder,
    token: &Option<String>,
    auth: &RegistryAuth,
) -> reqwest::RequestBuilder {
    match (token, auth) {
        (Some(t), _) => req.bearer_auth(t),
        (None, RegistryAuth::Basic(u, p)) => req.basic_auth(u, Some(p)),
        _ => req,
    }
}

/// Whether `url` is the registry `base` itself (host, port, and no
/// downgrade from https): credentials go only there, never to another host
/// an upload `Location` names (as oci-client, CVE-2020-15157).
fn targets_registry(url: &reqwest::Url, base: &str) -> bool {
    let Ok(b) = reqwest::Url::parse(base) else {
        return false;
    };
    url.host_str() == b.host_str()
        && url.port_or_known_default() == b.port_or_known_default()
        && !(b.scheme() == "https" && url.scheme() != "https")
}

/// `req` to `url`, with credentials only when `url` is the registry.
fn authorize_at(
    req: reqwest::RequestBuilder,
    url: &reqwest::Url,
    base: &str,
    token: &Option<String>,
    auth: &RegistryAuth,
) -> reqwest::RequestBuilder {
    if targets_registry(url, base) {
        authorize(req, token, auth)
    } else {
        req
    }
}

/// `res` when its status is `want`; else the error, from at most
/// [`MAX_ERROR_BODY`] bytes of its body, mapped as oci-client maps it.
async fn expect(
    res: reqwest::Response,
    want: StatusCode,
    c: &Ctx<'_>,
) -> Result<reqwest::Response, RegistryError> {
    let status = res.status();
    if status == want {
        return Ok(res);
    }
    let url = strip_query(res.url());
    if status.is_success() {
        return Err(c.protocol(
            Some(status.as_u16()),
            format!("{url}: expected HTTP {want}, got {status}"),
        ));
    }
    let mut res = res;
    let body = match read_capped(&mut res, MAX_ERROR_BODY).await {
        Ok(Ok(b)) => b,
        // Too long, or cut: the status says enough.
        Ok(Err(_)) | Err(_) => Vec::new(),
    };
    Err(c.oci(OciDistributionError::ServerError {
        code: status.as_u16(),
        url,
        message: String::from_utf8_lossy(&body).into_owned(),
    }))
}

/// A URL for messages: upload session URLs carry state in their query.
fn strip_query(u: &reqwest::Url) -> String {
    let mut u = u.clone();
    u.set_query(None);
    u.to_string()
}

/// The `Location` of `res`, resolved against the request's URL.
fn location(res: &reqwest::Response, c: &Ctx<'_>) -> Result<reqwest::Url, RegistryError> {
    let lh = res
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            c.protocol(
                Some(res.status().as_u16()),
                "the upload answer has no Location header",
            )
        })?;
    res.url()
        .join(lh)
        .map_err(|e| c.protocol(None, format!("bad upload Location {lh:?}: {e}")))
}

impl Registry {
    /// Uploads `stream` (the bytes of blob `digest`) to `r`'s repository in
    /// one chunked upload session. Stream errors are reported with
    /// [`Ctx::stream_io`].
    pub(crate) async fn upload_blob<S>(
        &self,
        hc: &HostClient,
        r: &Reference,
        digest: &Digest,
        stream: S,
        c: &Ctx<'_>,
    ) -> Result<(), RegistryError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>>,
    {
        let token = self.prime_token(hc, r, RegistryOperation::Push, c).await?;
        let http = self.http().map_err(|e| c.reqwest(&e))?;
        let root = base(self, r);
        let url = format!("{root}/v2/{}/blobs/uploads/", r.repository());
        let req =
            authorize(http.post(&url), &token, &hc.auth).header(reqwest::header::CONTENT_LENGTH, 0);
        let res = req.send().await.map_err(|e| c.reqwest(&e))?;
        let res = expect(res, StatusCode::ACCEPTED, c).await?;
        let mut loc = location(&res, c)?;
        let mut start = 0usize;
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            let mut data = item.map_err(|e| c.stream_io(digest, &e))?;
            while !data.is_empty() {
                let chunk = data.split_to(PATCH_CHUNK.min(data.len()));
                let end = start + chunk.len() - 1;
                let req = authorize_at(http.patch(loc.clone()), &loc, &root, &token, &hc.auth)
                    .header("Content-Range", format!("{start}-{end}"))
                    .header(reqwest::header::CONTENT_LENGTH, chunk.len())
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .body(chunk);
                let res = req.send().await.map_err(|e| c.reqwest(&e))?;
                let res = expect(res, StatusCode::ACCEPTED, c).await?;
                loc = location(&res, c)?;
                start = end + 1;
            }
        }
        loc.query_pairs_mut().append_pair("digest", digest.as_str());
        let req = authorize_at(http.put(loc.clone()), &loc, &root, &token, &hc.auth)
            .header(reqwest::header::CONTENT_LENGTH, 0);
        let res = req.send().await.map_err(|e| c.reqwest(&e))?;
        expect(res, StatusCode::CREATED, c).await?;
        Ok(())
    }

    /// Asks the registry to mount blob `digest` into `r`'s repository from
    /// repository `from`; true when it did (201). Bodies are never read.
    pub(crate) async fn mount_from(
        &self,
        hc: &HostClient,
        r: &Reference,
        from: &str,
        digest: &Digest,
        c: &Ctx<'_>,
    ) -> bool {
        let Ok(token) = self.prime_token(hc, r, RegistryOperation::Push, c).await else {
            return false;
        };
        let Ok(http) = self.http() else {
            return false;
        };
        let url = format!("{}/v2/{}/blobs/uploads/", base(self, r), r.repository());
        let req = authorize(http.post(&url), &token, &hc.auth)
            .query(&[("mount", digest.as_str()), ("from", from)])
            .header(reqwest::header::CONTENT_LENGTH, 0);
        matches!(req.send().await, Ok(res) if res.status() == StatusCode::CREATED)
    }

    /// Whether `r`'s repository has `digest` under `kind` (`blobs` or
    /// `manifests`): one HEAD, whose status says it (200 or 404; anything
    /// else is an error). No body is read.
    pub(crate) async fn head_exists(
        &self,
        hc: &HostClient,
        r: &Reference,
        kind: &str,
        digest: &Digest,
        c: &Ctx<'_>,
    ) -> Result<bool, RegistryError> {
        let token = self.prime_token(hc, r, RegistryOperation::Pull, c).await?;
        let http = self.http().map_err(|e| c.reqwest(&e))?;
        let url = format!("{}/v2/{}/{kind}/{digest}", base(self, r), r.repository());
        let mut req = authorize(http.head(&url), &token, &hc.auth);
        if kind == "manifests" {
            req = req.header(reqwest::header::ACCEPT, crate::pull::ACCEPT.join(", "));
        }
        let res = req.send().await.map_err(|e| c.reqwest(&e))?;
        match res.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            s => Err(c.status(s, format!("HEAD {url}: HTTP {s}"))),
        }
    }

    /// PUTs `body` (a manifest or index of `media_type`) under `at` (a tag
    /// or digest) in `r`'s repository.
    pub(crate) async fn put_manifest_at(
        &self,
        hc: &HostClient,
        r: &Reference,
        at: &str,
        body: Bytes,
        media_type: &str,
        c: &Ctx<'_>,
    ) -> Result<(), RegistryError> {
        let token = self.prime_token(hc, r, RegistryOperation::Push, c).await?;
        let http = self.http().map_err(|e| c.reqwest(&e))?;
        let url = format!("{}/v2/{}/manifests/{at}", base(self, r), r.repository());
        let req = authorize(http.put(&url), &token, &hc.auth)
            .header(reqwest::header::CONTENT_TYPE, media_type)
            .body(body);
        let res = req.send().await.map_err(|e| c.reqwest(&e))?;
        expect(res, StatusCode::CREATED, c).await?;
        Ok(())
    }
}
