//! `popsync login ACCOUNT`: the one-time OAuth2 sign-in. Gets the first
//! tokens (device grant or loopback redirect), stores them, then logs in to
//! the POP3 server once to prove the token works. Prints instructions, never
//! a token.

use crate::config::Account;
use crate::oauth2::flow::{self, Flow};
use crate::oauth2::{Endpoints, OAuth2Error, Preset};
use crate::session::{Credentials, Session, TraceSink};

use super::exit::{Exit, Failure};

pub struct Args {
    pub flow: Option<Flow>,
    /// Never start a browser (also `POPSYNC_NO_BROWSER=1`).
    pub no_browser: bool,
    pub trace: Option<TraceSink>,
}

fn oauth_failure(e: OAuth2Error) -> Failure {
    Failure::new(super::Exit::for_kind(e.kind()), e.to_string())
}

pub async fn run(account: &Account, args: Args) -> Result<Exit, Failure> {
    let Some(settings) = account.oauth2() else {
        return Err(Failure::new(
            Exit::Config,
            format!(
                "account `{}` does not use OAuth2: set `oauth2 = \"microsoft\"`, \"google\" or \"custom\" and `oauth2_client_id` (see README: OAuth2)",
                account.name
            ),
        ));
    };
    let name = account.name.as_str();
    let endpoints = Endpoints::resolve(name, settings)
        .await
        .map_err(oauth_failure)?;
    let flow = args
        .flow
        .unwrap_or(default_flow(settings.preset, &endpoints));
    let say = |line: &str| println!("{line}");
    let open_browser = !args.no_browser && std::env::var_os("POPSYNC_NO_BROWSER").is_none();
    let granted = match flow {
        Flow::Device => flow::device(name, settings, &endpoints, &say).await,
        Flow::Loopback => flow::loopback(name, settings, &endpoints, &say, open_browser).await,
    }
    .map_err(oauth_failure)?;
    let token = crate::oauth2::store_login(name, settings, &endpoints, granted)
        .await
        .map_err(oauth_failure)?;
    let path = crate::oauth2::token_path(name, settings);
    println!(
        "account `{name}`: signed in; tokens stored in {}",
        path.display()
    );

    // Prove it: the token must open the mailbox, not just satisfy the provider.
    let creds = Credentials {
        username: account.username.clone(),
        secret: token,
        method: account.auth,
        allow_insecure_auth: account.allow_insecure_auth,
    };
    let opts = crate::sync::connect_options(account, args.trace);
    let session_failure = |e: crate::session::SessionError| {
        Failure::new(
            Exit::for_session(&e),
            format!(
                "account `{name}`: the provider granted a token but the POP3 server refused it: {e} (check `username` and the scopes)"
            ),
        )
    };
    let mut session = Session::connect(&opts).await.map_err(session_failure)?;
    session.login(&creds).await.map_err(session_failure)?;
    let mechanism = session.auth_used().unwrap_or("SASL");
    let _ = session.quit().await;
    println!(
        "account `{name}`: logged in to {}:{} with {mechanism}; `popsync sync {name}` is ready",
        account.host, account.port
    );
    Ok(Exit::Ok)
}

/// The device grant where the provider offers it for mail (Microsoft, most
/// custom providers); Google's does not cover mail scopes.
fn default_flow(preset: Preset, endpoints: &Endpoints) -> Flow {
    match (preset, &endpoints.device) {
        (Preset::Google, _) | (_, None) => Flow::Loopback,
        _ => Flow::Device,
    }
}
