//! A desktop keyring for the `oauth2_keyring` tests: a private D-Bus
//! session bus (`dbus-run-session`) with GNOME Keyring's Secret Service
//! (`gnome-keyring-daemon`), its login collection created and unlocked in
//! a throw-away home.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn keyring_available() -> bool {
    std::path::Path::new("/usr/bin/gnome-keyring-daemon").exists()
}

pub struct KeyringBus {
    child: Child,
    /// The shell that became `sleep`, and the keyring daemon.
    pids: Vec<i32>,
    pub address: String,
    _home: tempfile::TempDir,
}

impl KeyringBus {
    pub fn start() -> KeyringBus {
        assert!(
            keyring_available(),
            "gnome-keyring is not installed: run scripts/test"
        );
        let home = tempfile::tempdir().unwrap();
        let run = home.path().join("run");
        std::fs::create_dir(&run).unwrap();
        let script = "echo \"$DBUS_SESSION_BUS_ADDRESS\"; echo $$; \
             printf test-keyring-password | gnome-keyring-daemon --foreground --unlock --components=secrets >/dev/null 2>&1 & \
             echo $!; exec sleep 600";
        let mut child = Command::new("dbus-run-session")
            .args(["--", "sh", "-c", script])
            .env("HOME", home.path())
            .env("XDG_DATA_HOME", home.path().join("data"))
            .env("XDG_RUNTIME_DIR", &run)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-run-session (Debian package dbus) must be installed");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = || {
            let mut l = String::new();
            out.read_line(&mut l).unwrap();
            l.trim().to_string()
        };
        let address = line();
        let pids = vec![line().parse().unwrap(), line().parse().unwrap()];
        assert!(address.starts_with("unix:"), "bus address {address:?}");
        let bus = KeyringBus {
            child,
            pids,
            address,
            _home: home,
        };
        bus.wait_ready();
        bus
    }

    /// Until the Secret Service answers on the bus with its default collection.
    fn wait_ready(&self) {
        // Creating the login keyring derives a key: slow on a loaded machine.
        let mut last = String::new();
        // Ask the bus who owns the name first: a call to the service itself
        // before ours has claimed it would make the bus start a second,
        // locked gnome-keyring-daemon by D-Bus activation.
        let dbus_send = |args: &[&str]| {
            Command::new("dbus-send")
                .args(["--session", "--print-reply"])
                .args(args)
                .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
                .output()
        };
        let owned = super::daemon::wait_until(Duration::from_secs(90), || {
            dbus_send(&[
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.NameHasOwner",
                "string:org.freedesktop.secrets",
            ])
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("boolean true"))
        });
        assert!(
            owned,
            "gnome-keyring-daemon did not claim org.freedesktop.secrets"
        );
        let ok = super::daemon::wait_until(Duration::from_secs(30), || {
            let out = dbus_send(&[
                "--dest=org.freedesktop.secrets",
                "/org/freedesktop/secrets",
                "org.freedesktop.Secret.Service.ReadAlias",
                "string:default",
            ]);
            last = match out {
                Ok(o) => format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => e.to_string(),
            };
            last.contains("collection/login")
        });
        assert!(
            ok,
            "gnome-keyring-daemon did not come up on the test bus; dbus-send said: {last}"
        );
    }
}

impl Drop for KeyringBus {
    fn drop(&mut self) {
        for pid in self.pids.iter().rev() {
            // SAFETY: kill(2) of processes our dbus-run-session started.
            unsafe { libc::kill(*pid, libc::SIGTERM) };
        }
        let _ = self.child.wait();
    }
}
