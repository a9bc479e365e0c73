//! Input checks for builds. Everything a user submits ends up in a git or buildah argument, a
//! path under the agent's workspace, or an etcd key; anything that could turn into an option,
//! escape the workspace, or address another key is refused here, naming the field.

use thiserror::Error;

use crate::types::{BuildRequest, CompileSpec};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid {field} {value:?}: {reason}")]
pub struct InvalidInput {
    pub field: &'static str,
    pub value: String,
    pub reason: String,
}

fn bad(field: &'static str, value: &str, reason: &str) -> InvalidInput {
    InvalidInput {
        field,
        // the value is echoed in 400 answers and logs: never with a password in it
        value: crate::redact::redact_url_userinfo(value)
            .chars()
            .take(200)
            .collect(),
        reason: reason.into(),
    }
}

fn has_control_or_space(s: &str) -> bool {
    s.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// A build id: 1–64 of `a-z 0-9 -`, starting with a letter or digit (it becomes a key segment
/// and a directory name).
pub fn validate_build_id(id: &str) -> Result<(), InvalidInput> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(bad(
            "build",
            id,
            "must be 1 to 64 of a-z, 0-9 and '-', starting with a letter or digit",
        ))
    }
}

/// A git URL with a scheme git understands, or scp-like `user@host:path`. Never starts with
/// `-` (it would be read as an option), never has white space or control characters.
pub fn validate_repo(repo: &str) -> Result<(), InvalidInput> {
    const F: &str = "repo";
    if repo.is_empty() || repo.len() > 1024 {
        return Err(bad(F, repo, "must be 1 to 1024 characters"));
    }
    if repo.starts_with('-') {
        return Err(bad(F, repo, "must not start with '-'"));
    }
    if has_control_or_space(repo) {
        return Err(bad(
            F,
            repo,
            "must not contain white space or control characters",
        ));
    }
    if let Some((scheme, rest)) = repo.split_once("://") {
        if !matches!(scheme, "https" | "http" | "ssh" | "git" | "file") {
            return Err(bad(
                F,
                repo,
                "scheme must be https, http, ssh, git or file (ext:: and other transports are refused)",
            ));
        }
        if rest.is_empty() {
            return Err(bad(F, repo, "has no host or path"));
        }
        return Ok(());
    }
    // scp-like: user@host:path (no "::", which git reads as a transport helper)
    if repo.contains("::") {
        return Err(bad(F, repo, "transport helpers (\"::\") are refused"));
    }
    match repo.split_once(':') {
        Some((host, path)) if !host.is_empty() && !path.is_empty() && !host.contains('/') => Ok(()),
        _ => Err(bad(
            F,
            repo,
            "must be a URL (https://, ssh://, git://, file://) or user@host:path",
        )),
    }
}

/// A branch, tag or commit: git's ref-name rules (`git check-ref-format`), plus no leading `-`.
pub fn validate_ref(r: &str) -> Result<(), InvalidInput> {
    const F: &str = "ref";
    if r.is_empty() || r.len() > 255 {
        return Err(bad(F, r, "must be 1 to 255 characters"));
    }
    if r.starts_with('-') {
        return Err(bad(F, r, "must not start with '-'"));
    }
    if has_control_or_space(r)
        || r.chars()
            .any(|c| matches!(c, '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
    {
        return Err(bad(
            F,
            r,
            "must not contain white space, control characters or ~ ^ : ? * [ \\",
        ));
    }
    if r.contains("..") || r.contains("@{") || r.contains("//") || r == "@" {
        return Err(bad(F, r, "must not contain '..', '@{' or '//'"));
    }
    if r.starts_with('/') || r.ends_with('/') || r.ends_with('.') || r.ends_with(".lock") {
        return Err(bad(
            F,
            r,
            "must not start or end with '/', or end with '.' or '.lock'",
        ));
    }
    if r.split('/').any(|c| c.starts_with('.')) {
        return Err(bad(F, r, "no component may start with '.'"));
    }
    Ok(())
}

/// A path inside the repository: relative, no `..`, no empty or absolute components.
pub fn validate_repo_path(field: &'static str, p: &str) -> Result<(), InvalidInput> {
    if p.is_empty() || p.len() > 4096 {
        return Err(bad(field, p, "must be 1 to 4096 characters"));
    }
    if p.starts_with('/') {
        return Err(bad(field, p, "must be relative to the repository root"));
    }
    if p.starts_with('-') {
        return Err(bad(field, p, "must not start with '-'"));
    }
    if p.chars().any(|c| c.is_control()) {
        return Err(bad(field, p, "must not contain control characters"));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(bad(field, p, "must not leave the repository ('..')"));
    }
    Ok(())
}

/// An image name without registry and tag: path components of `[a-z0-9]` separated by `.`,
/// `_`, `__` or dashes, joined by `/` (the distribution reference grammar).
pub fn validate_image_name(name: &str) -> Result<(), InvalidInput> {
    const F: &str = "image";
    if name.is_empty() || name.len() > 255 {
        return Err(bad(F, name, "must be 1 to 255 characters"));
    }
    for comp in name.split('/') {
        let b = comp.as_bytes();
        let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        let ok = !b.is_empty()
            && alnum(b[0])
            && alnum(b[b.len() - 1])
            && b.iter()
                .all(|&c| alnum(c) || matches!(c, b'.' | b'_' | b'-'))
            && !comp.contains("..")
            && !comp.contains("___")
            && !comp.contains("._")
            && !comp.contains("_.");
        if !ok {
            return Err(bad(
                F,
                name,
                "components of lowercase letters and digits, separated by '.', '_', '__' or '-', joined by '/' (no registry, no tag)",
            ));
        }
    }
    Ok(())
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), InvalidInput> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(bad(
            "tag",
            tag,
            "must be 1 to 128 of letters, digits, '_', '.' and '-', not starting with '.' or '-'",
        ))
    }
}

fn validate_compile(c: &CompileSpec) -> Result<(), InvalidInput> {
    if c.image.is_empty()
        || c.image.starts_with('-')
        || has_control_or_space(&c.image)
        || c.image.len() > 512
    {
        return Err(bad(
            "compile.image",
            &c.image,
            "must be a non-empty image reference without white space, not starting with '-'",
        ));
    }
    if c.command.trim().is_empty() {
        return Err(bad("compile.command", &c.command, "must not be empty"));
    }
    let m = &c.cache_mount;
    if !m.starts_with('/')
        || m == "/"
        || m.split('/').any(|p| p == "..")
        || has_control_or_space(m)
        || m.contains(':')
        || m.contains(',')
        || m == "/workspace"
    {
        return Err(bad(
            "compile.cache_mount",
            m,
            "must be an absolute path in the container other than / and /workspace, without '..', ':' or ','",
        ));
    }
    for (k, v) in &c.env {
        let key_ok = !k.is_empty()
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !k.starts_with(|c: char| c.is_ascii_digit());
        if !key_ok {
            return Err(bad("compile.env", k, "names are letters, digits and '_'"));
        }
        if v.contains('\0') || v.contains('\n') {
            return Err(bad("compile.env", k, "values must be one line"));
        }
    }
    Ok(())
}

/// Everything in a request, first problem first.
pub fn validate_request(r: &BuildRequest) -> Result<(), InvalidInput> {
    validate_repo(&r.repo)?;
    validate_ref(&r.git_ref)?;
    validate_repo_path("dockerfile", &r.dockerfile)?;
    validate_repo_path("context", &r.context)?;
    validate_image_name(&r.image)?;
    if let Some(t) = &r.tag {
        validate_tag(t)?;
    }
    if let Some(c) = &r.compile {
        validate_compile(c)?;
    }
    if r.step_timeout_secs == Some(0) {
        return Err(bad("step_timeout_secs", "0", "must be at least 1"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> BuildRequest {
        serde_json::from_str(
            r#"{"repo":"file:///srv/git/app.git","ref":"main","image":"team/app"}"#,
        )
        .unwrap()
    }

    #[test]
    fn accepts_ordinary_requests() {
        let mut r = req();
        validate_request(&r).unwrap();
        r.repo = "git@gitlab.example.com:team/app.git".into();
        r.git_ref = "release/1.2".into();
        r.tag = Some("v1.2.3_rc-1".into());
        r.dockerfile = "docker/Dockerfile.prod".into();
        r.context = "./docker".into();
        validate_request(&r).unwrap();
        r.git_ref = "0123456789abcdef0123456789abcdef01234567".into();
        validate_request(&r).unwrap();
    }

    type Edit = Box<dyn Fn(&mut BuildRequest)>;

    #[test]
    fn refuses_escapes_and_injections() {
        let cases: Vec<(&str, Edit)> = vec![
            (
                "repo",
                Box::new(|r| r.repo = "--upload-pack=touch /x".into()),
            ),
            ("repo", Box::new(|r| r.repo = "ext::sh -c touch% /x".into())),
            ("repo", Box::new(|r| r.repo = "ext::sh".into())),
            ("repo", Box::new(|r| r.repo = "fd::17".into())),
            ("repo", Box::new(|r| r.repo = "/no/scheme".into())),
            (
                "ref",
                Box::new(|r| r.git_ref = "--output=/etc/passwd".into()),
            ),
            ("ref", Box::new(|r| r.git_ref = "a/../../b".into())),
            ("ref", Box::new(|r| r.git_ref = "main branch".into())),
            (
                "dockerfile",
                Box::new(|r| r.dockerfile = "../../etc/passwd".into()),
            ),
            (
                "dockerfile",
                Box::new(|r| r.dockerfile = "/etc/passwd".into()),
            ),
            ("context", Box::new(|r| r.context = "a/../..".into())),
            ("image", Box::new(|r| r.image = "Team/App".into())),
            ("image", Box::new(|r| r.image = "evil.com:5000/app".into())),
            ("image", Box::new(|r| r.image = "app:tag".into())),
            ("image", Box::new(|r| r.image = "../app".into())),
            ("tag", Box::new(|r| r.tag = Some("../../x".into()))),
            ("tag", Box::new(|r| r.tag = Some("-f".into()))),
            ("tag", Box::new(|r| r.tag = Some("a/b".into()))),
            ("tag", Box::new(|r| r.tag = Some("x".repeat(129)))),
        ];
        for (field, f) in cases {
            let mut r = req();
            f(&mut r);
            let e = validate_request(&r).expect_err(&format!("{r:?} must be refused"));
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn refused_values_do_not_echo_passwords() {
        let mut r = req();
        r.repo = "https://bob:s3cret@h/a b".into();
        let e = validate_request(&r).unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn compile_and_build_ids() {
        let mut r = req();
        r.compile = Some(CompileSpec {
            image: "localhost/maven:3".into(),
            command: "mvn -q package".into(),
            cache_mount: "/root/.m2".into(),
            env: Default::default(),
        });
        validate_request(&r).unwrap();
        r.compile.as_mut().unwrap().cache_mount = "/x:/host".into();
        assert_eq!(
            validate_request(&r).unwrap_err().field,
            "compile.cache_mount"
        );
        r.compile.as_mut().unwrap().cache_mount = "relative".into();
        assert_eq!(
            validate_request(&r).unwrap_err().field,
            "compile.cache_mount"
        );
        validate_build_id("b-20261122-0a1b").unwrap();
        for bad in ["", "-x", "a/b", "A", &"x".repeat(65)] {
            assert!(validate_build_id(bad).is_err(), "{bad}");
        }
    }
}
