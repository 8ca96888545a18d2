//! `weir describe`: a job's graph as text (one line per node), or with `--dot` as Graphviz
//! DOT alone, which `dot` renders; both name each node's uid, key type, detail and state
//! tables, and mark the steps operator APIs add (splits, ports) as internal.

use std::io::Write;
use std::process::{Command, Output, Stdio};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn weir(args: &[&str]) -> std::io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_weir")).args(args).output()
}

/// The stdout of `weir describe ARGS`, which must succeed.
fn describe(args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let out = weir(&[&["describe"], args].concat())?;
    if !out.status.success() {
        return Err(format!(
            "weir describe {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The text and the DOT of `weir describe ARGS`, from two runs (without and with `--dot`).
fn text_and_dot(args: &[&str]) -> Result<(String, String), Box<dyn std::error::Error>> {
    Ok((describe(args)?, describe(&[args, &["--dot"]].concat())?))
}

/// The line of node `name` in a described graph (`  [3] window Keyed x1 ..`).
fn node_line<'a>(graph: &'a str, name: &str) -> Option<&'a str> {
    graph
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
}

/// The DOT statement of node `name` (`  n2 [label="window\n..", shape=box3d];`).
fn dot_node<'a>(dot: &'a str, name: &str) -> Option<&'a str> {
    dot.lines()
        .find(|l| l.contains(&format!("[label=\"{name}\\n")))
}

/// Every bundled job (as `weir jobs` lists them) and each Nexmark query with state.
fn every_job() -> Result<Vec<Vec<String>>, Box<dyn std::error::Error>> {
    let jobs = String::from_utf8(weir(&["jobs"])?.stdout)?;
    let mut all: Vec<Vec<String>> = jobs
        .lines()
        .filter_map(|l| Some(vec![l.split_whitespace().next()?.to_string()]))
        .collect();
    for query in ["q3", "q4", "q5", "q7", "q8"] {
        all.push(["nexmark", "--query", query].map(String::from).to_vec());
    }
    Ok(all)
}

#[test]
fn describe_prints_the_graph_as_text_without_touching_files() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "describe",
            "order-analytics",
            "--parallelism",
            "2",
            "--input",
            "missing.jsonl",
        ])
        .current_dir(dir.path())
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    for node in [
        "orders",
        "timestamps",
        "window",
        "high-value-customers",
        "union",
        "output",
        // The source's dead-letter output and the sink that writes it.
        "orders.dead_letters",
        "dead-letters",
    ] {
        assert!(
            text.contains(&format!("] {node} ")),
            "node {node} missing from:\n{text}"
        );
    }
    assert!(text.contains("hash exchange over key groups"), "{text}");
    assert!(!text.contains("digraph"), "DOT only with --dot:\n{text}");
    assert_eq!(
        std::fs::read_dir(dir.path())?.count(),
        0,
        "describe must not create files"
    );

    let text = describe(&["window-agg", "--window", "session:5s"])?;
    assert!(text.contains("session gap 5000ms"), "{text}");
    assert!(
        text.contains("(chained)"),
        "at parallelism 1 everything is chained:\n{text}"
    );
    Ok(())
}

#[test]
fn describe_dot_prints_only_dot_that_graphviz_renders() -> TestResult {
    for args in every_job()? {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (text, dot) = text_and_dot(&args)?;
        assert!(
            dot.starts_with("digraph \"") && dot.ends_with("}\n"),
            "{args:?}: not DOT alone:\n{dot}"
        );
        // One DOT node per line of the text (after its `job ..` heading).
        assert_eq!(
            dot.matches(" [label=").count(),
            text.lines().filter(|l| l.starts_with("  [")).count(),
            "{args:?}:\n{text}\n{dot}"
        );
        let mut render = Command::new("dot")
            .arg("-Tsvg")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("Graphviz `dot` ({e}): scripts/setup installs it"))?;
        render
            .stdin
            .take()
            .ok_or("dot's stdin")?
            .write_all(dot.as_bytes())?;
        let svg = render.wait_with_output()?;
        let stderr = String::from_utf8_lossy(&svg.stderr);
        assert!(
            svg.status.success() && stderr.is_empty(),
            "{args:?}: dot: {stderr}"
        );
        assert!(String::from_utf8(svg.stdout)?.contains("<svg"));
    }
    Ok(())
}

#[test]
fn dot_labels_show_uid_key_detail_and_state() -> TestResult {
    let (text, dot) = text_and_dot(&["window-agg", "--window", "hop:60s/10s"])?;
    let window = dot_node(&dot, "window").ok_or_else(|| format!("no window in:\n{dot}"))?;
    assert!(
        window.contains(
            "[label=\"window\\nx1\\nuid window\\nkey SharedStr\\nhop 60000ms every 10000ms, \
             allowed lateness 0ms\\nstate: window-panes\", shape=box3d]"
        ),
        "{window}"
    );
    let line = node_line(&text, "window").ok_or_else(|| format!("no window in:\n{text}"))?;
    assert!(
        line.ends_with(
            ": key SharedStr; hop 60000ms every 10000ms, allowed lateness 0ms; state: window-panes"
        ),
        "{line}"
    );
    // A source and a sink show what they read and write.
    let input = dot_node(&dot, "input").ok_or("no input node")?;
    assert!(input.contains("\\nuid input\\nfile <input>"), "{input}");
    // Top-N ranks per window: its key is the window's bounds.
    let (_, dot) = text_and_dot(&["window-agg", "--top", "3"])?;
    let top = dot_node(&dot, "top-n").ok_or("no top-n node")?;
    assert!(top.contains("\\nkey (i64, i64)\\n"), "{top}");
    Ok(())
}

#[test]
fn internal_nodes_are_marked_in_the_text_and_dashed_in_the_dot() -> TestResult {
    // saga-monitor: the pattern's timeouts leave it by a side-output split with two ports,
    // and the source's dead letters by a port; the job wrote the rest.
    let (text, dot) = text_and_dot(&["saga-monitor"])?;
    let internal = [
        "timeouts",
        "timeouts.main",
        "timeouts.side",
        "events.dead_letters",
    ];
    let written = ["events", "timestamps", "cep", "flat_map", "union", "output"];
    for (nodes, is_internal) in [(&internal[..], true), (&written[..], false)] {
        for node in nodes {
            let line = node_line(&text, node).ok_or_else(|| format!("no {node}:\n{text}"))?;
            let statement = dot_node(&dot, node).ok_or_else(|| format!("no {node}:\n{dot}"))?;
            assert_eq!(line.contains(" internal uid="), is_internal, "{line}");
            assert_eq!(
                statement.contains("style=dashed"),
                is_internal,
                "{statement}"
            );
        }
    }
    // A window's results are picked out of its output by an internal step.
    let text = describe(&["window-agg"])?;
    let picks = node_line(&text, "flat_map").ok_or("no flat_map")?;
    assert!(
        picks.contains(" internal uid=") && picks.contains("<- window"),
        "{picks}"
    );
    Ok(())
}

#[test]
fn describe_names_the_state_tables_of_every_keyed_operator() -> TestResult {
    // Every keyed operator of every bundled job (and Nexmark query) names its key type and
    // tables, in the text and the DOT.
    let mut keyed = 0;
    for args in every_job()? {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (graph, dot) = text_and_dot(&args)?;
        for line in graph.lines().filter(|l| l.contains(" Keyed ")) {
            assert!(
                line.contains(" : key ") && line.contains("; state: "),
                "{args:?}: no key or tables in `{line}`"
            );
            keyed += 1;
        }
        for (in_text, in_dot) in [("; state: ", "\\nstate: "), (" : key ", "\\nkey ")] {
            assert_eq!(
                graph.matches(in_text).count(),
                dot.matches(in_dot).count(),
                "{args:?}: the DOT labels name the same `{in_dot}`:\n{graph}\n{dot}"
            );
        }
    }
    assert!(
        keyed >= 10,
        "only {keyed} keyed operators in the bundled jobs"
    );

    // The names are those of the tables the operators open (the metrics' `table` label).
    let cases: [(&[&str], &str, &str); 7] = [
        (&["window-agg"], "window", "; state: window-panes"),
        (
            &["window-agg", "--window", "session:5s"],
            "window",
            "; state: sessions",
        ),
        (
            &["window-agg", "--top", "3"],
            "top-n",
            "; state: top-n-candidates",
        ),
        (
            &["account-balances", "--parallelism", "2"],
            "balances",
            "; state: process-state (queryable as `balances`)",
        ),
        (&["account-balances"], "window", "; state: window-panes"),
        (&["order-analytics"], "dedup", "; state: seen-ids"),
        (&["saga-monitor"], "cep", "; state: cep-keys"),
    ];
    for (args, node, state) in cases {
        let (graph, dot) = text_and_dot(args)?;
        let line = node_line(&graph, node).ok_or_else(|| format!("no {node} in:\n{graph}"))?;
        assert!(
            line.ends_with(state),
            "{args:?}: `{line}` should end with `{state}`"
        );
        let label = dot_node(&dot, node).ok_or_else(|| format!("no {node} in:\n{dot}"))?;
        let state = state.trim_start_matches("; ");
        assert!(
            label.contains(&format!("\\n{state}\"")),
            "{args:?}: {label}"
        );
    }
    Ok(())
}

#[test]
fn window_agg_sums_per_reader_at_parallelism_2_unless_asked_for_one_phase() -> TestResult {
    let local = |args: &[&str]| -> Result<bool, Box<dyn std::error::Error>> {
        let graph = describe(&[&["window-agg"], args].concat())?;
        Ok(node_line(&graph, "local-window").is_some())
    };
    assert!(local(&["--parallelism", "2"])?, "two phases at P = 2");
    assert!(!local(&["--parallelism", "1"])?, "one phase at P = 1");
    let one = ["--parallelism", "2", "--agg-phase-strategy", "one-phase"];
    assert!(!local(&one)?, "one phase when asked");
    let session = ["--parallelism", "2", "--window", "session:5s"];
    assert!(!local(&session)?, "one phase for sessions");
    Ok(())
}
