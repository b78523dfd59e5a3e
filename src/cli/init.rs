//! `popsync init [EMAIL]`: find the server (SRV, then usual names), probe
//! it, show its certificate, check the login, and write the account.
//!
//! Every answer can be given as a flag (scripts); on a terminal what is
//! missing is asked for, the password with echo off.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{AuthMethod, Secret, TlsMode};
use crate::session::tls::format_fingerprint;
use crate::session::{ConnectOptions, Credentials, Session, SessionError};
use crate::setup::discover::{self, Candidate};
use crate::setup::write::{NewAccount, SecretChoice, append_account, render};

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
    /// Login name [default: the address]
    #[arg(long)]
    pub username: Option<String>,
    /// A command printing the password on its first line (written to the config instead of a password)
    #[arg(long, value_name = "CMD", conflicts_with = "password_stdin")]
    pub password_command: Option<String>,
    /// Read the password from the first line of stdin (scripts)
    #[arg(long)]
    pub password_stdin: bool,
    /// Maildir to deliver into [default: ~/Mail/NAME]
    #[arg(long, value_name = "DIR", conflicts_with = "mbox")]
    pub maildir: Option<String>,
    /// mbox file to deliver into instead of a maildir
    #[arg(long, value_name = "FILE")]
    pub mbox: Option<String>,
}

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

    let (candidate, mut session) =
        probe_candidates(&candidates, resolver.as_ref(), args.ca_file.clone()).await?;
    describe(&candidate, &session);
    let caps = session.capabilities();
    let oauth_only = !caps.has("USER")
        && !caps.has_sasl("PLAIN")
        && (caps.has_sasl("XOAUTH2") || caps.has_sasl("OAUTHBEARER"));

    let username = args.username.clone().unwrap_or_else(|| email.clone());
    let secret = match (&args.password_command, args.password_stdin) {
        (Some(cmd), _) => SecretChoice::Command(cmd.clone()),
        (None, true) => SecretChoice::Password(Secret::new(read_stdin_line()?)),
        (None, false) if interactive && !oauth_only => SecretChoice::Password(Secret::new(
            ask_hidden(&format!("Password for {username}: "))?,
        )),
        (None, false) if oauth_only => {
            return Err(usage(
                "the server offers only OAuth2 (XOAUTH2): pass --password-command CMD, a command that prints an access token",
            ));
        }
        (None, false) => {
            return Err(usage(
                "no password: pass --password-command CMD (recommended) or --password-stdin",
            ));
        }
    };
    let creds = Credentials {
        username: username.clone(),
        secret: match &secret {
            SecretChoice::Password(p) => p.clone(),
            SecretChoice::Command(cmd) => {
                let probe = crate::config::run_secret_command(&name, cmd);
                probe.map_err(|e| Failure::new(Exit::Config, format!("--password-command: {e}")))?
            }
        },
        method: if oauth_only {
            AuthMethod::Xoauth2
        } else {
            AuthMethod::Auto
        },
        allow_insecure_auth: false,
    };
    let login_err = |e: SessionError| {
        Failure::new(
            Exit::for_session(&e),
            format!("{e}; nothing was written to {}", config_path.display()),
        )
    };
    session.login(&creds).await.map_err(login_err)?;
    let stat = session.stat().await.map_err(login_err)?;
    println!(
        "login ok ({}): {} messages on the server",
        session.auth_used().unwrap_or("?"),
        stat.count
    );
    let _ = session.quit().await;

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
        xoauth2: oauth_only,
        target_key,
        target,
    };
    let table = render(&account);
    // What is written must load: the same checks as every other command.
    crate::config::Config::parse(&format!("state_dir = \"/\"\n{table}"), &config_path)?;
    let holds_password = matches!(account.secret, SecretChoice::Password(_));
    let created = append_account(&config_path, &name, &table, holds_password)
        .map_err(|e| Failure::new(Exit::Config, e.to_string()))?;
    println!(
        "{} [account.{name}] {} {}",
        if created { "created" } else { "added" },
        if created { "in" } else { "to" },
        config_path.display()
    );
    println!("next: popsync sync {name}");
    Ok(Exit::Ok)
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
        let mut opts = ConnectOptions::new(c.host.clone(), c.port, c.tls);
        opts.ca_file = ca_file.clone();
        opts.connect_timeout = Duration::from_secs(10);
        opts.io_timeout = Duration::from_secs(30);
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
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Failure::new(Exit::Usage, format!("cannot read stdin: {e}")))?;
    let line = line.strip_suffix('\n').unwrap_or(&line);
    Ok(line.strip_suffix('\r').unwrap_or(line).to_string())
}

/// Terminal echo off for as long as it lives.
struct EchoOff {
    saved: libc::termios,
}

impl EchoOff {
    fn new() -> Option<EchoOff> {
        // SAFETY: tcgetattr/tcsetattr on stdin with a zeroed termios we own.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut t) != 0 {
                return None;
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            t.c_lflag |= libc::ECHONL;
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) != 0 {
                return None;
            }
            Some(EchoOff { saved })
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in new().
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved);
        }
    }
}

fn ask_hidden(prompt: &str) -> Result<String, Failure> {
    print!("{prompt}");
    let _ = std::io::stdout().flush();
    let _echo = EchoOff::new()
        .ok_or_else(|| usage("cannot turn off the terminal's echo: use --password-stdin"))?;
    read_stdin_line()
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
}
