//! `.caged.yaml`: the user's description of a sandbox, parsed strictly. Every error names the key
//! and, for YAML input, its line, because a config that is silently half-applied is worse than
//! one that is refused.
//!
//! YAML is read with a marked event parser into a JSON value plus a map from key path to line;
//! the typed config is then deserialized from the JSON with the failing path tracked. The HTTP API
//! takes the same document as JSON and goes through the same checks, without lines.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Largest `.caged.yaml` accepted; a config is a few hundred bytes.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;
const MAX_DEPTH: usize = 16;

pub const DEFAULT_TEMPLATE: &str = "base";
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 900;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default = "default_template")]
    pub template: String,
    #[serde(default)]
    pub resources: Resources,
    /// Seconds of inactivity before the sandbox is put to sleep.
    #[serde(default = "default_timeout")]
    pub timeout: u64,
    /// USD; the sandbox is destroyed when its spend reaches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_script: Option<String>,
    #[serde(default)]
    pub network_mode: NetworkMode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    #[serde(default)]
    pub isolation: Isolation,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Who commands, shells, agents and `init_script` run as, and who owns the files the API
    /// writes. Unset: the template's unprivileged `user` where it has one, else root (a sandbox
    /// made before this setting existed runs as root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// The unprivileged account every catalogue template has, and the default `user:`.
pub const DEFAULT_USER: &str = "user";

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Virtual CPUs; fractions allowed.
    #[serde(default = "default_cpu")]
    pub cpu: f64,
    /// Memory in MB.
    #[serde(default = "default_memory")]
    pub memory: u64,
    /// Writable disk in GB.
    #[serde(default = "default_disk")]
    pub disk: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    Full,
    Allowlist,
    None,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// runc: namespaces, cgroups, dropped capabilities, seccomp.
    #[default]
    Container,
    /// gVisor's runsc: a user-space kernel between the sandbox and the host.
    Gvisor,
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Allowlist => "allowlist",
            Self::None => "none",
        }
    }
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Container => "container",
            Self::Gvisor => "gvisor",
        }
    }
}

fn default_template() -> String {
    DEFAULT_TEMPLATE.to_string()
}
fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_SECONDS
}
fn default_cpu() -> f64 {
    1.0
}
fn default_memory() -> u64 {
    512
}
fn default_disk() -> u64 {
    5
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu: default_cpu(),
            memory: default_memory(),
            disk: default_disk(),
        }
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            name: None,
            template: default_template(),
            resources: Resources::default(),
            timeout: default_timeout(),
            budget: None,
            init_script: None,
            network_mode: NetworkMode::default(),
            allowed_hosts: Vec::new(),
            isolation: Isolation::default(),
            env: BTreeMap::new(),
            user: None,
        }
    }
}

/// What was wrong with a config, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Dotted key path, e.g. `resources.cpu`; empty for the document as a whole.
    pub key: String,
    /// 1-based line in the YAML source, when the input was YAML.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl ConfigError {
    fn at(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            line: None,
            message: message.into(),
        }
    }
}

impl SandboxConfig {
    /// The budget in micro-dollars, to the nearest one (money is integer everywhere past the
    /// file).
    pub fn budget_micros(&self) -> Option<i64> {
        self.budget.map(|usd| (usd * 1e6).round() as i64)
    }

    /// The config as a `.caged.yaml` document that [`SandboxConfig::from_yaml`] reads back to
    /// the same config; strings are double-quoted (JSON's escapes are YAML's too).
    pub fn to_yaml(&self) -> String {
        use std::fmt::Write;
        let quote = |text: &str| Value::String(text.to_string()).to_string();
        let mut out = String::new();
        if let Some(name) = &self.name {
            let _ = writeln!(out, "name: {}", quote(name));
        }
        let _ = writeln!(out, "template: {}", quote(&self.template));
        let _ = writeln!(out, "isolation: {}", self.isolation.as_str());
        let r = &self.resources;
        let _ = writeln!(
            out,
            "resources:\n  cpu: {}\n  memory: {}\n  disk: {}",
            r.cpu, r.memory, r.disk
        );
        let _ = writeln!(out, "timeout: {}", self.timeout);
        if let Some(budget) = self.budget {
            let _ = writeln!(out, "budget: {budget}");
        }
        let _ = writeln!(out, "network_mode: {}", self.network_mode.as_str());
        if !self.allowed_hosts.is_empty() {
            out.push_str("allowed_hosts:\n");
            for host in &self.allowed_hosts {
                let _ = writeln!(out, "  - {}", quote(host));
            }
        }
        if !self.env.is_empty() {
            out.push_str("env:\n");
            for (key, value) in &self.env {
                let _ = writeln!(out, "  {}: {}", quote(key), quote(value));
            }
        }
        if let Some(script) = &self.init_script {
            let _ = writeln!(out, "init_script: {}", quote(script));
        }
        if let Some(user) = &self.user {
            let _ = writeln!(out, "user: {}", quote(user));
        }
        out
    }

    /// Parses and validates a `.caged.yaml` document.
    pub fn from_yaml(text: &str) -> Result<SandboxConfig, ConfigError> {
        if text.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::at(
                "",
                format!("larger than {MAX_CONFIG_BYTES} bytes"),
            ));
        }
        let (value, lines) = yaml_to_json(text)?;
        let value = if value.is_null() {
            Value::Object(Map::new())
        } else {
            value
        };
        Self::from_json_value(value).map_err(|mut err| {
            err.line = line_for(&lines, &err.key);
            err
        })
    }

    /// Parses and validates the same document given as JSON (the HTTP API's form).
    pub fn from_json_value(value: Value) -> Result<SandboxConfig, ConfigError> {
        if !value.is_object() {
            return Err(ConfigError::at("", "expected a mapping of settings"));
        }
        let config: SandboxConfig = serde_path_to_error::deserialize(value).map_err(|err| {
            let key = err.path().to_string();
            let key = if key == "." { String::new() } else { key };
            ConfigError::at(key, err.into_inner().to_string())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Range and shape checks serde's types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(name) = &self.name {
            check_name("name", name)?;
        }
        check_template_name("template", &self.template)?;
        let r = &self.resources;
        if !(r.cpu.is_finite() && (0.1..=64.0).contains(&r.cpu)) {
            return Err(ConfigError::at(
                "resources.cpu",
                format!("must be between 0.1 and 64 (got {})", r.cpu),
            ));
        }
        if !(64..=262_144).contains(&r.memory) {
            return Err(ConfigError::at(
                "resources.memory",
                format!("must be between 64 and 262144 MB (got {})", r.memory),
            ));
        }
        if !(1..=4096).contains(&r.disk) {
            return Err(ConfigError::at(
                "resources.disk",
                format!("must be between 1 and 4096 GB (got {})", r.disk),
            ));
        }
        if !(1..=30 * 24 * 3600).contains(&self.timeout) {
            return Err(ConfigError::at(
                "timeout",
                format!(
                    "must be between 1 and 2592000 seconds (got {})",
                    self.timeout
                ),
            ));
        }
        if let Some(budget) = self.budget
            && !(budget.is_finite() && (0.000_001..=1_000_000.0).contains(&budget))
        {
            return Err(ConfigError::at(
                "budget",
                format!("must be at least 0.000001 and at most 1000000 USD (got {budget})"),
            ));
        }
        if let Some(script) = &self.init_script {
            if script.trim().is_empty() {
                return Err(ConfigError::at("init_script", "is empty"));
            }
            if script.contains('\0') {
                return Err(ConfigError::at("init_script", "contains a NUL byte"));
            }
        }
        if self.network_mode != NetworkMode::Allowlist && !self.allowed_hosts.is_empty() {
            return Err(ConfigError::at(
                "allowed_hosts",
                format!(
                    "is only used with network_mode: allowlist (network_mode is {})",
                    self.network_mode.as_str()
                ),
            ));
        }
        for (i, host) in self.allowed_hosts.iter().enumerate() {
            check_host_pattern(host)
                .map_err(|msg| ConfigError::at(format!("allowed_hosts[{i}]"), msg))?;
        }
        check_env(&self.env, MAX_SANDBOX_ENV_BYTES)
            .map_err(|(key, msg)| ConfigError::at(format!("env.{key}"), msg))?;
        if let Some(user) = &self.user {
            check_user_name("user", user)?;
        }
        Ok(())
    }
}

/// A user name as the templates' `/etc/passwd` spells them (POSIX portable, as `useradd`
/// takes): the engine looks it up there, so nothing else may reach it.
pub fn check_user_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = (1..=32).contains(&name.len())
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::at(
            key,
            format!("{name:?} is not a user name (1-32 of a-z 0-9 - _, starting a-z or _)"),
        ))
    }
}

/// The kernel's limit on one argument or `NAME=value` string (`MAX_ARG_STRLEN`, with its NUL).
pub const MAX_ARG_BYTES: usize = 128 * 1024;
/// What a sandbox's own environment may take: every process in it starts with it, beside its
/// own arguments, under the kernel's total (`ARG_MAX`, 2 MiB with the default 8 MiB stack).
pub const MAX_SANDBOX_ENV_BYTES: usize = 256 * 1024;
/// What one command's arguments and extra environment may take together.
pub const MAX_EXEC_ARGS_BYTES: usize = 1024 * 1024;

/// Checks variables the kernel will be handed: names, no NUL, each and all within the kernel's
/// limits (`total` for the lot). The error names the variable (empty for the total) and why.
pub fn check_env(env: &BTreeMap<String, String>, total: usize) -> Result<(), (String, String)> {
    let mut used = 0usize;
    for (key, value) in env {
        if !is_env_name(key) {
            return Err((
                key.clone(),
                "is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)".into(),
            ));
        }
        if value.contains('\0') {
            return Err((key.clone(), "contains a NUL byte".into()));
        }
        let bytes = key.len() + value.len() + 2;
        if bytes > MAX_ARG_BYTES {
            return Err((
                key.clone(),
                format!("is {bytes} bytes as NAME=value; the kernel takes at most {MAX_ARG_BYTES}"),
            ));
        }
        used += bytes;
        if used > total {
            return Err((
                key.clone(),
                format!("takes the environment past {total} bytes in all"),
            ));
        }
    }
    Ok(())
}

/// Checks a command's arguments: at least a program, no NUL, each within the kernel's limit;
/// returns the bytes they take. The error names the field (`cmd`, `cmd[2]`) and why.
pub fn check_argv(argv: &[String]) -> Result<usize, String> {
    if argv.first().is_none_or(|program| program.is_empty()) {
        return Err("cmd: must name a program (an argv array, not a shell string)".into());
    }
    let mut used = 0usize;
    for (i, arg) in argv.iter().enumerate() {
        if arg.contains('\0') {
            return Err(format!("cmd[{i}]: contains a NUL byte"));
        }
        used += arg.len() + 1;
        if arg.len() + 1 > MAX_ARG_BYTES {
            return Err(format!(
                "cmd[{i}]: is {} bytes; the kernel takes at most {MAX_ARG_BYTES} per argument",
                arg.len() + 1
            ));
        }
    }
    Ok(used)
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(key: &str) -> bool {
    key.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Names users give sandboxes: short, printable, safe in a URL and a container label.
pub fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = (1..=63).contains(&name.len())
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::at(
            key,
            format!(
                "{name:?} is not a valid name (1-63 of a-z A-Z 0-9 - _ ., starting alphanumeric)"
            ),
        ))
    }
}

/// Template names become part of an image reference, so they keep to its lowercase alphabet.
pub fn check_template_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = (1..=63).contains(&name.len())
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::at(
            key,
            format!(
                "{name:?} is not a valid template name (1-63 of a-z 0-9 - _ ., starting a-z or 0-9)"
            ),
        ))
    }
}

/// A host name, optionally with one leading `*.` wildcard label.
pub fn check_host_pattern(host: &str) -> Result<(), String> {
    let bare = host.strip_prefix("*.").unwrap_or(host);
    let labels_ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !labels_ok {
        return Err(format!(
            "{host:?} is not a host name (e.g. api.openai.com or *.example.com)"
        ));
    }
    // Resolver libraries read a last label of digits or 0x-hex as an address
    // (`2852039166`, `0xa9fea9fe`).
    let last = bare.rsplit('.').next().unwrap_or_default();
    let numeric = last.chars().all(|c| c.is_ascii_digit())
        || last
            .strip_prefix("0x")
            .is_some_and(|hex| hex.chars().all(|c| c.is_ascii_hexdigit()));
    if numeric {
        return Err(format!(
            "{host:?} is an IP address; allowed_hosts takes host names"
        ));
    }
    Ok(())
}

/// JSON Schema of `.caged.yaml`, for editors (`caged config schema`).
pub fn json_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": ".caged.yaml",
        "description": "Caged sandbox settings",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "name": { "type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$" },
            "template": { "type": "string", "default": DEFAULT_TEMPLATE, "pattern": "^[a-z0-9][a-z0-9._-]{0,62}$" },
            "resources": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "cpu": { "type": "number", "minimum": 0.1, "maximum": 64, "default": 1 },
                    "memory": { "type": "integer", "minimum": 64, "maximum": 262144, "default": 512, "description": "MB" },
                    "disk": { "type": "integer", "minimum": 1, "maximum": 4096, "default": 5, "description": "GB" }
                }
            },
            "timeout": { "type": "integer", "minimum": 1, "maximum": 2592000, "default": DEFAULT_TIMEOUT_SECONDS,
                         "description": "seconds of inactivity before the sandbox sleeps" },
            "budget": { "type": "number", "minimum": 0.000001, "maximum": 1000000, "description": "USD" },
            "init_script": { "type": "string", "minLength": 1 },
            "network_mode": { "enum": ["full", "allowlist", "none"], "default": "full" },
            "allowed_hosts": { "type": "array", "items": { "type": "string" } },
            "isolation": { "enum": ["container", "gvisor"], "default": "container" },
            "env": { "type": "object", "additionalProperties": { "type": "string" },
                     "propertyNames": { "pattern": "^[A-Za-z_][A-Za-z0-9_]*$" } },
            "user": { "type": "string", "pattern": "^[a-z_][a-z0-9_-]{0,31}$", "default": DEFAULT_USER,
                      "description": "who commands run as: `user` (the template's unprivileged account), `root`, or another account of the template" }
        }
    })
}

/// Reads any strict YAML document (the trust policy, ...) into `T`, with the same key and line
/// errors as `.caged.yaml`. An empty document is an empty mapping.
pub fn from_yaml_document<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    if text.len() > MAX_CONFIG_BYTES * 4 {
        return Err(ConfigError::at(
            "",
            format!("larger than {} bytes", MAX_CONFIG_BYTES * 4),
        ));
    }
    let (value, lines) = yaml_to_json(text)?;
    let value = if value.is_null() {
        Value::Object(Map::new())
    } else {
        value
    };
    serde_path_to_error::deserialize(value).map_err(|err| {
        let key = err.path().to_string();
        let key = if key == "." { String::new() } else { key };
        ConfigError {
            line: line_for(&lines, &key),
            key,
            message: err.into_inner().to_string(),
        }
    })
}

fn line_for(lines: &HashMap<String, usize>, key: &str) -> Option<usize> {
    // A missing path (an unknown key's error names its parent) falls back to the nearest parent.
    let mut key = key;
    loop {
        if let Some(line) = lines.get(key) {
            return Some(*line);
        }
        let cut = key.rfind(['.', '['])?;
        key = &key[..cut];
    }
}

/// Reads YAML into JSON, remembering the line of every key path.
fn yaml_to_json(text: &str) -> Result<(Value, HashMap<String, usize>), ConfigError> {
    let mut builder = JsonBuilder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, true).map_err(|err| ConfigError {
        key: String::new(),
        line: Some(err.marker().line()),
        message: format!("not valid YAML: {}", err.info()),
    })?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    Ok((builder.root.unwrap_or(Value::Null), builder.lines))
}

enum Frame {
    Map {
        map: Map<String, Value>,
        pending_key: Option<String>,
        path: String,
    },
    Seq {
        items: Vec<Value>,
        path: String,
    },
}

#[derive(Default)]
struct JsonBuilder {
    stack: Vec<Frame>,
    root: Option<Value>,
    lines: HashMap<String, usize>,
    error: Option<ConfigError>,
    /// Documents begun so far.
    documents: usize,
}

impl JsonBuilder {
    fn fail(&mut self, key: &str, line: usize, message: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some(ConfigError {
                key: key.to_string(),
                line: Some(line),
                message: message.into(),
            });
        }
    }

    /// Path of the value about to be added to the innermost container.
    fn child_path(&self) -> String {
        match self.stack.last() {
            Some(Frame::Map {
                pending_key: Some(key),
                path,
                ..
            }) => join(path, key),
            Some(Frame::Seq { items, path }) => format!("{path}[{}]", items.len()),
            _ => String::new(),
        }
    }

    fn push_value(&mut self, value: Value, line: usize) {
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map {
                map,
                pending_key,
                path,
            }) => match pending_key.take() {
                Some(key) => {
                    map.insert(key, value);
                }
                None => {
                    let Value::String(key) = value else {
                        let path = path.clone();
                        return self.fail(&path, line, "keys must be plain strings");
                    };
                    let full = join(path, &key);
                    if map.contains_key(&key) {
                        return self.fail(&full, line, "is given twice");
                    }
                    self.lines.insert(full, line);
                    *pending_key = Some(key);
                }
            },
        }
    }

    fn expecting_key(&self) -> bool {
        matches!(
            self.stack.last(),
            Some(Frame::Map {
                pending_key: None,
                ..
            })
        )
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl MarkedEventReceiver for JsonBuilder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let line = mark.line();
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                if anchor != 0 || tag.is_some() {
                    let path = self.child_path();
                    return self.fail(&path, line, "anchors and tags are not supported");
                }
                let value = if self.expecting_key() || style != TScalarStyle::Plain {
                    Value::String(text)
                } else {
                    match plain_scalar(&text) {
                        Ok(value) => value,
                        Err(why) => return self.fail(&self.child_path(), line, why),
                    }
                };
                if !self.expecting_key() {
                    let path = self.child_path();
                    self.lines.entry(path).or_insert(line);
                }
                self.push_value(value, line);
            }
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) if anchor != 0 => {
                let path = self.child_path();
                self.fail(&path, line, "anchors are not supported");
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                if self.expecting_key() {
                    return self.fail(&self.child_path(), line, "keys must be plain strings");
                }
                if self.stack.len() >= MAX_DEPTH {
                    return self.fail(&self.child_path(), line, "is nested too deeply");
                }
                let path = self.child_path();
                self.lines.entry(path.clone()).or_insert(line);
                if matches!(event, Event::MappingStart(..)) {
                    self.stack.push(Frame::Map {
                        map: Map::new(),
                        pending_key: None,
                        path,
                    });
                } else {
                    self.stack.push(Frame::Seq {
                        items: Vec::new(),
                        path,
                    });
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let value = match self.stack.pop() {
                    Some(Frame::Map { map, .. }) => Value::Object(map),
                    Some(Frame::Seq { items, .. }) => Value::Array(items),
                    None => return,
                };
                self.push_value(value, line);
            }
            Event::Alias(_) => {
                let path = self.child_path();
                self.fail(&path, line, "aliases are not supported");
            }
            // A second document (`---`) would be read by no one: refused, not ignored.
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    self.fail(
                        "",
                        line,
                        "a second YAML document starts here; the file must hold one (remove the `---`)",
                    );
                }
            }
            _ => {}
        }
    }
}

/// YAML 1.2 core schema resolution of an unquoted scalar. A number too large for a float
/// (`1e309`) or spelled as infinity is refused: JSON has no such value, and it must not pass
/// as "no value".
fn plain_scalar(text: &str) -> Result<Value, &'static str> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Ok(Value::Null),
        "true" | "True" | "TRUE" => return Ok(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Ok(Value::Bool(false)),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "-.inf" | ".nan" | ".NaN" | ".NAN" => {
            return Err("must be a finite number");
        }
        _ => {}
    }
    if let Ok(int) = text.parse::<i64>() {
        return Ok(Value::from(int));
    }
    let looks_numeric = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
        && text.bytes().any(|b| b.is_ascii_digit());
    if looks_numeric && let Ok(float) = text.parse::<f64>() {
        if !float.is_finite() {
            return Err("must be a finite number");
        }
        return Ok(Value::from(float));
    }
    Ok(Value::String(text.to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_second_document_and_infinite_numbers_are_refused() {
        let err =
            SandboxConfig::from_yaml("template: busybox\n---\nnetwork_mode: none\n").unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
        assert!(err.message.contains("second YAML document"), "{err}");
        for budget in ["1e309", "-1e309", ".inf", ".nan"] {
            let err = SandboxConfig::from_yaml(&format!("template: busybox\nbudget: {budget}\n"))
                .unwrap_err();
            assert_eq!(
                (err.key.as_str(), err.line),
                ("budget", Some(2)),
                "{budget}: {err}"
            );
            assert!(err.message.contains("finite"), "{budget}: {err}");
        }
        // One document with an explicit start is still one.
        assert!(SandboxConfig::from_yaml("---\ntemplate: busybox\n").is_ok());
    }

    #[test]
    fn a_config_written_as_yaml_reads_back_the_same() {
        let mut config = SandboxConfig::from_yaml(
            "name: web\ntemplate: base\nisolation: gvisor\nresources: {cpu: 0.5, memory: 1024, disk: 3}\n\
             timeout: 60\nbudget: 2.5\nnetwork_mode: allowlist\nallowed_hosts: [pypi.org, '*.npmjs.org']\n",
        )
        .unwrap();
        config
            .env
            .insert("QUOTE".into(), "it's \"odd\": #1\n\tok".into());
        config.init_script = Some("set -e\necho 'hi' > /tmp/x: y\n".into());
        let yaml = config.to_yaml();
        assert_eq!(SandboxConfig::from_yaml(&yaml).unwrap(), config, "{yaml}");
        let default = SandboxConfig::default();
        assert_eq!(
            SandboxConfig::from_yaml(&default.to_yaml()).unwrap(),
            default
        );
    }

    use super::*;

    const PRODUCT_PAGE_EXAMPLE: &str = "\
template: node-20
resources:
  cpu: 2
  memory: 1024
  disk: 10
timeout: 1800
budget: 5.00
init_script: npm install
network_mode: allowlist
allowed_hosts:
  - api.openai.com
";

    #[test]
    fn parses_the_product_page_example() {
        let config = SandboxConfig::from_yaml(PRODUCT_PAGE_EXAMPLE).unwrap();
        assert_eq!(config.template, "node-20");
        assert_eq!(
            config.resources,
            Resources {
                cpu: 2.0,
                memory: 1024,
                disk: 10
            }
        );
        assert_eq!(config.timeout, 1800);
        assert_eq!(config.budget, Some(5.0));
        assert_eq!(config.init_script.as_deref(), Some("npm install"));
        assert_eq!(config.network_mode, NetworkMode::Allowlist);
        assert_eq!(config.allowed_hosts, vec!["api.openai.com"]);
        assert_eq!(config.isolation, Isolation::Container);
    }

    #[test]
    fn empty_document_gives_defaults() {
        assert_eq!(
            SandboxConfig::from_yaml("").unwrap(),
            SandboxConfig::default()
        );
        assert_eq!(
            SandboxConfig::from_yaml("# nothing\n").unwrap(),
            SandboxConfig::default()
        );
    }

    fn error(yaml: &str) -> String {
        SandboxConfig::from_yaml(yaml).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_key_and_line() {
        let cases = [
            (
                "resources:\n  cpu: 0\n",
                "line 2: resources.cpu: must be between 0.1 and 64 (got 0)",
            ),
            (
                "resources:\n  memory: 10\n",
                "line 2: resources.memory: must be between 64 and 262144 MB (got 10)",
            ),
            (
                "template: base\ntimeout: -1\n",
                "line 2: timeout: invalid value: integer `-1`, expected u64",
            ),
            (
                "timeout: 0\n",
                "line 1: timeout: must be between 1 and 2592000 seconds (got 0)",
            ),
            (
                "resources:\n  memory: \"1024\"\n",
                "line 2: resources.memory: invalid type: string \"1024\", expected u64",
            ),
            (
                "template: base\nbudgets: 5\n",
                "line 2: budgets: unknown field `budgets`, expected one of `name`, `template`, `resources`, `timeout`, `budget`, `init_script`, `network_mode`, `allowed_hosts`, `isolation`, `env`, `user`",
            ),
            (
                "resources:\n  cpu: 1\n  gpu: 1\n",
                "line 3: resources.gpu: unknown field `gpu`, expected one of `cpu`, `memory`, `disk`",
            ),
            (
                "network_mode: open\n",
                "line 1: network_mode: unknown variant `open`, expected one of `full`, `allowlist`, `none`",
            ),
            (
                "allowed_hosts: [a.com]\n",
                "line 1: allowed_hosts: is only used with network_mode: allowlist (network_mode is full)",
            ),
            (
                "network_mode: allowlist\nallowed_hosts:\n  - ok.com\n  - 10.0.0.1\n",
                "line 4: allowed_hosts[1]: \"10.0.0.1\" is an IP address; allowed_hosts takes host names",
            ),
            (
                "timeout: 5\ntimeout: 6\n",
                "line 2: timeout: is given twice",
            ),
            (
                "template: Node\n",
                "line 1: template: \"Node\" is not a valid template name (1-63 of a-z 0-9 - _ ., starting a-z or 0-9)",
            ),
            (
                "budget: 0\n",
                "line 1: budget: must be at least 0.000001 and at most 1000000 USD (got 0)",
            ),
            (
                "env:\n  1BAD: x\n",
                "line 2: env.1BAD: is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)",
            ),
            (
                "a: &x 1\nb: *x\n",
                "line 1: a: anchors and tags are not supported",
            ),
            ("- 1\n- 2\n", "line 1: expected a mapping of settings"),
        ];
        for (yaml, expected) in cases {
            assert_eq!(error(yaml), expected, "for {yaml:?}");
        }
        assert!(
            error("resources: [\n").starts_with("line "),
            "{}",
            error("resources: [\n")
        );
    }

    #[test]
    fn json_input_goes_through_the_same_checks() {
        let err = SandboxConfig::from_json_value(json!({"resources": {"cpu": 0}})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "resources.cpu: must be between 0.1 and 64 (got 0)"
        );
        let config =
            SandboxConfig::from_json_value(json!({"template": "busybox", "isolation": "gvisor"}))
                .unwrap();
        assert_eq!(config.isolation, Isolation::Gvisor);
    }

    #[test]
    fn schema_lists_every_key_the_parser_accepts() {
        let schema = json_schema();
        let keys: Vec<_> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let config = serde_json::to_value(SandboxConfig {
            name: Some("n".into()),
            budget: Some(1.0),
            init_script: Some("true".into()),
            network_mode: NetworkMode::Allowlist,
            allowed_hosts: vec!["a.com".into()],
            env: [("A".to_string(), "b".to_string())].into(),
            user: Some("user".into()),
            ..SandboxConfig::default()
        })
        .unwrap();
        let mut config_keys: Vec<_> = config.as_object().unwrap().keys().cloned().collect();
        let mut keys = keys;
        keys.sort();
        config_keys.sort();
        assert_eq!(keys, config_keys);
    }

    #[test]
    fn arguments_and_environments_are_held_to_the_kernel_limits() {
        let long = "x".repeat(MAX_ARG_BYTES);
        assert_eq!(check_argv(&["ls".into(), "-l".into()]), Ok(6));
        assert_eq!(
            check_argv(&["ls".into(), long.clone()]),
            Err("cmd[1]: is 131073 bytes; the kernel takes at most 131072 per argument".into())
        );
        assert!(check_argv(&[]).unwrap_err().starts_with("cmd: must name"));
        // NAME=value and its NUL fit exactly, one byte more does not.
        let fits = "x".repeat(MAX_ARG_BYTES - 3);
        let env: BTreeMap<_, _> = [("A".to_string(), fits)].into();
        assert_eq!(check_env(&env, usize::MAX), Ok(()));
        let env: BTreeMap<_, _> = [("AB".to_string(), "x".repeat(MAX_ARG_BYTES - 3))].into();
        assert_eq!(check_env(&env, usize::MAX).unwrap_err().0, "AB".to_string());
        let env: BTreeMap<_, _> =
            [("A".to_string(), "1".into()), ("B".to_string(), "2".into())].into();
        assert_eq!(check_env(&env, 8), Ok(()));
        assert_eq!(
            check_env(&env, 7),
            Err((
                "B".into(),
                "takes the environment past 7 bytes in all".into()
            ))
        );
    }
}
