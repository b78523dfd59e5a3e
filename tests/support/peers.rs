//! Runs the real peers (Debian's mpop, fetchmail, getmail6) against a test
//! Dovecot's plain port with USER/PASS, keeping mail on the server, and
//! returns the path of the UID state file each one wrote.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::dovecot::{Dovecot, MAIL_USER, lookup_user};

fn check(what: &str, out: std::process::Output) {
    assert!(
        out.status.success(),
        "{what} failed ({})\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// mpop 1.4: `uidls_file` after one run with `keep on` into a maildir.
pub fn run_mpop(d: &Dovecot, user: &str, dir: &Path) -> PathBuf {
    let maildir = dir.join("mpop-mail");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    let uidls = dir.join("mpop-uidls");
    let rc = dir.join("mpoprc");
    write_private(
        &rc,
        &format!(
            "account default\nhost {}\nport {}\ntls off\nauth user\nuser {user}\npassword {}\n\
             delivery maildir {}\nkeep on\nonly_new on\nuidls_file {}\n",
            d.plain_host,
            d.plain_port,
            d.password(user),
            maildir.display(),
            uidls.display()
        ),
    );
    check(
        "mpop",
        Command::new("mpop")
            .arg(format!("--file={}", rc.display()))
            .arg("-q")
            .output()
            .unwrap(),
    );
    uidls
}

/// fetchmail 6.4: `.fetchids` after one run with `keep` and `uidl`, its
/// MDA discarding the mail (only the UID file matters here).
pub fn run_fetchmail(d: &Dovecot, user: &str, dir: &Path) -> PathBuf {
    let ids = dir.join("fetchids");
    let rc = dir.join("fetchmailrc");
    write_private(
        &rc,
        &format!(
            "set no syslog\npoll {} proto pop3 port {} uidl auth password\n  user \"{user}\" password \"{}\"\n  \
             keep sslproto '' mda \"cat >/dev/null\"\n",
            d.plain_host,
            d.plain_port,
            d.password(user)
        ),
    );
    check(
        "fetchmail",
        Command::new("fetchmail")
            .arg("-f")
            .arg(&rc)
            .arg("-i")
            .arg(&ids)
            .arg("--pidfile")
            .arg(dir.join("fetchmail.pid"))
            .arg("--nodetach")
            .env("HOME", dir)
            .output()
            .unwrap(),
    );
    ids
}

/// getmail6: the `oldmail-HOST-PORT-USER` file after one run with
/// `delete = false` into a maildir. getmail6 must not run as root (its
/// delivery child hangs), so it runs as the test mail user.
pub fn run_getmail(d: &Dovecot, user: &str, dir: &Path) -> PathBuf {
    let (uid, gid) = lookup_user(MAIL_USER).expect("mail user exists (Dovecot::start made it)");
    let home = dir.join("getmail");
    let maildir = home.join("mail");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    let rc = home.join("getmailrc");
    write_private(
        &rc,
        &format!(
            "[retriever]\ntype = SimplePOP3Retriever\nserver = {}\nport = {}\nusername = {user}\npassword = {}\n\n\
             [destination]\ntype = Maildir\npath = {}/\n\n[options]\ndelete = false\nread_all = false\nverbose = 0\n",
            d.plain_host,
            d.plain_port,
            d.password(user),
            maildir.display()
        ),
    );
    // The user must reach its directory: the temp dirs above it are 0700 root.
    let mut p = home.clone();
    loop {
        std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
        if p == dir {
            break;
        }
        p.pop();
    }
    for entry in walk(&home) {
        std::os::unix::fs::chown(&entry, Some(uid), Some(gid)).unwrap();
    }
    check(
        "getmail",
        Command::new("setpriv")
            .args([
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".into(),
                "getmail".into(),
                format!("--getmaildir={}", home.display()),
                format!("--rcfile={}", rc.display()),
            ])
            .env("HOME", &home)
            .output()
            .unwrap(),
    );
    home.join(format!("oldmail-{}-{}-{user}", d.plain_host, d.plain_port))
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
