//! Writing a new `[account.NAME]` into the config: a new file is created
//! 0600 (its directory 0700); an existing one only gets the table appended,
//! every byte before it left as it was.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::{AuthMethod, Secret, TlsMode};
use crate::oauth2::Preset;

/// The account `popsync init` settled on.
#[derive(Debug, Clone)]
pub struct NewAccount {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub ca_file: Option<PathBuf>,
    pub username: String,
    pub secret: SecretChoice,
    /// Written only when not `auto` (with `oauth2`, auto means xoauth2).
    pub auth: AuthMethod,
    /// As the user wrote it (`~/Mail/alice` stays `~/…`).
    pub target_key: &'static str,
    pub target: String,
}

#[derive(Debug, Clone)]
pub enum SecretChoice {
    Password(Secret),
    Command(String),
    /// popsync gets the tokens itself (`popsync login`).
    OAuth2(OAuth2Keys),
}

impl SecretChoice {
    /// Whether the table holds something secret (the file must be 0600).
    pub fn holds_secret(&self) -> bool {
        match self {
            SecretChoice::Password(_) => true,
            SecretChoice::Command(_) => false,
            SecretChoice::OAuth2(keys) => keys.client_secret.is_some(),
        }
    }
}

/// The `oauth2*` keys of a new account; `None` fields are left out (the
/// preset's defaults).
#[derive(Debug, Clone)]
pub struct OAuth2Keys {
    pub preset: Preset,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub tenant: Option<String>,
    pub issuer: Option<String>,
    pub scopes: Option<Vec<String>>,
}

impl OAuth2Keys {
    fn lines(&self) -> Vec<String> {
        let mut lines = vec![
            format!("oauth2 = {}", quoted(self.preset.name())),
            format!("oauth2_client_id = {}", quoted(&self.client_id)),
        ];
        if let Some(secret) = &self.client_secret {
            lines.push(format!(
                "oauth2_client_secret = {}",
                quoted(secret.expose())
            ));
        }
        if let Some(tenant) = &self.tenant {
            lines.push(format!("oauth2_tenant = {}", quoted(tenant)));
        }
        if let Some(issuer) = &self.issuer {
            lines.push(format!("oauth2_issuer = {}", quoted(issuer)));
        }
        if let Some(scopes) = &self.scopes {
            let list: Vec<String> = scopes.iter().map(|s| quoted(s)).collect();
            lines.push(format!("oauth2_scopes = [{}]", list.join(", ")));
        }
        lines
    }
}

/// A TOML basic string: quoted and escaped by the toml crate, so a value
/// from DNS or a prompt cannot break out of its line.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The table's text, keys in the README's order, defaults left out.
pub fn render(a: &NewAccount) -> String {
    let mut lines = vec![format!("[account.{}]", a.name)];
    lines.push(format!("host = {}", quoted(&a.host)));
    let default_port = match a.tls {
        TlsMode::Implicit => 995,
        _ => 110,
    };
    if a.port != default_port {
        lines.push(format!("port = {}", a.port));
    }
    match a.tls {
        TlsMode::Implicit => {}
        TlsMode::Starttls => lines.push("tls = \"starttls\"".into()),
        TlsMode::None => lines.push("tls = \"none\"".into()),
    }
    if let Some(ca) = &a.ca_file {
        lines.push(format!("ca_file = {}", quoted(&ca.to_string_lossy())));
    }
    lines.push(format!("username = {}", quoted(&a.username)));
    match &a.secret {
        SecretChoice::Password(p) => lines.push(format!("password = {}", quoted(p.expose()))),
        SecretChoice::Command(c) => lines.push(format!("password_command = {}", quoted(c))),
        SecretChoice::OAuth2(keys) => lines.extend(keys.lines()),
    }
    match a.auth {
        AuthMethod::Auto => {}
        AuthMethod::User => lines.push("auth = \"user\"".into()),
        AuthMethod::Apop => lines.push("auth = \"apop\"".into()),
        AuthMethod::Plain => lines.push("auth = \"plain\"".into()),
        AuthMethod::Xoauth2 => lines.push("auth = \"xoauth2\"".into()),
        AuthMethod::Oauthbearer => lines.push("auth = \"oauthbearer\"".into()),
    }
    lines.push(format!("{} = {}", a.target_key, quoted(&a.target)));
    lines.join("\n") + "\n"
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{}: cannot {what}: {source}", .path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error(
        "{} already has [account.{name}]: choose another name with --name, or edit that table",
        .path.display()
    )]
    Exists { path: PathBuf, name: String },
    #[error("{} is not valid TOML ({message}): fix it first, then run popsync init again", .path.display())]
    Invalid { path: PathBuf, message: String },
    #[error(
        "{} is readable by others (mode {mode:04o}) and would hold a password: run chmod 600 {}, or use --password-command",
        .path.display(), .path.display()
    )]
    NotPrivate { path: PathBuf, mode: u32 },
}

/// Adds `table` (from [`render`]) to the config at `path`; returns whether
/// the file was created.
pub fn append_account(
    path: &Path,
    name: &str,
    table: &str,
    holds_password: bool,
) -> Result<bool, WriteError> {
    let io = |what: &'static str| {
        move |source| WriteError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("create its directory"))?;
    }
    // O_EXCL first: a new file is born 0600; an existing one is appended to.
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            file.write_all(table.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io("write"))?;
            return Ok(true);
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("create")(e)),
    }
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
        .map_err(io("open"))?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io("read"))?;
    let parsed: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| WriteError::Invalid {
            path: path.to_path_buf(),
            message: e.message().trim_end().to_string(),
        })?;
    let exists = parsed
        .get("account")
        .and_then(|a| a.as_table())
        .is_some_and(|a| a.contains_key(name));
    if exists {
        return Err(WriteError::Exists {
            path: path.to_path_buf(),
            name: name.to_string(),
        });
    }
    let mode = file.metadata().map_err(io("stat"))?.permissions().mode() & 0o7777;
    if holds_password && mode & 0o077 != 0 {
        return Err(WriteError::NotPrivate {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut add = String::new();
    if !text.is_empty() && !text.ends_with('\n') {
        add.push('\n');
    }
    if !text.is_empty() {
        add.push('\n');
    }
    add.push_str(table);
    file.write_all(add.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io("append to"))?;
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> NewAccount {
        NewAccount {
            name: "alice".into(),
            host: "pop.example.org".into(),
            port: 995,
            tls: TlsMode::Implicit,
            ca_file: None,
            username: "alice@example.org".into(),
            secret: SecretChoice::Command("pass show mail/alice".into()),
            auth: AuthMethod::Auto,
            target_key: "maildir",
            target: "~/Mail/alice".into(),
        }
    }

    #[test]
    fn rendered_table_parses_as_a_config_and_leaves_defaults_out() {
        let text = render(&account());
        assert!(!text.contains("port") && !text.contains("tls"), "{text}");
        let config = crate::config::Config::parse(
            &format!("state_dir = \"/s\"\n{text}"),
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(config.accounts[0].host, "pop.example.org");
        let mut a = account();
        a.port = 1995;
        a.tls = TlsMode::Starttls;
        a.secret = SecretChoice::Password(Secret::new("p\"w\n[account.evil]"));
        let text = render(&a);
        let config = crate::config::Config::parse(
            &format!("state_dir = \"/s\"\n{text}"),
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(config.accounts.len(), 1, "a value broke out: {text}");
        assert_eq!(config.accounts[0].port, 1995);
        assert_eq!(config.accounts[0].tls, TlsMode::Starttls);
    }

    #[test]
    fn appends_without_touching_the_rest_and_refuses_a_taken_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.toml");
        assert!(append_account(&path, "alice", &render(&account()), false).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let before = std::fs::read_to_string(&path).unwrap() + "# a comment kept as it is";
        std::fs::write(&path, &before).unwrap();
        let mut bob = account();
        bob.name = "bob".into();
        assert!(!append_account(&path, "bob", &render(&bob), false).unwrap());
        let after = std::fs::read_to_string(&path).unwrap();
        assert!(after.starts_with(&before), "{after}");
        assert!(after.ends_with("[account.bob]\nhost = \"pop.example.org\"\nusername = \"alice@example.org\"\npassword_command = \"pass show mail/alice\"\nmaildir = \"~/Mail/alice\"\n"), "{after}");
        let e = append_account(&path, "bob", &render(&bob), false).unwrap_err();
        assert!(e.to_string().contains("already has [account.bob]"), "{e}");
    }

    #[test]
    fn a_password_is_not_appended_to_a_readable_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = append_account(&path, "alice", "x", true).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }

    /// What init writes for each preset loads with the real loader, passes
    /// the checks `sync` makes, and means the same settings.
    #[test]
    fn oauth2_tables_load_as_the_preset_they_name() {
        let load = |a: &NewAccount| {
            let text = format!("state_dir = \"/s\"\n{}", render(a));
            let config = crate::config::Config::parse(&text, Path::new("c.toml"))
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            crate::config::require_targets(Path::new("c.toml"), &config.accounts).unwrap();
            (config, text)
        };
        let keys = |preset| OAuth2Keys {
            preset,
            client_id: "my-app".into(),
            client_secret: None,
            tenant: None,
            issuer: None,
            scopes: None,
        };
        let mut a = account();
        a.secret = SecretChoice::OAuth2(keys(Preset::Microsoft));
        let (config, text) = load(&a);
        assert!(
            !text.contains("password") && !text.contains("auth ="),
            "{text}"
        );
        let settings = config.accounts[0].oauth2().unwrap();
        assert_eq!(
            (settings.preset, settings.tenant.as_str()),
            (Preset::Microsoft, "common")
        );
        assert_eq!(config.accounts[0].auth, AuthMethod::Xoauth2);
        assert!(!a.secret.holds_secret());

        let mut k = keys(Preset::Microsoft);
        k.tenant = Some("consumers".into());
        a.secret = SecretChoice::OAuth2(k);
        a.auth = AuthMethod::Oauthbearer;
        let (config, _) = load(&a);
        assert_eq!(config.accounts[0].oauth2().unwrap().tenant, "consumers");
        assert_eq!(config.accounts[0].auth, AuthMethod::Oauthbearer);

        let mut k = keys(Preset::Google);
        k.client_secret = Some(Secret::new("GOCSPX-\"x\""));
        a.secret = SecretChoice::OAuth2(k);
        a.auth = AuthMethod::Auto;
        assert!(a.secret.holds_secret(), "a client secret needs a 0600 file");
        let (config, _) = load(&a);
        let settings = config.accounts[0].oauth2().unwrap();
        assert_eq!(settings.preset, Preset::Google);
        assert_eq!(
            settings.client_secret.as_ref().unwrap().expose(),
            "GOCSPX-\"x\""
        );
        assert_eq!(settings.scopes, ["https://mail.google.com/"]);

        let mut k = keys(Preset::Custom);
        k.issuer = Some("https://login.corp.example".into());
        k.scopes = Some(vec!["openid".into(), "offline_access".into()]);
        a.secret = SecretChoice::OAuth2(k);
        let (config, text) = load(&a);
        assert!(
            text.contains("oauth2_scopes = [\"openid\", \"offline_access\"]\n"),
            "{text}"
        );
        let settings = config.accounts[0].oauth2().unwrap();
        assert_eq!(
            settings.issuer.as_deref(),
            Some("https://login.corp.example")
        );
        assert_eq!(settings.client_id, "my-app");
    }
}
