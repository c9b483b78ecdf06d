//! The idle-connection memory measurement needs one descriptor per connection
//! in each process; under a low open-files limit (1024 is a common default)
//! it cannot run, and that must not cost the run its throughput results.

#![cfg(target_os = "linux")]

use std::process::Command;

#[test]
fn a_low_open_files_limit_skips_the_idle_measurement_and_keeps_the_results() {
    let bench = env!("CARGO_BIN_EXE_anet-bench");
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 256 && exec {bench} --duration 0.05 --rounds 1 --concurrency 1 \
             --clients floor --threads 1 --idle-connections 1000 --json"
        ))
        .output()
        .expect("run anet-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "anet-bench failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    let json: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a JSON line")).expect("JSON");
    assert!(
        !json["results"].as_array().expect("results").is_empty(),
        "{stdout}"
    );
    assert!(json["server_idle_kib_per_connection"].is_null(), "{stdout}");
    assert!(stderr.contains("idle"), "the skip is explained: {stderr}");
}
