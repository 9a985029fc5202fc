//! The folders are the architecture (README, "Layout"): libraries in `crates/`, services in
//! `services/`, programs in `bin/` and `tools/`, end-to-end tests in `tests/`, and every
//! dependency between them runs downward: crates → services → programs → tests. A crate may
//! use another crate; a service never another service; no program another program.

use std::path::{Path, PathBuf};

/// The layer of the package whose manifest is at `manifest` (under `root`).
fn layer(root: &Path, manifest: &Path) -> (u8, String) {
    let relative = manifest.strip_prefix(root).expect("a workspace member").to_path_buf();
    let top = relative
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    let rank = match top.as_str() {
        "crates" => 0,
        "services" => 1,
        "bin" | "tools" => 2,
        "tests" => 3,
        other => panic!("{} is in {other}/, which the layout does not name", relative.display()),
    };
    (
        rank,
        relative
            .parent()
            .map(Path::display)
            .map(|d| d.to_string())
            .unwrap_or_default(),
    )
}

#[test]
fn every_dependency_runs_downward() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("cargo metadata's JSON");
    let root = PathBuf::from(metadata["workspace_root"].as_str().expect("workspace_root"));
    let packages = metadata["packages"].as_array().expect("packages");
    let mut checked = 0;
    for package in packages {
        let manifest = PathBuf::from(package["manifest_path"].as_str().expect("manifest_path"));
        let (rank, dir) = layer(&root, &manifest);
        for dep in package["dependencies"].as_array().expect("dependencies") {
            let Some(path) = dep["path"].as_str() else { continue };
            let (dep_rank, dep_dir) = layer(&root, &PathBuf::from(path).join("Cargo.toml"));
            let downward = dep_rank < rank || (dep_rank == 0 && rank == 0);
            assert!(
                downward,
                "{dir} depends on {dep_dir}: dependencies run crates → services → programs → tests"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 20,
        "only {checked} dependencies between the workspace's packages"
    );
}
