//! Lists of runs in TOML: a `[defaults]` table of workload knobs and `[[run]]` tables, each
//! a `kind` (produce, consume, e2e) and the knobs it changes. `partitions = "cores"` means
//! one partition per CPU of this machine.

use anyhow::{bail, Context, Result};
use toml::{Table, Value};

use crate::run::Kind;
use crate::workload::Workload;

/// The built-in matrix (`bench-harness/workloads/default.toml`).
pub const DEFAULT_PLAN: &str = include_str!("../workloads/default.toml");

/// One entry of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRun {
    pub kind: Kind,
    pub workload: Workload,
}

/// Parses a plan file's text.
pub fn parse(text: &str) -> Result<Vec<PlannedRun>> {
    let mut doc: Table = toml::from_str(text).context("plan is not valid TOML")?;
    let defaults = match doc.remove("defaults") {
        Some(Value::Table(t)) => t,
        Some(_) => bail!("`defaults` must be a table"),
        None => Table::new(),
    };
    let runs = match doc.remove("run") {
        Some(Value::Array(runs)) => runs,
        Some(_) => bail!("`run` must be an array of tables ([[run]])"),
        None => bail!("the plan has no [[run]] entries"),
    };
    if let Some(key) = doc.keys().next() {
        bail!("unknown top-level key `{key}` in plan (expected [defaults] and [[run]])");
    }
    runs.into_iter()
        .enumerate()
        .map(|(i, run)| {
            let Value::Table(run) = run else {
                bail!("run {}: expected a table", i + 1);
            };
            planned(&defaults, run).with_context(|| format!("run {} of the plan", i + 1))
        })
        .collect()
}

/// Reads a plan file, or the built-in matrix for `default`.
pub fn load(path_or_default: &str) -> Result<Vec<PlannedRun>> {
    if path_or_default == "default" {
        return parse(DEFAULT_PLAN);
    }
    let text = std::fs::read_to_string(path_or_default)
        .with_context(|| format!("reading plan {path_or_default}"))?;
    parse(&text).with_context(|| format!("plan {path_or_default}"))
}

fn planned(defaults: &Table, mut run: Table) -> Result<PlannedRun> {
    let kind = match run.remove("kind") {
        Some(Value::String(k)) => Kind::parse(&k)?,
        Some(_) => bail!("`kind` must be a string"),
        None => bail!("missing `kind` (produce, consume or e2e)"),
    };
    let mut knobs = defaults.clone();
    knobs.extend(run);
    let workload = workload_from(knobs)?;
    workload.validate(kind)?;
    Ok(PlannedRun { kind, workload })
}

/// A workload from TOML knobs, with `partitions = "cores"` resolved.
pub fn workload_from(mut knobs: Table) -> Result<Workload> {
    if let Some(Value::String(s)) = knobs.get("partitions") {
        if s != "cores" {
            bail!("partitions = {s:?}: expected a number or \"cores\"");
        }
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        knobs.insert("partitions".into(), Value::Integer(cores as i64));
    }
    Workload::deserialize(Value::Table(knobs)).context("workload knobs")
}

use serde::Deserialize;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Acks;

    #[test]
    fn the_default_plan_parses() {
        let runs = parse(DEFAULT_PLAN).unwrap();
        assert!(runs.len() >= 12);
        for kind in [Kind::Produce, Kind::Consume, Kind::E2e] {
            assert!(runs.iter().any(|r| r.kind == kind));
        }
        assert!(runs.iter().all(|r| r.workload.create_topic));
        assert!(runs.iter().any(|r| r.workload.message_size == 1024));
        let cores = std::thread::available_parallelism().unwrap().get() as u32;
        assert!(runs.iter().any(|r| r.workload.partitions == cores));
    }

    #[test]
    fn the_target_plans_parse() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/workloads");
        let never = load(&format!("{dir}/targets-never.toml")).unwrap();
        assert_eq!(never.len(), 5);
        assert!(never.iter().all(|r| r.workload.acks == Acks::Leader));
        assert!(never.iter().any(|r| r.workload.producers == 2));
        let durable = load(&format!("{dir}/targets-durable.toml")).unwrap();
        assert!(durable.iter().all(|r| r.workload.acks == Acks::All));
        let e2e = durable.iter().find(|r| r.kind == Kind::E2e).unwrap();
        assert_eq!((e2e.workload.rate, e2e.workload.linger_us), (200_000, 0));
    }

    #[test]
    fn runs_override_defaults_and_bad_plans_say_why() {
        let runs = parse(
            "[defaults]\nmessage_size = 200\nrate = 10\n[[run]]\nkind = \"e2e\"\nrate = 50\n[[run]]\nkind = \"produce\"",
        )
        .unwrap();
        assert_eq!(runs[0].workload.rate, 50);
        assert_eq!(runs[1].workload.rate, 10);
        assert_eq!(runs[1].workload.message_size, 200);
        let err = |text: &str| format!("{:#}", parse(text).unwrap_err());
        assert!(err("[[run]]\nkind = \"fly\"").contains("unknown run kind"));
        assert!(err("[[run]]\nmessage_size = 1").contains("missing `kind`"));
        assert!(err("[[run]]\nkind = \"produce\"\nmesage_size = 1").contains("workload knobs"));
        assert!(err("[[run]]\nkind = \"produce\"\nmessage_size = 4").contains("at least 24"));
        assert!(err("[defaults]\n").contains("no [[run]]"));
        assert!(err("[[run]]\nkind = \"produce\"\npartitions = \"many\"").contains("cores"));
    }
}
