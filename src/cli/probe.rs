//! `popsync probe ACCOUNT`: describe the server without changing anything.

use std::fmt::Write;

use crate::config::Account;
use crate::session::{Session, TraceSink, tls::format_fingerprint};

use super::exit::{Exit, Failure};

/// `probe --insecure-show-cert`: the certificate of a server popsync may not
/// be able to verify, shown before any login (like mpop --serverinfo).
pub async fn show_cert(account: &Account, trace: Option<TraceSink>) -> Result<String, Failure> {
    let opts = crate::sync::connect_options(account, trace);
    let cert = crate::session::show_certificate(&opts).await.map_err(|e| {
        Failure::new(
            Exit::for_session(&e),
            format!("account `{}`: {e}", account.name),
        )
    })?;
    let mut out = header(account);
    let _ = writeln!(out, "certificate   {} (NOT verified)", cert.subject);
    let _ = writeln!(out, "issuer        {}", cert.issuer);
    let _ = writeln!(
        out,
        "valid         {} to {}",
        cert.not_before, cert.not_after
    );
    let _ = writeln!(
        out,
        "fingerprint   {}",
        format_fingerprint(&cert.fingerprint)
    );
    let _ = writeln!(
        out,
        "to trust it   fingerprint = \"{}\"  (only after checking it with the server's administrator)",
        format_fingerprint(&cert.fingerprint)
    );
    Ok(out)
}

/// The lines every probe starts with: which account, which server.
fn header(account: &Account) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "account       {}", account.name);
    let _ = writeln!(
        out,
        "server        {}:{} (tls = {})",
        account.host,
        account.port,
        super::tls_name(account.tls)
    );
    out
}

pub async fn run(account: &Account, trace: Option<TraceSink>) -> Result<String, Failure> {
    let session_err = |e: crate::session::SessionError| {
        Failure::new(
            Exit::for_session(&e),
            format!("account `{}`: {e}", account.name),
        )
    };
    let opts = crate::sync::connect_options(account, trace);
    let creds = crate::sync::credentials(account)
        .await
        .map_err(|e| super::server::credentials_failure(account, e))?;
    let mut session = Session::connect(&opts).await.map_err(session_err)?;

    let mut out = header(account);
    let _ = writeln!(out, "greeting      +OK {}", session.greeting().describe());
    match session.tls_info() {
        Some(tls) => {
            let _ = writeln!(out, "tls           {}, {}", tls.version, tls.cipher);
            let _ = writeln!(out, "certificate   {}", tls.subject);
            let _ = writeln!(
                out,
                "fingerprint   {}",
                format_fingerprint(&tls.fingerprint)
            );
        }
        None => {
            let _ = writeln!(out, "tls           none (the connection is not encrypted)");
        }
    }
    let caps = &session.capabilities().lines;
    let shown = if caps.is_empty() {
        "(none: the server does not support CAPA)".to_string()
    } else {
        caps.join(", ")
    };
    let _ = writeln!(out, "capabilities  {shown}");

    session.login(&creds).await.map_err(session_err)?;
    let _ = writeln!(out, "auth          {}", session.auth_used().unwrap_or("?"));
    let (stat, uidl, _) = session
        .stat_and_listings(account.max_messages)
        .await
        .map_err(session_err)?;
    let _ = match stat {
        Some(stat) => writeln!(out, "messages      {} ({} bytes)", stat.count, stat.size),
        None => writeln!(out, "messages      ? (the STAT reply is malformed)"),
    };
    let uidl = match uidl {
        Some(entries) => {
            let bad = entries.iter().filter(|e| e.uid.is_err()).count();
            if bad == 0 {
                format!("yes ({} UIDs)", entries.len())
            } else {
                format!("yes ({} UIDs, {bad} invalid)", entries.len())
            }
        }
        None => "no (keep = true cannot work with this server)".into(),
    };
    let _ = writeln!(out, "uidl          {uidl}");
    let quit = session.quit().await.map_err(session_err)?;
    if !quit.is_ok() {
        let _ = writeln!(out, "quit          -ERR {}", quit.describe());
    }
    Ok(out)
}
