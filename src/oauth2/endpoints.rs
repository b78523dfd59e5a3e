//! Where a provider's endpoints are: built into the presets, discovered
//! (OpenID Connect Discovery 1.0) for a custom issuer.

use oauth2::url::{Host, Url};

use super::{OAuth2Error, OAuth2Settings, Preset, clean};

/// A provider's endpoints, each checked with [`check_url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub authorization: Option<String>,
    pub token: String,
    /// RFC 8628; `None` where the device grant does not cover mail scopes.
    pub device: Option<String>,
    /// The issuer the loopback flow's `iss` answer must name (RFC 9207).
    pub issuer: Option<String>,
    /// Google hands out a refresh token only when asked for offline access.
    pub extra_auth_params: Vec<(&'static str, &'static str)>,
}

/// An endpoint must be https; plain http only on a loopback address
/// (a provider run for tests on the same machine).
pub fn check_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => {
            return Err(format!(
                "`{s}` is plain http: use https (http is accepted only on 127.0.0.1 or [::1])"
            ));
        }
        other => return Err(format!("`{s}`: scheme {other} is not https")),
    }
    if url.host().is_none() {
        return Err(format!("`{s}` names no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("`{s}` must not hold a user name or password"));
    }
    Ok(url)
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

/// The fields of an OpenID configuration document popsync uses.
#[derive(serde::Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: Option<String>,
    token_endpoint: String,
    device_authorization_endpoint: Option<String>,
}

/// Discovery documents are small; a huge one is hostile.
const DISCOVERY_LIMIT: usize = 256 * 1024;

impl Endpoints {
    /// The preset's endpoints, or the custom issuer's discovered ones.
    pub async fn resolve(
        account: &str,
        settings: &OAuth2Settings,
    ) -> Result<Endpoints, OAuth2Error> {
        match settings.preset {
            Preset::Microsoft => Ok(Self::microsoft(&settings.tenant)),
            Preset::Google => Ok(Self::google()),
            Preset::Custom => {
                let issuer = settings.issuer.as_deref().unwrap_or_default();
                Self::discover(account, issuer).await
            }
        }
    }

    /// Microsoft identity platform v2.0; the tenant was checked at load time
    /// to be a plain word, so it cannot change the path.
    pub fn microsoft(tenant: &str) -> Endpoints {
        let base = format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0");
        Endpoints {
            authorization: Some(format!("{base}/authorize")),
            token: format!("{base}/token"),
            device: Some(format!("{base}/devicecode")),
            issuer: None,
            extra_auth_params: Vec::new(),
        }
    }

    /// Google's device grant does not cover `https://mail.google.com/`:
    /// only the loopback flow is offered.
    pub fn google() -> Endpoints {
        Endpoints {
            authorization: Some("https://accounts.google.com/o/oauth2/v2/auth".into()),
            token: "https://oauth2.googleapis.com/token".into(),
            device: None,
            issuer: None,
            extra_auth_params: vec![("access_type", "offline"), ("prompt", "consent")],
        }
    }

    async fn discover(account: &str, issuer: &str) -> Result<Endpoints, OAuth2Error> {
        let fail = |detail: String| OAuth2Error::Provider {
            account: account.to_string(),
            detail: format!("discovery at {issuer}: {detail}"),
            client_rejected: true,
        };
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let http = super::http_client().map_err(&fail)?;
        let network = |e: reqwest::Error| OAuth2Error::Network {
            account: account.to_string(),
            detail: format!("{url}: {}", super::error_chain(&e)),
        };
        let mut response = http.get(&url).send().await.map_err(network)?;
        if !response.status().is_success() {
            return Err(fail(format!("HTTP {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(network)? {
            body.extend_from_slice(&chunk);
            if body.len() > DISCOVERY_LIMIT {
                return Err(fail("the document is larger than 256 KiB".into()));
            }
        }
        let doc: Discovery = serde_json::from_slice(&body).map_err(|e| {
            fail(format!(
                "not an OpenID configuration: {}",
                clean(&e.to_string())
            ))
        })?;
        // OpenID Discovery §4.3: the document must name the issuer asked.
        if doc.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
            return Err(fail(format!(
                "the document is for issuer `{}`, not this one",
                clean(&doc.issuer)
            )));
        }
        let checked = |s: String| check_url(&s).map(|_| s).map_err(|m| fail(clean(&m)));
        Ok(Endpoints {
            authorization: doc.authorization_endpoint.map(checked).transpose()?,
            token: checked(doc.token_endpoint)?,
            device: doc.device_authorization_endpoint.map(checked).transpose()?,
            issuer: Some(doc.issuer),
            extra_auth_params: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_everywhere_but_loopback() {
        assert!(check_url("https://login.example.com/x").is_ok());
        assert!(check_url("http://127.0.0.1:8080").is_ok());
        assert!(check_url("http://127.3.4.5:8080/a").is_ok());
        assert!(check_url("http://[::1]:9/").is_ok());
        let e = check_url("http://login.example.com").unwrap_err();
        assert!(e.contains("use https"), "{e}");
        assert!(
            check_url("http://localhost:80").is_err(),
            "a name can resolve anywhere"
        );
        assert!(check_url("ftp://example.com").is_err());
        assert!(check_url("https://u:p@example.com").is_err());
        assert!(check_url("not a url").is_err());
    }

    #[test]
    fn presets_name_their_providers() {
        let ms = Endpoints::microsoft("common");
        assert_eq!(
            ms.token,
            "https://login.microsoftonline.com/common/oauth2/v2.0/token"
        );
        assert!(ms.device.is_some());
        let g = Endpoints::google();
        assert!(
            g.device.is_none(),
            "Google's device grant lacks mail scopes"
        );
        assert_eq!(g.token, "https://oauth2.googleapis.com/token");
    }
}
