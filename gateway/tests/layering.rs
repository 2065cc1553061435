//! The library's modules depend on each other in one direction only: the
//! pure core at the bottom, `config` on the core, the I/O modules on both,
//! the daemon on everything. Read from the source: every `crate::<module>`
//! path in every file of `src/` (comments left out, test code included).
//!
//! A new top-level module must be placed in [`LAYERS`]; an import against
//! the direction fails here with its file and line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The core: pure, no I/O (docs/design.md; `ARCHITECTURE.md`). `topics`,
/// `clock` and `jsonl` use nothing else in the crate; the rest use only each other
/// (without cycles, checked below).
const CORE: &[&str] = &[
    "sighting",
    "decode",
    "privacy",
    "clock",
    "jsonl",
    "ratelimit",
    "topics",
    "identity",
    "presence",
    "decide",
    "people",
    "heap",
    "chain_message",
];

/// Each top-level module and the modules it may use, besides itself.
/// `core` stands for every module of [`CORE`].
const LAYERS: &[(&str, &[&str])] = &[
    ("sighting", &["core"]),
    ("decode", &["core"]),
    ("privacy", &["core"]),
    ("clock", &[]),
    ("jsonl", &[]),
    ("ratelimit", &["core"]),
    ("topics", &[]),
    ("identity", &["core"]),
    ("presence", &["core"]),
    ("decide", &["core"]),
    ("people", &["core"]),
    ("heap", &[]),
    ("chain_message", &["core"]),
    // Configuration: typed values of the core; never io, daemon, telemetry.
    ("config", &["core"]),
    ("simulate", &["core", "config"]),
    ("store", &["core"]),
    ("telemetry", &["core"]),
    ("reservations", &["core", "config", "store", "telemetry"]),
    ("reload", &["core", "config", "telemetry"]),
    (
        "io",
        &["core", "config", "store", "telemetry", "reservations"],
    ),
    (
        "daemon",
        &[
            "core",
            "config",
            "simulate",
            "store",
            "telemetry",
            "reservations",
            "reload",
            "io",
        ],
    ),
    (
        "demo",
        &[
            "core",
            "config",
            "store",
            "telemetry",
            "io",
            "daemon",
            "reload",
        ],
    ),
    (
        "cli",
        &[
            "core",
            "config",
            "simulate",
            "store",
            "telemetry",
            "reservations",
            "io",
            "daemon",
        ],
    ),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`io/mqtt.rs` → `io`), or `None`
/// for the crate roots.
fn module_of(file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src()).unwrap();
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// The code of a line without its `//` comment (a `//` inside a string
/// is rare enough in this crate's `crate::` lines to ignore).
fn code(line: &str) -> &str {
    line.split("//").next().unwrap_or("")
}

/// The top-level modules a piece of code names after `crate::`, including
/// every branch of a `crate::{a::X, b::{Y, Z}}` group.
fn modules_named(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // Top-level names of the group: the first identifier after the
            // opening brace and after each comma at depth 0.
            let mut depth = 0;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && (c.is_ascii_alphabetic() || c == '_') => {
                        let ident: String = group[i..]
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        found.push(ident);
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let ident: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !ident.is_empty() {
                found.push(ident);
            }
        }
        rest = after;
    }
    found
}

/// Every (module → module it uses) edge with where it is.
fn edges() -> BTreeMap<(String, String), Vec<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut edges: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for file in files {
        let Some(from) = module_of(&file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        // Whole statements: a `use crate::{...}` group may span lines.
        let code: String = text
            .lines()
            .map(|l| format!("{}\n", code(l)))
            .collect::<String>();
        let mut line_starts = vec![0];
        line_starts.extend(code.match_indices('\n').map(|(i, _)| i + 1));
        let mut rest_at = 0;
        while let Some(at) = code[rest_at..].find("crate::") {
            let at = rest_at + at;
            // Skip `$crate::` and paths like `some_crate::`.
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
                rest_at = at + 1;
                continue;
            }
            let end = code[at..]
                .find(';')
                .map_or(code.len(), |e| at + e)
                .min(code[at..].find("\n\n").map_or(code.len(), |e| at + e));
            let line = line_starts.partition_point(|s| *s <= at);
            // Only the path that starts here (a group may hold more).
            let statement = &code[at..end];
            let first_only = if statement.starts_with("crate::{") {
                statement.to_string()
            } else {
                statement
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                    .next()
                    .unwrap_or("")
                    .to_string()
            };
            for to in modules_named(&first_only) {
                if to != from {
                    let place = format!("{}:{line}", file.strip_prefix(src()).unwrap().display());
                    edges.entry((from.clone(), to)).or_default().push(place);
                }
            }
            rest_at = at + "crate::".len();
        }
    }
    edges
}

fn allowed(from: &str) -> BTreeSet<&'static str> {
    let (_, uses) = LAYERS
        .iter()
        .find(|(m, _)| *m == from)
        .unwrap_or_else(|| panic!("module {from} is not placed in LAYERS (tests/layering.rs)"));
    uses.iter()
        .flat_map(|u| {
            if *u == "core" {
                CORE.to_vec()
            } else {
                vec![*u]
            }
        })
        .collect()
}

#[test]
fn the_parser_finds_grouped_and_inline_paths() {
    assert_eq!(
        modules_named("crate::{decide::{Caps, Rule}, identity::person::X, topics}"),
        ["decide", "identity", "topics"]
    );
    assert_eq!(modules_named("crate::io::mqtt::Acker"), ["io"]);
}

#[test]
fn every_module_of_the_library_is_placed_in_a_layer() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let modules: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    assert!(modules.len() > 10, "{modules:?}");
    for module in modules {
        allowed(module);
    }
}

#[test]
fn every_module_uses_only_the_layers_it_may() {
    let mut wrong = Vec::new();
    for ((from, to), places) in edges() {
        if !allowed(&from).contains(to.as_str()) {
            wrong.push(format!("{from} -> {to} at {}", places.join(", ")));
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering:\n  {}",
        wrong.join("\n  ")
    );
}

#[test]
fn topics_and_clock_are_leaves_and_config_reaches_no_io() {
    let edges = edges();
    for leaf in ["topics", "clock"] {
        let uses: Vec<_> = edges.keys().filter(|(from, _)| from == leaf).collect();
        assert!(uses.is_empty(), "{leaf} uses {uses:?}");
    }
    for forbidden in [
        "io",
        "daemon",
        "telemetry",
        "reservations",
        "reload",
        "store",
    ] {
        let key = ("config".to_string(), forbidden.to_string());
        assert!(
            !edges.contains_key(&key),
            "config uses {forbidden}: {:?}",
            edges[&key]
        );
    }
    let key = ("reservations".to_string(), "io".to_string());
    assert!(
        !edges.contains_key(&key),
        "reservations uses io: {:?}",
        edges[&key]
    );
}

#[test]
fn the_modules_form_no_cycle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in edges().into_keys() {
        graph.entry(from).or_default().insert(to);
    }
    // Depth-first search; a module met again on the current path closes a cycle.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, &graph, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}
