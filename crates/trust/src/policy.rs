//! The trust policy: what each risky behaviour costs and what counts as normal. The defaults are
//! the product page's rules; a YAML file (`caged server --trust-policy FILE`) replaces any part of
//! them. Every key is optional; a key given replaces that default as a whole.

use std::collections::BTreeMap;

use caged_domain::ConfigError;
use serde::{Deserialize, Serialize};

/// The behaviours that cost points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Deleting many files the session did not create itself.
    DeletedFiles,
    /// Installing a package not on the known list, or from outside the known registries.
    UnknownPackage,
    /// A connection the network layer refused, or (full mode) one to a host not known.
    UnknownHost,
    /// Opening `/etc/passwd`, `/etc/shadow` (by a command that names them).
    SensitiveFile,
    /// A shell reading its script from a downloader's output (`curl … | sh`).
    PipeToShell,
    /// Creating, changing, moving or deleting files under the system's own directories.
    SystemFile,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::DeletedFiles => "deleted_files",
            Rule::UnknownPackage => "unknown_package",
            Rule::UnknownHost => "unknown_host",
            Rule::SensitiveFile => "sensitive_file",
            Rule::PipeToShell => "pipe_to_shell",
            Rule::SystemFile => "system_file",
        }
    }

    pub fn parse(name: &str) -> Option<Rule> {
        [
            Rule::DeletedFiles,
            Rule::UnknownPackage,
            Rule::UnknownHost,
            Rule::SensitiveFile,
            Rule::PipeToShell,
            Rule::SystemFile,
        ]
        .into_iter()
        .find(|rule| rule.as_str() == name)
    }
}

/// A step of the deleted-files rule: reaching `at` deletions costs `points` in all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    pub at: u64,
    pub points: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Penalties {
    #[serde(default = "default_deleted_files")]
    pub deleted_files: Vec<Tier>,
    #[serde(default = "five")]
    pub unknown_package: u32,
    #[serde(default = "ten")]
    pub unknown_host: u32,
    #[serde(default = "twenty")]
    pub sensitive_file: u32,
    #[serde(default = "twenty_five")]
    pub pipe_to_shell: u32,
    #[serde(default = "thirty")]
    pub system_file: u32,
}

/// A file whose opening costs points; `named: true` charges only a command whose arguments name
/// the file (so libc's own reads of `/etc/passwd` for `id` or `ls -l` cost nothing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensitiveFile {
    pub path: String,
    #[serde(default)]
    pub named: bool,
}

/// What one account adds to the known lists.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountPolicy {
    #[serde(default)]
    pub known_hosts: Vec<String>,
    #[serde(default)]
    pub known_packages: BTreeMap<String, Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default = "default_penalties")]
    pub penalties: Penalties,
    #[serde(default = "default_sensitive_files")]
    pub sensitive_files: Vec<SensitiveFile>,
    /// Directories whose contents are the system's; changes under them cost `system_file`.
    #[serde(default = "default_system_paths")]
    pub system_paths: Vec<String>,
    /// Exceptions inside them (`/usr/local` is the user's).
    #[serde(default = "default_system_paths_except")]
    pub system_paths_except: Vec<String>,
    /// Hosts a `full`-mode sandbox may talk to for free: registries, git hosts, LLM providers.
    #[serde(default = "default_known_hosts")]
    pub known_hosts: Vec<String>,
    /// Packages installable by name for free, per ecosystem (`pip`, `npm`, `apt`, `cargo`).
    #[serde(default = "default_known_packages")]
    pub known_packages: BTreeMap<String, Vec<String>>,
    /// Additions per account id.
    #[serde(default)]
    pub accounts: BTreeMap<String, AccountPolicy>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("trust policy: {0}")]
    Invalid(ConfigError),
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            penalties: default_penalties(),
            sensitive_files: default_sensitive_files(),
            system_paths: default_system_paths(),
            system_paths_except: default_system_paths_except(),
            known_hosts: default_known_hosts(),
            known_packages: default_known_packages(),
            accounts: BTreeMap::new(),
        }
    }
}

impl Policy {
    /// Parses a policy file; errors name the key and line.
    pub fn from_yaml(text: &str) -> Result<Policy, PolicyError> {
        let policy: Policy =
            caged_domain::config::from_yaml_document(text).map_err(PolicyError::Invalid)?;
        policy.validate().map_err(PolicyError::Invalid)?;
        Ok(policy)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let at = |key: &str, message: String| ConfigError {
            key: key.to_string(),
            line: None,
            message,
        };
        let tiers = &self.penalties.deleted_files;
        for pair in tiers.windows(2) {
            if pair[1].at <= pair[0].at || pair[1].points < pair[0].points {
                return Err(at(
                    "penalties.deleted_files",
                    "tiers must rise: each `at` and `points` at least the one before".into(),
                ));
            }
        }
        if tiers.iter().any(|tier| tier.at == 0) {
            return Err(at(
                "penalties.deleted_files",
                "`at` must be at least 1".into(),
            ));
        }
        for (key, paths) in [
            ("system_paths", &self.system_paths),
            ("system_paths_except", &self.system_paths_except),
        ] {
            if let Some(bad) = paths.iter().find(|path| !path.starts_with('/')) {
                return Err(at(key, format!("{bad:?} is not an absolute path")));
            }
        }
        if let Some(bad) = self
            .sensitive_files
            .iter()
            .find(|f| !f.path.starts_with('/'))
        {
            return Err(at(
                "sensitive_files",
                format!("{:?} is not an absolute path", bad.path),
            ));
        }
        let hosts = self
            .known_hosts
            .iter()
            .chain(self.accounts.values().flat_map(|a| &a.known_hosts));
        for host in hosts {
            caged_domain::check_host_pattern(host).map_err(|err| at("known_hosts", err))?;
        }
        Ok(())
    }

    /// The known hosts for `account`: the policy's and the account's own.
    pub fn known_hosts_for(&self, account: &str) -> Vec<String> {
        let mut hosts = self.known_hosts.clone();
        if let Some(extra) = self.accounts.get(account) {
            hosts.extend(extra.known_hosts.iter().cloned());
        }
        hosts
    }

    /// Whether `name` is a known package of `ecosystem` for `account`.
    pub fn is_known_package(&self, account: &str, ecosystem: &str, name: &str) -> bool {
        let name = crate::packages::normalize(ecosystem, name);
        let listed = |lists: &BTreeMap<String, Vec<String>>| {
            lists.get(ecosystem).is_some_and(|names| {
                names
                    .iter()
                    .any(|known| crate::packages::normalize(ecosystem, known) == name)
            })
        };
        listed(&self.known_packages)
            || self
                .accounts
                .get(account)
                .is_some_and(|extra| listed(&extra.known_packages))
    }

    /// Whether a sandbox path is one of the system's own.
    pub fn is_system_path(&self, path: &str) -> bool {
        let under = |dir: &String| {
            path == dir.as_str()
                || path
                    .strip_prefix(dir.as_str())
                    .is_some_and(|rest| rest.starts_with('/') || dir.ends_with('/'))
        };
        self.system_paths.iter().any(under) && !self.system_paths_except.iter().any(under)
    }
}

fn default_penalties() -> Penalties {
    Penalties {
        deleted_files: default_deleted_files(),
        unknown_package: 5,
        unknown_host: 10,
        sensitive_file: 20,
        pipe_to_shell: 25,
        system_file: 30,
    }
}

fn default_deleted_files() -> Vec<Tier> {
    vec![
        Tier { at: 50, points: 5 },
        Tier {
            at: 500,
            points: 10,
        },
        Tier {
            at: 5000,
            points: 15,
        },
    ]
}

fn five() -> u32 {
    5
}
fn ten() -> u32 {
    10
}
fn twenty() -> u32 {
    20
}
fn twenty_five() -> u32 {
    25
}
fn thirty() -> u32 {
    30
}

fn default_sensitive_files() -> Vec<SensitiveFile> {
    vec![
        SensitiveFile {
            path: "/etc/passwd".into(),
            named: true,
        },
        SensitiveFile {
            path: "/etc/shadow".into(),
            named: false,
        },
        SensitiveFile {
            path: "/etc/gshadow".into(),
            named: false,
        },
    ]
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn default_system_paths() -> Vec<String> {
    strings(&[
        "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot",
    ])
}

fn default_system_paths_except() -> Vec<String> {
    strings(&["/usr/local"])
}

fn default_known_hosts() -> Vec<String> {
    strings(&[
        // Python
        "pypi.org",
        "files.pythonhosted.org",
        // JavaScript
        "registry.npmjs.org",
        "registry.yarnpkg.com",
        "nodejs.org",
        // Debian and Ubuntu
        "deb.debian.org",
        "security.debian.org",
        "archive.ubuntu.com",
        "security.ubuntu.com",
        // Rust, Go, Ruby, Java
        "crates.io",
        "index.crates.io",
        "static.crates.io",
        "static.rust-lang.org",
        "proxy.golang.org",
        "sum.golang.org",
        "rubygems.org",
        "repo.maven.apache.org",
        "repo1.maven.org",
        // Git hosts
        "github.com",
        "*.github.com",
        "*.githubusercontent.com",
        "gitlab.com",
        "bitbucket.org",
        // LLM providers (agents usually reach them through Caged's gateway)
        "api.openai.com",
        "api.anthropic.com",
    ])
}

fn default_known_packages() -> BTreeMap<String, Vec<String>> {
    let mut known = BTreeMap::new();
    known.insert(
        "pip".to_string(),
        strings(&[
            "pip",
            "setuptools",
            "wheel",
            "requests",
            "urllib3",
            "certifi",
            "idna",
            "numpy",
            "pandas",
            "scipy",
            "matplotlib",
            "scikit-learn",
            "flask",
            "django",
            "fastapi",
            "uvicorn",
            "starlette",
            "pydantic",
            "sqlalchemy",
            "alembic",
            "psycopg2-binary",
            "pytest",
            "pytest-cov",
            "tox",
            "black",
            "ruff",
            "mypy",
            "flake8",
            "isort",
            "httpx",
            "aiohttp",
            "jinja2",
            "click",
            "typer",
            "rich",
            "pyyaml",
            "python-dotenv",
            "boto3",
            "openai",
            "anthropic",
            "tiktoken",
            "transformers",
            "torch",
        ]),
    );
    known.insert(
        "npm".to_string(),
        strings(&[
            "npm",
            "yarn",
            "pnpm",
            "typescript",
            "ts-node",
            "tsx",
            "@types/node",
            "react",
            "react-dom",
            "next",
            "vue",
            "svelte",
            "vite",
            "webpack",
            "esbuild",
            "rollup",
            "express",
            "fastify",
            "koa",
            "lodash",
            "axios",
            "zod",
            "dotenv",
            "jest",
            "vitest",
            "mocha",
            "chai",
            "eslint",
            "prettier",
            "nodemon",
            "tailwindcss",
            "postcss",
            "autoprefixer",
            "prisma",
            "@prisma/client",
            "openai",
            "@anthropic-ai/sdk",
        ]),
    );
    known.insert(
        "apt".to_string(),
        strings(&[
            "build-essential",
            "gcc",
            "g++",
            "make",
            "cmake",
            "pkg-config",
            "git",
            "curl",
            "wget",
            "ca-certificates",
            "python3",
            "python3-pip",
            "python3-venv",
            "nodejs",
            "npm",
            "jq",
            "vim",
            "nano",
            "less",
            "unzip",
            "zip",
            "procps",
            "sqlite3",
            "libssl-dev",
            "openssh-client",
            "ripgrep",
            "fd-find",
        ]),
    );
    known.insert(
        "cargo".to_string(),
        strings(&[
            "ripgrep",
            "fd-find",
            "cargo-edit",
            "cargo-watch",
            "cargo-nextest",
            "just",
        ]),
    );
    known
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_default_policy() {
        assert_eq!(Policy::from_yaml("").unwrap(), Policy::default());
        assert_eq!(Policy::from_yaml("{}\n").unwrap(), Policy::default());
    }

    #[test]
    fn a_key_replaces_its_default_and_errors_name_the_line() {
        let policy = Policy::from_yaml(
            "penalties:\n  unknown_host: 3\nknown_hosts: [git.example.com]\naccounts:\n  acc_1:\n    known_hosts: ['*.corp.test']\n",
        )
        .unwrap();
        assert_eq!(policy.penalties.unknown_host, 3);
        assert_eq!(policy.penalties.pipe_to_shell, 25);
        assert_eq!(policy.known_hosts, vec!["git.example.com".to_string()]);
        assert_eq!(
            policy.known_hosts_for("acc_1"),
            vec!["git.example.com".to_string(), "*.corp.test".to_string()]
        );

        let err = Policy::from_yaml("penalties:\n  unknown_hots: 3\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("line 2") && text.contains("unknown_hots"),
            "{text}"
        );
        let err = Policy::from_yaml(
            "penalties:\n  deleted_files: [{at: 10, points: 5}, {at: 5, points: 10}]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("tiers must rise"), "{err}");
        assert!(Policy::from_yaml("system_paths: [etc]\n").is_err());
        assert!(Policy::from_yaml("known_hosts: ['bad host']\n").is_err());
    }

    #[test]
    fn system_paths_and_their_exceptions() {
        let policy = Policy::default();
        assert!(policy.is_system_path("/etc/passwd"));
        assert!(policy.is_system_path("/usr/bin/curl"));
        assert!(policy.is_system_path("/etc"));
        assert!(!policy.is_system_path("/etcetera/x"));
        assert!(!policy.is_system_path("/usr/local/bin/tool"));
        assert!(!policy.is_system_path("/home/user/etc/x"));
        assert!(policy.is_known_package("acc", "pip", "Requests"));
        assert!(policy.is_known_package("acc", "pip", "python_dotenv"));
        assert!(!policy.is_known_package("acc", "pip", "totally-new-pkg"));
    }
}
