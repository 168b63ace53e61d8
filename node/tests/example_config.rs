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
