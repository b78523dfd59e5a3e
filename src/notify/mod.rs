//! Desktop notifications: what to say (pure, tested) and a [`Notifier`]
//! that says it. The daemon holds an `Arc<dyn Notifier>`: the desktop one
//! (freedesktop notifications over D-Bus, via notify-rust) in production, a
//! [`RecordingNotifier`] in tests.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use mail_parser::MessageParser;

/// At most this many senders and subjects are listed.
pub const LISTED: usize = 3;
/// Long subjects are cut to this many characters.
const MAX_SUBJECT: usize = 120;

/// One desktop notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub summary: String,
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotifyError(pub String);

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Shows notifications. Implementations must not block the caller's thread.
pub trait Notifier: Send + Sync {
    fn notify(&self, note: Notification) -> BoxFuture<'static, Result<(), NotifyError>>;
}

/// freedesktop.org notifications on the session bus (notify-rust, zbus).
#[derive(Debug, Default)]
pub struct DesktopNotifier;

impl Notifier for DesktopNotifier {
    fn notify(&self, note: Notification) -> BoxFuture<'static, Result<(), NotifyError>> {
        Box::pin(async move {
            // show_async: the blocking show() panics inside a tokio runtime.
            notify_rust::Notification::new()
                .appname("popsync")
                .icon("mail-message-new")
                .summary(&note.summary)
                .body(&note.body)
                .show_async()
                .await
                .map(|_handle| ())
                .map_err(|e| NotifyError(e.to_string()))
        })
    }
}

/// Keeps every notification; for tests.
#[derive(Debug, Default)]
pub struct RecordingNotifier {
    seen: Mutex<Vec<Notification>>,
}

impl RecordingNotifier {
    pub fn notifications(&self) -> Vec<Notification> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Notifier for RecordingNotifier {
    fn notify(&self, note: Notification) -> BoxFuture<'static, Result<(), NotifyError>> {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(note);
        }
        Box::pin(async { Ok(()) })
    }
}

/// Sender (display name, else address) and subject of a message's header
/// section, decoded (RFC 2047 encoded words, charsets) by mail-parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailLine {
    pub from: String,
    pub subject: String,
}

impl MailLine {
    pub fn parse(header: &[u8]) -> MailLine {
        let parsed = MessageParser::default().parse_headers(header);
        let from = parsed
            .as_ref()
            .and_then(|m| m.from())
            .and_then(|a| a.first())
            .and_then(|a| {
                a.name()
                    .filter(|n| !n.trim().is_empty())
                    .or(a.address())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "unknown sender".to_string());
        let subject = parsed
            .as_ref()
            .and_then(|m| m.subject())
            .filter(|s| !s.trim().is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| "(no subject)".to_string());
        MailLine {
            from: one_line(&from, MAX_SUBJECT),
            subject: one_line(&subject, MAX_SUBJECT),
        }
    }
}

/// "alice: 3 new messages", then the newest first: "Sender — Subject".
/// `newest` are header sections, newest last (as the engine keeps them).
pub fn new_mail<'a>(
    account: &str,
    count: u64,
    newest: impl DoubleEndedIterator<Item = &'a Vec<u8>>,
) -> Notification {
    let noun = if count == 1 { "message" } else { "messages" };
    let mut lines: Vec<String> = newest
        .rev()
        .take(LISTED)
        .map(|h| {
            let l = MailLine::parse(h);
            escape_markup(&format!("{} — {}", l.from, l.subject))
        })
        .collect();
    let listed = lines.len() as u64;
    if count > listed {
        lines.push(format!("… and {} more", count - listed));
    }
    Notification {
        summary: format!("{account}: {count} new {noun}"),
        body: lines.join("\n"),
    }
}

/// Polling of `account` stopped after refused logins.
pub fn polling_stopped(account: &str, reason: &str) -> Notification {
    Notification {
        summary: format!("{account}: login refused, polling stopped"),
        body: escape_markup(&format!(
            "{}\nFix the credentials and reload popsync (systemctl --user reload popsync).",
            crate::pop3::sanitize_text(reason, 300)
        )),
    }
}

/// The OAuth2 login is gone (revoked, expired, never done): says the
/// command that fixes it; shown once per streak.
pub fn login_needed(account: &str, reason: &str) -> Notification {
    Notification {
        summary: format!("{account}: sign-in needed"),
        body: escape_markup(&format!(
            "{reason}\nRun: popsync login {account} (polling resumes by itself afterwards)."
        )),
    }
}

/// Control characters (a folded header's newlines, tabs) become spaces;
/// long text is cut.
fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .filter(|&c| !crate::pop3::is_invisible_format(c))
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let flat = flat.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        let cut: String = flat.chars().take(max - 1).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

/// Notification servers may read the body as markup (the `body-markup`
/// capability): a sender like `<a@b>` or a subject with `&` must not be
/// taken for tags or entities.
fn escape_markup(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_encoded_words_and_charsets() {
        let h = b"From: =?ISO-8859-1?Q?J=F6rg_M=FCller?= <jm@example.org>\nSubject: =?UTF-8?B?R3LDvMOfZSBhdXMgS8O2bG4=?=\n\n";
        assert_eq!(
            MailLine::parse(h),
            MailLine {
                from: "Jörg Müller".into(),
                subject: "Grüße aus Köln".into()
            }
        );
    }

    #[test]
    fn falls_back_to_address_and_placeholders() {
        let l = MailLine::parse(b"From: bob@example.org\n\n");
        assert_eq!(l.from, "bob@example.org");
        assert_eq!(l.subject, "(no subject)");
        let l = MailLine::parse(b"X-Nothing: here\n\n");
        assert_eq!(l.from, "unknown sender");
        let l = MailLine::parse(b"");
        assert_eq!(l.subject, "(no subject)");
    }

    #[test]
    fn bidi_and_zero_width_controls_are_stripped() {
        let h = "From: Eve <e@x>\nSubject: invoice \u{202E}fdp.exe\u{200B}\n\n"
            .as_bytes()
            .to_vec();
        let n = new_mail("a", 1, [h].iter());
        assert!(
            !n.body.contains('\u{202E}') && !n.body.contains('\u{200B}'),
            "{:?}",
            n.body
        );
        assert!(n.body.contains("invoice fdp.exe"), "{:?}", n.body);
        let n = polling_stopped("a", "login refused: \x1b[31m\u{202E}x");
        assert!(
            !n.body.contains('\x1b') && !n.body.contains('\u{202E}'),
            "{:?}",
            n.body
        );
    }

    #[test]
    fn folded_and_long_subjects_become_one_short_line() {
        let long = "word ".repeat(100);
        let h = format!("From: a@b\nSubject: first\n\tsecond {long}\n\n");
        let l = MailLine::parse(h.as_bytes());
        assert!(l.subject.starts_with("first second word"), "{}", l.subject);
        assert_eq!(l.subject.chars().count(), MAX_SUBJECT);
        assert!(!l.subject.contains('\n') && !l.subject.contains('\t'));
    }

    #[test]
    fn lists_the_newest_three_newest_first_and_counts_the_rest() {
        let headers: Vec<Vec<u8>> = (1..=3)
            .map(|i| format!("From: S{i} <s{i}@x>\nSubject: n{i} & <b>\n\n").into_bytes())
            .collect();
        let n = new_mail("alice", 7, headers.iter());
        assert_eq!(n.summary, "alice: 7 new messages");
        assert_eq!(
            n.body,
            "S3 — n3 &amp; &lt;b&gt;\nS2 — n2 &amp; &lt;b&gt;\nS1 — n1 &amp; &lt;b&gt;\n… and 4 more"
        );
        let n = new_mail("bob", 1, headers[..1].iter());
        assert_eq!(n.summary, "bob: 1 new message");
        assert_eq!(n.body, "S1 — n1 &amp; &lt;b&gt;");
    }
}
