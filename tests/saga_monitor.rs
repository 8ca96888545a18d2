//! `weir run saga-monitor` through the binary at P = 1 and P = 2, against a reference that
//! decides each order's saga from its three timestamps: complete if reserved and paid came
//! less than the deadline after placed, else timed out naming the first step that did not.

mod common;

use std::collections::BTreeMap;
use std::error::Error;
use std::fs;

use serde_json::Value;

type TestResult = Result<(), Box<dyn Error>>;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
const DEADLINE_MS: i64 = 30_000;

/// `(order, outcome, detail)`: latency for completed sagas, the missing step otherwise.
type Outcome = (String, String, String);

fn reference(events: &[Value]) -> Option<Vec<Outcome>> {
    let mut steps: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for e in events {
        steps
            .entry(e["order_id"].as_str()?.to_string())
            .or_default()
            .insert(e["type"].as_str()?.to_string(), e["ts"].as_i64()?);
    }
    let mut outcomes = Vec::new();
    for (order, times) in steps {
        let placed = times["OrderPlaced"];
        let in_time = |step: &str| times.get(step).filter(|&&t| t - placed < DEADLINE_MS);
        let outcome = match (in_time("InventoryReserved"), in_time("PaymentProcessed")) {
            (Some(_), Some(paid)) => ("saga_completed", (paid - placed).to_string()),
            (Some(_), None) => ("saga_timed_out", "PaymentProcessed".to_string()),
            (None, _) => ("saga_timed_out", "InventoryReserved".to_string()),
        };
        outcomes.push((order, outcome.0.to_string(), outcome.1));
    }
    outcomes.sort();
    Some(outcomes)
}

fn job_outcomes(rows: &str) -> Option<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    for line in rows.lines() {
        let r: Value = serde_json::from_str(line).ok()?;
        let kind = r["type"].as_str()?.to_string();
        let detail = match kind.as_str() {
            "saga_completed" => r["latency_ms"].as_i64()?.to_string(),
            _ => r["missing"].as_str()?.to_string(),
        };
        outcomes.push((r["order_id"].as_str()?.to_string(), kind, detail));
    }
    outcomes.sort();
    Some(outcomes)
}

#[test]
fn sagas_complete_or_time_out_naming_the_missing_step() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("sagas.jsonl");
    let input_arg = input.to_str().ok_or("path")?;
    common::run_ok(
        WEIR,
        ["gen", "sagas", "--events", "20000", "--output", input_arg],
    )?;
    let events: Vec<Value> = fs::read_to_string(&input)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let expected = reference(&events).ok_or("bad generated events")?;
    for kind in ["saga_completed", "saga_timed_out"] {
        assert!(expected.iter().any(|o| o.1 == kind), "the input has {kind}");
    }
    assert!(
        expected.iter().any(|o| o.2 == "PaymentProcessed")
            && expected.iter().any(|o| o.2 == "InventoryReserved"),
        "both kinds of stall are in the input"
    );
    for p in ["1", "2"] {
        let output = dir.path().join(format!("out-{p}.jsonl"));
        let run = common::run_ok(
            WEIR,
            [
                "run",
                "saga-monitor",
                "--input",
                input_arg,
                "--output",
                output.to_str().ok_or("path")?,
                "--parallelism",
                p,
                "--metrics-addr",
                "off",
                "--quiet",
            ],
        )?;
        assert!(run.stderr.contains(" 0 late events"), "{}", run.stderr);
        let actual = job_outcomes(&fs::read_to_string(&output)?).ok_or("malformed output")?;
        assert_eq!(
            actual.len(),
            expected.len(),
            "one outcome per order at P={p}"
        );
        assert_eq!(actual, expected, "outcomes at P={p}");
    }
    Ok(())
}
