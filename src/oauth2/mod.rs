//! OAuth 2.0 for XOAUTH2 / OAUTHBEARER logins: provider presets, the token
//! store, refresh, and the first-login flows (`popsync login`).
//!
//! The refresh token lives in `STATE_DIR/oauth2/ACCOUNT.json` (0600); an
//! access token is taken from there while it is fresh and refreshed shortly
//! before it expires, under a per-account file lock so that concurrent
//! popsync processes refresh once (a rotated refresh token used twice makes
//! a provider revoke the whole grant).

mod endpoints;
pub mod flow;
mod store;

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Secret;
use crate::sync::FailureKind;

pub use endpoints::{Endpoints, check_url};
pub use store::{TokenStore, Tokens};

/// Which provider's endpoints and scopes an account uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// Microsoft 365 / Outlook.com (login.microsoftonline.com).
    Microsoft,
    /// Gmail / Google Workspace.
    Google,
    /// Any provider with OpenID discovery at `oauth2_issuer`.
    Custom,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::Microsoft => "microsoft",
            Preset::Google => "google",
            Preset::Custom => "custom",
        }
    }

    /// The preset of a mail domain or server host whose provider needs
    /// OAuth2: Gmail (and `pop.gmail.com`), Outlook.com / Hotmail / Live /
    /// MSN in any country (`hotmail.co.uk`, `outlook.de`), Microsoft 365
    /// tenants (`*.onmicrosoft.com`, `outlook.office365.com`). `None` for
    /// every other name: most servers still take a password.
    pub fn for_mail_domain(name: &str) -> Option<Preset> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let is = |domain: &str| name == domain || name.ends_with(&format!(".{domain}"));
        if is("gmail.com") || is("googlemail.com") {
            return Some(Preset::Google);
        }
        if is("onmicrosoft.com") || is("office365.com") || is("outlook.office.com") {
            return Some(Preset::Microsoft);
        }
        // A consumer brand followed by a country suffix only ("outlook.com",
        // "live.co.uk"), not any domain that starts with such a word.
        let (brand, suffix) = name.split_once('.')?;
        let country_suffix = !suffix.is_empty()
            && suffix.split('.').count() <= 2
            && suffix
                .split('.')
                .all(|l| (2..=3).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_lowercase()));
        let consumer = matches!(
            brand,
            "outlook" | "hotmail" | "live" | "msn" | "windowslive"
        );
        (consumer && country_suffix).then_some(Preset::Microsoft)
    }

    /// The scopes a preset asks for when `oauth2_scopes` is not set.
    pub fn default_scopes(self) -> &'static [&'static str] {
        match self {
            Preset::Microsoft => &[
                "https://outlook.office.com/POP.AccessAsUser.All",
                "offline_access",
            ],
            Preset::Google => &["https://mail.google.com/"],
            Preset::Custom => &[],
        }
    }
}

/// An account's `oauth2*` settings, validated.
#[derive(Clone, PartialEq)]
pub struct OAuth2Settings {
    pub preset: Preset,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    /// Microsoft only: `common`, `consumers`, `organizations` or a tenant id.
    pub tenant: String,
    /// Custom only: where `/.well-known/openid-configuration` is.
    pub issuer: Option<String>,
    pub scopes: Vec<String>,
    /// Keep the refresh token in the desktop keyring (Secret Service), not
    /// in the token file.
    pub keyring: bool,
    /// `STATE_DIR/oauth2`: filled in once the state directory is known.
    pub token_dir: PathBuf,
}

impl std::fmt::Debug for OAuth2Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth2Settings")
            .field("preset", &self.preset)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("tenant", &self.tenant)
            .field("issuer", &self.issuer)
            .field("scopes", &self.scopes)
            .field("keyring", &self.keyring)
            .field("token_dir", &self.token_dir)
            .finish()
    }
}

impl OAuth2Settings {
    pub fn store(&self, account: &str) -> TokenStore {
        TokenStore::new(&self.token_dir, account, self.keyring)
    }
}

/// Why no access token could be had. Never carries a token; text from the
/// provider is sanitised and cut short.
#[derive(Debug, thiserror::Error)]
pub enum OAuth2Error {
    #[error("not logged in to the OAuth2 provider yet: run `popsync login {account}`")]
    NotLoggedIn { account: String },

    #[error(
        "the OAuth2 provider refused the refresh token ({detail}); it was revoked or has expired: run `popsync login {account}`"
    )]
    Revoked { account: String, detail: String },

    #[error(
        "the stored OAuth2 tokens are for another client or provider (oauth2 settings changed): run `popsync login {account}`"
    )]
    OtherClient { account: String },

    #[error("OAuth2 provider unreachable: {detail}")]
    Network { account: String, detail: String },

    #[error("the OAuth2 provider refused the request: {detail}")]
    Provider {
        account: String,
        detail: String,
        /// The provider says the client itself is wrong (id, secret, type).
        client_rejected: bool,
    },

    #[error("OAuth2 login: {detail}")]
    Login { account: String, detail: String },

    #[error("OAuth2 token file {}: {detail}", .path.display())]
    Store {
        account: String,
        path: PathBuf,
        detail: String,
    },
}

impl OAuth2Error {
    /// Only a new `popsync login` helps (the daemon waits for one).
    pub fn needs_login(&self) -> bool {
        matches!(
            self,
            OAuth2Error::NotLoggedIn { .. }
                | OAuth2Error::Revoked { .. }
                | OAuth2Error::OtherClient { .. }
        )
    }

    /// Worth retrying later with nothing changed.
    pub fn is_transient(&self) -> bool {
        matches!(self, OAuth2Error::Network { .. })
    }

    pub fn kind(&self) -> FailureKind {
        match self {
            OAuth2Error::NotLoggedIn { .. }
            | OAuth2Error::Revoked { .. }
            | OAuth2Error::OtherClient { .. } => FailureKind::NeedsLogin,
            OAuth2Error::Network { .. } => FailureKind::Network,
            OAuth2Error::Provider {
                client_rejected: true,
                ..
            } => FailureKind::Config,
            OAuth2Error::Provider { .. } | OAuth2Error::Login { .. } => FailureKind::Auth,
            OAuth2Error::Store { .. } => FailureKind::Delivery,
        }
    }
}

/// Provider text for a message: printable ASCII only, bounded.
pub(crate) fn clean(text: &str) -> String {
    crate::pop3::sanitize(text.as_bytes(), 200)
}

/// The HTTP client for provider requests: the POP3 session's rustls config
/// (ring, the system's roots), no redirects (OAuth endpoints never need
/// one, and following one could leak a request elsewhere), bounded time.
pub fn http_client() -> Result<reqwest::Client, String> {
    let tls = crate::session::tls::client_config(None, None).map_err(|e| e.to_string())?;
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(30))
        .timeout(Duration::from_secs(60))
        .user_agent(concat!("popsync/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}

/// An access token for `account`, refreshed first if it is (nearly) expired.
pub async fn access_token(account: &str, settings: &OAuth2Settings) -> Result<Secret, OAuth2Error> {
    let store = settings.store(account);
    let _lock = store.lock().await?;
    let Some(tokens) = store.load()? else {
        return Err(OAuth2Error::NotLoggedIn {
            account: account.to_string(),
        });
    };
    let other_client = || OAuth2Error::OtherClient {
        account: account.to_string(),
    };
    if tokens.client_id != settings.client_id {
        return Err(other_client());
    }
    if let Some(refused) = &tokens.refused {
        // Known dead: do not ask the provider again until a new login.
        return Err(OAuth2Error::Revoked {
            account: account.to_string(),
            detail: refused.clone(),
        });
    }
    let now = store::now_unix();
    if let Some(access) = tokens.fresh_access_token(now) {
        // No discovery request: a fresh token only goes to the POP3 server.
        tracing::debug!(account, "OAuth2 access token still fresh");
        return Ok(access);
    }
    // The refresh token goes only to the token endpoint it came from.
    let endpoints = Endpoints::resolve(account, settings).await?;
    if !tokens.issued_by(&settings.client_id, &endpoints.token) {
        return Err(other_client());
    }
    let Some(refresh) = tokens.refresh_token.clone() else {
        return Err(OAuth2Error::NotLoggedIn {
            account: account.to_string(),
        });
    };
    tracing::debug!(account, "refreshing the OAuth2 access token");
    match flow::refresh(account, settings, &endpoints, &refresh).await {
        Ok(granted) => {
            let next = tokens.refreshed(granted, now);
            store.save(&next)?;
            next.access_token.clone().ok_or_else(|| OAuth2Error::Login {
                account: account.to_string(),
                detail: "the provider's answer held no access token".into(),
            })
        }
        Err(e @ OAuth2Error::Revoked { .. }) => {
            if let OAuth2Error::Revoked { detail, .. } = &e {
                store.save(&tokens.refused_with(detail))?;
            }
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// The POP3 server refused `used` although it looked fresh (revoked at the
/// provider, or its clock differs): drop it so the next run refreshes
/// instead of failing with it until it expires. Best effort.
pub async fn forget_access_token(account: &str, settings: &OAuth2Settings, used: &Secret) {
    let store = settings.store(account);
    let result = async {
        let _lock = store.lock().await?;
        match store.load()? {
            Some(tokens) if tokens.access_token.as_ref() == Some(used) => {
                store.save(&tokens.without_access_token())
            }
            _ => Ok(()),
        }
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(account, "could not drop the refused access token: {e}");
    }
}

/// Stores the tokens of a fresh login, replacing whatever was there.
pub async fn store_login(
    account: &str,
    settings: &OAuth2Settings,
    endpoints: &Endpoints,
    granted: flow::Granted,
) -> Result<Secret, OAuth2Error> {
    let store = settings.store(account);
    let _lock = store.lock().await?;
    let now = store::now_unix();
    let tokens = Tokens::from_login(&settings.client_id, &endpoints.token, granted, now);
    if tokens.refresh_token.is_none() {
        tracing::warn!(
            account,
            "the provider issued no refresh token (is `offline_access` among the scopes?): the login lasts only until the access token expires"
        );
    }
    store.save(&tokens)?;
    tokens
        .access_token
        .clone()
        .ok_or_else(|| OAuth2Error::Login {
            account: account.to_string(),
            detail: "the provider's answer held no access token".into(),
        })
}

/// Where the account's tokens are kept (for messages).
pub fn token_path(account: &str, settings: &OAuth2Settings) -> PathBuf {
    settings.store(account).path().to_path_buf()
}

/// An error and its sources on one line (reqwest's own Display is terse).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    clean(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_domains_of_oauth2_providers_map_to_their_preset() {
        for google in ["gmail.com", "googlemail.com", "GMail.com.", "pop.gmail.com"] {
            assert_eq!(
                Preset::for_mail_domain(google),
                Some(Preset::Google),
                "{google}"
            );
        }
        for ms in [
            "outlook.com",
            "hotmail.com",
            "hotmail.co.uk",
            "live.com",
            "live.fr",
            "outlook.de",
            "msn.com",
            "contoso.onmicrosoft.com",
            "outlook.office365.com",
        ] {
            assert_eq!(Preset::for_mail_domain(ms), Some(Preset::Microsoft), "{ms}");
        }
        for other in [
            "example.org",
            "live.example.org",
            "outlook.example.com",
            "notgmail.com",
            "gmail.com.evil.example",
            "posteo.de",
            "outlook",
        ] {
            assert_eq!(Preset::for_mail_domain(other), None, "{other}");
        }
    }
}
