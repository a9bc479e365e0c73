//! VERSION: the versions this plugin speaks.

use serde_json::{json, Value};

use crate::version::{SpecVersion, CURRENT, SUPPORTED};

/// Answers in the version asked when we know it, else in the current one.
pub fn version(requested: Option<&str>) -> Value {
    let v = requested
        .and_then(|r| SpecVersion::parse(r).ok())
        .map(SpecVersion::as_str)
        .unwrap_or(CURRENT);
    json!({"cniVersion": v, "supportedVersions": SUPPORTED})
}
