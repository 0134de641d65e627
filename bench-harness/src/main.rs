//! `eventflow-bench`: the load generator. The harness issue fills it in; until then it says so.

fn main() {
    eprintln!("eventflow-bench: not built yet; see the bench-harness issue");
    std::process::exit(2);
}
