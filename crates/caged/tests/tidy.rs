//! The walls of the house, as tests: which crate may depend on which, that the control plane
//! reaches sandboxes only through the node, and that no import circle grows back between the
//! server's files. These read the source and manifests; they run in a blink and need no engine.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root")
}

/// Each workspace crate's folder and the `caged-*` crates it depends on (not dev-dependencies).
fn crate_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    let crates = root().join("crates");
    for entry in std::fs::read_dir(&crates).expect("crates/") {
        let dir = entry.expect("an entry of crates/").path();
        let Ok(manifest) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        let name = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let mut deps = BTreeSet::new();
        let mut section = String::new();
        for line in manifest.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                section = line.to_string();
                continue;
            }
            if section != "[dependencies]" {
                continue;
            }
            if let Some(dep) = line.strip_prefix("caged-")
                && let Some(dep) = dep.split(['.', ' ', '=']).next()
            {
                deps.insert(dep.to_string());
            }
        }
        graph.insert(name, deps);
    }
    graph
}

/// Strongly connected groups of more than one node (or a node depending on itself).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Tarjan's algorithm, iterative enough for these small graphs.
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(state: &mut State<'a>, node: &'a str) {
        state.index.insert(node, state.next);
        state.low.insert(node, state.next);
        state.next += 1;
        state.stack.push(node);
        state.on_stack.insert(node);
        let graph = state.graph;
        for next in graph.get(node).into_iter().flatten() {
            let next = next.as_str();
            if !graph.contains_key(next) {
                continue;
            }
            if !state.index.contains_key(next) {
                visit(state, next);
                let low = state.low[node].min(state.low[next]);
                state.low.insert(node, low);
            } else if state.on_stack.contains(next) {
                let low = state.low[node].min(state.index[next]);
                state.low.insert(node, low);
            }
        }
        if state.low[node] == state.index[node] {
            let mut group = Vec::new();
            while let Some(top) = state.stack.pop() {
                state.on_stack.remove(top);
                group.push(top.to_string());
                if top == node {
                    break;
                }
            }
            let selfish = graph.get(node).is_some_and(|deps| deps.contains(node));
            if group.len() > 1 || selfish {
                group.sort();
                state.found.push(group);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !state.index.contains_key(node.as_str()) {
            visit(&mut state, node);
        }
    }
    state.found
}

#[test]
fn crates_depend_downward_only() {
    let graph = crate_graph();
    assert!(graph.len() > 10, "the crates were not found: {graph:?}");
    assert_eq!(
        circles(&graph),
        Vec::<Vec<String>>::new(),
        "crates in a circle"
    );
    // Who may use whom: the control plane on top, the node seam under it, the capabilities
    // and mechanisms under that. A capability that needed the server's state would show here.
    let may_use_server = ["caged", "testkit"];
    let may_use_node = ["caged", "testkit", "server"];
    for (name, deps) in &graph {
        if deps.contains("server") {
            assert!(
                may_use_server.contains(&name.as_str()),
                "{name} depends on the server"
            );
        }
        if deps.contains("node") {
            assert!(
                may_use_node.contains(&name.as_str()),
                "{name} depends on the node"
            );
        }
        if deps.contains("client") {
            assert!(
                may_use_server.contains(&name.as_str()),
                "{name} depends on the client"
            );
        }
    }
    for pure in ["domain", "cost", "trust", "activity"] {
        let io: Vec<_> = graph[pure]
            .iter()
            .filter(|dep| !["domain"].contains(&dep.as_str()))
            .collect();
        assert!(io.is_empty(), "{pure} is pure but depends on {io:?}");
    }
}

/// The server's source files, by their path under `src/`.
fn server_files() -> BTreeMap<String, String> {
    let src = root().join("crates/server/src");
    let mut files = BTreeMap::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("a server source folder") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let relative = path
                    .strip_prefix(&src)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                let text = std::fs::read_to_string(&path).expect("a source file");
                files.insert(relative, text);
            }
        }
    }
    files
}

/// The file a `crate::a::b::…` path lands in, among `files` (the longest module path that is a
/// file: `a/b.rs`, `a/b/mod.rs`, `a.rs`, `a/mod.rs`).
fn file_of(path: &[&str], files: &BTreeMap<String, String>) -> Option<String> {
    for len in (1..=path.len()).rev() {
        let module = path[..len].join("/");
        for candidate in [format!("{module}.rs"), format!("{module}/mod.rs")] {
            if files.contains_key(&candidate) {
                return Some(candidate);
            }
        }
    }
    None
}

/// What each server file takes from the others: `crate::…` paths in `use` items and in code.
fn server_imports(files: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for (file, text) in files {
        let mut deps = BTreeSet::new();
        let code: String = text
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        // `use crate::{a, b::c};` and `crate::a::b(...)` alike: every `crate::` and what follows.
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            let mut paths: Vec<Vec<&str>> = Vec::new();
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let item = item.trim();
                    let segments: Vec<&str> = item
                        .split("::")
                        .map(|s| s.trim_matches(|c: char| !(c.is_alphanumeric() || c == '_')))
                        .take_while(|s| !s.is_empty() && !s.starts_with('{'))
                        .collect();
                    paths.push(segments);
                }
            } else {
                let segments: Vec<&str> = rest
                    .split("::")
                    .map(|s| {
                        let end = s
                            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                            .unwrap_or(s.len());
                        &s[..end]
                    })
                    .take_while(|s| !s.is_empty())
                    .collect();
                paths.push(segments);
            }
            for segments in paths {
                let target = if segments.is_empty() {
                    None
                } else {
                    file_of(&segments, files).or_else(|| Some("lib.rs".to_string()))
                };
                if let Some(target) = target
                    && &target != file
                {
                    deps.insert(target);
                }
            }
        }
        graph.insert(file.clone(), deps);
    }
    graph
}

#[test]
fn the_servers_files_import_in_no_circle() {
    let files = server_files();
    assert!(
        files.contains_key("lib.rs"),
        "the server's source was not found"
    );
    let graph = server_imports(&files);
    // The crate root wires everything and holds nothing the others take.
    if let Some(taken) = graph
        .iter()
        .filter(|(file, _)| file.as_str() != "lib.rs")
        .find(|(_, deps)| deps.contains("lib.rs"))
    {
        panic!("{} takes something from lib.rs: {:?}", taken.0, taken.1);
    }
    // Handlers may share helpers with their router (`api/`); nowhere else goes round.
    let circles: Vec<Vec<String>> = circles(&graph)
        .into_iter()
        .filter(|group| !group.iter().all(|file| file.starts_with("api/")))
        .collect();
    assert!(
        circles.is_empty(),
        "import circles between the server's files: {circles:?}"
    );
}

/// Whether `text` has `word` not followed by more of an identifier (`Runtime`, not
/// `RuntimeError`).
fn mentions(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(at, _)| {
        !text[at + word.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
    })
}

#[test]
fn below_the_api_nothing_speaks_http() {
    for (file, text) in server_files() {
        if file.starts_with("api/") || file.starts_with("dashboard/") || file == "lib.rs" {
            continue;
        }
        for needle in ["crate::api", "ApiError", "axum::"] {
            assert!(
                !mentions(&text, needle),
                "{file} is below the API but uses {needle}"
            );
        }
    }
}

#[test]
fn the_control_plane_reaches_sandboxes_only_through_the_node() {
    for (file, text) in server_files() {
        for needle in [
            "dyn Runtime",
            "DockerRuntime",
            "caged_runtime::Runtime",
            ".runtime",
        ] {
            assert!(
                !mentions(&text, needle),
                "{file} uses the runtime ({needle}); ask the node"
            );
        }
    }
}

#[test]
fn capabilities_hold_none_of_the_servers_state() {
    for capability in [
        "netpolicy",
        "preview",
        "observe",
        "gateway",
        "runtime",
        "node",
    ] {
        let src = root().join("crates").join(capability).join("src");
        let mut dirs = vec![src];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("a source folder") {
                let path = entry.expect("an entry").path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                assert!(
                    !text.contains("AppState") && !text.contains("caged_server"),
                    "{} reaches into the server",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn the_circle_finder_finds_circles() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
        ("e", vec!["e"]),
    ]
    .into_iter()
    .map(|(node, deps)| {
        (
            node.to_string(),
            deps.into_iter().map(str::to_string).collect(),
        )
    })
    .collect();
    assert_eq!(
        circles(&graph),
        vec![
            vec!["a".to_string(), "b".into(), "c".into()],
            vec!["e".to_string()]
        ]
    );
}
