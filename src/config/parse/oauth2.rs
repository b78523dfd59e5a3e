//! The `oauth2*` keys of an account: a preset (or a custom issuer), the
//! user's registered client, scopes.

use toml::Value;

use super::Ctx;
use crate::config::{ConfigError, Secret};
use crate::oauth2::{OAuth2Settings, Preset, check_url};

pub(super) const KEYS: &[&str] = &[
    "oauth2",
    "oauth2_client_id",
    "oauth2_client_secret",
    "oauth2_tenant",
    "oauth2_issuer",
    "oauth2_scopes",
    "oauth2_keyring",
];

/// The `oauth2*` keys of one table, type-checked, not yet combined.
#[derive(Default)]
pub(super) struct OAuth2Fields {
    preset: Option<Preset>,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    tenant: Option<String>,
    issuer: Option<String>,
    scopes: Option<Vec<String>>,
    keyring: Option<bool>,
}

impl OAuth2Fields {
    pub(super) fn set(&mut self, k: &str, v: &Value, ctx: &Ctx) -> Result<(), ConfigError> {
        match k {
            "oauth2" => {
                let choices = [
                    ("microsoft", Preset::Microsoft),
                    ("google", Preset::Google),
                    ("custom", Preset::Custom),
                ];
                self.preset = Some(ctx.choice(k, v, &choices)?);
            }
            "oauth2_client_id" => self.client_id = Some(ctx.string(k, v)?.trim().to_string()),
            "oauth2_client_secret" => {
                // Never echoed, like a password.
                self.client_secret = Some(Secret::new(ctx.string(k, v)?.to_string()));
            }
            "oauth2_tenant" => {
                let t = ctx.string(k, v)?.trim();
                // It becomes a path segment of Microsoft's endpoints.
                if !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
                {
                    return Err(ctx.invalid(format!(
                        "`{k}` must be common, consumers, organizations, a tenant id or a domain (got `{t}`)"
                    )));
                }
                self.tenant = Some(t.to_string());
            }
            "oauth2_issuer" => {
                let s = ctx.string(k, v)?.trim();
                check_url(s).map_err(|m| ctx.invalid(format!("`{k}`: {m}")))?;
                self.issuer = Some(s.to_string());
            }
            "oauth2_scopes" => {
                let Value::Array(items) = v else {
                    return Err(ctx.wrong_type(k, "a list of strings", v));
                };
                let mut scopes = Vec::with_capacity(items.len());
                for item in items {
                    let s = ctx.string(k, item)?.trim();
                    if s.contains(char::is_whitespace) {
                        return Err(ctx.invalid(format!(
                            "`{k}`: `{s}` holds a space; give each scope as its own string"
                        )));
                    }
                    scopes.push(s.to_string());
                }
                if scopes.is_empty() {
                    return Err(ctx.invalid(format!("`{k}` must not be empty")));
                }
                self.scopes = Some(scopes);
            }
            "oauth2_keyring" => self.keyring = Some(ctx.bool(k, v)?),
            _ => unreachable!("only KEYS are passed here"),
        }
        Ok(())
    }

    pub(super) fn is_set(&self) -> bool {
        self.preset.is_some()
    }

    /// The settings of an account that uses OAuth2; `None` without `oauth2`.
    pub(super) fn build(self, ctx: &Ctx) -> Result<Option<OAuth2Settings>, ConfigError> {
        let Some(preset) = self.preset else {
            return Ok(None);
        };
        let client_id = self.client_id.ok_or_else(|| {
            ctx.invalid(format!(
                "`oauth2 = \"{}\"` needs `oauth2_client_id`: the id of the app you registered at the provider (see README: OAuth2)",
                preset.name()
            ))
        })?;
        if preset != Preset::Custom && self.issuer.is_some() {
            return Err(ctx.invalid(format!(
                "`oauth2_issuer` is for `oauth2 = \"custom\"`; the {} preset knows its endpoints",
                preset.name()
            )));
        }
        if preset != Preset::Microsoft && self.tenant.is_some() {
            return Err(ctx.invalid("`oauth2_tenant` is for `oauth2 = \"microsoft\"` only"));
        }
        if preset == Preset::Custom && self.issuer.is_none() {
            return Err(ctx.invalid(
                "`oauth2 = \"custom\"` needs `oauth2_issuer` (the URL whose /.well-known/openid-configuration describes the provider)",
            ));
        }
        let scopes = match self.scopes {
            Some(s) => s,
            None if preset == Preset::Custom => {
                return Err(ctx.invalid(
                    "`oauth2 = \"custom\"` needs `oauth2_scopes`, e.g. [\"offline_access\", \"pop\"]",
                ));
            }
            None => preset
                .default_scopes()
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        Ok(Some(OAuth2Settings {
            preset,
            client_id,
            client_secret: self.client_secret,
            tenant: self.tenant.unwrap_or_else(|| "common".to_string()),
            issuer: self.issuer,
            scopes,
            keyring: self.keyring.unwrap_or(false),
            token_dir: std::path::PathBuf::new(),
        }))
    }
}
