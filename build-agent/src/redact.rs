//! Secrets never reach a log line, the daemon's stderr or a build status: every line a tool
//! prints and every error message goes through [`Redactor::redact`]. It masks
//!
//! - the secrets of the registry auth file (the `auth` value, the user:password it encodes,
//!   the password, identity and registry tokens),
//! - passwords and tokens in URLs (`https://user:secret@host/...` → `https://user:***@host/...`),
//! - `Authorization: Basic|Bearer ...` values.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::error::AgentError;

pub const MASK: &str = "***";

/// Secrets shorter than this are not masked (they would mask ordinary words everywhere).
const MIN_SECRET: usize = 4;

#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Longest first, so that a secret containing another is masked whole.
    secrets: Arc<Vec<String>>,
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
    registrytoken: Option<String>,
}

impl Redactor {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Redactor {
        let mut v: Vec<String> = secrets
            .into_iter()
            .filter(|s| s.len() >= MIN_SECRET)
            .collect();
        v.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        v.dedup();
        Redactor {
            secrets: Arc::new(v),
        }
    }

    /// The secrets of a containers-auth.json file.
    pub fn from_auth_file(path: &Path) -> Result<Redactor, AgentError> {
        let text = std::fs::read(path).map_err(|e| AgentError::io(path, e))?;
        let file: AuthFile = serde_json::from_slice(&text).map_err(|e| AgentError::Config {
            field: "registry.auth_file".into(),
            reason: format!(
                "{} is not a containers-auth.json file: {}",
                path.display(),
                // serde_json's message quotes no input beyond a position; safe to show
                e
            ),
        })?;
        let mut secrets = Vec::new();
        for entry in file.auths.into_values() {
            if let Some(a) = entry.auth {
                if let Some(decoded) = base64_decode(a.trim()) {
                    let decoded = String::from_utf8_lossy(&decoded).into_owned();
                    if let Some((_, pass)) = decoded.split_once(':') {
                        secrets.push(pass.to_string());
                    }
                    secrets.push(decoded);
                }
                secrets.push(a);
            }
            if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
                secrets.push(format!("{u}:{p}"));
            }
            secrets.extend(entry.password);
            secrets.extend(entry.identitytoken);
            secrets.extend(entry.registrytoken);
        }
        Ok(Redactor::new(secrets))
    }

    pub fn redact(&self, line: &str) -> String {
        let mut out = line.to_string();
        for s in self.secrets.iter() {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), MASK);
            }
        }
        redact_authorization(&redact_url_userinfo(&out))
    }
}

pub use cellplane_build::redact::redact_url_userinfo;

/// `Authorization: Basic xxx` / `Bearer xxx` (any case) → the scheme and `***`.
fn redact_authorization(s: &str) -> String {
    let lower = s.to_ascii_lowercase();
    let mut out = String::with_capacity(s.len());
    let mut pos = 0;
    let mut search = 0;
    while let Some(i) = lower[search..].find("authorization") {
        let start = search + i;
        let after = start + "authorization".len();
        // skip `:` / `=` / quotes / spaces, then an optional scheme word, then the credential
        let bytes = s.as_bytes();
        let mut j = after;
        while j < s.len() && matches!(bytes[j], b':' | b'=' | b' ' | b'"' | b'\'') {
            j += 1;
        }
        for scheme in ["basic ", "bearer "] {
            if lower[j..].starts_with(scheme) {
                j += scheme.len();
                break;
            }
        }
        let mut k = j;
        while k < s.len() && !matches!(bytes[k], b' ' | b'"' | b'\'' | b',' | b'\n' | b'\r') {
            k += 1;
        }
        if k > j {
            out.push_str(&s[pos..j]);
            out.push_str(MASK);
            pos = k;
        }
        search = k.max(after);
    }
    out.push_str(&s[pos..]);
    out
}

/// Standard base64 (padding optional); `None` for anything else.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in s.as_bytes() {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_auth_file_secrets_urls_and_headers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        // base64("builder:s3cret-pa55")
        std::fs::write(
            &path,
            r#"{"auths":{"127.0.0.1:5000":{"auth":"YnVpbGRlcjpzM2NyZXQtcGE1NQ=="},"r2":{"identitytoken":"tok-123456"}}}"#,
        )
        .unwrap();
        let r = Redactor::from_auth_file(&path).unwrap();
        let line = "error: auth YnVpbGRlcjpzM2NyZXQtcGE1NQ== user builder:s3cret-pa55 pass s3cret-pa55 id tok-123456";
        let got = r.redact(line);
        for secret in ["YnVpbGRlcjpzM2NyZXQtcGE1NQ", "s3cret-pa55", "tok-123456"] {
            assert!(!got.contains(secret), "{got}");
        }
        assert!(got.starts_with("error: auth ***"), "{got}");

        let r = Redactor::default();
        assert_eq!(
            r.redact("fatal: unable to access 'https://bob:hunter22@git.example.com/a.git/': 403"),
            "fatal: unable to access 'https://bob:***@git.example.com/a.git/': 403"
        );
        assert_eq!(
            r.redact("cloning https://glpat-abcdef@gitlab/x and ssh://git@host/y"),
            "cloning https://***@gitlab/x and ssh://git@host/y"
        );
        assert_eq!(
            r.redact("> Authorization: Basic dXNlcjpwYXNz, next"),
            "> Authorization: Basic ***, next"
        );
        assert_eq!(
            r.redact(r#"{"Authorization":"Bearer abc.def"}"#),
            r#"{"Authorization":"Bearer ***"}"#
        );
        assert_eq!(r.redact("no secrets here"), "no secrets here");
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode("YWJj").unwrap(), b"abc");
        assert_eq!(base64_decode("YWI=").unwrap(), b"ab");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert!(base64_decode("a b").is_none());
    }

    #[test]
    fn bad_auth_file_message_does_not_quote_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        std::fs::write(&path, "{\"auths\": s3cretvalue}").unwrap();
        let e = Redactor::from_auth_file(&path).unwrap_err().to_string();
        assert!(!e.contains("s3cretvalue"), "{e}");
    }
}
