//! Every committed fuzz input through its target, on stable Rust without a fuzzer: the
//! minimised corpus of each target (`fuzz/corpus/<target>/`) and the reproducers of the
//! crashes the fuzzer found (`fuzz/regressions/<target>/`). The targets' bodies are the
//! functions the fuzz binaries call (`eventflow::fuzzing`), under the same allocation bound.
//!
//! Run with `cargo test --features fuzzing --test fuzz_corpus`.

use std::path::Path;

use eventflow::fuzzing::{LimitedAlloc, TARGETS};

#[global_allocator]
static ALLOC: LimitedAlloc = LimitedAlloc;

/// The files of `dir`, sorted (none if it does not exist).
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn every_corpus_file_and_reproducer_passes_its_target() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut total = 0;
    let mut failed = Vec::new();
    for &(name, target) in TARGETS {
        let corpus = files(&fuzz.join("corpus").join(name));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{name}/ holds no inputs: every target keeps a corpus"
        );
        let regressions = files(&fuzz.join("regressions").join(name));
        for path in corpus.iter().chain(&regressions) {
            let data = std::fs::read(path).expect("a committed input is readable");
            if std::panic::catch_unwind(|| target(&data)).is_err() {
                failed.push(format!("{name}: {}", path.display()));
            }
            total += 1;
        }
    }
    assert!(
        failed.is_empty(),
        "inputs that fail their target (run one with `cargo fuzz run -s none TARGET FILE`):\n{}",
        failed.join("\n")
    );
    // Every target's directory, and no stray one.
    for dir in files(&fuzz.join("fuzz_targets")) {
        let stem = dir
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        assert!(
            TARGETS.iter().any(|(name, _)| *name == stem),
            "fuzz/fuzz_targets/{stem}.rs is not in eventflow::fuzzing::TARGETS"
        );
    }
    assert!(total > 0);
}
