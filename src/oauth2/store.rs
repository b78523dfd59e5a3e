//! The token file: `STATE_DIR/oauth2/ACCOUNT.json`, 0600 in a 0700
//! directory, replaced atomically (temporary file, fsync, rename, directory
//! fsync) so a crash leaves the old tokens or the new ones, never neither:
//! a rotated refresh token that was lost would mean a new login.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Secret;

use super::OAuth2Error;
use super::flow::Granted;

/// A token file larger than this is not ours.
const FILE_LIMIT: u64 = 64 * 1024;
/// How long to wait for another popsync that is refreshing the same tokens.
const LOCK_WAIT: Duration = Duration::from_secs(120);

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// What the file holds. The secrets are [`Secret`]s in memory, so no Debug
/// output can show them.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Tokens {
    /// For which client and token endpoint they were issued: a changed
    /// config must not send one provider's token to another.
    pub client_id: String,
    pub token_url: String,
    pub refresh_token: Option<Secret>,
    pub access_token: Option<Secret>,
    /// Unix seconds; `None` when the provider gave no lifetime.
    pub expires_at: Option<i64>,
    /// The lifetime the provider announced, for the refresh margin.
    pub lifetime: Option<i64>,
    /// Set when the provider refused the refresh token: the reason, so later
    /// runs fail fast without asking again until the next login.
    pub refused: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct OnDisk {
    version: u32,
    client_id: String,
    token_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    access_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lifetime: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refused: Option<String>,
    /// The refresh token is in the desktop keyring (`oauth2_keyring`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    refresh_token_in_keyring: bool,
}

impl Tokens {
    pub fn from_login(client_id: &str, token_url: &str, granted: Granted, now: i64) -> Tokens {
        Tokens {
            client_id: client_id.to_string(),
            token_url: token_url.to_string(),
            refresh_token: granted.refresh_token,
            access_token: Some(granted.access_token),
            expires_at: granted.expires_in.map(|d| now + d.as_secs() as i64),
            lifetime: granted.expires_in.map(|d| d.as_secs() as i64),
            refused: None,
        }
    }

    pub fn issued_by(&self, client_id: &str, token_url: &str) -> bool {
        self.client_id == client_id && self.token_url == token_url
    }

    /// The access token if it stays valid past the refresh margin: a fifth
    /// of its lifetime, at most a minute (the POP3 login still has to
    /// happen after we hand it out).
    pub fn fresh_access_token(&self, now: i64) -> Option<Secret> {
        let access = self.access_token.as_ref()?;
        let expires_at = self.expires_at?;
        let margin = self.lifetime.map_or(60, |l| (l / 5).clamp(1, 60));
        (now + margin < expires_at).then(|| access.clone())
    }

    /// After a refresh: a rotated refresh token replaces the old one; a
    /// provider that sent none keeps the old one valid (RFC 6749 §6).
    pub fn refreshed(&self, granted: Granted, now: i64) -> Tokens {
        let mut next = Tokens::from_login(&self.client_id, &self.token_url, granted, now);
        if next.refresh_token.is_none() {
            next.refresh_token = self.refresh_token.clone();
        }
        next
    }

    /// The access token was refused by the mail server: refresh next time.
    pub fn without_access_token(&self) -> Tokens {
        Tokens {
            access_token: None,
            expires_at: None,
            ..self.clone()
        }
    }

    /// The refresh token was refused: forget it, remember why.
    pub fn refused_with(&self, reason: &str) -> Tokens {
        Tokens {
            refresh_token: None,
            access_token: None,
            expires_at: None,
            refused: Some(reason.to_string()),
            ..self.clone()
        }
    }
}

/// One account's token file and its lock.
pub struct TokenStore {
    account: String,
    dir: PathBuf,
    path: PathBuf,
    keyring: bool,
}

/// Held while tokens are read, refreshed and written.
pub struct TokenLock {
    _file: File,
}

impl TokenStore {
    pub fn new(dir: &Path, account: &str, keyring: bool) -> TokenStore {
        TokenStore {
            account: account.to_string(),
            dir: dir.to_path_buf(),
            path: dir.join(format!("{account}.json")),
            keyring,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fail(&self, detail: impl std::fmt::Display) -> OAuth2Error {
        OAuth2Error::Store {
            account: self.account.clone(),
            path: self.path.clone(),
            detail: detail.to_string(),
        }
    }

    /// Waits (politely) for any other popsync using these tokens.
    pub async fn lock(&self) -> Result<TokenLock, OAuth2Error> {
        let lock_path = self.dir.join(format!("{}.lock", self.account));
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            match crate::sync::lock::try_flock(&lock_path) {
                Ok(Some(file)) => return Ok(TokenLock { _file: file }),
                Ok(None) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(None) => {
                    return Err(self.fail(format!(
                        "another popsync has held its lock {} for {}s",
                        lock_path.display(),
                        LOCK_WAIT.as_secs()
                    )));
                }
                Err(e) => return Err(self.fail(format!("lock {}: {e}", lock_path.display()))),
            }
        }
    }

    /// The stored tokens; `None` before the first login.
    pub fn load(&self) -> Result<Option<Tokens>, OAuth2Error> {
        let mut file = match OpenOptions::new()
            .read(true)
            .custom_flags(crate::ownership::O_NOFOLLOW)
            .open(&self.path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.fail(e)),
        };
        let meta = file.metadata().map_err(|e| self.fail(e))?;
        let euid = crate::ownership::euid();
        if meta.uid() != euid {
            return Err(self.fail(format!(
                "owned by uid {}, not by you (uid {euid}); remove it and run `popsync login {}`",
                meta.uid(),
                self.account
            )));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(self.fail(format!(
                "readable by others (mode {:04o}); run: chmod 600 {}",
                meta.mode() & 0o7777,
                self.path.display()
            )));
        }
        let mut text = String::new();
        Read::by_ref(&mut file)
            .take(FILE_LIMIT + 1)
            .read_to_string(&mut text)
            .map_err(|e| self.fail(e))?;
        if text.len() as u64 > FILE_LIMIT {
            return Err(self.fail("larger than 64 KiB: not a popsync token file"));
        }
        // serde_json's message names a position, never the content.
        let disk: OnDisk = serde_json::from_str(&text).map_err(|e| {
            self.fail(format!(
                "unreadable ({e}); run `popsync login {}`",
                self.account
            ))
        })?;
        let refresh_token = if disk.refresh_token_in_keyring {
            keyring::load(&self.account).map_err(|e| self.fail(e))?
        } else {
            disk.refresh_token.map(Secret::new)
        };
        Ok(Some(Tokens {
            client_id: disk.client_id,
            token_url: disk.token_url,
            refresh_token,
            access_token: disk.access_token.map(Secret::new),
            expires_at: disk.expires_at,
            lifetime: disk.lifetime,
            refused: disk.refused,
        }))
    }

    /// Replaces the file atomically and durably.
    pub fn save(&self, tokens: &Tokens) -> Result<(), OAuth2Error> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| self.fail(e))?;
        // The keyring first: if the file write then fails, the file still
        // says "in the keyring", where the newest token already is.
        if self.keyring {
            keyring::save(&self.account, tokens.refresh_token.as_ref())
                .map_err(|e| self.fail(e))?;
        }
        let in_file = tokens.refresh_token.as_ref().filter(|_| !self.keyring);
        let disk = OnDisk {
            version: 1,
            client_id: tokens.client_id.clone(),
            token_url: tokens.token_url.clone(),
            refresh_token_in_keyring: self.keyring,
            refresh_token: in_file.map(|s| s.expose().to_string()),
            access_token: tokens.access_token.as_ref().map(|s| s.expose().to_string()),
            expires_at: tokens.expires_at,
            lifetime: tokens.lifetime,
            refused: tokens.refused.clone(),
        };
        let json = serde_json::to_vec_pretty(&disk).map_err(|e| self.fail(e))?;
        let tmp = self.dir.join(format!(".{}.json.tmp", self.account));
        let _ = std::fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(crate::ownership::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| self.fail(format!("create {}: {e}", tmp.display())))?;
        let written = file
            .write_all(&json)
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .and_then(|()| File::open(&self.dir)?.sync_all());
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(self.fail(e));
        }
        Ok(())
    }
}

/// The desktop keyring through the Secret Service API (keyring crate, zbus
/// store: no system libraries). Each call runs on its own thread: the
/// store blocks, and must not run on a tokio worker's context.
mod keyring {
    use crate::config::Secret;

    const SERVICE: &str = "popsync OAuth2 refresh token";

    fn call<T: Send + 'static>(
        f: impl FnOnce() -> Result<T, keyring::Error> + Send + 'static,
    ) -> Result<T, String> {
        let joined = crate::sync::blocking(|| std::thread::spawn(f).join());
        match joined {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!(
                "desktop keyring (oauth2_keyring = true): {e}; is a Secret Service (GNOME Keyring, KWallet) running and unlocked?"
            )),
            Err(_) => Err("desktop keyring: the keyring thread panicked".into()),
        }
    }

    pub fn load(account: &str) -> Result<Option<Secret>, String> {
        let account = account.to_string();
        call(
            move || match keyring::Entry::new(SERVICE, &account)?.get_password() {
                Ok(token) => Ok(Some(Secret::new(token))),
                Err(keyring::Error::NoEntry) => Ok(None),
                Err(e) => Err(e),
            },
        )
    }

    /// Stores `token`, or removes the entry when there is none (refused).
    pub fn save(account: &str, token: Option<&Secret>) -> Result<(), String> {
        let account = account.to_string();
        let token = token.map(|t| t.expose().to_string());
        call(move || {
            let entry = keyring::Entry::new(SERVICE, &account)?;
            match token {
                Some(t) => entry.set_password(&t),
                None => match entry.delete_credential() {
                    Err(keyring::Error::NoEntry) => Ok(()),
                    other => other,
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn granted(access: &str, refresh: Option<&str>, secs: u64) -> Granted {
        Granted {
            access_token: Secret::new(access),
            refresh_token: refresh.map(Secret::new),
            expires_in: Some(Duration::from_secs(secs)),
        }
    }

    #[test]
    fn round_trip_is_private_and_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(&dir.path().join("oauth2"), "alice", false);
        assert_eq!(store.load().unwrap(), None);
        let t = Tokens::from_login("cid", "https://t", granted("a1", Some("r1"), 3600), 1000);
        store.save(&t).unwrap();
        assert_eq!(store.load().unwrap(), Some(t.clone()));
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = std::fs::metadata(dir.path().join("oauth2"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dmode & 0o777, 0o700);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("oauth2"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("alice.json")]);
    }

    #[test]
    fn a_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path(), "alice", false);
        let t = Tokens::from_login("cid", "https://t", granted("a1", Some("r1"), 3600), 1000);
        store.save(&t).unwrap();
        std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        assert!(!e.contains("r1") && !e.contains("a1\""), "{e}");
    }

    #[test]
    fn refresh_margin_and_rotation() {
        let t = Tokens::from_login("cid", "https://t", granted("a1", Some("r1"), 100), 1000);
        assert!(t.fresh_access_token(1000).is_some());
        assert!(t.fresh_access_token(1079).is_some());
        assert!(
            t.fresh_access_token(1080).is_none(),
            "refreshed a fifth before expiry"
        );
        let long = Tokens::from_login("cid", "https://t", granted("a1", Some("r1"), 3600), 0);
        assert!(long.fresh_access_token(3539).is_some());
        assert!(
            long.fresh_access_token(3540).is_none(),
            "at most a minute early"
        );

        let rotated = t.refreshed(granted("a2", Some("r2"), 100), 1100);
        assert_eq!(rotated.refresh_token, Some(Secret::new("r2")));
        assert_eq!(rotated.access_token, Some(Secret::new("a2")));
        assert_eq!(rotated.expires_at, Some(1200));
        let kept = t.refreshed(granted("a3", None, 100), 1100);
        assert_eq!(
            kept.refresh_token,
            Some(Secret::new("r1")),
            "no rotation: keep the old one"
        );

        let refused = t.refused_with("invalid_grant");
        assert_eq!(refused.refresh_token, None);
        assert_eq!(refused.refused.as_deref(), Some("invalid_grant"));
    }

    #[tokio::test]
    async fn the_lock_excludes_a_second_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path(), "alice", false);
        let held = store.lock().await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(300), store.lock()).await;
        assert!(waiting.is_err(), "a second lock must wait");
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), store.lock())
            .await
            .expect("free once released")
            .unwrap();
    }
}
