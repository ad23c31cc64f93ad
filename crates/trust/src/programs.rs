//! What a program is, by the name it is known under (the observer finds that name from the file's
//! contents when a copy runs under another name).

/// Programs that run a script read from their standard input.
pub const SHELLS: &[&str] = &["sh", "bash", "dash", "zsh", "ash", "ksh", "mksh", "fish"];
/// Programs that fetch from the network to their standard output.
pub const DOWNLOADERS: &[&str] = &["curl", "wget", "fetch", "aria2c"];

pub fn is_shell(name: &str) -> bool {
    SHELLS.contains(&name)
}

pub fn is_downloader(name: &str) -> bool {
    DOWNLOADERS.contains(&name)
}

/// The programs whose copies are recognised by content, in the order they are looked for.
pub const WATCHED: &[&str] = &[
    "curl", "wget", "busybox", "sh", "bash", "dash", "zsh", "ash", "ksh", "mksh",
];

/// The tool a busybox binary runs: its applet is named by argv[0], or by argv[1] when it is
/// called as `busybox` (or a renamed copy).
pub fn busybox_applet(argv: &[String]) -> Option<&str> {
    let first = argv.first()?.rsplit('/').next()?;
    if first == "busybox" || !(is_shell(first) || is_downloader(first)) {
        argv.get(1)
            .map(|applet| applet.rsplit('/').next().unwrap_or(applet))
    } else {
        Some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_applets() {
        let argv = |line: &str| line.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(busybox_applet(&argv("wget -O- x")), Some("wget"));
        assert_eq!(busybox_applet(&argv("/bin/busybox sh")), Some("sh"));
        assert_eq!(busybox_applet(&argv("/tmp/x wget -O- u")), Some("wget"));
    }
}
