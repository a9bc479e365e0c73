//! Request bodies: parsed with the JSON path of the first error, so a 400 names the field.

use serde::de::DeserializeOwned;

use crate::error::ApiError;

pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::BadRequest {
            field: "body".into(),
            reason: "must be a JSON object".into(),
        });
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = if inner.is_syntax() || inner.is_eof() {
            "body".to_string()
        } else if let Some(name) = named_field(&inner.to_string()) {
            // a missing field, or one deny_unknown_fields refuses: name it
            match path.as_str() {
                "." => name.to_string(),
                p if p.ends_with(name) => p.to_string(),
                p => format!("{p}.{name}"),
            }
        } else if path == "." {
            "body".to_string()
        } else {
            path
        };
        ApiError::BadRequest {
            field,
            reason: inner.to_string(),
        }
    })?;
    Ok(value)
}

/// The name in serde's "unknown field `x`, expected ..." and "missing field `x`" messages.
fn named_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))?
        .split_once('`')
        .map(|(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellplane_slb::{DomainConfig, UpstreamList};

    fn field<T: DeserializeOwned + std::fmt::Debug>(body: &str) -> String {
        match parse::<T>(body.as_bytes()).unwrap_err() {
            ApiError::BadRequest { field, .. } => field,
            e => panic!("{e}"),
        }
    }

    #[test]
    fn fields() {
        assert_eq!(field::<DomainConfig>("{"), "body");
        assert_eq!(field::<DomainConfig>("[]"), "body");
        assert_eq!(
            field::<DomainConfig>(r#"{"locations":[{"path":1}]}"#),
            "locations[0].path"
        );
        assert_eq!(
            field::<DomainConfig>(r#"{"listen":[{"port":70000}]}"#),
            "listen[0].port"
        );
        assert_eq!(
            field::<UpstreamList>(r#"{"servers":[{"addr":"1.2.3.4:80","weight":"x"}]}"#),
            "servers[0].weight"
        );
        assert_eq!(field::<DomainConfig>(r#"{"raw_nginx":"x"}"#), "raw_nginx");
        assert_eq!(
            field::<cellplane_build::BuildRequest>(
                r#"{"repo":"file:///r","ref":"main","image":"a/b","tga":"x"}"#
            ),
            "tga"
        );
        assert_eq!(
            field::<cellplane_build::BuildRequest>(
                r#"{"repo":"file:///r","ref":"main","image":"a/b","compile":{"image":"i","command":"c","x":1}}"#
            ),
            "compile.x"
        );
        assert_eq!(
            field::<cellplane_build::BuildRequest>(r#"{"ref":"main","image":"a/b"}"#),
            "repo"
        );
    }
}
