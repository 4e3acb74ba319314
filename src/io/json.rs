//! JSON objects read in order and with duplicate keys seen.
//!
//! serde_json (like Python's `json` and the safetensors crate) keeps the last of two equal keys;
//! a checkpoint that names one tensor twice means two different things to two readers, so the
//! safetensors header and the index are read through [`ObjectEntries`], which reports the first
//! duplicate instead.

use std::collections::HashSet;
use std::fmt;
use std::io::Write;
use std::marker::PhantomData;
use std::path::Path;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::Serialize;

use crate::error::{Error, Result};

/// The entries of a JSON object in file order, and the first key that appeared twice.
pub(crate) struct ObjectEntries<V> {
    pub entries: Vec<(String, V)>,
    pub first_duplicate: Option<String>,
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for ObjectEntries<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EntriesVisitor(PhantomData))
    }
}

struct EntriesVisitor<V>(PhantomData<V>);

impl<'de, V: Deserialize<'de>> Visitor<'de> for EntriesVisitor<V> {
    type Value = ObjectEntries<V>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = HashSet::new();
        let mut entries = Vec::new();
        let mut first_duplicate = None;
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value::<V>()?;
            if !seen.insert(key.clone()) && first_duplicate.is_none() {
                first_duplicate = Some(key.clone());
            }
            entries.push((key, value));
        }
        Ok(ObjectEntries { entries, first_duplicate })
    }
}

/// Writes `value` as Python's `json.dump(value, f, indent=4)` lays it out (mlx-lm's
/// `config.json` and index), and syncs the file.
pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let io_error = |source| Error::Io { path: path.to_path_buf(), source };
    let mut bytes = Vec::new();
    let mut serializer =
        serde_json::Serializer::with_formatter(&mut bytes, serde_json::ser::PrettyFormatter::with_indent(b"    "));
    value.serialize(&mut serializer).map_err(|e| io_error(e.into()))?;
    let mut file = std::fs::File::create(path).map_err(io_error)?;
    file.write_all(&bytes).map_err(io_error)?;
    file.sync_all().map_err(io_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_reports_duplicates() {
        let parsed: ObjectEntries<u32> = serde_json::from_str(r#"{"b": 1, "a": 2, "b": 3}"#).unwrap();
        let keys: Vec<&str> = parsed.entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "a", "b"]);
        assert_eq!(parsed.first_duplicate.as_deref(), Some("b"));
        assert!(serde_json::from_str::<ObjectEntries<u32>>("[1]").is_err());
    }
}
