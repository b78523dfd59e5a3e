//! Token requests: refresh (RFC 6749 §6), the device authorization grant
//! (RFC 8628) and the authorization code flow with PKCE (RFC 7636) and a
//! loopback redirect (RFC 8252 §7.3), all through the `oauth2` crate.

use std::time::Duration;

use oauth2::basic::{BasicClient, BasicTokenResponse};
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, DeviceAuthorizationUrl,
    DeviceCodeErrorResponseType, ErrorResponseType, PkceCodeChallenge, RedirectUrl, RefreshToken,
    RequestTokenError, Scope, StandardDeviceAuthorizationResponse, StandardErrorResponse,
    TokenResponse, TokenUrl,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Endpoints, OAuth2Error, OAuth2Settings, clean, error_chain};
use crate::config::Secret;

/// What a token endpoint granted.
pub struct Granted {
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    pub expires_in: Option<Duration>,
}

impl From<BasicTokenResponse> for Granted {
    fn from(t: BasicTokenResponse) -> Self {
        Granted {
            access_token: Secret::new(t.access_token().secret().clone()),
            refresh_token: t.refresh_token().map(|r| Secret::new(r.secret().clone())),
            expires_in: t.expires_in(),
        }
    }
}

/// How `popsync login` gets the first tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flow {
    /// Device authorization grant: a URL and a code to enter on any device.
    Device,
    /// Authorization code + PKCE, redirected to a listener on 127.0.0.1.
    Loopback,
}

/// Where `popsync login` talks to its user: instructions only, never a token.
pub type Say<'a> = &'a (dyn Fn(&str) + Sync);

fn token_url(account: &str, endpoints: &Endpoints) -> Result<TokenUrl, OAuth2Error> {
    TokenUrl::new(endpoints.token.clone()).map_err(|e| OAuth2Error::Provider {
        account: account.to_string(),
        detail: format!("token endpoint: {e}"),
        client_rejected: true,
    })
}

fn http(account: &str) -> Result<reqwest::Client, OAuth2Error> {
    super::http_client().map_err(|detail| OAuth2Error::Login {
        account: account.to_string(),
        detail,
    })
}

fn with_secret<A, B, C, D, E>(
    client: BasicClient<A, B, C, D, E>,
    settings: &OAuth2Settings,
) -> BasicClient<A, B, C, D, E>
where
    A: oauth2::EndpointState,
    B: oauth2::EndpointState,
    C: oauth2::EndpointState,
    D: oauth2::EndpointState,
    E: oauth2::EndpointState,
{
    match &settings.client_secret {
        Some(s) => client.set_client_secret(ClientSecret::new(s.expose().to_string())),
        None => client,
    }
}

/// Maps a token endpoint's refusal: `invalid_grant` is a dead refresh
/// token (revoked, expired, or already used once after rotation).
fn token_error<RE, T>(
    account: &str,
    e: RequestTokenError<RE, StandardErrorResponse<T>>,
    refreshing: bool,
) -> OAuth2Error
where
    RE: std::error::Error + 'static,
    T: ErrorResponseType + AsRef<str> + std::fmt::Display + Clone + 'static,
{
    let account = account.to_string();
    match e {
        RequestTokenError::ServerResponse(r) => {
            let code = r.error().as_ref().to_string();
            let detail = clean(&r.to_string());
            if refreshing && code == "invalid_grant" {
                OAuth2Error::Revoked { account, detail }
            } else {
                OAuth2Error::Provider {
                    account,
                    client_rejected: matches!(
                        code.as_str(),
                        "invalid_client" | "unauthorized_client" | "invalid_scope"
                    ),
                    detail,
                }
            }
        }
        RequestTokenError::Request(e) => OAuth2Error::Network {
            account,
            detail: error_chain(&e),
        },
        RequestTokenError::Parse(e, _body) => OAuth2Error::Login {
            account,
            // The body may hold tokens: only the parser's reason.
            detail: format!(
                "unexpected answer from the token endpoint: {}",
                clean(&e.to_string())
            ),
        },
        RequestTokenError::Other(m) => OAuth2Error::Login {
            account,
            detail: clean(&m),
        },
    }
}

/// Exchanges a refresh token for a new access token.
pub async fn refresh(
    account: &str,
    settings: &OAuth2Settings,
    endpoints: &Endpoints,
    refresh_token: &Secret,
) -> Result<Granted, OAuth2Error> {
    let client = with_secret(
        BasicClient::new(ClientId::new(settings.client_id.clone()))
            .set_token_uri(token_url(account, endpoints)?),
        settings,
    );
    let http = http(account)?;
    let token = RefreshToken::new(refresh_token.expose().to_string());
    client
        .exchange_refresh_token(&token)
        .request_async(&http)
        .await
        .map(Granted::from)
        .map_err(|e| token_error(account, e, true))
}

/// RFC 8628: show the URL and code, then poll the token endpoint at the
/// interval the provider asks (the crate adds 5 s on each `slow_down`).
pub async fn device(
    account: &str,
    settings: &OAuth2Settings,
    endpoints: &Endpoints,
    say: Say<'_>,
) -> Result<Granted, OAuth2Error> {
    let Some(device_url) = endpoints.device.clone() else {
        return Err(OAuth2Error::Login {
            account: account.to_string(),
            detail: "this provider offers no device authorization for these scopes: use `--flow loopback`".into(),
        });
    };
    let device_url = DeviceAuthorizationUrl::new(device_url).map_err(|e| OAuth2Error::Login {
        account: account.to_string(),
        detail: format!("device endpoint: {e}"),
    })?;
    let client = with_secret(
        BasicClient::new(ClientId::new(settings.client_id.clone()))
            .set_token_uri(token_url(account, endpoints)?)
            .set_device_authorization_url(device_url),
        settings,
    );
    let http = http(account)?;
    let details: StandardDeviceAuthorizationResponse = client
        .exchange_device_code()
        .add_scopes(settings.scopes.iter().cloned().map(Scope::new))
        .request_async(&http)
        .await
        .map_err(|e| token_error(account, e, false))?;
    let uri = clean(details.verification_uri().as_str());
    let code = clean(details.user_code().secret());
    say(&format!(
        "To sign in to account `{account}`, open {uri} in a browser (on any device) and enter the code {code}"
    ));
    if let Some(complete) = details.verification_uri_complete() {
        say(&format!("(or open {} directly)", clean(complete.secret())));
    }
    say("Waiting for you to approve…");
    client
        .exchange_device_access_token(&details)
        .request_async(&http, tokio::time::sleep, None)
        .await
        .map(Granted::from)
        .map_err(|e| match e {
            RequestTokenError::ServerResponse(ref r)
                if matches!(
                    r.error(),
                    DeviceCodeErrorResponseType::AccessDenied
                        | DeviceCodeErrorResponseType::ExpiredToken
                ) =>
            {
                OAuth2Error::Login {
                    account: account.to_string(),
                    detail: format!(
                        "the sign-in was not approved ({}); run `popsync login {account}` again",
                        clean(&r.to_string())
                    ),
                }
            }
            e => token_error(account, e, false),
        })
}

/// How long the loopback flow waits for the browser to come back.
pub const LOOPBACK_WAIT: Duration = Duration::from_secs(300);

/// RFC 8252: listen on 127.0.0.1 (any free port), send the user to the
/// authorization URL with a PKCE challenge, take the code from the
/// redirect, check `state` (and `iss` where the provider names one).
pub async fn loopback(
    account: &str,
    settings: &OAuth2Settings,
    endpoints: &Endpoints,
    say: Say<'_>,
    open_browser: bool,
) -> Result<Granted, OAuth2Error> {
    let fail = |detail: String| OAuth2Error::Login {
        account: account.to_string(),
        detail,
    };
    let Some(auth_url) = endpoints.authorization.clone() else {
        return Err(fail(
            "this provider has no authorization endpoint: use `--flow device`".into(),
        ));
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| fail(format!("cannot listen on 127.0.0.1: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| fail(e.to_string()))?
        .port();
    let redirect = format!("http://127.0.0.1:{port}/");
    let client = with_secret(
        BasicClient::new(ClientId::new(settings.client_id.clone()))
            .set_auth_uri(AuthUrl::new(auth_url).map_err(|e| fail(e.to_string()))?)
            .set_token_uri(token_url(account, endpoints)?)
            .set_redirect_uri(RedirectUrl::new(redirect).map_err(|e| fail(e.to_string()))?),
        settings,
    );
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut request = client
        .authorize_url(CsrfToken::new_random)
        .add_scopes(settings.scopes.iter().cloned().map(Scope::new))
        .set_pkce_challenge(challenge);
    for (k, v) in &endpoints.extra_auth_params {
        request = request.add_extra_param(*k, *v);
    }
    // OpenID Connect Core §11: offline_access (a refresh token) is granted
    // through the code flow only when the user was asked to consent.
    let asks_prompt = endpoints
        .extra_auth_params
        .iter()
        .any(|(k, _)| *k == "prompt");
    if !asks_prompt && settings.scopes.iter().any(|s| s == "offline_access") {
        request = request.add_extra_param("prompt", "consent");
    }
    let (url, state) = request.url();
    say(&format!(
        "To sign in to account `{account}`, open this URL in a browser on this machine:\n{url}"
    ));
    if open_browser {
        spawn_browser(url.as_str());
    }
    say("Waiting for the browser to come back…");
    let params = tokio::time::timeout(LOOPBACK_WAIT, wait_for_redirect(&listener))
        .await
        .map_err(|_| {
            fail(format!(
                "no answer from the browser within {}s; run `popsync login {account}` again",
                LOOPBACK_WAIT.as_secs()
            ))
        })?
        .map_err(&fail)?;
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if let Some(error) = get("error") {
        return Err(fail(format!(
            "the provider answered {}{}",
            clean(error),
            get("error_description")
                .map(|d| format!(": {}", clean(d)))
                .unwrap_or_default()
        )));
    }
    if get("state") != Some(state.secret().as_str()) {
        return Err(fail(
            "the redirect's `state` does not match this login (a stale or forged redirect)".into(),
        ));
    }
    if let (Some(expected), Some(iss)) = (&endpoints.issuer, get("iss"))
        && iss.trim_end_matches('/') != expected.trim_end_matches('/')
    {
        return Err(fail(format!(
            "the redirect names issuer `{}`, not the configured one (RFC 9207)",
            clean(iss)
        )));
    }
    let code = get("code").ok_or_else(|| fail("the redirect carries no code".into()))?;
    let http = http(account)?;
    client
        .exchange_code(AuthorizationCode::new(code.to_string()))
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .map(Granted::from)
        .map_err(|e| token_error(account, e, false))
}

/// Best effort: the URL was printed anyway.
fn spawn_browser(url: &str) {
    let has_display =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if !has_display {
        return;
    }
    let _ = std::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// A request line longer than this is not a redirect to us.
const REQUEST_LIMIT: usize = 16 * 1024;

/// Serves the loopback listener until a request for `/` with a query
/// arrives (browsers also ask for /favicon.ico); answers with a short page.
async fn wait_for_redirect(
    listener: &tokio::net::TcpListener,
) -> Result<Vec<(String, String)>, String> {
    loop {
        let (mut conn, _) = listener
            .accept()
            .await
            .map_err(|e| format!("loopback listener: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 2048];
        let head = loop {
            let read = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk)).await;
            let n = match read {
                Ok(Ok(n)) if n > 0 => n,
                _ => break None,
            };
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = memchr::memmem::find(&buf, b"\r\n") {
                break Some(buf[..end].to_vec());
            }
            if buf.len() > REQUEST_LIMIT {
                break None;
            }
        };
        let Some(head) = head else { continue };
        let line = String::from_utf8_lossy(&head).to_string();
        let target = line.split(' ').nth(1).unwrap_or_default().to_string();
        let Some(query) = target.strip_prefix("/?") else {
            let _ = conn
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            continue;
        };
        let params: Vec<(String, String)> = oauth2::url::form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let body = "popsync: sign-in received; you can close this window.\n";
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = conn.write_all(response.as_bytes()).await;
        let _ = conn.shutdown().await;
        return Ok(params);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oauth2::basic::BasicErrorResponseType;

    #[tokio::test]
    async fn the_redirect_listener_skips_other_requests() {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let browser = tokio::spawn(async move {
            let mut favicon = tokio::net::TcpStream::connect(addr).await.unwrap();
            favicon
                .write_all(b"GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut answer = Vec::new();
            favicon.read_to_end(&mut answer).await.unwrap();
            assert!(answer.starts_with(b"HTTP/1.1 404"));
            let mut redirect = tokio::net::TcpStream::connect(addr).await.unwrap();
            redirect
                .write_all(b"GET /?code=abc%2Bd&state=s1 HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut answer = Vec::new();
            redirect.read_to_end(&mut answer).await.unwrap();
            String::from_utf8(answer).unwrap()
        });
        let params = wait_for_redirect(&listener).await.unwrap();
        assert_eq!(
            params,
            vec![
                ("code".to_string(), "abc+d".to_string()),
                ("state".to_string(), "s1".to_string())
            ]
        );
        assert!(browser.await.unwrap().contains("you can close this window"));
    }

    #[test]
    fn a_used_or_revoked_refresh_token_is_revoked_not_a_config_error() {
        use oauth2::StandardErrorResponse;
        let r: StandardErrorResponse<BasicErrorResponseType> = StandardErrorResponse::new(
            BasicErrorResponseType::InvalidGrant,
            Some("grant request is invalid".into()),
            None,
        );
        let e: RequestTokenError<std::io::Error, _> = RequestTokenError::ServerResponse(r);
        let e = token_error("alice", e, true);
        assert!(e.needs_login(), "{e}");
        assert!(e.to_string().contains("popsync login alice"), "{e}");
        let r: StandardErrorResponse<BasicErrorResponseType> =
            StandardErrorResponse::new(BasicErrorResponseType::InvalidClient, None, None);
        let e: RequestTokenError<std::io::Error, _> = RequestTokenError::ServerResponse(r);
        let e = token_error("alice", e, true);
        assert!(!e.needs_login());
        assert_eq!(e.kind(), crate::sync::FailureKind::Config);
    }
}
