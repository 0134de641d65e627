//! `eventflow-bench`: the load generator (being written).

fn main() {
    eprintln!("eventflow-bench: not built yet; see the bench-harness issue");
    std::process::exit(2);
}
