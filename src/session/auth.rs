//! Choosing and running the login mechanism.
//!
//! The rule that matters: no password, APOP digest or token goes over a
//! connection without TLS unless the account explicitly allows it.

use crate::config::{AuthMethod, Secret};
use crate::pop3::{Command, Status, apop, sasl};

use super::{Session, SessionError};

#[derive(Debug, Clone)]
pub struct Credentials {
    pub username: String,
    pub secret: Secret,
    pub method: AuthMethod,
    pub allow_insecure_auth: bool,
}

/// A mechanism we are about to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mechanism {
    User,
    Apop,
    Plain,
    Xoauth2,
    Oauthbearer,
}

impl Mechanism {
    fn name(self) -> &'static str {
        match self {
            Mechanism::User => "USER",
            Mechanism::Apop => "APOP",
            Mechanism::Plain => "SASL PLAIN",
            Mechanism::Xoauth2 => "SASL XOAUTH2",
            Mechanism::Oauthbearer => "SASL OAUTHBEARER",
        }
    }
}

impl Session {
    /// RFC 6856: when the server offers `UTF8`, ask for UTF-8 mode before
    /// logging in, so that it serves messages with 8-bit headers as they
    /// are (Courier otherwise serves a generated "Cannot display Unicode
    /// content" wrapper). A refusal is harmless: we carry on without it.
    pub async fn enable_utf8(&mut self) -> Result<bool, SessionError> {
        if !self.capabilities().utf8() {
            return Ok(false);
        }
        let line = self.exchange(&Command::Utf8).await?;
        if line.status != Status::Ok {
            tracing::debug!("UTF8 refused: {}", line.describe());
        }
        Ok(line.status == Status::Ok)
    }

    /// Logs in; on success the session is in the TRANSACTION state.
    pub async fn login(&mut self, creds: &Credentials) -> Result<(), SessionError> {
        let mechanism = self.choose_mechanism(creds)?;
        self.refuse_clear_text(mechanism, creds)?;
        let user = creds.username.as_str();
        let secret = creds.secret.expose();
        let failed = |line| SessionError::AuthFailed {
            method: mechanism.name(),
            line,
        };
        match mechanism {
            Mechanism::User => {
                let line = self.exchange(&Command::User(user)).await?;
                if line.status != Status::Ok {
                    return Err(failed(line));
                }
                let line = self.exchange(&Command::Pass(secret)).await?;
                if line.status != Status::Ok {
                    return Err(failed(line));
                }
            }
            Mechanism::Apop => {
                let timestamp = self.apop_timestamp()?;
                let digest = apop::digest(&timestamp, secret);
                let line = self
                    .exchange(&Command::Apop {
                        user,
                        digest: &digest,
                    })
                    .await?;
                if line.status != Status::Ok {
                    return Err(failed(line));
                }
            }
            Mechanism::Plain => {
                let ir = sasl::plain(user, secret);
                let line = self
                    .exchange(&Command::Auth {
                        mechanism: "PLAIN",
                        initial: Some(&ir),
                    })
                    .await?;
                if line.status != Status::Ok {
                    return Err(self.finish_failed_sasl(line, mechanism).await);
                }
            }
            Mechanism::Xoauth2 | Mechanism::Oauthbearer => {
                // Two steps, as Office 365 wants (getmail6#256): no token on
                // the AUTH line.
                let (name, response) = match mechanism {
                    Mechanism::Xoauth2 => ("XOAUTH2", sasl::xoauth2(user, secret)),
                    _ => ("OAUTHBEARER", sasl::oauthbearer(user, secret)),
                };
                let line = self
                    .exchange(&Command::Auth {
                        mechanism: name,
                        initial: None,
                    })
                    .await?;
                if line.status != Status::Continue {
                    return Err(failed(line));
                }
                let line = self.exchange(&Command::AuthResponse(&response)).await?;
                if line.status != Status::Ok {
                    return Err(self.finish_failed_sasl(line, mechanism).await);
                }
            }
        }
        self.auth_used = Some(mechanism.name());
        Ok(())
    }

    /// [`Session::login`], then [`Session::stat_and_listings`]. Where the
    /// server offers PIPELINING (RFC 2449) and the login is USER/PASS or
    /// APOP, all of it goes out in one write and the replies are paired in
    /// order: one round trip instead of three. A failed login's error is
    /// returned and the listing replies behind it are never read (the
    /// session ends with the error). SASL is not pipelined: a `+`
    /// challenge would take the next command for its answer.
    pub async fn login_and_list(
        &mut self,
        creds: &Credentials,
        max_messages: u32,
    ) -> Result<super::MaildropListing, SessionError> {
        let mechanism = self.choose_mechanism(creds)?;
        if !self.can_pipeline() || !matches!(mechanism, Mechanism::User | Mechanism::Apop) {
            self.login(creds).await?;
            return self.stat_and_listings(max_messages).await;
        }
        self.refuse_clear_text(mechanism, creds)?;
        let user = creds.username.as_str();
        let digest = match mechanism {
            Mechanism::Apop => Some(apop::digest(&self.apop_timestamp()?, creds.secret.expose())),
            _ => None,
        };
        let login: Vec<Command<'_>> = match &digest {
            Some(digest) => vec![Command::Apop { user, digest }],
            None => vec![Command::User(user), Command::Pass(creds.secret.expose())],
        };
        let mut p = self.pipeline(login.len() + 3);
        for cmd in &login {
            p.send(cmd)?;
        }
        super::send_listing_commands(&mut p, true)?;
        for _ in &login {
            let line = p.next_reply().await?.line;
            if line.status != Status::Ok {
                return Err(SessionError::AuthFailed {
                    method: mechanism.name(),
                    line,
                });
            }
        }
        let listing = super::read_stat_and_listings(&mut p, true, max_messages).await;
        self.auth_used = Some(mechanism.name());
        listing
    }

    /// The rule that matters: no credential in clear text unless allowed.
    fn refuse_clear_text(
        &self,
        mechanism: Mechanism,
        creds: &Credentials,
    ) -> Result<(), SessionError> {
        if !self.is_tls() && !creds.allow_insecure_auth {
            return Err(SessionError::InsecureAuth {
                method: mechanism.name(),
            });
        }
        Ok(())
    }

    fn apop_timestamp(&self) -> Result<String, SessionError> {
        apop::timestamp(&self.greeting().text)
            .map(str::to_string)
            .ok_or_else(|| {
                SessionError::NoAuthMethod(
                    "auth = \"apop\" but the greeting has no valid APOP timestamp".into(),
                )
            })
    }

    /// A `+ challenge` after our response carries an error description
    /// (XOAUTH2's JSON); answer it with an empty line to get the final -ERR.
    async fn finish_failed_sasl(
        &mut self,
        mut line: crate::pop3::StatusLine,
        mechanism: Mechanism,
    ) -> SessionError {
        if line.status == Status::Continue {
            if let Some(detail) = sasl::decode_challenge(&line.text) {
                self.trace().note(&format!(
                    "server error detail: {}",
                    crate::pop3::sanitize(&detail, 300)
                ));
            }
            let next = async {
                let abort = match mechanism {
                    Mechanism::Oauthbearer => sasl::OAUTHBEARER_ABORT,
                    _ => "",
                };
                self.exchange(&Command::AuthResponse(abort)).await
            };
            match next.await {
                Ok(final_line) => line = final_line,
                Err(e) => return e,
            }
        }
        SessionError::AuthFailed {
            method: mechanism.name(),
            line,
        }
    }

    fn choose_mechanism(&self, creds: &Credentials) -> Result<Mechanism, SessionError> {
        let caps = self.capabilities();
        let has_timestamp = apop::timestamp(&self.greeting().text).is_some();
        // Servers without CAPA may still take USER/PASS (RFC 1939 lists it).
        let user_ok = caps.user() || caps.lines.is_empty();
        match creds.method {
            AuthMethod::User => Ok(Mechanism::User),
            AuthMethod::Apop => Ok(Mechanism::Apop),
            AuthMethod::Plain => Ok(Mechanism::Plain),
            AuthMethod::Xoauth2 => Ok(Mechanism::Xoauth2),
            AuthMethod::Oauthbearer => Ok(Mechanism::Oauthbearer),
            AuthMethod::Auto => {
                if !self.is_tls() && has_timestamp {
                    // Without TLS (and only if allowed at all), APOP at least
                    // keeps the password itself off the wire.
                    Ok(Mechanism::Apop)
                } else if caps.has_sasl("PLAIN") {
                    Ok(Mechanism::Plain)
                } else if user_ok {
                    Ok(Mechanism::User)
                } else if has_timestamp {
                    Ok(Mechanism::Apop)
                } else {
                    Err(SessionError::NoAuthMethod(format!(
                        "the server offers no mechanism popsync can use (CAPA: {})",
                        // Server text in an error, a log, a state row: a few hundred bytes.
                        crate::pop3::sanitize(caps.lines.join(", ").as_bytes(), 300)
                    )))
                }
            }
        }
    }
}
