//! `cluster`: several gateways sharing their runtime lists (blocklist,
//! allowlist, bans) through one Redis. See docs/lists.md, "Cluster mode".

use serde::{Deserialize, Serialize};

use super::Errors;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// `redis://[user:password@]host:port[/db]`.
    pub redis: String,
    /// Prefix of the Redis keys and the pub/sub channel; gateways that
    /// share lists use the same one.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// This node's name in logs and change messages; default: host name
    /// and process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

fn default_key_prefix() -> String {
    "xgate".into()
}

impl Cluster {
    pub(super) fn validate(&self, errors: &mut Errors) {
        if let Err(e) = redis::Client::open(self.redis.as_str()) {
            errors.push(
                "cluster.redis",
                format!(
                    "'{}' is not a usable Redis URL ({e}; example: redis://127.0.0.1:6379/0)",
                    self.redis
                ),
            );
        }
        if self.key_prefix.is_empty()
            || self
                .key_prefix
                .contains(|c: char| c.is_whitespace() || c.is_control())
        {
            errors.push(
                "cluster.key_prefix",
                "must be a non-empty name without spaces",
            );
        }
    }
}
