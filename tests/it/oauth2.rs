//! OAuth2 end to end with real parts: a real OpenID provider (npm
//! oidc-provider, tests/support/oidc.rs) and a real Dovecot whose oauth2
//! passdb validates every XOAUTH2 / OAUTHBEARER token by introspection at
//! that provider. The tests play the user on the provider's own pages.

use crate::support;

use std::process::{Child, Stdio};
use std::time::Duration;

use support::daemon::{DaemonProcess, wait_until};
use support::dovecot::{Dovecot, DovecotOptions};
use support::oidc::{Browser, CLIENT_ID, LineReader, OidcProvider, device_prompt, finish};
use support::popsync::{AccountToml, Popsync, Run, maildir_messages};

struct World {
    idp: OidcProvider,
    dovecot: Dovecot,
    p: Popsync,
    account: AccountToml,
    /// For every popsync started (the keyring test's session bus).
    env: Vec<(String, String)>,
}

/// A provider whose access tokens live `access_ttl` seconds, a Dovecot that
/// asks it, and an account `alice` using `oauth2 = "custom"`.
fn world(access_ttl: u64) -> World {
    let idp = OidcProvider::start(access_ttl);
    let dovecot = Dovecot::start_with(
        DovecotOptions::default().oauth2_introspection(&idp.introspection_url()),
    );
    let p = Popsync::new("");
    let mut account = AccountToml::tls("alice", &dovecot, "alice");
    account
        .remove("password")
        .set("oauth2", "\"custom\"")
        .set("oauth2_client_id", &format!("\"{CLIENT_ID}\""))
        .set("oauth2_issuer", &format!("\"{}\"", idp.issuer()))
        .set("oauth2_scopes", "[\"openid\", \"offline_access\", \"pop\"]")
        .set("notify", "false")
        .maildir(&p.path("mail"));
    p.write_config(&account.render());
    World {
        idp,
        dovecot,
        p,
        account,
        env: Vec::new(),
    }
}

impl World {
    fn rewrite(&mut self, key: &str, value: &str) {
        self.account.set(key, value);
        self.p.write_config(&self.account.render());
    }

    fn message(&self, subject: &str) {
        self.dovecot.add_message(
            "alice",
            format!("From: a@example.org\nSubject: {subject}\n\nbody\n").as_bytes(),
        );
    }

    fn delivered(&self) -> usize {
        maildir_messages(&self.p.path("mail")).len()
    }

    fn token_file(&self) -> serde_json::Value {
        let path = self.p.state_dir.join("oauth2/alice.json");
        let text = std::fs::read_to_string(&path).expect("token file");
        serde_json::from_str(&text).unwrap()
    }

    fn tokens(&self) -> (String, String) {
        let t = self.token_file();
        (
            t["access_token"].as_str().unwrap_or_default().to_string(),
            t["refresh_token"].as_str().unwrap_or_default().to_string(),
        )
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = self.p.command(args);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn run(&self, args: &[&str]) -> Run {
        Run(self.command(args).output().unwrap())
    }

    fn spawn_login(&self, flow: &str) -> (Child, LineReader) {
        let mut child = self
            .command(&[
                "login",
                "alice",
                "--flow",
                flow,
                "--no-browser",
                "-vv",
                "--trace",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn popsync login");
        let out = LineReader::new(child.stdout.take().unwrap());
        (child, out)
    }

    /// `popsync login alice --flow device`, approved on the provider's pages.
    fn login_device(&self) -> Run {
        let (child, out) = self.spawn_login("device");
        let (uri, code) = device_prompt(&out);
        let page = Browser::new("alice").approve_device(&uri, &code);
        assert!(
            page.contains("Sign-in Success") || page.contains("success"),
            "{page}"
        );
        finish(child, out)
    }
}

/// No token (nor any recognisable part of one) in `text`.
fn assert_no_tokens(text: &str, tokens: &[&str]) {
    for t in tokens.iter().filter(|t| !t.is_empty()) {
        assert!(
            !text.contains(*t),
            "a token leaked into the output:\n{text}"
        );
        assert!(
            !text.contains(&t[..t.len().min(12)]),
            "a token's start leaked into the output:\n{text}"
        );
    }
}

fn refreshes(w: &World) -> usize {
    w.idp.count("grant.success refresh_token")
}

#[test]
fn device_flow_login_then_sync_with_xoauth2_and_oauthbearer() {
    let mut w = world(300);
    let before = w.p.run(&["sync"]);
    before.expect_code(4);
    assert!(
        before.stderr().contains("run `popsync login alice`"),
        "{}",
        before.stderr()
    );

    let login = w.login_device();
    login.expect_code(0);
    assert!(
        login.stdout().contains("logged in to"),
        "{}",
        login.stdout()
    );
    let (access, refresh) = w.tokens();
    assert!(!access.is_empty() && !refresh.is_empty());
    assert_no_tokens(
        &format!("{}{}", login.stdout(), login.stderr()),
        &[&access, &refresh],
    );
    let mode = std::fs::metadata(w.p.state_dir.join("oauth2/alice.json")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    w.message("one");
    let run = w.p.run(&["sync", "-vv", "--trace"]);
    run.expect_code(0);
    assert!(run.stderr().contains("AUTH XOAUTH2"), "{}", run.stderr());
    assert_no_tokens(
        &format!("{}{}", run.stdout(), run.stderr()),
        &[&access, &refresh],
    );
    assert_eq!(w.delivered(), 1);
    assert_eq!(refreshes(&w), 0, "a fresh token is used as it is");

    w.rewrite("auth", "\"oauthbearer\"");
    w.message("two");
    let run = w.p.run(&["sync", "--trace"]);
    run.expect_code(0);
    assert!(
        run.stderr().contains("AUTH OAUTHBEARER"),
        "{}",
        run.stderr()
    );
    assert_no_tokens(&run.stderr(), &[&access, &refresh]);
    assert_eq!(w.delivered(), 2);
}

#[test]
fn loopback_flow_end_to_end() {
    let w = world(300);
    let (child, out) = w.spawn_login("loopback");
    let url = out.wait_for(Duration::from_secs(30), |line| {
        line.starts_with(&format!("{}/auth?", w.idp.issuer()))
            .then(|| line.to_string())
    });
    assert!(url.contains("code_challenge_method=S256"), "PKCE: {url}");
    assert!(
        url.contains("redirect_uri=http%3A%2F%2F127.0.0.1%3A"),
        "{url}"
    );
    let page = Browser::new("alice").walk(&url);
    assert!(page.contains("you can close this window"), "{page}");
    let login = finish(child, out);
    login.expect_code(0);
    let (access, refresh) = w.tokens();
    assert!(!refresh.is_empty(), "offline_access gives a refresh token");
    assert_no_tokens(
        &format!("{}{}", login.stdout(), login.stderr()),
        &[&access, &refresh],
    );

    w.message("one");
    w.p.run(&["sync"]).expect_code(0);
    assert_eq!(w.delivered(), 1);
}

#[test]
fn an_expired_access_token_is_refreshed_and_the_rotated_refresh_token_replaces_the_old() {
    let w = world(3);
    w.login_device().expect_code(0);
    let (access1, refresh1) = w.tokens();
    std::thread::sleep(Duration::from_secs(4));
    assert!(!w.idp.is_active(&access1), "the provider let it expire");

    w.message("one");
    let run = w.p.run(&["sync", "-vv", "--trace"]);
    run.expect_code(0);
    assert_eq!(w.delivered(), 1, "no new login needed");
    assert_eq!(refreshes(&w), 1);
    let (access2, refresh2) = w.tokens();
    assert_ne!(access2, access1);
    assert_ne!(refresh2, refresh1, "rotated");
    assert!(
        !w.idp.is_active(&refresh1),
        "the old refresh token is spent"
    );
    assert!(w.idp.is_active(&refresh2));
    assert!(run.stderr().contains("refreshing the OAuth2 access token"));
    assert_no_tokens(
        &format!("{}{}", run.stdout(), run.stderr()),
        &[&access1, &refresh1, &access2, &refresh2],
    );
    let status = w.p.run(&["status", "--json"]);
    assert_no_tokens(
        &format!("{}{}", status.stdout(), status.stderr()),
        &[&access1, &refresh1, &access2, &refresh2],
    );

    // And again after the next expiry, with the rotated token.
    std::thread::sleep(Duration::from_secs(4));
    w.message("two");
    w.p.run(&["sync"]).expect_code(0);
    assert_eq!(w.delivered(), 2);
    assert_eq!(refreshes(&w), 2);
}

#[test]
fn a_revoked_refresh_token_is_exit_4_with_the_login_advice_until_the_next_login() {
    let w = world(2);
    w.login_device().expect_code(0);
    let (_, refresh) = w.tokens();
    w.idp.revoke(&refresh);
    std::thread::sleep(Duration::from_secs(3));

    w.message("one");
    let run = w.p.run(&["sync"]);
    run.expect_code(4);
    assert!(
        run.stderr().contains("refused the refresh token")
            && run.stderr().contains("run `popsync login alice`"),
        "{}",
        run.stderr()
    );
    assert_no_tokens(&run.stderr(), &[&refresh]);
    let asked = w.idp.events().len();
    let again = w.p.run(&["sync"]);
    again.expect_code(4);
    assert!(
        again.stderr().contains("refused the refresh token"),
        "the reason is remembered: {}",
        again.stderr()
    );
    assert_eq!(
        w.idp.events().len(),
        asked,
        "a refused refresh token is not sent again"
    );
    assert_eq!(w.delivered(), 0);

    w.login_device().expect_code(0);
    w.p.run(&["sync"]).expect_code(0);
    assert_eq!(w.delivered(), 1);
}

#[test]
fn concurrent_runs_refresh_once() {
    let w = world(3);
    w.login_device().expect_code(0);
    std::thread::sleep(Duration::from_secs(4));
    w.message("one");
    // One sync and four probes at once, all with an expired access token.
    // With rotation, a second use of the old refresh token would make the
    // provider revoke the whole grant: the lock must make them take turns.
    let mut children: Vec<Child> = (0..4)
        .map(|_| {
            w.p.command(&["probe", "alice"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children.push(
        w.p.command(&["sync"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(refreshes(&w), 1, "events: {:?}", w.idp.events());
    assert_eq!(w.delivered(), 1);
}

#[test]
fn the_daemon_waits_for_a_login_and_resumes_by_itself() {
    let mut w = world(2);
    w.rewrite("interval", "\"1s\"");
    let mut daemon = DaemonProcess::start(&w.p, &[]);
    daemon.wait_log("run `popsync login alice`", Duration::from_secs(20));
    // Reported once, checked every interval without the provider.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        daemon.count("run `popsync login alice`"),
        1,
        "{}",
        daemon.log()
    );
    assert_eq!(w.idp.count("grant.success refresh_token"), 0);

    w.message("one");
    w.login_device().expect_code(0);
    assert!(
        wait_until(Duration::from_secs(20), || w.delivered() == 1),
        "not resumed after login; log:\n{}",
        daemon.log()
    );

    // Revoked while running: paused again, and a login resumes it again.
    let (_, refresh) = w.tokens();
    w.idp.revoke(&refresh);
    std::thread::sleep(Duration::from_secs(3));
    daemon.wait_log("refused the refresh token", Duration::from_secs(20));
    w.message("two");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(w.delivered(), 1, "nothing fetched without a login");
    w.login_device().expect_code(0);
    assert!(
        wait_until(Duration::from_secs(20), || w.delivered() == 2),
        "not resumed after the second login; log:\n{}",
        daemon.log()
    );
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit(Duration::from_secs(20)).is_some());
    let (access, refresh) = w.tokens();
    assert_no_tokens(&daemon.log(), &[&access, &refresh]);
}

#[test]
fn sighup_polls_an_account_waiting_for_login_at_once() {
    let mut w = world(300);
    w.rewrite("interval", "\"1h\"");
    let daemon = DaemonProcess::start(&w.p, &[]);
    daemon.wait_log("run `popsync login alice`", Duration::from_secs(20));
    w.message("one");
    w.login_device().expect_code(0);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(w.delivered(), 0, "the next poll is an hour away");
    daemon.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(20), || w.delivered() == 1),
        "SIGHUP did not poll the account; log:\n{}",
        daemon.log()
    );
}

#[test]
fn an_access_token_the_server_refuses_is_dropped_and_the_next_run_refreshes() {
    let w = world(300);
    w.login_device().expect_code(0);
    // The provider invalidated it early (e.g. a password change): it still
    // looks fresh in the file.
    let path = w.p.state_dir.join("oauth2/alice.json");
    let mut t = w.token_file();
    t["access_token"] = serde_json::Value::String("no-longer-valid-token".into());
    support::write_file_0600(&path, serde_json::to_vec(&t).unwrap());

    w.message("one");
    w.p.run(&["sync"]).expect_code(4);
    let run = w.p.run(&["sync"]);
    run.expect_code(0);
    assert_eq!(w.delivered(), 1);
    assert_eq!(refreshes(&w), 1);
}

#[test]
fn a_fresh_token_needs_no_provider_and_a_changed_client_needs_a_new_login() {
    let mut w = world(300);
    w.login_device().expect_code(0);
    w.message("one");
    // popsync cannot reach the issuer now (Dovecot still can): a fresh
    // access token is used without any request to the provider.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    w.rewrite("oauth2_issuer", &format!("\"http://127.0.0.1:{port}\""));
    w.p.run(&["sync"]).expect_code(0);
    assert_eq!(w.delivered(), 1);

    // Another client id: the stored tokens are not used for it.
    w.rewrite("oauth2_client_id", "\"someone-else\"");
    let run = w.p.run(&["sync"]);
    run.expect_code(4);
    assert!(
        run.stderr().contains("for another client or provider")
            && run.stderr().contains("popsync login alice"),
        "{}",
        run.stderr()
    );
}

#[test]
fn with_oauth2_keyring_the_refresh_token_lives_in_the_desktop_keyring() {
    let bus = support::keyring::KeyringBus::start();
    let mut w = world(3);
    w.env
        .push(("DBUS_SESSION_BUS_ADDRESS".into(), bus.address.clone()));
    w.rewrite("oauth2_keyring", "true");
    w.login_device().expect_code(0);
    let file = w.token_file();
    assert!(
        file.get("refresh_token").is_none(),
        "not in the file: {file}"
    );
    assert_eq!(
        file["refresh_token_in_keyring"],
        serde_json::Value::Bool(true)
    );

    // Expired: refreshed with the keyring's token, the rotated one stored back.
    std::thread::sleep(Duration::from_secs(4));
    w.message("one");
    w.run(&["sync"]).expect_code(0);
    std::thread::sleep(Duration::from_secs(4));
    w.message("two");
    w.run(&["sync"]).expect_code(0);
    assert_eq!(w.delivered(), 2);
    assert_eq!(
        refreshes(&w),
        2,
        "the second refresh used the rotated token"
    );

    // Without the keyring the token cannot be had: a clear error.
    std::thread::sleep(Duration::from_secs(4));
    let run = w.p.run_env(
        &["sync"],
        &[(
            "DBUS_SESSION_BUS_ADDRESS",
            "unix:path=/nonexistent/popsync-test-bus",
        )],
    );
    assert_ne!(run.code(), 0);
    assert!(run.stderr().contains("desktop keyring"), "{}", run.stderr());
}
