//! Paths inside a sandbox, as given by users: absolute, normalized, never climbing with `..`
//! and never into the kernel's pseudo-filesystems. The engine resolves the result within the
//! sandbox's own root.

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad sandbox path {given:?}: {reason}")]
pub(crate) struct PathError {
    pub given: String,
    pub reason: &'static str,
}

const PSEUDO_FILESYSTEMS: &[&str] = &["proc", "sys", "dev"];

/// Returns the normalized absolute path (`/a/b`), or `/` for the root.
pub(crate) fn sandbox_path(given: &str) -> Result<String, PathError> {
    let fail = |reason| PathError {
        given: given.to_string(),
        reason,
    };
    if !given.starts_with('/') {
        return Err(fail("must be absolute (start with /)"));
    }
    if given.contains('\0') {
        return Err(fail("contains a NUL byte"));
    }
    if given.len() > 4096 {
        return Err(fail("longer than 4096 bytes"));
    }
    let mut parts = Vec::new();
    for part in given.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(fail("`..` is not allowed")),
            other => parts.push(other),
        }
    }
    if parts
        .first()
        .is_some_and(|first| PSEUDO_FILESYSTEMS.contains(first))
    {
        return Err(fail("/proc, /sys and /dev are not files of the sandbox"));
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Splits a normalized path into its parent and last component; `None` for `/`.
pub(crate) fn split(path: &str) -> Option<(&str, &str)> {
    let cut = path.rfind('/')?;
    let name = &path[cut + 1..];
    if name.is_empty() {
        return None;
    }
    Some((if cut == 0 { "/" } else { &path[..cut] }, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_and_refuses_escapes() {
        assert_eq!(
            sandbox_path("/workspace//a/./b/").unwrap(),
            "/workspace/a/b"
        );
        assert_eq!(sandbox_path("/").unwrap(), "/");
        for (bad, reason) in [
            ("workspace", "must be absolute (start with /)"),
            ("/a/../../etc/shadow", "`..` is not allowed"),
            (
                "/proc/self/root/etc/shadow",
                "/proc, /sys and /dev are not files of the sandbox",
            ),
            (
                "//proc/1/environ",
                "/proc, /sys and /dev are not files of the sandbox",
            ),
            ("/a\0b", "contains a NUL byte"),
        ] {
            assert_eq!(sandbox_path(bad).unwrap_err().reason, reason, "{bad}");
        }
        assert_eq!(split("/a/b"), Some(("/a", "b")));
        assert_eq!(split("/a"), Some(("/", "a")));
        assert_eq!(split("/"), None);
    }
}
