//! The import graph of src/ has no circle other than a parent module with its own children
//! (tests/tools/imports.py says how it is read and prints the graph).

use std::process::Command;

#[test]
fn src_imports_go_one_way() {
    let root = env!("CARGO_MANIFEST_DIR");
    let output = Command::new("python3")
        .arg(format!("{root}/tests/tools/imports.py"))
        .arg(format!("{root}/src"))
        .output()
        .expect("python3 runs");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        report.contains(" modules; edges between top-level modules:"),
        "the checker read no graph: {report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{report}");
}
