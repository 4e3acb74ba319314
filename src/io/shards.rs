//! The weight files of a model directory: `model.safetensors`, or shards
//! `model-0000i-of-0000n.safetensors` listed by `model.safetensors.index.json`.
//!
//! mlx-lm globs `model*.safetensors` and ignores the index, so a stale shard loads silently and
//! the last file wins on duplicate names. Here the index is
//! authoritative and the directory must agree with it exactly: every shard it lists exists,
//! every `model*.safetensors` is listed, every tensor is where the index says and nowhere else.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::io::host::HostTensor;
use crate::io::json::{write_json, ObjectEntries};
use crate::io::safetensors::{SafetensorsFile, TensorEntry};

/// The single weight file of an unsharded model.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The index of a sharded model (mlx-lm writes it for one file too).
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// mlx-lm's largest shard: `MAX_FILE_SIZE_GB = 5`, counted as `5 << 30` bytes (`make_shards`).
pub const MAX_SHARD_BYTES: u64 = 5 << 30;

/// The name mlx-lm gives shard `i` (from 1) of `n`.
pub fn shard_file_name(i: usize, n: usize) -> String {
    if n == 1 {
        SINGLE_FILE.to_string()
    } else {
        format!("model-{i:05}-of-{n:05}.safetensors")
    }
}

/// Whether mlx-lm's loader would pick the file up (`glob("model*.safetensors")`).
pub(crate) fn is_weight_file(name: &str) -> bool {
    name.starts_with("model") && name.ends_with(".safetensors")
}

#[derive(Deserialize)]
struct IndexJson {
    weight_map: ObjectEntries<String>,
}

/// The validated weight files of a model directory, with each tensor's location.
#[derive(Debug)]
pub struct WeightFiles {
    files: Vec<SafetensorsFile>,
    /// `(file, entry)` of every tensor, in file order and then entry order.
    order: Vec<(usize, usize)>,
    by_name: HashMap<String, usize>,
}

impl WeightFiles {
    /// Opens and validates the weight files of `dir` (headers only).
    ///
    /// # Errors
    /// [`Error::MissingFile`] when there are no weights, or shards without an index;
    /// [`Error::IndexJson`], [`Error::MissingShard`], [`Error::UnindexedShard`],
    /// [`Error::DuplicateWeight`], [`Error::IndexMismatch`], [`Error::UnindexedTensor`]; every
    /// error of [`SafetensorsFile::open`].
    pub fn open(dir: &Path) -> Result<WeightFiles> {
        let mut on_disk = BTreeSet::new();
        let listing = std::fs::read_dir(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        for entry in listing {
            let entry = entry.map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
            if let Some(name) = entry.file_name().to_str().filter(|n| is_weight_file(n)) {
                on_disk.insert(name.to_string());
            }
        }

        let index_path = dir.join(INDEX_FILE);
        let weight_map = if index_path.exists() { Some(read_index(&index_path)?) } else { None };
        let shard_names: Vec<String> = match &weight_map {
            Some(map) => map.values().cloned().collect::<BTreeSet<_>>().into_iter().collect(),
            None if on_disk.contains(SINGLE_FILE) => vec![SINGLE_FILE.to_string()],
            None if on_disk.is_empty() => {
                return Err(Error::MissingFile {
                    path: dir.join(SINGLE_FILE),
                    what: "the weights: model.safetensors, or shards with model.safetensors.index.json",
                })
            }
            None => return Err(Error::MissingFile { path: index_path, what: "sharded weights need their index" }),
        };
        if let Some(missing) = shard_names.iter().find(|name| !on_disk.contains(*name)) {
            return Err(Error::MissingShard { index: index_path, shard: missing.clone() });
        }
        if let Some(stale) = on_disk.iter().find(|name| !shard_names.contains(*name)) {
            return Err(Error::UnindexedShard { dir: dir.to_path_buf(), shard: stale.clone() });
        }
        let files =
            shard_names.iter().map(|name| SafetensorsFile::open(&dir.join(name))).collect::<Result<Vec<_>>>()?;

        let mut order: Vec<(usize, usize)> = Vec::new();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        for (f, file) in files.iter().enumerate() {
            for (e, entry) in file.tensors().iter().enumerate() {
                if let Some(&seen) = by_name.get(&entry.name) {
                    return Err(Error::DuplicateWeight {
                        tensor: entry.name.clone(),
                        first: files[order[seen].0].path().to_path_buf(),
                        second: file.path().to_path_buf(),
                    });
                }
                if let Some(map) = &weight_map {
                    if map.get(&entry.name) != Some(&shard_names[f]) {
                        return Err(Error::UnindexedTensor {
                            path: file.path().to_path_buf(),
                            tensor: entry.name.clone(),
                        });
                    }
                }
                by_name.insert(entry.name.clone(), order.len());
                order.push((f, e));
            }
        }
        if let Some(map) = &weight_map {
            if let Some((tensor, shard)) = map.iter().find(|(tensor, _)| !by_name.contains_key(*tensor)) {
                return Err(Error::IndexMismatch { index: index_path, tensor: tensor.clone(), shard: shard.clone() });
            }
        }
        Ok(WeightFiles { files, order, by_name })
    }

    /// The weight files, in shard order.
    pub fn files(&self) -> &[SafetensorsFile] {
        &self.files
    }

    /// Every tensor, in shard order and then file order.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorEntry> + '_ {
        self.order.iter().map(|&(f, e)| &self.files[f].tensors()[e])
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        let &(f, e) = self.order.get(*self.by_name.get(name)?)?;
        Some(&self.files[f].tensors()[e])
    }

    /// Whether a tensor called `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Reads the tensor called `name`.
    ///
    /// # Errors
    /// [`Error::MissingTensor`]; [`Error::Io`].
    pub fn read(&self, name: &str) -> Result<HostTensor> {
        let &(f, _) = self
            .by_name
            .get(name)
            .and_then(|&i| self.order.get(i))
            .ok_or_else(|| Error::MissingTensor { tensor: name.to_string(), reason: "not in the checkpoint" })?;
        self.files[f].read(name)
    }

    /// Bytes of tensor data in all files.
    pub fn data_bytes(&self) -> u64 {
        self.tensors().map(|t| t.size_in_bytes).sum()
    }
}

/// Reads the index's `weight_map`, rejecting duplicate names and shard names that are not
/// plain file names (an index must not point outside its directory).
fn read_index(path: &Path) -> Result<BTreeMap<String, String>> {
    let index_error = |message: String| Error::IndexJson { path: path.to_path_buf(), message };
    let bytes = crate::io::files::read_regular(path)?;
    let index: IndexJson = serde_json::from_slice(&bytes).map_err(|e| index_error(e.to_string()))?;
    if let Some(tensor) = index.weight_map.first_duplicate {
        return Err(index_error(format!("weight_map lists \"{tensor}\" twice")));
    }
    let mut map = BTreeMap::new();
    for (tensor, shard) in index.weight_map.entries {
        let plain = !shard.is_empty() && !shard.starts_with('.') && !shard.contains(['/', '\\']);
        if !plain || !is_weight_file(&shard) {
            return Err(index_error(format!(
                "weight_map maps \"{tensor}\" to \"{shard}\", which is not a model*.safetensors file name in this directory"
            )));
        }
        map.insert(tensor, shard);
    }
    Ok(map)
}

/// Splits tensors (name and bytes, in order) into shards as mlx-lm's `make_shards` does: a new
/// shard starts when the next tensor would take the current one past `max_bytes`. Unlike
/// mlx-lm, a tensor larger than `max_bytes` does not leave an empty shard behind it.
pub fn plan_shards<T>(tensors: Vec<(T, u64)>, max_bytes: u64) -> Vec<Vec<T>> {
    let mut shards = Vec::new();
    let mut current = Vec::new();
    let mut size = 0u64;
    for (tensor, bytes) in tensors {
        if !current.is_empty() && size.saturating_add(bytes) > max_bytes {
            shards.push(std::mem::take(&mut current));
            size = 0;
        }
        current.push(tensor);
        size = size.saturating_add(bytes);
    }
    shards.push(current);
    shards
}

/// Writes `model.safetensors.index.json` as mlx-lm's `save_model` does: `metadata` with
/// `total_size` (bytes of tensor data) and `total_parameters`, then the sorted `weight_map`.
///
/// # Errors
/// [`Error::Io`].
pub fn write_index(
    dir: &Path,
    weight_map: &BTreeMap<String, String>,
    total_size: u64,
    total_parameters: u64,
) -> Result<PathBuf> {
    let path = dir.join(INDEX_FILE);
    let index = serde_json::json!({
        "metadata": { "total_size": total_size, "total_parameters": total_parameters },
        "weight_map": weight_map,
    });
    write_json(&path, &index)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_follow_mlx_lm() {
        assert_eq!(shard_file_name(1, 1), "model.safetensors");
        assert_eq!(shard_file_name(2, 3), "model-00002-of-00003.safetensors");
    }

    #[test]
    fn shards_split_before_the_tensor_that_overflows() {
        let tensors = vec![("a", 4), ("b", 4), ("c", 3), ("d", 20), ("e", 1)];
        assert_eq!(plan_shards(tensors, 10), vec![vec!["a", "b"], vec!["c"], vec!["d"], vec!["e"]]);
        assert_eq!(plan_shards(Vec::<(&str, u64)>::new(), 10), vec![Vec::<&str>::new()]);
    }
}
