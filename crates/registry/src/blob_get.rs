//! Blob GETs with our own HTTP client, so that an error answer is read with
//! a cap: oci-client's `pull_blob_stream` reads the body of a non-success
//! answer with `Response::bytes()`, without a limit. The bytes of a
//! successful answer stream through (never held whole) and are checked
//! against the blob's digest at their end, as oci-client's stream did.

use crate::error::Ctx;
use crate::token::{read_capped, MAX_ERROR_BODY};
use crate::{ctx, HostClient, Registry, RegistryError};
use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::SizedStream;
use oci_client::errors::{OciDistributionError, OciEnvelope};
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;
use xbuild_oci::digest::Hasher;
use xbuild_oci::{Descriptor, Digest, Reference};

/// The error of a non-success answer to `url`, from at most
/// [`MAX_ERROR_BODY`] bytes of its body, mapped as oci-client maps it (an
/// OCI error envelope for a 4xx, else the status).
pub(crate) async fn error_of(res: reqwest::Response, url: &str, c: &Ctx<'_>) -> RegistryError {
    let status = res.status();
    let mut res = res;
    let body = match read_capped(&mut res, MAX_ERROR_BODY).await {
        Ok(Ok(b)) => b,
        // Too long, or cut: the status says enough.
        Ok(Err(_)) | Err(_) => Vec::new(),
    };
    let url = url.to_string();
    let e = if status == reqwest::StatusCode::UNAUTHORIZED {
        OciDistributionError::UnauthorizedError { url }
    } else if status.is_client_error() {
        match serde_json::from_slice::<OciEnvelope>(&body) {
            Ok(envelope) => OciDistributionError::RegistryError { envelope, url },
            Err(_) => OciDistributionError::ServerError {
                code: status.as_u16(),
                url,
                message: String::from_utf8_lossy(&body).into_owned(),
            },
        }
    } else {
        OciDistributionError::ServerError {
            code: status.as_u16(),
            url,
            message: String::from_utf8_lossy(&body).into_owned(),
        }
    };
    c.oci(e)
}

/// A stream of `res`'s body that fails at its end when the bytes do not
/// hash to `expected` (with oci-client's `DigestError`, which
/// [`Ctx::stream_io`] reports as a mismatch).
fn verified(res: reqwest::Response, expected: Digest) -> SizedStream {
    let content_length = res.content_length();
    let body = res.bytes_stream().map_err(std::io::Error::other).boxed();
    let hasher = Hasher::new(expected.algorithm());
    let stream = futures_util::stream::unfold(Some((body, hasher, expected)), |state| async move {
        let (mut body, mut hasher, expected) = state?;
        match body.next().await {
            Some(Ok(b)) => {
                hasher.update(&b);
                Some((Ok(b), Some((body, hasher, expected))))
            }
            Some(Err(e)) => Some((Err(e), None)),
            None => {
                let actual = hasher.finish();
                if actual == expected {
                    return None;
                }
                let e = oci_client::errors::DigestError::VerificationError {
                    expected: expected.to_string(),
                    actual: actual.to_string(),
                };
                Some((Err(std::io::Error::other(e)), None))
            }
        }
    });
    SizedStream {
        content_length,
        digest_header_value: None,
        stream: stream.boxed(),
    }
}

impl Registry {
    /// Open `desc` of `r`'s repository for streaming: a GET with the token
    /// oci-client would use, then the descriptor's foreign `urls` (without
    /// credentials) when the registry does not serve it. [`BlobCheck`]
    /// (crate::pull) checks the size as bytes arrive; the digest is checked
    /// at the end of the stream.
    pub(crate) async fn open_blob(
        &self,
        hc: &HostClient,
        r: &Reference,
        desc: &Descriptor,
    ) -> Result<SizedStream, RegistryError> {
        let c = ctx(r, format!("blob {}", desc.digest));
        let token = self.prime_token(hc, r, RegistryOperation::Pull, &c).await?;
        let scheme = if self.is_plain_http(r.registry()) {
            "http"
        } else {
            "https"
        };
        let url = format!(
            "{scheme}://{}/v2/{}/blobs/{}",
            r.api_registry(),
            r.repository(),
            desc.digest
        );
        let http = self.http().map_err(|e| c.reqwest(&e))?;
        let mut req = http.get(&url);
        req = match (&token, &hc.auth) {
            (Some(t), _) => req.bearer_auth(t),
            (None, RegistryAuth::Basic(u, p)) => req.basic_auth(u, Some(p)),
            _ => req,
        };
        // reqwest follows redirects (to blob storage), dropping the
        // credentials when the host changes.
        let mut res = req.send().await.map_err(|e| c.reqwest(&e))?;
        if !res.status().is_success() {
            // Foreign layers: never send credentials there
            // (CVE-2020-15157).
            for u in desc
                .urls
                .iter()
                .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
            {
                if let Ok(other) = http.get(u).send().await {
                    if other.status().is_success() {
                        res = other;
                        break;
                    }
                }
            }
        }
        if !res.status().is_success() {
            return Err(error_of(res, &url, &c).await);
        }
        Ok(verified(res, desc.digest.clone()))
    }
}
