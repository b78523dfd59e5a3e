//! `popsync shell ACCOUNT`: the telnet session of the POP3 lab, made safe.
//!
//! The connection uses the account's TLS settings, and the login its
//! credentials (or, with `--login manual`, what the user types, the password
//! read with echo off). Then each line typed is parsed into a POP3 command,
//! sent, and the answer printed: status lines as `S:`, data lines of a
//! multi-line answer as `S|` (un-stuffed; `--raw` shows the wire form
//! beside), its terminating dot as `S: .`. No password, digest or token is
//! ever printed or kept in the line editor's history. popsync's state is
//! never opened: what the shell deletes, the next sync sees as deleted by
//! another client.

use std::io::{self, BufRead, IsTerminal, Write};

use crate::config::Account;
use crate::pop3::{Command, StatusLine, apop, sanitize};
use crate::session::{Session, SessionError, TraceSink};

use super::exit::{Exit, Failure};
use super::server::session_failure;

/// How the shell logs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Login {
    /// With the account's configured credentials, as sync does.
    Account,
    /// The user types USER/PASS or APOP; popsync asks for the password.
    Manual,
}

/// RFC 1939 §3: the session's states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PopState {
    Authorization,
    Transaction,
    Update,
}

impl PopState {
    fn name(self) -> &'static str {
        match self {
            PopState::Authorization => "AUTHORIZATION",
            PopState::Transaction => "TRANSACTION",
            PopState::Update => "UPDATE",
        }
    }
}

/// A multi-line answer larger than this is not shown (it is still read).
const SHOW_LIMIT: u64 = 256 * 1024 * 1024;

/// RFC 1939's own APOP example, so the computation can be checked by hand.
const RFC_TIMESTAMP: &str = "<1896.697170952@dbc.mtview.ca.us>";
const RFC_SECRET: &str = "tanstaaf";

/// Where typed lines come from.
trait Input {
    /// The next line, `None` at end of input.
    fn line(&mut self, prompt: &str) -> io::Result<Option<String>>;
    /// A secret, never echoed, never kept.
    fn secret(&mut self, prompt: &str) -> io::Result<Option<String>>;
    /// Remember a (non-secret) line for the history.
    fn remember(&mut self, _line: &str) {}
    /// Whether a person at a terminal reads the output (paging).
    fn is_terminal(&self) -> bool;
}

/// A terminal: line editing and history (rustyline), secrets with echo off.
struct Terminal(rustyline::DefaultEditor);

impl Input for Terminal {
    fn line(&mut self, prompt: &str) -> io::Result<Option<String>> {
        use rustyline::error::ReadlineError;
        match self.0.readline(prompt) {
            Ok(line) => Ok(Some(line)),
            Err(ReadlineError::Interrupted) => Ok(Some(String::new())),
            Err(ReadlineError::Eof) => Ok(None),
            Err(ReadlineError::Io(e)) => Err(e),
            Err(e) => Err(io::Error::other(e.to_string())),
        }
    }

    fn secret(&mut self, prompt: &str) -> io::Result<Option<String>> {
        super::hidden::read_hidden(prompt).map(Some)
    }

    fn remember(&mut self, line: &str) {
        let _ = self.0.add_history_entry(line);
    }

    fn is_terminal(&self) -> bool {
        std::io::stdout().is_terminal()
    }
}

/// Plain lines from a pipe or file, so the shell can be scripted. Each line
/// is printed after its prompt, so the output reads as a transcript; a
/// secret line is shown as `(hidden)`.
struct Lines(io::StdinLock<'static>);

impl Lines {
    fn read(&mut self) -> io::Result<Option<String>> {
        let mut buf = String::new();
        if self.0.read_line(&mut buf)? == 0 {
            return Ok(None);
        }
        Ok(Some(buf.trim_end_matches(['\r', '\n']).to_string()))
    }
}

impl Input for Lines {
    fn line(&mut self, prompt: &str) -> io::Result<Option<String>> {
        let line = self.read()?;
        if let Some(l) = &line {
            // A line typed with a secret in it is not repeated (see `refuse_inline_secret`).
            let shown = if inline_secret(l) { "(hidden)" } else { l };
            println!("{prompt}{shown}");
        }
        Ok(line)
    }

    fn secret(&mut self, prompt: &str) -> io::Result<Option<String>> {
        let line = self.read()?;
        println!("{prompt}(hidden)");
        Ok(line)
    }

    fn is_terminal(&self) -> bool {
        false
    }
}

/// `PASS xyz` or `APOP user digest` typed on the command line: the secret
/// would be on the screen and in the history.
fn inline_secret(line: &str) -> bool {
    let mut words = line.split_whitespace();
    match words.next().map(str::to_ascii_uppercase).as_deref() {
        Some("PASS") => words.next().is_some(),
        Some("APOP") => words.nth(1).is_some(),
        Some("AUTH") => words.nth(1).is_some(),
        _ => false,
    }
}

pub async fn run(
    account: &Account,
    login: Login,
    raw: bool,
    trace: Option<TraceSink>,
) -> Result<Exit, Failure> {
    let mut input: Box<dyn Input> = if std::io::stdin().is_terminal() {
        let editor = rustyline::DefaultEditor::new()
            .map_err(|e| Failure::new(Exit::Internal, format!("line editor: {e}")))?;
        Box::new(Terminal(editor))
    } else {
        Box::new(Lines(io::stdin().lock()))
    };
    let mut shell = Shell {
        account,
        session: None,
        state: PopState::Authorization,
        raw,
        user: None,
    };
    shell.start(login, trace).await?;
    shell.repl(input.as_mut()).await
}

struct Shell<'a> {
    account: &'a Account,
    /// `None` once QUIT consumed it.
    session: Option<Session>,
    state: PopState,
    raw: bool,
    /// The name given with USER (manual login).
    user: Option<String>,
}

fn say(text: &str) {
    println!("popsync: {text}");
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    crate::sync::blocking(f)
}

impl Shell<'_> {
    fn fail(&self, e: SessionError) -> Failure {
        session_failure(self.account, e)
    }

    fn session(&mut self) -> &mut Session {
        self.session.as_mut().expect("session is open until QUIT")
    }

    async fn start(&mut self, login: Login, trace: Option<TraceSink>) -> Result<(), Failure> {
        let a = self.account;
        let mut session = Session::connect(&crate::sync::connect_options(a, trace))
            .await
            .map_err(|e| self.fail(e))?;
        print_status(session.greeting());
        match session.tls_info() {
            Some(t) => say(&format!(
                "connected to {}:{} over TLS ({}, {}; certificate {})",
                a.host, a.port, t.version, t.cipher, t.subject
            )),
            None => say(&format!(
                "connected to {}:{} WITHOUT TLS: everything is readable on the network",
                a.host, a.port
            )),
        }
        if login == Login::Account {
            let creds = crate::sync::credentials(a).await?;
            session.login(&creds).await.map_err(|e| self.fail(e))?;
            say(&format!(
                "logged in as {} with {} (credentials sent by popsync, not shown)",
                a.username,
                session.auth_used().unwrap_or("?")
            ));
            self.state = PopState::Transaction;
        } else {
            say(
                "log in yourself: USER name, then PASS (popsync asks for the password, echo off), or APOP name",
            );
        }
        say(
            "type POP3 commands (STAT, LIST, UIDL, RETR n, TOP n k, DELE n, RSET, NOOP, QUIT) or .help",
        );
        self.session = Some(session);
        Ok(())
    }

    async fn repl(&mut self, input: &mut dyn Input) -> Result<Exit, Failure> {
        loop {
            let prompt = format!("{} {}> ", self.account.name, self.state.name());
            let Some(line) = blocking(|| input.line(&prompt)).map_err(input_failure)? else {
                if self.state == PopState::Transaction {
                    say(
                        "end of input: closing without QUIT, so nothing marked with DELE is removed",
                    );
                }
                return Ok(Exit::Ok);
            };
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if inline_secret(line) {
                say(
                    "not sent: never type a password or digest on the command line (it shows and stays in the history). Type PASS or APOP name alone: popsync asks for the password with echo off",
                );
                continue;
            }
            input.remember(line);
            if let Some(dot) = line.strip_prefix('.') {
                self.dot_command(dot.trim(), input)?;
                continue;
            }
            if self.command(line, input).await? {
                return Ok(Exit::Ok);
            }
        }
    }

    /// Runs one typed POP3 command. Returns true when the session ended.
    async fn command(&mut self, line: &str, input: &mut dyn Input) -> Result<bool, Failure> {
        let mut words = line.split_whitespace();
        let verb = words.next().unwrap_or("").to_ascii_uppercase();
        let args: Vec<&str> = words.collect();
        let num = |i: usize| -> Option<u32> { args.get(i).and_then(|a| a.parse().ok()) };
        let authorization = self.state == PopState::Authorization;
        let cmd = match (verb.as_str(), args.len()) {
            ("QUIT", 0) => return self.quit().await.map(|()| true),
            ("USER", 1) if authorization => {
                self.user = Some(args[0].to_string());
                Command::User(args[0])
            }
            ("PASS", 0) if authorization => return self.pass(input).await.map(|()| false),
            ("APOP", 1) if authorization => {
                return self.apop_login(args[0], input).await.map(|()| false);
            }
            ("USER" | "PASS" | "APOP", _) if !authorization => {
                say("already logged in (TRANSACTION state)");
                return Ok(false);
            }
            ("STAT", 0) => Command::Stat,
            ("NOOP", 0) => Command::Noop,
            ("RSET", 0) => Command::Rset,
            ("CAPA", 0) => Command::Capa,
            ("LIST", 0) => Command::List(None),
            ("UIDL", 0) => Command::Uidl(None),
            ("LIST", 1) if num(0).is_some() => Command::List(num(0)),
            ("UIDL", 1) if num(0).is_some() => Command::Uidl(num(0)),
            ("RETR", 1) if num(0).is_some() => Command::Retr(num(0).unwrap_or(0)),
            ("DELE", 1) if num(0).is_some() => Command::Dele(num(0).unwrap_or(0)),
            ("TOP", 2) if num(0).is_some() && num(1).is_some() => {
                Command::Top(num(0).unwrap_or(0), num(1).unwrap_or(0))
            }
            ("STLS", _) => {
                say(
                    "STLS is not typed by hand: set tls = \"starttls\" for the account and popsync negotiates it before anything else",
                );
                return Ok(false);
            }
            ("AUTH", _) => {
                say(
                    "SASL (AUTH) is not typed by hand: use the default login (--login account), which runs the account's mechanism",
                );
                return Ok(false);
            }
            _ => {
                // The word is not repeated: it may be a password typed at the wrong prompt.
                say("not sent: not a POP3 command popsync knows with these arguments; type .help");
                return Ok(false);
            }
        };
        let (reply, body) = self.send(&cmd).await?;
        if reply.is_ok() {
            match cmd {
                Command::Dele(n) => say(&format!(
                    "message {n} is only marked: the server removes it at QUIT; RSET unmarks every message"
                )),
                Command::Rset => say("every DELE mark of this session is undone"),
                _ => {}
            }
            if let Some(body) = body {
                let paged = matches!(cmd, Command::Retr(_) | Command::Top(..));
                self.show_body(&body, paged, input)?;
            }
        }
        Ok(false)
    }

    /// Sends `cmd` and prints its status line; a multi-line body behind it
    /// is read whole (at most `SHOW_LIMIT`) and returned.
    async fn send(&mut self, cmd: &Command<'_>) -> Result<(StatusLine, Option<Vec<u8>>), Failure> {
        let mut p = self.session().pipeline(1);
        let reply = async {
            p.send(cmd)?;
            p.next_reply().await
        }
        .await;
        let body = match &reply {
            Ok(r) if r.body_follows => Some(p.read_body_prefix(SHOW_LIMIT, usize::MAX).await),
            _ => None,
        };
        drop(p);
        let reply = reply.map_err(|e| self.fail(e))?;
        print_status(&reply.line);
        let body = body.transpose().map_err(|e| self.fail(e))?;
        Ok((reply.line, body))
    }

    /// The same rule as sync: no credential over a connection without TLS
    /// unless the account allows it.
    fn refuse_clear_text(&mut self, method: &'static str) -> bool {
        if self.session().is_tls() || self.account.allow_insecure_auth {
            return false;
        }
        say(&SessionError::InsecureAuth { method }.to_string());
        true
    }

    async fn pass(&mut self, input: &mut dyn Input) -> Result<(), Failure> {
        if self.user.is_none() {
            say("type USER name first");
            return Ok(());
        }
        if self.refuse_clear_text("USER") {
            return Ok(());
        }
        let Some(secret) =
            blocking(|| input.secret("Password (not shown): ")).map_err(input_failure)?
        else {
            return Ok(());
        };
        let (reply, _) = self.send(&Command::Pass(&secret)).await?;
        if reply.is_ok() {
            self.state = PopState::Transaction;
        }
        Ok(())
    }

    async fn apop_login(&mut self, user: &str, input: &mut dyn Input) -> Result<(), Failure> {
        let Some(timestamp) = self.timestamp() else {
            say("the greeting has no APOP timestamp: this server does not offer APOP");
            return Ok(());
        };
        if self.refuse_clear_text("APOP") {
            return Ok(());
        }
        let Some(secret) =
            blocking(|| input.secret("Password (not shown): ")).map_err(input_failure)?
        else {
            return Ok(());
        };
        let digest = apop::digest(&timestamp, &secret);
        let (reply, _) = self
            .send(&Command::Apop {
                user,
                digest: &digest,
            })
            .await?;
        if reply.is_ok() {
            self.state = PopState::Transaction;
        }
        Ok(())
    }

    fn timestamp(&mut self) -> Option<String> {
        apop::timestamp(&self.session().greeting().text).map(str::to_string)
    }

    async fn quit(&mut self) -> Result<(), Failure> {
        if self.state == PopState::Transaction {
            self.state = PopState::Update;
            say("UPDATE state: the server now removes the messages marked with DELE");
        }
        let session = self.session.take().expect("session is open until QUIT");
        let reply = session.quit().await.map_err(|e| self.fail(e))?;
        print_status(&reply);
        Ok(())
    }

    fn show_body(
        &mut self,
        body: &[u8],
        paged: bool,
        input: &mut dyn Input,
    ) -> Result<(), Failure> {
        let mut lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
        if body.ends_with(b"\n") {
            lines.pop();
        }
        let page = (paged && input.is_terminal())
            .then(|| console::Term::stdout().size_checked())
            .flatten()
            .map(|(rows, _)| usize::from(rows).saturating_sub(2).max(5));
        for (i, line) in lines.iter().enumerate() {
            if let Some(page) = page
                && i > 0
                && i % page == 0
            {
                let more =
                    blocking(|| input.line("-- more (Enter: next page, q: skip to the end) -- "))
                        .map_err(input_failure)?;
                if more.is_none_or(|m| m.trim().eq_ignore_ascii_case("q")) {
                    say(&format!("{} more lines not shown", lines.len() - i));
                    break;
                }
            }
            println!("{}", data_line(line, self.raw));
        }
        println!("S: .");
        Ok(())
    }

    fn dot_command(&mut self, cmd: &str, input: &mut dyn Input) -> Result<(), Failure> {
        match cmd {
            "help" | "" => {
                say(
                    "POP3 commands: STAT, LIST [n], UIDL [n], RETR n, TOP n lines, DELE n, RSET, NOOP, CAPA, QUIT; to log in by hand: USER name then PASS, or APOP name",
                );
                say(
                    "DELE only marks a message: the server removes it at QUIT (UPDATE state); RSET unmarks all; a session that ends without QUIT removes nothing",
                );
                say(
                    ".apop: how APOP's digest is made from this greeting; .state: the session's state; .help: this text",
                );
            }
            "state" => say(&format!(
                "{} state; connection {}",
                self.state.name(),
                if self.session.as_ref().is_some_and(Session::is_tls) {
                    "encrypted (TLS)"
                } else {
                    "NOT encrypted"
                }
            )),
            "apop" => self.explain_apop(input)?,
            other => say(&format!(
                "unknown shell command .{}; type .help",
                sanitize(other.as_bytes(), 40)
            )),
        }
        Ok(())
    }

    /// The lab's APOP task, step by step. The session's own digest is a
    /// credential: only its first hex digits are shown.
    fn explain_apop(&mut self, input: &mut dyn Input) -> Result<(), Failure> {
        say("APOP (RFC 1939 §7): digest = MD5(timestamp + secret), in lowercase hex");
        say(&format!(
            "  RFC example: MD5(\"{RFC_TIMESTAMP}\" + \"{RFC_SECRET}\") = {}",
            apop::digest(RFC_TIMESTAMP, RFC_SECRET)
        ));
        let Some(timestamp) = self.timestamp() else {
            say("  this greeting has no valid timestamp <...@...>: the server does not offer APOP");
            return Ok(());
        };
        say(&format!("  1. the greeting's timestamp: {timestamp}"));
        let secret = if self.state == PopState::Authorization && self.user.is_none() {
            blocking(|| input.secret("Password for the example (not shown): "))
                .map_err(input_failure)?
        } else {
            Some(blocking(|| self.account.secret())?.expose().to_string())
        };
        let Some(secret) = secret else {
            return Ok(());
        };
        say(&format!(
            "  2. append the password ({} characters, not shown): \"{timestamp}\" + \"…\"",
            secret.chars().count()
        ));
        let digest = apop::digest(&timestamp, &secret);
        say(&format!(
            "  3. MD5 of that, in hex: {}… (32 hex digits; the rest is not shown: it logs in to this session)",
            &digest[..4]
        ));
        say(
            "  4. the client sends: APOP name DIGEST (type APOP name and popsync does steps 2-3 for you)",
        );
        say(
            "  APOP keeps the password off the wire but falls to an active attacker (CVE-2007-1558): prefer TLS",
        );
        Ok(())
    }
}

fn print_status(line: &StatusLine) {
    let word = if line.is_ok() { "+OK" } else { "-ERR" };
    let text = line.describe();
    if text.is_empty() {
        println!("S: {word}");
    } else {
        println!("S: {word} {text}");
    }
}

/// One data line as shown: un-stuffed, and with `raw` the wire form (one
/// more `.` in front of a line that starts with `.`) beside it.
fn data_line(line: &[u8], raw: bool) -> String {
    let data = sanitize(line, 4096);
    if !raw {
        return format!("S| {data}");
    }
    let wire = if line.first() == Some(&b'.') {
        format!(".{data}")
    } else {
        data.clone()
    };
    format!("S| {wire:<38} | {data}")
}

fn input_failure(e: io::Error) -> Failure {
    let _ = io::stdout().flush();
    Failure::new(Exit::Internal, format!("reading the terminal: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_typed_inline_are_caught() {
        assert!(inline_secret("PASS hunter2"));
        assert!(inline_secret("pass  hunter2 with spaces"));
        assert!(inline_secret("APOP alice c4c9334bac560ecc979e58001b3e22fb"));
        assert!(inline_secret("AUTH PLAIN AGFsaWNlAHNlY3JldA=="));
        assert!(!inline_secret("PASS"));
        assert!(!inline_secret("APOP alice"));
        assert!(!inline_secret("USER alice"));
    }

    #[test]
    fn data_lines_show_the_wire_form_beside_the_data() {
        assert_eq!(data_line(b".", false), "S| .");
        assert_eq!(data_line(b".", true), format!("S| {:<38} | .", ".."));
        assert_eq!(
            data_line(b"plain", true),
            format!("S| {:<38} | plain", "plain")
        );
        assert_eq!(data_line(b"\x1b[2J", false), "S| \\x1b[2J");
    }
}
