//! Desktop notifications on a real D-Bus session bus (`dbus-run-session`
//! from Debian's `dbus` package), received by a stub
//! `org.freedesktop.Notifications` service that records every `Notify`.

use crate::support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::daemon::{DaemonProcess, wait_until};
use support::dovecot::Dovecot;
use support::popsync::{AccountToml, Popsync, maildir_messages};

/// A private session bus; stopped when dropped.
struct SessionBus {
    child: Child,
    /// The shell that became `sleep`: when it ends, dbus-run-session stops
    /// the bus and exits.
    holder: i32,
    address: String,
}

impl SessionBus {
    fn start() -> SessionBus {
        let mut child = Command::new("dbus-run-session")
            .args([
                "--",
                "sh",
                "-c",
                "echo \"$DBUS_SESSION_BUS_ADDRESS\"; echo $$; exec sleep 600",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("dbus-run-session (Debian package dbus) must be installed");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut address = String::new();
        let mut pid = String::new();
        out.read_line(&mut address).unwrap();
        out.read_line(&mut pid).unwrap();
        let address = address.trim().to_string();
        assert!(address.starts_with("unix:"), "bus address {address:?}");
        SessionBus {
            child,
            holder: pid.trim().parse().unwrap(),
            address,
        }
    }
}

impl Drop for SessionBus {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the sleep our dbus-run-session started.
        unsafe { libc::kill(self.holder, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone)]
struct Call {
    app_name: String,
    summary: String,
    body: String,
}

/// The notification server, as far as the spec's `Notify` goes.
struct Stub {
    calls: Arc<Mutex<Vec<Call>>>,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl Stub {
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        app_name: String,
        _replaces_id: u32,
        _app_icon: String,
        summary: String,
        body: String,
        _actions: Vec<String>,
        _hints: HashMap<String, zbus::OwnedVariant>,
        _expire_timeout: i32,
    ) -> u32 {
        let mut calls = self.calls.lock().unwrap();
        calls.push(Call {
            app_name,
            summary,
            body,
        });
        calls.len() as u32
    }

    fn get_capabilities(&self) -> Vec<String> {
        vec!["body".into()]
    }

    fn get_server_information(&self) -> (String, String, String, String) {
        (
            "stub".into(),
            "popsync tests".into(),
            "1".into(),
            "1.2".into(),
        )
    }

    fn close_notification(&self, _id: u32) {}
}

/// Serves the stub on `bus`; the calls it records.
fn serve_stub(
    bus: &SessionBus,
    rt: &tokio::runtime::Runtime,
) -> (zbus::Connection, Arc<Mutex<Vec<Call>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let server = rt
        .block_on(
            zbus::connection::Builder::address(bus.address.as_str())
                .name("org.freedesktop.Notifications")
                .serve_at(
                    "/org/freedesktop/Notifications",
                    Stub {
                        calls: calls.clone(),
                    },
                )
                .build(),
        )
        .expect("stub notification server on the session bus");
    (server, calls)
}

#[test]
fn new_mail_is_announced_on_the_session_bus_with_decoded_senders_and_subjects() {
    let bus = SessionBus::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_server, calls) = serve_stub(&bus, &rt);

    let d = Dovecot::start();
    let p = Popsync::new("");
    let mut alice = AccountToml::tls("alice", &d, "alice");
    alice.maildir(&p.path("alice")).set("interval", "\"1s\"");
    let mut bob = AccountToml::tls("bob", &d, "bob");
    bob.maildir(&p.path("bob"))
        .set("interval", "\"1s\"")
        .set("notify", "false");
    p.write_config(&format!("{}\n{}", alice.render(), bob.render()));

    let headers = [
        "From: Old Sender <old@example.org>\nSubject: the oldest, not listed\n",
        "From: =?ISO-8859-1?Q?J=F6rg_M=FCller?= <jm@example.org>\nSubject: =?UTF-8?B?R3LDvMOfZSBhdXMgS8O2bG4=?=\n",
        "From: plain@example.org\nSubject: =?utf-8?q?caf=C3=A9_&_<cr=C3=A8me>?=\n",
        "From: \"Zoë\" <zoe@example.org>\nSubject: newest\n",
    ];
    for h in headers {
        d.add_message(
            "alice",
            format!("{h}To: alice@example.org\n\nbody\n").as_bytes(),
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    d.add_message("bob", b"From: x@example.org\nSubject: quiet\n\nbody\n");
    // All four are on the server before the first poll: one notification.
    let mut daemon = DaemonProcess::start(&p, &[("DBUS_SESSION_BUS_ADDRESS", &bus.address)]);
    let got = wait_until(Duration::from_secs(10), || {
        !calls.lock().unwrap().is_empty()
            && maildir_messages(&p.path("bob")).len() == 1
            && daemon.count("bob: 1 new") == 1
    });
    assert!(got, "no notification; log:\n{}", daemon.log());
    // Give a notification for bob (there must be none) time to arrive.
    std::thread::sleep(Duration::from_millis(500));

    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "{calls:#?}\n{}", daemon.log());
    let call = &calls[0];
    assert_eq!(call.app_name, "popsync");
    assert_eq!(call.summary, "alice: 4 new messages");
    assert_eq!(
        call.body,
        "Zoë — newest\n\
         plain@example.org — café &amp; &lt;crème&gt;\n\
         Jörg Müller — Grüße aus Köln\n\
         … and 1 more"
    );
    assert!(
        !daemon.log().contains("notifications are unavailable"),
        "{}",
        daemon.log()
    );

    daemon.signal(libc::SIGTERM);
    let status = daemon
        .wait_exit(Duration::from_secs(8))
        .expect("daemon exits");
    assert!(status.success(), "{status:?}");
}

#[test]
fn an_oauth2_account_without_a_login_is_announced_once() {
    let bus = SessionBus::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_server, calls) = serve_stub(&bus, &rt);
    // Never logged in: each poll stops at the missing token file, so
    // neither the provider nor the POP3 server is ever contacted.
    let p = Popsync::new("");
    p.write_config(&format!(
        "[account.alice]\nhost = \"127.0.0.1\"\nport = 9\nusername = \"alice\"\n\
         oauth2 = \"custom\"\noauth2_issuer = \"http://127.0.0.1:9\"\n\
         oauth2_client_id = \"c\"\noauth2_scopes = [\"pop\"]\n\
         maildir = {:?}\ninterval = \"1s\"\n",
        p.path("alice")
    ));
    let mut daemon = DaemonProcess::start(&p, &[("DBUS_SESSION_BUS_ADDRESS", &bus.address)]);
    assert!(
        wait_until(Duration::from_secs(10), || !calls
            .lock()
            .unwrap()
            .is_empty()),
        "no notification; log:\n{}",
        daemon.log()
    );
    // Several more polls, no second notification.
    std::thread::sleep(Duration::from_secs(4));
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "{calls:#?}\n{}", daemon.log());
    assert_eq!(calls[0].summary, "alice: sign-in needed");
    assert!(
        calls[0].body.contains("popsync login alice"),
        "{}",
        calls[0].body
    );
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit(Duration::from_secs(8)).is_some());
}
