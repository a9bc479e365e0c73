//! The cellplane CNI plugin (binary `cellplane`), CNI spec 1.1.0. `main` reads stdin and the
//! environment and calls [`run`]; everything else is here so tests can reach it.

pub mod commands;
pub mod config;
pub mod env;
pub mod error;
pub mod result;
pub mod version;

use serde_json::Value;

pub use config::NetConf;
pub use env::{CniEnv, Command};
pub use error::{code, CniError};

/// A parsed invocation: the environment, and the config unless the command is VERSION.
#[derive(Debug)]
pub struct Invocation {
    pub env: CniEnv,
    pub conf: Option<NetConf>,
    /// The `cniVersion` to answer errors in.
    pub reply_version: String,
}

impl Invocation {
    /// Validates environment and config before anything is changed.
    pub fn parse(
        lookup: impl Fn(&str) -> Option<String>,
        stdin: &[u8],
    ) -> Result<Invocation, (CniError, String)> {
        let reply_version = config::requested_version(stdin)
            .filter(|v| version::SpecVersion::parse(v).is_ok())
            .unwrap_or_else(|| version::CURRENT.to_string());
        let env = CniEnv::parse(lookup).map_err(|e| (e, reply_version.clone()))?;
        if env.command == Command::Version {
            return Ok(Invocation {
                env,
                conf: None,
                reply_version,
            });
        }
        let conf = NetConf::parse(stdin).map_err(|e| (e, reply_version.clone()))?;
        let v = conf.cni_version;
        let need = match env.command {
            Command::Check => Some(version::SpecVersion::V0_4_0),
            Command::Status | Command::Gc => Some(version::SpecVersion::V1_1_0),
            _ => None,
        };
        if let Some(min) = need {
            if v < min {
                return Err((
                    CniError::new(
                        code::INCOMPATIBLE_VERSION,
                        format!(
                            "config version {} does not allow {}",
                            v.as_str(),
                            env.command.as_str()
                        ),
                    ),
                    reply_version,
                ));
            }
        }
        Ok(Invocation {
            env,
            conf: Some(conf),
            reply_version,
        })
    }
}

/// Runs the command; `Ok(Some(json))` is printed on stdout, `Ok(None)` prints nothing.
pub async fn run(inv: &Invocation, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let conf = match (&inv.conf, inv.env.command) {
        (_, Command::Version) => {
            return Ok(Some(commands::version::version(
                config::requested_version(stdin).as_deref(),
            )))
        }
        (Some(c), _) => c,
        (None, _) => return Err(CniError::new(code::INVALID_CONFIG, "no config")),
    };
    match inv.env.command {
        Command::Add => commands::add::add(&inv.env, conf).await.map(Some),
        Command::Del => commands::del::del(&inv.env, conf).await.map(|_| None),
        Command::Check => commands::check::check(&inv.env, conf).await.map(|_| None),
        Command::Status => commands::status::status(conf).await.map(|_| None),
        Command::Gc => commands::gc::gc(conf).await.map(|_| None),
        Command::Version => unreachable!("handled above"),
    }
}
