//! The adapter features whose paths the suite tests where they exist: subgroup reductions in
//! the kernels, and pass timestamps (`Gpu::time`, the benchmarks). The tests take whichever
//! path the adapter offers, so an adapter that stopped offering a feature would leave its path
//! untested without failing anything. `.ci/run` names what CI's lavapipe offers in
//! `WGQUANT_EXPECT_FEATURES` and runs this test, which fails if one is missing.

mod common;

/// The features `WGQUANT_EXPECT_FEATURES` may name, by their names in that list.
const KNOWN: [(&str, wgpu::Features); 2] =
    [("subgroup", wgpu::Features::SUBGROUP), ("timestamp-query", wgpu::Features::TIMESTAMP_QUERY)];

#[test]
#[ignore = "needs WGQUANT_EXPECT_FEATURES (a comma-separated list; .ci/run sets it and runs this with --ignored)"]
fn adapter_offers_the_expected_features() {
    let list = std::env::var("WGQUANT_EXPECT_FEATURES")
        .expect("WGQUANT_EXPECT_FEATURES names the features this adapter must offer, e.g. subgroup,timestamp-query");
    let gpu = common::gpu().expect("a GPU adapter");
    let offered = gpu.caps().features;
    let mut missing = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let (_, feature) = KNOWN.iter().find(|(known, _)| *known == name).unwrap_or_else(|| {
            panic!("unknown feature {name:?} in WGQUANT_EXPECT_FEATURES (known: {:?})", KNOWN.map(|(n, _)| n))
        });
        if !offered.contains(*feature) {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "{} does not offer {missing:?}", gpu.describe());
    // What the suite's checks of each feature rest on.
    assert_eq!(gpu.caps().has_subgroups(), offered.contains(wgpu::Features::SUBGROUP));
    assert_eq!(gpu.caps().has_timestamps(), offered.contains(wgpu::Features::TIMESTAMP_QUERY));
}
