//! `popsync init [EMAIL]`: find the server (SRV, then usual names), probe
//! it, show its certificate, check the login, and write the account.
//!
//! Every answer can be given as a flag (scripts); on a terminal what is
//! missing is asked for, the password with echo off.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{AuthMethod, Secret, TlsMode};
use crate::oauth2::Preset;
use crate::session::tls::format_fingerprint;
use crate::session::{ConnectOptions, Credentials, Session, SessionError};
use crate::setup::discover::{self, Candidate};
use crate::setup::write::{NewAccount, OAuth2Keys, SecretChoice, append_account, render};

use super::exit::{Exit, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The mail address, e.g. alice@example.org (asked for on a terminal)
    pub email: Option<String>,
    /// Account name, the NAME of [account.NAME] [default: the address's local part]
    #[arg(long)]
    pub name: Option<String>,
    /// Server host name: skips discovery
    #[arg(long)]
    pub host: Option<String>,
    /// Server port (with --host) [default: 995 for implicit TLS, 110 for STLS]
    #[arg(long)]
    pub port: Option<u16>,
    /// With --host: implicit (TLS from the start) or starttls [default: try both]
    #[arg(long, value_parser = ["implicit", "starttls"])]
    pub tls: Option<String>,
    /// Trust only the CAs in this PEM file (a private server)
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Login name [default: the address; asked for on a terminal]
    #[arg(long)]
    pub username: Option<String>,
    /// A command printing the password on its first line (written to the config instead of a password)
    #[arg(long, value_name = "CMD", conflicts_with = "password_stdin")]
    pub password_command: Option<String>,
    /// Read the password from the first line of stdin (scripts)
    #[arg(long)]
    pub password_stdin: bool,
    /// Sign in with OAuth2 instead of a password [default: google for gmail.com,
    /// microsoft for outlook.com, hotmail.com, live.com, *.onmicrosoft.com]
    #[arg(
        long,
        value_name = "PRESET",
        value_parser = ["microsoft", "google", "custom"],
        conflicts_with_all = ["password_command", "password_stdin"]
    )]
    pub oauth2: Option<String>,
    /// OAuth2: the client id of the app you registered at the provider (asked for on a terminal)
    #[arg(long, value_name = "ID")]
    pub oauth2_client_id: Option<String>,
    /// OAuth2: read the app's client secret from the first line of stdin (Google's desktop apps have one)
    #[arg(long, conflicts_with = "password_stdin")]
    pub oauth2_client_secret_stdin: bool,
    /// OAuth2 with microsoft: common, consumers (Outlook.com), organizations or a tenant id [default: common]
    #[arg(long, value_name = "TENANT")]
    pub oauth2_tenant: Option<String>,
    /// OAuth2 with custom: the issuer URL, serving /.well-known/openid-configuration
    #[arg(long, value_name = "URL")]
    pub oauth2_issuer: Option<String>,
    /// OAuth2: a scope to ask for, once per scope [default: the preset's; custom: openid offline_access]
    #[arg(long = "oauth2-scope", value_name = "SCOPE")]
    pub oauth2_scopes: Vec<String>,
    /// OAuth2: sign in (`popsync login`) right after writing the account, even without a terminal [default: on a terminal]
    #[arg(long, conflicts_with = "no_login")]
    pub login: bool,
    /// OAuth2: only write the account; sign in later with `popsync login NAME`
    #[arg(long)]
    pub no_login: bool,
    /// Maildir to deliver into [default: ~/Mail/NAME]
    #[arg(long, value_name = "DIR", conflicts_with = "mbox")]
    pub maildir: Option<String>,
    /// mbox file to deliver into instead of a maildir
    #[arg(long, value_name = "FILE")]
    pub mbox: Option<String>,
}

/// A password typed on a terminal may be retried this often (like ssh and
/// sudo); a scripted one (stdin, a command) is not: it would fail the same.
const PASSWORD_ATTEMPTS: u32 = 3;

/// The whole of `popsync init`; `config_path` is -c or the default path.
pub async fn run(config_path: PathBuf, args: Args) -> Result<Exit, Failure> {
    let interactive = std::io::stdin().is_terminal();
    let email = match &args.email {
        Some(e) => e.trim().to_string(),
        None if interactive => ask("Mail address: ")?,
        None => {
            return Err(usage(
                "give the mail address: popsync init alice@example.org",
            ));
        }
    };
    let (local, domain) = split_address(&email).map_err(usage)?;
    let name = match &args.name {
        Some(n) => n.clone(),
        None => account_name(local),
    };
    if !crate::config::is_valid_account_name(&name) {
        return Err(usage(format!(
            "account name `{}` may hold only letters, digits, `.`, `_` and `-`: choose one with --name",
            name.escape_debug()
        )));
    }
    let (candidates, resolver) = match &args.host {
        Some(host) => {
            crate::config::check_host(host).map_err(|m| usage(m.replace("`host`", "--host")))?;
            (
                explicit_candidates(host, args.port, args.tls.as_deref()),
                None,
            )
        }
        None => {
            let resolver = discover::resolver().map_err(|m| Failure::new(Exit::Temporary, m))?;
            println!("looking up the POP3 server of {domain}…");
            (
                discover::candidates(&resolver, domain).await,
                Some(resolver),
            )
        }
    };

    let (candidate, session) =
        probe_candidates(&candidates, resolver.as_ref(), args.ca_file.clone()).await?;
    describe(&candidate, &session);
    let offers = Offers::of(session.capabilities());

    let username = match &args.username {
        Some(u) => u.clone(),
        None if interactive => ask_default("Login name", &email)?,
        None => email.clone(),
    };
    let preset = oauth2_preset(&args, domain, &candidate.host, offers)?;
    let (secret, auth) = match preset {
        Some(preset) => {
            let _ = session.quit().await;
            let keys = oauth2_keys(&args, preset, interactive)?;
            // XOAUTH2 is what `auth = "auto"` means with oauth2.
            let auth = if offers.oauthbearer && !offers.xoauth2 {
                AuthMethod::Oauthbearer
            } else {
                AuthMethod::Auto
            };
            (SecretChoice::OAuth2(keys), auth)
        }
        None => {
            let attempt = PasswordLogin {
                candidate: &candidate,
                ca_file: args.ca_file.clone(),
                name: &name,
                username: &username,
                oauth_only: offers.only_oauth2(),
                interactive,
                config_path: &config_path,
            };
            let secret = attempt.check(session, &args).await?;
            let auth = if offers.only_oauth2() {
                AuthMethod::Xoauth2
            } else {
                AuthMethod::Auto
            };
            (secret, auth)
        }
    };

    let (target_key, target) = match (&args.maildir, &args.mbox) {
        (_, Some(mbox)) => ("mbox", mbox.clone()),
        (Some(dir), None) => ("maildir", dir.clone()),
        (None, None) => ("maildir", format!("~/Mail/{name}")),
    };
    let account = NewAccount {
        name: name.clone(),
        host: candidate.host.clone(),
        port: candidate.port,
        tls: candidate.tls,
        ca_file: args.ca_file.clone(),
        username,
        secret,
        auth,
        target_key,
        target,
    };
    let table = render(&account);
    // What is written must load: the same checks as every other command.
    let parsed = crate::config::Config::parse(&format!("state_dir = \"/\"\n{table}"), &config_path)
        .map_err(|e| {
            usage(format!(
                "{e} (in the account made from your answers: the flag of that name says what to change; nothing was written)"
            ))
        })?;
    if let Some(settings) = parsed.accounts.first().and_then(|a| a.oauth2()) {
        check_provider(&name, settings, &config_path).await?;
    }
    let created = append_account(&config_path, &name, &table, account.secret.holds_secret())
        .map_err(|e| Failure::new(Exit::Config, e.to_string()))?;
    println!(
        "{} [account.{name}] {} {}",
        if created { "created" } else { "added" },
        if created { "in" } else { "to" },
        config_path.display()
    );
    if !matches!(account.secret, SecretChoice::OAuth2(_)) {
        println!("next: popsync sync {name}");
        return Ok(Exit::Ok);
    }
    if args.no_login || !(interactive || args.login) {
        println!("next: popsync login {name}   (once, to sign in; then popsync sync {name})");
        return Ok(Exit::Ok);
    }
    sign_in(&config_path, &name).await
}

/// What the server's CAPA says about logins.
#[derive(Debug, Clone, Copy)]
struct Offers {
    user: bool,
    plain: bool,
    xoauth2: bool,
    oauthbearer: bool,
}

impl Offers {
    fn of(caps: &crate::pop3::Capabilities) -> Offers {
        Offers {
            user: caps.has("USER"),
            plain: caps.has_sasl("PLAIN"),
            xoauth2: caps.has_sasl("XOAUTH2"),
            oauthbearer: caps.has_sasl("OAUTHBEARER"),
        }
    }

    /// No password login, only tokens.
    fn only_oauth2(self) -> bool {
        !self.user && !self.plain && (self.xoauth2 || self.oauthbearer)
    }
}

/// The OAuth2 preset to set up, if any: `--oauth2`, else none when a
/// password source was given (an app password), else the provider of the
/// address's domain or of the server found. A server that takes only
/// tokens from an unknown provider needs the user to say which.
fn oauth2_preset(
    args: &Args,
    domain: &str,
    server: &str,
    offers: Offers,
) -> Result<Option<Preset>, Failure> {
    if let Some(preset) = args.oauth2.as_deref() {
        return Ok(Some(match preset {
            "microsoft" => Preset::Microsoft,
            "google" => Preset::Google,
            _ => Preset::Custom,
        }));
    }
    if args.password_command.is_some() || args.password_stdin {
        return Ok(None);
    }
    if let Some(preset) = Preset::for_mail_domain(domain).or(Preset::for_mail_domain(server)) {
        println!(
            "{domain} signs in with OAuth2: setting up oauth2 = \"{}\" (for an app password instead, pass --password-command CMD)",
            preset.name()
        );
        return Ok(Some(preset));
    }
    let oauth2_flag = [
        (args.oauth2_client_id.is_some(), "--oauth2-client-id"),
        (
            args.oauth2_client_secret_stdin,
            "--oauth2-client-secret-stdin",
        ),
        (args.oauth2_tenant.is_some(), "--oauth2-tenant"),
        (args.oauth2_issuer.is_some(), "--oauth2-issuer"),
        (!args.oauth2_scopes.is_empty(), "--oauth2-scope"),
        (args.login, "--login"),
    ]
    .into_iter()
    .find_map(|(given, flag)| given.then_some(flag));
    if let Some(flag) = oauth2_flag {
        return Err(usage(format!(
            "{flag} is for OAuth2, and {domain} is not a provider init knows: add --oauth2 microsoft, google or custom"
        )));
    }
    if offers.only_oauth2() {
        return Err(usage(
            "the server offers only OAuth2 (XOAUTH2/OAUTHBEARER): pass --oauth2 custom --oauth2-issuer URL --oauth2-client-id ID (or --oauth2 microsoft|google), or --password-command CMD printing an access token",
        ));
    }
    Ok(None)
}

/// The `oauth2*` keys from the flags, asking on a terminal for what only
/// the user knows (the registered app's id, a custom issuer).
fn oauth2_keys(args: &Args, preset: Preset, interactive: bool) -> Result<OAuth2Keys, Failure> {
    if args.oauth2_issuer.is_some() && preset != Preset::Custom {
        return Err(usage(format!(
            "--oauth2-issuer is for --oauth2 custom; the {} preset knows its endpoints",
            preset.name()
        )));
    }
    if args.oauth2_tenant.is_some() && preset != Preset::Microsoft {
        return Err(usage("--oauth2-tenant is for --oauth2 microsoft only"));
    }
    let provider = match preset {
        Preset::Microsoft => "Microsoft (entra.microsoft.com)",
        Preset::Google => "Google (console.cloud.google.com)",
        Preset::Custom => "your provider",
    };
    let issuer = match (&args.oauth2_issuer, preset) {
        (Some(issuer), _) => Some(issuer.trim().to_string()),
        (None, Preset::Custom) if interactive => Some(ask_required(
            "OAuth2 issuer URL (serves /.well-known/openid-configuration): ",
        )?),
        (None, Preset::Custom) => {
            return Err(usage(
                "--oauth2 custom needs --oauth2-issuer URL: the provider whose /.well-known/openid-configuration describes it",
            ));
        }
        (None, _) => None,
    };
    if let Some(issuer) = &issuer {
        crate::oauth2::check_url(issuer).map_err(|m| usage(format!("--oauth2-issuer: {m}")))?;
    }
    let client_id = match &args.oauth2_client_id {
        Some(id) => id.trim().to_string(),
        None if interactive => ask_required(&format!(
            "OAuth2 client id of the app you registered at {provider} (README: OAuth2): "
        ))?,
        None => {
            let or_password = if preset == Preset::Custom {
                ""
            } else {
                "; or --password-command CMD for an app password"
            };
            return Err(usage(format!(
                "OAuth2 needs --oauth2-client-id ID: the id of the app you registered at {provider} (README: OAuth2){or_password}"
            )));
        }
    };
    if client_id.is_empty() || client_id.chars().any(char::is_control) {
        return Err(usage(
            "--oauth2-client-id: give the app's id as the provider shows it",
        ));
    }
    let client_secret = if args.oauth2_client_secret_stdin {
        Some(Secret::new(read_stdin_line()?))
    } else if interactive && preset == Preset::Google {
        let typed = ask_hidden("OAuth2 client secret of that app (not shown; empty if none): ")?;
        (!typed.is_empty()).then(|| Secret::new(typed))
    } else {
        None
    };
    let scopes = match (&args.oauth2_scopes[..], preset) {
        ([], Preset::Custom) => Some(vec!["openid".into(), "offline_access".into()]),
        ([], _) => None,
        (given, _) => Some(given.iter().map(|s| s.trim().to_string()).collect()),
    };
    Ok(OAuth2Keys {
        preset,
        client_id,
        client_secret,
        tenant: args.oauth2_tenant.as_ref().map(|t| t.trim().to_string()),
        issuer,
        scopes,
    })
}

/// A custom issuer is asked for its endpoints before anything is written:
/// a typo in the URL is reported now, not at the first login.
async fn check_provider(
    name: &str,
    settings: &crate::oauth2::OAuth2Settings,
    config_path: &std::path::Path,
) -> Result<(), Failure> {
    if settings.preset != Preset::Custom {
        return Ok(());
    }
    match crate::oauth2::Endpoints::resolve(name, settings).await {
        Ok(_) => Ok(()),
        Err(e) => Err(Failure::new(
            Exit::for_kind(e.kind()),
            format!(
                "{e}; check --oauth2-issuer; nothing was written to {}",
                config_path.display()
            ),
        )),
    }
}

/// `popsync login NAME` on the account just written, read back through
/// the config loader like any later command.
async fn sign_in(config_path: &std::path::Path, name: &str) -> Result<Exit, Failure> {
    let config = crate::config::Config::load(config_path)?;
    let account = config.account(name)?;
    let args = super::login::Args {
        flow: None,
        no_browser: false,
        trace: None,
    };
    super::login::run(account, args).await.map_err(|f| {
        Failure::new(
            f.exit,
            format!(
                "{}; the account is written: run `popsync login {name}` to try again",
                f.message
            ),
        )
    })
}

/// Checks a password by logging in with it, before anything is written.
struct PasswordLogin<'a> {
    candidate: &'a Candidate,
    ca_file: Option<PathBuf>,
    name: &'a str,
    username: &'a str,
    oauth_only: bool,
    interactive: bool,
    config_path: &'a std::path::Path,
}

impl PasswordLogin<'_> {
    /// The secret that logged in. A password typed on a terminal that the
    /// server refuses is asked for again (a new connection each time).
    async fn check(&self, mut session: Session, args: &Args) -> Result<SecretChoice, Failure> {
        let typed = args.password_command.is_none() && !args.password_stdin;
        if typed && !self.interactive {
            return Err(usage(
                "no password: pass --password-command CMD (recommended) or --password-stdin",
            ));
        }
        let mut attempt = 1;
        loop {
            let secret = match (&args.password_command, typed) {
                (Some(cmd), _) => SecretChoice::Command(cmd.clone()),
                (None, false) => SecretChoice::Password(Secret::new(read_stdin_line()?)),
                (None, true) => SecretChoice::Password(Secret::new(ask_hidden(&format!(
                    "Password for {} (not shown): ",
                    self.username
                ))?)),
            };
            match self.login(&mut session, &secret).await? {
                Ok(()) => {
                    let _ = session.quit().await;
                    return Ok(secret);
                }
                Err(e)
                    if typed
                        && attempt < PASSWORD_ATTEMPTS
                        && Exit::for_session(&e) == Exit::Auth =>
                {
                    eprintln!("popsync: {e}; try again");
                    attempt += 1;
                    session = Session::connect(&connect_options(self.candidate, &self.ca_file))
                        .await
                        .map_err(|e| self.failure(e))?;
                }
                Err(e) => return Err(self.failure(e)),
            }
        }
    }

    /// The server's answer inside; a `--password-command` that fails outside.
    async fn login(
        &self,
        session: &mut Session,
        secret: &SecretChoice,
    ) -> Result<Result<(), SessionError>, Failure> {
        let secret = match secret {
            SecretChoice::Password(p) => p.clone(),
            SecretChoice::Command(cmd) => crate::config::run_secret_command(self.name, cmd)
                .map_err(|e| Failure::new(Exit::Config, format!("--password-command: {e}")))?,
            SecretChoice::OAuth2(_) => unreachable!("OAuth2 logins are checked by popsync login"),
        };
        let creds = Credentials {
            username: self.username.to_string(),
            secret,
            method: if self.oauth_only {
                AuthMethod::Xoauth2
            } else {
                AuthMethod::Auto
            },
            allow_insecure_auth: false,
        };
        let answer = async {
            session.login(&creds).await?;
            session.stat().await
        };
        Ok(answer.await.map(|stat| {
            println!(
                "login ok ({}): {} messages on the server",
                session.auth_used().unwrap_or("?"),
                stat.count
            );
        }))
    }

    fn failure(&self, e: SessionError) -> Failure {
        Failure::new(
            Exit::for_session(&e),
            format!("{e}; nothing was written to {}", self.config_path.display()),
        )
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure::new(Exit::Usage, message)
}

/// `local@domain`, the domain a host name.
fn split_address(email: &str) -> Result<(&str, &str), String> {
    let (local, domain) = email
        .rsplit_once('@')
        .filter(|(l, d)| !l.is_empty() && !d.is_empty())
        .ok_or_else(|| {
            format!(
                "`{}` is not a mail address: write it as NAME@DOMAIN",
                email.escape_debug()
            )
        })?;
    let domain = domain.trim_end_matches('.');
    crate::config::check_host(domain).map_err(|_| {
        format!(
            "`{}` is not a domain name: write the address as NAME@DOMAIN",
            domain.escape_debug()
        )
    })?;
    Ok((local, domain))
}

/// The local part, cut to what account names allow.
fn account_name(local: &str) -> String {
    let name: String = local
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if crate::config::is_valid_account_name(&name) {
        name
    } else {
        "mail".into()
    }
}

fn explicit_candidates(host: &str, port: Option<u16>, tls: Option<&str>) -> Vec<Candidate> {
    let modes: &[TlsMode] = match tls {
        Some("starttls") => &[TlsMode::Starttls],
        Some(_) => &[TlsMode::Implicit],
        None => &[TlsMode::Implicit, TlsMode::Starttls],
    };
    modes
        .iter()
        .map(|&tls| Candidate {
            host: host.to_string(),
            port: port.unwrap_or(if tls == TlsMode::Implicit { 995 } else { 110 }),
            tls,
            source: "--host".into(),
        })
        .collect()
}

/// The first candidate that connects with verified TLS. Certificate
/// failures are reported (they need a decision: --ca-file), not skipped
/// silently.
async fn probe_candidates(
    candidates: &[Candidate],
    resolver: Option<&hickory_resolver::TokioResolver>,
    ca_file: Option<PathBuf>,
) -> Result<(Candidate, Session), Failure> {
    let mut failures: Vec<String> = Vec::new();
    let mut worst = Exit::Temporary;
    for c in candidates {
        // A discovered name is tried only if the discovery's own resolver
        // knows it: guessed names like pop.DOMAIN often do not exist.
        if let Some(resolver) = resolver
            && let Err(e) = resolver.lookup_ip(format!("{}.", c.host)).await
        {
            tracing::debug!("{}: {e}", c.host);
            println!("skipping {} ({}): no address", c.host, c.source);
            continue;
        }
        let opts = connect_options(c, &ca_file);
        print!(
            "trying {}:{} ({}, {})… ",
            c.host,
            c.port,
            tls_words(c.tls),
            c.source
        );
        let _ = std::io::stdout().flush();
        match Session::connect(&opts).await {
            Ok(session) => {
                println!("ok");
                return Ok((c.clone(), session));
            }
            Err(e) => {
                println!("{e}");
                if e.is_tls() {
                    worst = Exit::Tls;
                }
                failures.push(format!("{}:{}: {e}", c.host, c.port));
            }
        }
    }
    let hint = if worst == Exit::Tls {
        "; for a server with a private CA pass --ca-file FILE"
    } else {
        "; give the server with --host NAME (and --port, --tls)"
    };
    Err(Failure::new(
        worst,
        format!(
            "no POP3 server with verified TLS found: {} tried, {} without an address{hint}",
            failures.len(),
            candidates.len() - failures.len()
        ),
    ))
}

fn connect_options(c: &Candidate, ca_file: &Option<PathBuf>) -> ConnectOptions {
    let mut opts = ConnectOptions::new(c.host.clone(), c.port, c.tls);
    opts.ca_file = ca_file.clone();
    opts.connect_timeout = Duration::from_secs(10);
    opts.io_timeout = Duration::from_secs(30);
    opts
}

fn tls_words(tls: TlsMode) -> &'static str {
    match tls {
        TlsMode::Implicit => "implicit TLS",
        TlsMode::Starttls => "STLS",
        TlsMode::None => "no TLS",
    }
}

fn describe(c: &Candidate, session: &Session) {
    println!("server        {}:{} ({})", c.host, c.port, tls_words(c.tls));
    if let Some(tls) = session.tls_info() {
        println!("tls           {}, {}", tls.version, tls.cipher);
        println!("certificate   {}", tls.subject);
        println!("fingerprint   {}", format_fingerprint(&tls.fingerprint));
    }
    let sasl = session.capabilities().sasl();
    if !sasl.is_empty() {
        println!("sasl          {}", sasl.join(" "));
    }
}

fn ask(prompt: &str) -> Result<String, Failure> {
    print!("{prompt}");
    let _ = std::io::stdout().flush();
    let line = read_stdin_line()?;
    Ok(line.trim().to_string())
}

fn read_stdin_line() -> Result<String, Failure> {
    let mut line = String::new();
    let read = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Failure::new(Exit::Usage, format!("cannot read stdin: {e}")))?;
    if read == 0 {
        return Err(usage("stdin ended before the answer: nothing was written"));
    }
    let line = line.strip_suffix('\n').unwrap_or(&line);
    Ok(line.strip_suffix('\r').unwrap_or(line).to_string())
}

/// `prompt [default]: `; an empty answer takes the default.
fn ask_default(prompt: &str, default: &str) -> Result<String, Failure> {
    let answer = ask(&format!("{prompt} [{default}]: "))?;
    Ok(if answer.is_empty() {
        default.to_string()
    } else {
        answer
    })
}

/// Asks until the answer is not empty (end of input is an error).
fn ask_required(prompt: &str) -> Result<String, Failure> {
    loop {
        let answer = ask(prompt)?;
        if !answer.is_empty() {
            return Ok(answer);
        }
    }
}

/// Read from the terminal with echo off (see [`super::hidden`] for Ctrl-C).
fn ask_hidden(prompt: &str) -> Result<String, Failure> {
    match super::hidden::read_hidden(prompt) {
        Ok(password) => Ok(password),
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
            Err(usage("interrupted: nothing was written"))
        }
        Err(e) => Err(usage(format!(
            "cannot read a password from the terminal ({e}): use --password-stdin or --password-command"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names() {
        assert_eq!(
            split_address("alice@example.org").unwrap(),
            ("alice", "example.org")
        );
        assert!(split_address("alice").unwrap_err().contains("NAME@DOMAIN"));
        assert!(split_address("a@b c").is_err());
        assert_eq!(account_name("alice+work"), "alice_work");
        assert_eq!(account_name(".."), "mail");
    }

    #[test]
    fn an_explicit_host_tries_implicit_tls_then_stls() {
        let c = explicit_candidates("pop.example.org", None, None);
        let got: Vec<(u16, TlsMode)> = c.iter().map(|c| (c.port, c.tls)).collect();
        assert_eq!(got, [(995, TlsMode::Implicit), (110, TlsMode::Starttls)]);
        let c = explicit_candidates("h", Some(2110), Some("starttls"));
        assert_eq!((c.len(), c[0].port, c[0].tls), (1, 2110, TlsMode::Starttls));
    }

    #[derive(clap::Parser)]
    struct Init {
        #[command(flatten)]
        args: Args,
    }

    fn args(flags: &[&str]) -> Args {
        use clap::Parser;
        let argv = std::iter::once("init").chain(flags.iter().copied());
        Init::try_parse_from(argv).unwrap().args
    }

    const PASSWORDS: Offers = Offers {
        user: true,
        plain: true,
        xoauth2: false,
        oauthbearer: false,
    };
    const TOKENS_ONLY: Offers = Offers {
        user: false,
        plain: false,
        xoauth2: true,
        oauthbearer: true,
    };

    #[test]
    fn the_preset_comes_from_the_flag_else_the_domain_or_server_unless_a_password_is_given() {
        let preset = |flags: &[&str], domain, server, offers| {
            oauth2_preset(&args(flags), domain, server, offers).map_err(|f| f.message)
        };
        assert_eq!(
            preset(
                &["--oauth2", "custom"],
                "example.org",
                "pop.example.org",
                PASSWORDS
            ),
            Ok(Some(Preset::Custom))
        );
        assert_eq!(
            preset(&[], "gmail.com", "pop.gmail.com", PASSWORDS),
            Ok(Some(Preset::Google))
        );
        // A company domain hosted at Microsoft 365: the server tells.
        assert_eq!(
            preset(&[], "corp.example", "outlook.office365.com", PASSWORDS),
            Ok(Some(Preset::Microsoft))
        );
        // An app password chosen on purpose.
        let with_command = ["--password-command", "pass gmail"];
        assert_eq!(
            preset(&with_command, "gmail.com", "pop.gmail.com", PASSWORDS),
            Ok(None)
        );
        assert_eq!(
            preset(&[], "example.org", "pop.example.org", PASSWORDS),
            Ok(None)
        );
        let e = preset(
            &["--oauth2-issuer", "https://idp.example"],
            "example.org",
            "pop.example.org",
            PASSWORDS,
        )
        .unwrap_err();
        assert!(
            e.contains("--oauth2-issuer is for OAuth2") && e.contains("add --oauth2"),
            "{e}"
        );
        let e = preset(&[], "example.org", "pop.example.org", TOKENS_ONLY).unwrap_err();
        assert!(e.contains("--oauth2 custom --oauth2-issuer URL"), "{e}");
        assert!(e.contains("--password-command"), "{e}");
        assert_eq!(
            preset(&with_command, "example.org", "pop.example.org", TOKENS_ONLY),
            Ok(None),
            "a token helper still works"
        );
    }

    #[test]
    fn oauth2_flags_without_a_terminal_say_which_flag_is_missing_or_misplaced() {
        let keys = |flags: &[&str], preset| oauth2_keys(&args(flags), preset, false);
        let e = keys(&[], Preset::Google).unwrap_err();
        assert_eq!(e.exit, Exit::Usage);
        assert!(
            e.message.contains("--oauth2-client-id ID") && e.message.contains("Google"),
            "{}",
            e.message
        );
        let id = ["--oauth2-client-id", "x"];
        let refused: [(&[&str], Preset, &str); 4] = [
            (&[], Preset::Custom, "--oauth2-issuer URL"),
            (
                &["--oauth2-issuer", "http://idp.example"],
                Preset::Custom,
                "use https",
            ),
            (
                &["--oauth2-issuer", "https://idp.example"],
                Preset::Google,
                "for --oauth2 custom",
            ),
            (&["--oauth2-tenant", "t"], Preset::Google, "microsoft only"),
        ];
        for (flags, preset, says) in refused {
            let e = keys(&[&id[..], flags].concat(), preset).unwrap_err();
            assert!(e.message.contains(says), "{flags:?}: {}", e.message);
        }

        let ms = keys(
            &["--oauth2-client-id", " id ", "--oauth2-tenant", "consumers"],
            Preset::Microsoft,
        )
        .unwrap();
        assert_eq!(
            (ms.client_id.as_str(), ms.tenant.as_deref()),
            ("id", Some("consumers"))
        );
        assert_eq!(ms.scopes, None, "the preset's scopes");
        let custom = keys(
            &[
                "--oauth2-client-id",
                "x",
                "--oauth2-issuer",
                "https://idp.example",
            ],
            Preset::Custom,
        )
        .unwrap();
        assert_eq!(custom.scopes.unwrap(), ["openid", "offline_access"]);
        let scoped = keys(
            &[
                "--oauth2-client-id",
                "x",
                "--oauth2-scope",
                "a",
                "--oauth2-scope",
                "b",
            ],
            Preset::Google,
        )
        .unwrap();
        assert_eq!(scoped.scopes.unwrap(), ["a", "b"]);
    }

    #[test]
    fn oauth2_and_a_password_source_are_one_choice() {
        use clap::Parser;
        for conflict in [
            &["--oauth2", "google", "--password-stdin"][..],
            &["--oauth2", "google", "--password-command", "x"],
            &["--login", "--no-login"],
            &["--oauth2-client-secret-stdin", "--password-stdin"],
        ] {
            let argv = std::iter::once("init").chain(conflict.iter().copied());
            assert!(Init::try_parse_from(argv).is_err(), "{conflict:?}");
        }
    }
}
