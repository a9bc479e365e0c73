//! Validation of names that become parts of etcd keys or kernel objects.

use crate::error::{CoreError, Result};

/// Pool, node, group and agent names: 1–253 characters of `a-z 0-9 . - _`, starting and ending
/// with a letter or digit (a superset of Kubernetes node names; never a `/`).
pub fn validate_name(field: &'static str, s: &str) -> Result<()> {
    let ok_char =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_');
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if s.is_empty() || s.len() > 253 {
        return Err(CoreError::invalid(field, s, "must be 1 to 253 characters"));
    }
    if !s.chars().all(ok_char) || !edge(s.chars().next()) || !edge(s.chars().last()) {
        return Err(CoreError::invalid(
            field,
            s,
            "only lowercase letters, digits, '.', '-' and '_', starting and ending with a letter or digit",
        ));
    }
    Ok(())
}

/// A CNI container id: letters, digits, `_ . -` (CNI spec), at most 256 characters.
pub fn validate_container_id(s: &str) -> Result<()> {
    if s.is_empty() || s.len() > 256 {
        return Err(CoreError::invalid(
            "container id",
            s,
            "must be 1 to 256 characters",
        ));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(CoreError::invalid(
            "container id",
            s,
            "only letters, digits, '_', '.' and '-' are allowed",
        ));
    }
    Ok(())
}

/// A Linux interface name as CNI requires: 1–15 bytes, no `/`, `:` or white space, not `.`/`..`.
pub fn validate_ifname(s: &str) -> Result<()> {
    if s.is_empty() || s.len() > 15 {
        return Err(CoreError::invalid("ifname", s, "must be 1 to 15 bytes"));
    }
    if s == "." || s == ".." || s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return Err(CoreError::invalid(
            "ifname",
            s,
            "must not be '.' or '..' nor contain '/', ':' or white space",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "node-1", "vlan100-a", "n1.example.com", "a_b"] {
            validate_name("n", ok).unwrap();
        }
        for bad in ["", "A", "a/b", "-a", "a-", "a b", &"x".repeat(254)] {
            assert!(validate_name("n", bad).is_err(), "{bad:?}");
        }
        validate_container_id("abc-DEF_1.2").unwrap();
        assert!(validate_container_id("a/b").is_err());
        assert!(validate_container_id("").is_err());
        validate_ifname("eth0").unwrap();
        for bad in ["", ".", "..", "a/b", "a b", "a:1", "0123456789abcdef"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }
}
