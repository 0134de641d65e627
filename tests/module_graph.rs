//! The modules of `src/` import each other in one direction only: no module uses one that
//! uses it back, directly or through others. docs/ARCHITECTURE.md draws the layers; this
//! test keeps them honest by reading every path that names a module of the crate
//! (`crate::…`, `super::…`, `self::…`, and a child module's name, in code and in doc links)
//! and looking for a cycle.
//! Test modules (`#[cfg(test)] mod tests`) are left out: they may use anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`server::native::data`, `""` for the crate root) → source without tests.
fn modules() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.file_name().unwrap() != "bin" {
                    dirs.push(path);
                }
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(&root).unwrap().with_extension("");
            let mut segments: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(segments.last().map(String::as_str), Some("mod" | "lib")) {
                segments.pop();
            }
            let source = std::fs::read_to_string(&path).unwrap();
            let source = match source.find("#[cfg(test)]\nmod tests") {
                Some(at) => source[..at].to_string(),
                None => source,
            };
            // Plain comments are left out; doc comments stay, since an intra-doc link to a
            // module is a dependency on it too.
            let code: String = source
                .lines()
                .map(|l| {
                    let t = l.trim_start();
                    if t.starts_with("///") || t.starts_with("//!") {
                        l
                    } else {
                        l.split("//").next().unwrap_or("")
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            out.insert(segments.join("::"), code);
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The `::`-separated identifiers starting at `s` (stops at anything else); a `{a, b}`
/// group yields one path per first name inside it.
fn paths_at(s: &str) -> Vec<Vec<String>> {
    let mut path = Vec::new();
    let mut rest = s;
    loop {
        let len = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        if len == 0 {
            if let Some(group) = rest.strip_prefix('{') {
                let inner = &group[..group.find('}').unwrap_or(group.len())];
                return inner
                    .split(',')
                    .map(|item| {
                        let mut p = path.clone();
                        p.extend(paths_at(item.trim()).into_iter().next().unwrap_or_default());
                        p
                    })
                    .collect();
            }
            break;
        }
        path.push(rest[..len].to_string());
        rest = &rest[len..];
        match rest.strip_prefix("::") {
            Some(next) => rest = next,
            None => break,
        }
    }
    vec![path]
}

/// The modules `module` refers to.
fn references(module: &str, code: &str, all: &BTreeSet<String>) -> BTreeSet<String> {
    let here: Vec<String> = if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").map(str::to_string).collect()
    };
    let children: Vec<String> = code
        .lines()
        .filter_map(|l| {
            let l = l
                .trim()
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub ");
            l.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(str::to_string)
        })
        .collect();
    let mut found = BTreeSet::new();
    let bytes = code.as_bytes();
    for (at, _) in code.char_indices() {
        if at > 0 && (is_ident(bytes[at - 1] as char) || bytes[at - 1] == b':') {
            continue;
        }
        let rest = &code[at..];
        let (base, tail) = if let Some(t) = rest.strip_prefix("crate::") {
            (Vec::new(), t)
        } else if let Some(t) = rest.strip_prefix("self::") {
            (here.clone(), t)
        } else if let Some(mut t) = rest.strip_prefix("super::") {
            let mut base = here[..here.len().saturating_sub(1)].to_vec();
            while let Some(next) = t.strip_prefix("super::") {
                base.pop();
                t = next;
            }
            (base, t)
        } else if let Some(child) = children
            .iter()
            .find(|c| rest.starts_with(&format!("{c}::")))
        {
            let mut base = here.clone();
            base.push(child.clone());
            (base, &rest[child.len() + 2..])
        } else {
            continue;
        };
        for tail in paths_at(tail) {
            let mut path = base.clone();
            path.extend(tail);
            // The longest prefix that names a module.
            let target = (0..=path.len())
                .rev()
                .map(|n| path[..n].join("::"))
                .find(|p| all.contains(p));
            if let Some(target) = target.filter(|t| t != module) {
                found.insert(target);
            }
        }
    }
    found
}

#[test]
fn the_modules_of_src_import_each_other_without_cycles() {
    let modules = modules();
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    assert!(names.contains("server::rpc") && names.contains("protocol::batch"));
    let edges: BTreeMap<&str, BTreeSet<String>> = modules
        .iter()
        .map(|(m, code)| (m.as_str(), references(m, code, &names)))
        .collect();
    // Sanity: the reader sees imports at all.
    assert!(edges["server::context"].contains("server::rpc"));
    assert!(edges["storage::catalog"]
        .iter()
        .any(|m| m.starts_with("storage")));

    // Depth-first search for a back edge; report the cycle it closes.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit<'a>(
        m: &'a str,
        edges: &'a BTreeMap<&str, BTreeSet<String>>,
        marks: &mut BTreeMap<&'a str, Mark>,
        stack: &mut Vec<&'a str>,
        cycles: &mut Vec<String>,
    ) {
        marks.insert(m, Mark::Open);
        stack.push(m);
        for next in &edges[m] {
            match marks.get(next.as_str()) {
                Some(Mark::Open) => {
                    let from = stack.iter().position(|s| s == next).unwrap();
                    let mut cycle: Vec<&str> = stack[from..].to_vec();
                    cycle.push(next);
                    cycles.push(cycle.join(" → "));
                }
                Some(Mark::Done) => {}
                None => visit(next, edges, marks, stack, cycles),
            }
        }
        stack.pop();
        marks.insert(m, Mark::Done);
    }
    let mut marks = BTreeMap::new();
    let mut cycles = Vec::new();
    for m in edges.keys() {
        if !marks.contains_key(m) {
            visit(m, &edges, &mut marks, &mut Vec::new(), &mut cycles);
        }
    }
    assert!(
        cycles.is_empty(),
        "modules that import each other back:\n  {}",
        cycles.join("\n  ")
    );
}
