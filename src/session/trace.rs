//! The protocol transcript (`--trace`): `C:` and `S:` lines, secrets redacted.

use std::sync::Arc;

use crate::pop3::{Command, StatusLine};

/// Where transcript lines go (stderr for the CLI, a buffer in tests).
pub type TraceSink = Arc<dyn Fn(&str) + Send + Sync>;

#[derive(Clone, Default)]
pub struct Trace(Option<TraceSink>);

impl Trace {
    pub fn new(sink: Option<TraceSink>) -> Self {
        Trace(sink)
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// A client line; `Command`'s Debug form never shows secrets.
    pub fn client(&self, cmd: &Command<'_>) {
        if let Some(sink) = &self.0 {
            sink(&format!("C: {cmd:?}"));
        }
    }

    pub fn server(&self, line: &StatusLine) {
        if let Some(sink) = &self.0 {
            let keyword = match line.status {
                crate::pop3::Status::Ok => "+OK",
                crate::pop3::Status::Err => "-ERR",
                crate::pop3::Status::Continue => "+",
            };
            let text = line.describe();
            if text.is_empty() {
                sink(&format!("S: {keyword}"));
            } else {
                sink(&format!("S: {keyword} {text}"));
            }
        }
    }

    /// Multi-line bodies are summarised, never dumped.
    pub fn body(&self, lines: u64, bytes: u64) {
        if let Some(sink) = &self.0 {
            sink(&format!("S: <{lines} lines, {bytes} bytes>"));
            sink("S: .");
        }
    }

    pub fn note(&self, text: &str) {
        if let Some(sink) = &self.0 {
            sink(&format!("-- {text}"));
        }
    }
}
