//! Secrets in URLs: `https://user:secret@host/...` keeps the user and masks the password, so a
//! repository URL can be shown in a status, a log line or an audit record.

pub const MASK: &str = "***";

/// `scheme://user:password@host` → `scheme://user:***@host`; `scheme://token@host` →
/// `scheme://***@host` (a bare user part in an https URL is usually a token).
pub fn redact_url_userinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => {
                        out.push_str(user);
                        out.push(':');
                        out.push_str(MASK);
                    }
                    None if head.ends_with("ssh://") || head.ends_with("git+ssh://") => {
                        out.push_str(userinfo)
                    }
                    None => out.push_str(MASK),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords_and_tokens_in_urls() {
        assert_eq!(
            redact_url_userinfo("clone https://bob:s3cret@git.example.com/a.git failed"),
            "clone https://bob:***@git.example.com/a.git failed"
        );
        assert_eq!(
            redact_url_userinfo("https://glpat-abc@h/x"),
            "https://***@h/x"
        );
        assert_eq!(redact_url_userinfo("ssh://git@h/x"), "ssh://git@h/x");
        assert_eq!(redact_url_userinfo("file:///srv/x"), "file:///srv/x");
    }
}
