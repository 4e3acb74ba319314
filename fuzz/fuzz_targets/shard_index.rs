//! Any bytes as `model.safetensors.index.json` beside two valid shards: `WeightFiles::open`
//! returns the checked file set or a typed error, never panics.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use wgquant::io::{write_safetensors, HostTensor, WeightFiles, INDEX_FILE};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    for (i, name) in ["a.weight", "b.weight"].into_iter().enumerate() {
        let tensor = HostTensor::from_values(&[1.0f32, 2.0], &[2]).unwrap();
        let file = dir.path().join(format!("model-0000{}-of-00002.safetensors", i + 1));
        write_safetensors(&file, &[(name.to_string(), tensor)], &BTreeMap::new()).unwrap();
    }
    std::fs::write(dir.path().join(INDEX_FILE), data).unwrap();
    if let Ok(weights) = WeightFiles::open(dir.path()) {
        for entry in weights.tensors() {
            weights.read(&entry.name).unwrap();
        }
    }
});
