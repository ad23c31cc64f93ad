//! `allowed_hosts` as a matcher: exact names and `*.example.com` (any name below example.com,
//! not example.com itself), compared case-insensitively, one trailing dot ignored.

/// A sandbox's allowed hosts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowlist {
    patterns: Vec<String>,
}

impl Allowlist {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Allowlist {
        Allowlist {
            patterns: patterns
                .iter()
                .map(|pattern| normalize(pattern.as_ref()))
                .collect(),
        }
    }

    /// The pattern that allows `name`, if any.
    pub fn rule_for(&self, name: &str) -> Option<&str> {
        let name = normalize(name);
        if !is_host_name(&name) {
            return None;
        }
        self.patterns
            .iter()
            .find(|pattern| match pattern.strip_prefix("*.") {
                Some(parent) => name
                    .strip_suffix(parent)
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
                None => **pattern == name,
            })
            .map(String::as_str)
    }

    pub fn allows(&self, name: &str) -> bool {
        self.rule_for(name).is_some()
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

/// Lower case, without one trailing dot.
pub fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Whether `name` is a DNS host name and not an IP address in any of the spellings a resolver
/// library accepts (`2852039166`, `0xa9fea9fe`, `169.254.169.254`, `0251.0376.0251.0376`):
/// the last label must hold a letter and must not be a `0x` number.
pub fn is_host_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let labels_ok = name.split('.').all(|label| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    let last = name.rsplit('.').next().unwrap_or_default();
    let hex_number = last
        .strip_prefix("0x")
        .is_some_and(|digits| digits.bytes().all(|b| b.is_ascii_hexdigit()));
    labels_ok && last.bytes().any(|b| b.is_ascii_alphabetic()) && !hex_number
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_and_wildcards() {
        let list = Allowlist::new(&["allowed.test", "*.Pkg.test"]);
        assert_eq!(list.rule_for("ALLOWED.test."), Some("allowed.test"));
        assert!(!list.allows("sub.allowed.test"));
        assert!(!list.allows("evilallowed.test"));
        assert_eq!(list.rule_for("a.b.pkg.test"), Some("*.pkg.test"));
        assert!(!list.allows("pkg.test"));
        assert!(!list.allows("xpkg.test"));
        assert!(!list.allows(".pkg.test"));
        assert!(!list.allows(""));
    }

    #[test]
    fn ip_spellings_are_not_names() {
        for literal in [
            "2852039166",
            "0xa9fea9fe",
            "169.254.169.254",
            "0251.0376.0251.0376",
            "0xA9.0xFE.0xA9.0xFE",
            "[::ffff:a9fe:a9fe]",
            "::ffff:169.254.169.254",
            "a.b.c.0x1f",
        ] {
            assert!(!is_host_name(&normalize(literal)), "{literal}");
        }
        assert!(is_host_name("allowed.test"));
        assert!(is_host_name("0xdead.test"));
    }
}
