//! A real OpenID provider for the OAuth2 tests: npm `oidc-provider` (9.x,
//! tests/support/oidc/provider.mjs) on the machine's Node.js, on a free
//! loopback port, with a public test client (`popsync-test`: device grant,
//! authorization code + PKCE, rotated refresh tokens) and a confidential one
//! for Dovecot's token introspection. Any login name signs in on the
//! provider's own development pages; [`Browser`] plays the user there.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::popsync::Run;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const CLIENT_ID: &str = "popsync-test";
const INTROSPECTION_CLIENT: &str = "dovecot";
const INTROSPECTION_SECRET: &str = "dovecot-introspection-secret";

fn app_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/oidc")
}

/// Node.js and the app's node_modules (`npm ci`, done by scripts/test).
pub fn oidc_available() -> bool {
    app_dir().join("node_modules/oidc-provider").is_dir()
        && Command::new("node")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

pub struct OidcProvider {
    pub port: u16,
    child: Child,
    /// Every stdout line (events, never tokens).
    lines: LineReader,
    _errors: LineReader,
}

impl OidcProvider {
    /// Starts the provider; access tokens live `access_ttl` seconds.
    pub fn start(access_ttl: u64) -> OidcProvider {
        assert!(
            oidc_available(),
            "oidc-provider is not installed: run scripts/test (it runs `npm ci` in tests/support/oidc)"
        );
        let mut last = String::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = Command::new("node")
                .arg("provider.mjs")
                .current_dir(app_dir())
                .env("PORT", port.to_string())
                .env("ACCESS_TTL", access_ttl.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start node");
            let lines = LineReader::new(child.stdout.take().unwrap());
            let errors = LineReader::new(child.stderr.take().unwrap());
            let ready = lines.find(Duration::from_secs(30), |l| {
                l.starts_with("listening").then_some(())
            });
            if ready.is_some() {
                return OidcProvider {
                    port,
                    child,
                    lines,
                    _errors: errors,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            last = errors.all().join("\n");
        }
        panic!("oidc-provider did not start:\n{last}");
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What Dovecot's oauth2 passdb POSTs tokens to.
    pub fn introspection_url(&self) -> String {
        format!(
            "http://{INTROSPECTION_CLIENT}:{INTROSPECTION_SECRET}@127.0.0.1:{}/token/introspection",
            self.port
        )
    }

    /// Provider events so far (`grant.success refresh_token`, …).
    pub fn events(&self) -> Vec<String> {
        self.lines.all()
    }

    pub fn count(&self, event: &str) -> usize {
        self.events().iter().filter(|l| l.as_str() == event).count()
    }

    /// Revokes a token at the provider (RFC 7009), as a user removing the
    /// app's access would.
    pub fn revoke(&self, token: &str) {
        let url = format!("{}/token/revocation", self.issuer());
        let status = runtime().block_on(async {
            http()
                .post(&url)
                .form(&[("token", token), ("client_id", CLIENT_ID)])
                .send()
                .await
                .expect("revocation request")
                .status()
        });
        assert!(status.is_success(), "revocation: HTTP {status}");
    }

    /// Whether the provider still considers `token` active (introspection).
    pub fn is_active(&self, token: &str) -> bool {
        let url = format!("{}/token/introspection", self.issuer());
        let body = runtime().block_on(async {
            http()
                .post(&url)
                .basic_auth(INTROSPECTION_CLIENT, Some(INTROSPECTION_SECRET))
                .form(&[("token", token)])
                .send()
                .await
                .expect("introspection request")
                .bytes()
                .await
                .expect("introspection answer")
        });
        let body: serde_json::Value = serde_json::from_slice(&body).expect("introspection JSON");
        body["active"] == serde_json::Value::Bool(true)
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// popsync's own client (rustls on ring, no redirects followed).
fn http() -> reqwest::Client {
    popsync::oauth2::http_client().expect("HTTP client")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A user at a browser: follows redirects, keeps cookies, fills and submits
/// each page's form (the provider's device-code, login and consent pages)
/// until a page without a form.
pub struct Browser {
    cookies: Vec<(String, String)>,
    /// What to type into fields of these names.
    fields: Vec<(String, String)>,
}

impl Browser {
    /// Signs in as `login` (any password works on the development pages).
    pub fn new(login: &str) -> Browser {
        Browser {
            cookies: Vec::new(),
            fields: vec![
                ("login".into(), login.into()),
                ("password".into(), "any-password".into()),
            ],
        }
    }

    /// Device grant: enters `user_code` at `verification_uri` and approves.
    pub fn approve_device(&mut self, verification_uri: &str, user_code: &str) -> String {
        self.fields.push(("user_code".into(), user_code.into()));
        self.walk(verification_uri)
    }

    /// Opens `url` and goes through every page; returns the last page's body
    /// (with the loopback flow, popsync's own "you can close this window").
    pub fn walk(&mut self, url: &str) -> String {
        runtime().block_on(self.walk_async(url))
    }

    async fn walk_async(&mut self, start: &str) -> String {
        let http = http();
        let mut url = reqwest::Url::parse(start).unwrap();
        let mut form: Option<Vec<(String, String)>> = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        for _ in 0..30 {
            assert!(Instant::now() < deadline, "browser walk took too long");
            let cookie = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            let request = match form.take() {
                Some(data) => http.post(url.clone()).form(&data),
                None => http.get(url.clone()),
            };
            let response = request
                .header("cookie", cookie)
                .send()
                .await
                .unwrap_or_else(|e| panic!("browser: {url}: {e}"));
            for set in response.headers().get_all("set-cookie") {
                let set = set.to_str().unwrap_or_default();
                let pair = set.split(';').next().unwrap_or_default();
                if let Some((k, v)) = pair.split_once('=') {
                    self.cookies.retain(|(name, _)| name != k);
                    self.cookies.push((k.trim().to_string(), v.to_string()));
                }
            }
            let status = response.status();
            if status.is_redirection() {
                let location = response.headers()["location"].to_str().unwrap().to_string();
                url = url.join(&location).unwrap();
                continue;
            }
            let body = response.text().await.unwrap_or_default();
            assert!(status.is_success(), "browser: {url}: HTTP {status}\n{body}");
            let Some((action, data)) = parse_form(&body, &self.fields) else {
                return body;
            };
            url = url.join(&action).unwrap();
            form = Some(data);
        }
        panic!("browser: too many pages");
    }
}

/// The first `<form>`'s action and its inputs, with the known fields filled.
fn parse_form(html: &str, fields: &[(String, String)]) -> Option<(String, Vec<(String, String)>)> {
    let start = html.find("<form")?;
    let end = html[start..]
        .find("</form>")
        .map_or(html.len(), |e| start + e);
    let form = &html[start..end];
    let tag_end = form.find('>')?;
    let action = attr(&form[..tag_end], "action").unwrap_or_default();
    let mut data = Vec::new();
    let mut rest = form;
    while let Some(i) = rest.find("<input") {
        let tag = &rest[i..];
        let close = tag.find('>').unwrap_or(tag.len());
        let input = &tag[..close];
        if let Some(name) = attr(input, "name") {
            let value = fields
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
                .or_else(|| attr(input, "value"))
                .unwrap_or_default();
            data.push((name, value));
        }
        rest = &tag[close..];
    }
    Some((action, data))
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let i = tag.find(&key)? + key.len();
    let j = tag[i..].find('"')? + i;
    Some(tag[i..j].replace("&amp;", "&"))
}

/// Reads a child's stdout lines in the background, so a test can wait for
/// one (`popsync login` prints its URL and code, then keeps running).
pub struct LineReader {
    lines: Arc<Mutex<Vec<String>>>,
}

impl LineReader {
    pub fn new(stdout: impl std::io::Read + Send + 'static) -> LineReader {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        LineReader { lines }
    }

    /// The first line `pick` accepts, within `timeout`.
    pub fn wait_for<T>(&self, timeout: Duration, pick: impl Fn(&str) -> Option<T>) -> T {
        self.find(timeout, pick)
            .unwrap_or_else(|| panic!("no expected line within {timeout:?}; got: {:?}", self.all()))
    }

    /// Like [`LineReader::wait_for`], `None` after `timeout`.
    pub fn find<T>(&self, timeout: Duration, pick: impl Fn(&str) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.lines.lock().unwrap().iter().find_map(|l| pick(l)) {
                return Some(found);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn all(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

/// Waits (bounded) for a spawned popsync (`login`, `init --login`) and collects what it printed.
pub fn finish(mut child: Child, out: LineReader) -> Run {
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("popsync did not finish; stdout: {:?}", out.all());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut output = child.wait_with_output().unwrap();
    // The reader thread holds stdout; give it the lines it read.
    std::thread::sleep(Duration::from_millis(100));
    output.stdout = out.all().join("\n").into_bytes();
    Run(output)
}

/// The verification URI and user code `popsync login` prints for the device
/// flow (bounded wait).
pub fn device_prompt(out: &LineReader) -> (String, String) {
    out.wait_for(Duration::from_secs(60), parse_device_prompt)
}

/// The verification URI and user code in one line of `popsync login`.
pub fn parse_device_prompt(line: &str) -> Option<(String, String)> {
    let rest = line.split_once(" open ")?.1;
    let (uri, rest) = rest.split_once(" in a browser")?;
    let code = rest.split_once("enter the code ")?.1;
    Some((uri.to_string(), code.trim().to_string()))
}
