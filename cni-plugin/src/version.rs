//! CNI spec versions this plugin speaks.

use crate::error::{code, CniError};

pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const CURRENT: &str = "1.1.0";

/// A supported spec version, ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SpecVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl SpecVersion {
    pub fn parse(s: &str) -> Result<SpecVersion, CniError> {
        Ok(match s {
            "0.3.0" => SpecVersion::V0_3_0,
            "0.3.1" => SpecVersion::V0_3_1,
            "0.4.0" => SpecVersion::V0_4_0,
            "1.0.0" => SpecVersion::V1_0_0,
            "1.1.0" => SpecVersion::V1_1_0,
            other => {
                return Err(CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!("incompatible CNI version {other:?}"),
                )
                .with_details(format!("supported versions: {}", SUPPORTED.join(", "))))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SpecVersion::V0_3_0 => "0.3.0",
            SpecVersion::V0_3_1 => "0.3.1",
            SpecVersion::V0_4_0 => "0.4.0",
            SpecVersion::V1_0_0 => "1.0.0",
            SpecVersion::V1_1_0 => "1.1.0",
        }
    }

    /// Results before 1.0.0 carry `ips[].version`.
    pub fn legacy_result(self) -> bool {
        self < SpecVersion::V1_0_0
    }
}
