//! Gateway credentials: `cgk-<sandbox>-<scope>-<mac>`, the scope being `sandbox` or a session's
//! id. Derived (an HMAC of sandbox and scope under the installation's key), not stored, so a
//! sandbox made again from its record (a restore) gets the same one back, and bound to the link
//! it arrives on. The operator's provider keys never enter a sandbox; these do.

use std::collections::BTreeMap;

use caged_domain::SandboxId;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::Gateway;

fn mac(key: &[u8], sandbox: SandboxId, scope: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(b"caged-llm-gateway\0");
    mac.update(sandbox.as_str().as_bytes());
    mac.update(b"\0");
    mac.update(scope.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..20])
}

/// Whose a credential is, `(sandbox, session)`, if it is one made under `key`.
pub(crate) fn check(key: &[u8], credential: &str) -> Option<(SandboxId, Option<String>)> {
    let rest = credential.strip_prefix("cgk-")?;
    let (sandbox, rest) = rest.split_once('-')?;
    let (scope, presented) = rest.rsplit_once('-')?;
    let sandbox: SandboxId = sandbox.parse().ok()?;
    let ok: bool =
        subtle::ConstantTimeEq::ct_eq(mac(key, sandbox, scope).as_bytes(), presented.as_bytes())
            .into();
    if !ok {
        return None;
    }
    Some((sandbox, (scope != "sandbox").then(|| scope.to_string())))
}

/// The key variables, all holding `credential`.
pub fn key_env(credential: &str) -> [(&'static str, String); 2] {
    [
        ("OPENAI_API_KEY", credential.to_string()),
        ("ANTHROPIC_API_KEY", credential.to_string()),
    ]
}

impl Gateway {
    /// The gateway credential of a sandbox (`session: None`) or of one of its sessions.
    pub fn credential(&self, sandbox: SandboxId, session: Option<&str>) -> String {
        let scope = session.unwrap_or("sandbox");
        format!(
            "cgk-{sandbox}-{scope}-{}",
            mac(&self.inner.credential_key, sandbox, scope)
        )
    }

    /// The environment a sandbox with a link gets: the gateway's base URLs and the sandbox's
    /// credential under the names the SDKs and agents read.
    pub fn environment(
        &self,
        sandbox: SandboxId,
        link: &caged_network::LinkSpec,
    ) -> BTreeMap<String, String> {
        let base = format!("http://{}:{}", link.host_addr, self.inner.config.port);
        let credential = self.credential(sandbox, None);
        let mut env = BTreeMap::new();
        env.insert("OPENAI_BASE_URL".into(), format!("{base}/openai/v1"));
        env.insert("ANTHROPIC_BASE_URL".into(), format!("{base}/anthropic"));
        env.insert("CAGED_LLM_GATEWAY".into(), base);
        for (name, value) in key_env(&credential) {
            env.insert(name.into(), value);
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_name_their_sandbox_and_session_and_cannot_be_forged() {
        let key = b"0123456789abcdef";
        let sandbox = SandboxId::random();
        let scope = "ses_1";
        let credential = format!("cgk-{sandbox}-{scope}-{}", mac(key, sandbox, scope));
        assert_eq!(
            check(key, &credential),
            Some((sandbox, Some(scope.to_string())))
        );
        let whole = format!("cgk-{sandbox}-sandbox-{}", mac(key, sandbox, "sandbox"));
        assert_eq!(check(key, &whole), Some((sandbox, None)));
        // Another key, another sandbox, another scope: none of them check.
        assert_eq!(check(b"another key", &credential), None);
        let other = SandboxId::random();
        let moved = credential.replacen(sandbox.as_str(), other.as_str(), 1);
        assert_eq!(check(key, &moved), None);
        let widened = credential.replacen(scope, "sandbox", 1);
        assert_eq!(check(key, &widened), None);
        assert_eq!(check(key, "sk-not-ours"), None);
    }
}
