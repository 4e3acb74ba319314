//! Any bytes as `config.json`: reading it and its `"quantization"` section (defaults, per-layer
//! entries, modes) returns a value or a typed error, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wgquant::io::ModelConfig;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, data).unwrap();
    if let Ok(config) = ModelConfig::read(&path) {
        if let Ok(Some(quantization)) = config.quantization() {
            for path in quantization.layers.keys() {
                let _ = quantization.params_for(path, true);
            }
        }
        let _ = config.conversion_dtype();
    }
});
