//! The example config in the repository stays valid.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use letl_node::config::{NodeConfig, Overrides};

#[test]
fn example_config_loads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../letl.example.toml");
    let config = NodeConfig::load(Some(&path), &Overrides::default()).unwrap();
    assert_eq!(config.tiers.len(), 5);
    assert_eq!(config.object_bytes_max, 64 << 30);
    let pmem = config
        .tiers
        .iter()
        .find(|t| t.name.as_str() == "pmem")
        .unwrap();
    assert_eq!(pmem.capacity_bytes, Some(16 << 30));
}

#[test]
fn example_pipelines_register() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines");
    let registry = letl_node::transforms::registry();
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let spec = letl_node::pipelines::spec::parse(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            spec.compile(&registry)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "the example pipelines are in {}",
        dir.display()
    );
}
