//! Any bytes as a safetensors file: `SafetensorsFile::open` returns a value or a typed error,
//! never panics, and reads of what it accepted stay inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wgquant::io::SafetensorsFile;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, data).unwrap();
    if let Ok(file) = SafetensorsFile::open(&path) {
        for entry in file.tensors() {
            let tensor = file.read(&entry.name).unwrap();
            assert_eq!(tensor.bytes().len() as u64, entry.size_in_bytes);
        }
    }
});
