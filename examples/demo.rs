//! A first run with no mail server and no config:
//!
//!     cargo run --release --example demo
//!
//! Starts a small POP3 server on 127.0.0.1 holding a sample mailbox (with
//! the classic traps: a line holding only ".", lines starting with "."),
//! syncs it into ./demo-mail with keep on, syncs again to show that the
//! second run fetches nothing, and tells you how to point popsync at your
//! own server.

use std::sync::{Arc, Mutex};

use popsync::config::Config;
use popsync::pop3::multiline::encode_multiline;
use popsync::store::Store;
use popsync::sync::{SyncOptions, sync_account};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const MAILBOX: &[&str] = &[
    "From: Ada <ada@example.org>\nTo: you@example.org\nSubject: Welcome to popsync\n\nThis message came from a POP3 server on your own machine.\n",
    "From: Bob <bob@example.org>\nTo: you@example.org\nSubject: A lone dot\n\nThe next line holds only a dot; POP3 uses that line to end a message.\n.\nIt still arrives intact.\n",
    "From: Cy <cy@example.org>\nTo: you@example.org\nSubject: Leading dots\n\n..two dots\n.one dot\n...and three\n",
    "From: Dee <dee@example.org>\nTo: you@example.org\nSubject: =?UTF-8?B?RW5jb2RlZCDinJM=?=\nContent-Type: text/plain; charset=utf-8\n\nCaf\u{e9} cr\u{e8}me br\u{fb}l\u{e9}e.\n",
    "From: Eve <eve@example.org>\nTo: you@example.org\nSubject: From lines\n\nFrom here on, mbox readers need quoting.\n>From there too.\n",
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(serve(listener));

    let here = std::env::current_dir()?;
    let maildir = here.join("demo-mail");
    let state_dir = maildir.join(".popsync-state");
    // The demo server has no TLS: allow_insecure_auth is needed for that
    // alone. Never set it for a real server.
    let config_text = format!(
        "state_dir = {state_dir:?}\n\n[account.demo]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nallow_insecure_auth = true\nusername = \"you\"\npassword = \"demo\"\nmaildir = {maildir:?}\n"
    );
    let config = Config::parse(&config_text, &here.join("demo-config.toml"))?;
    let account = config.account("demo")?;
    let store = Arc::new(Mutex::new(Store::open_in(&state_dir)?));

    for (round, what) in [(1, "first sync"), (2, "second sync (nothing new)")] {
        let opts = SyncOptions::new(state_dir.clone(), popsync::datetime::unix_now());
        let report = sync_account(account, &store, &opts).await;
        println!("{what}: {}", report.summary());
        if let Some(e) = report.error {
            return Err(e.into());
        }
        if round == 1 && report.new_messages == 0 {
            println!("(./demo-mail already held the sample mail from an earlier demo run)");
        }
    }
    println!();
    println!(
        "Your mail is in {}/new/ — one file per message.",
        maildir.display()
    );
    println!("The sync state is in {}.", state_dir.display());
    println!();
    println!("To fetch from your own server, write ~/.config/popsync/config.toml (chmod 600):");
    println!();
    println!("    [account.me]");
    println!("    host = \"pop.example.org\"");
    println!("    username = \"me@example.org\"");
    println!("    password_command = \"pass show mail/me\"");
    println!("    maildir = \"~/Mail/me\"");
    println!();
    println!("then run: popsync probe me && popsync sync");
    Ok(())
}

/// A minimal POP3 server (RFC 1939 + CAPA/UIDL/PIPELINING) over MAILBOX.
async fn serve(listener: TcpListener) {
    while let Ok((socket, _)) = listener.accept().await {
        tokio::spawn(async move {
            let (read, mut write) = socket.into_split();
            let mut lines = BufReader::new(read).lines();
            let mut out = b"+OK popsync demo server ready\r\n".to_vec();
            while write.write_all(&out).await.is_ok() {
                out.clear();
                let Ok(Some(line)) = lines.next_line().await else {
                    return;
                };
                let mut words = line.split_whitespace();
                let verb = words.next().unwrap_or("").to_ascii_uppercase();
                let arg: Option<usize> = words.next().and_then(|w| w.parse().ok());
                let message = arg.and_then(|n| MAILBOX.get(n.wrapping_sub(1)));
                let size = |m: &str| m.len() + m.matches('\n').count();
                match (verb.as_str(), message) {
                    ("CAPA", _) => {
                        out.extend_from_slice(b"+OK\r\nUSER\r\nUIDL\r\nPIPELINING\r\n.\r\n")
                    }
                    ("USER" | "PASS" | "NOOP" | "RSET" | "DELE", _) => {
                        out.extend_from_slice(b"+OK\r\n")
                    }
                    ("STAT", _) => {
                        let total: usize = MAILBOX.iter().map(|m| size(m)).sum();
                        out.extend_from_slice(
                            format!("+OK {} {total}\r\n", MAILBOX.len()).as_bytes(),
                        );
                    }
                    ("LIST" | "UIDL", None) => {
                        out.extend_from_slice(b"+OK\r\n");
                        for (i, m) in MAILBOX.iter().enumerate() {
                            let value = if verb == "LIST" {
                                size(m).to_string()
                            } else {
                                format!("demo-{}", i + 1)
                            };
                            out.extend_from_slice(format!("{} {value}\r\n", i + 1).as_bytes());
                        }
                        out.extend_from_slice(b".\r\n");
                    }
                    ("RETR", Some(m)) => {
                        out.extend_from_slice(b"+OK\r\n");
                        encode_multiline(m.as_bytes(), &mut out);
                    }
                    ("QUIT", _) => {
                        let _ = write.write_all(b"+OK bye\r\n").await;
                        return;
                    }
                    _ => out.extend_from_slice(b"-ERR not supported by the demo server\r\n"),
                }
            }
        });
    }
}
