//! safetensors files: a validating reader that reads one tensor at a time, and a writer that
//! lays files out as the `safetensors` crate does and fills them tensor by tensor.
//!
//! The reader makes every check of `safetensors::SafeTensors::read_metadata` (header cap, exact
//! file length, contiguous offsets with no overlaps or holes, checked size arithmetic), plus two
//! the crate and MLX skip: duplicate names and NUL or over-long names are rejected
//! (`tests/io_format.rs` holds a case for each). Only the header is held in memory; tensor data is
//! read on request with positioned reads, so peak memory is one tensor, and a file truncated
//! under us is an I/O error, never a `SIGBUS` as with a memory map.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::io::file_dtype::FileDType;
use crate::io::host::{byte_count, HostTensor};

/// The largest header accepted or written, as in the safetensors crate (`MAX_HEADER_SIZE`).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;
/// The longest tensor name accepted, in bytes (real names are a few dozen).
pub const MAX_NAME_BYTES: usize = 4096;
/// The header key that holds string metadata instead of a tensor.
const METADATA_KEY: &str = "__metadata__";

/// One tensor of a safetensors file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorEntry {
    /// The tensor's name (`model.layers.0.mlp.down_proj.weight`).
    pub name: String,
    /// The element type.
    pub dtype: FileDType,
    /// The dimensions.
    pub shape: Vec<usize>,
    /// Where the data starts in the file (after the header).
    pub(crate) file_offset: u64,
    /// Bytes of data.
    pub size_in_bytes: u64,
}

/// A safetensors file, opened and validated; tensor data stays on disk until read.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    file: File,
    tensors: Vec<TensorEntry>,
    by_name: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
}

/// A header entry as JSON states it, before validation.
#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

impl SafetensorsFile {
    /// Opens `path` and validates its header against the file's length. Reads only the header.
    ///
    /// # Errors
    /// [`Error::Io`], then the container errors in the order the header is read:
    /// [`Error::HeaderTooSmall`], [`Error::HeaderLength`], [`Error::HeaderJson`],
    /// [`Error::InvalidTensorName`], [`Error::DuplicateTensor`], [`Error::UnsupportedDtype`],
    /// [`Error::TensorTooLarge`], [`Error::TensorSize`], [`Error::InvalidOffsets`],
    /// [`Error::Truncated`] and [`Error::TrailingBytes`].
    pub fn open(path: &Path) -> Result<SafetensorsFile> {
        let io_error = |source| Error::Io { path: path.to_path_buf(), source };
        let file = crate::io::files::open_regular(path)?;
        let file_len = file.metadata().map_err(io_error)?.len();
        if file_len < 8 {
            return Err(Error::HeaderTooSmall { path: path.to_path_buf(), len: file_len });
        }
        let mut len_bytes = [0u8; 8];
        read_at(&file, path, 0, &mut len_bytes)?;
        let header_len = u64::from_le_bytes(len_bytes);
        // Both bounds before allocating: a hostile length must not size the buffer.
        if header_len > MAX_HEADER_BYTES || header_len > file_len - 8 {
            return Err(Error::HeaderLength { path: path.to_path_buf(), header_len, file_len, cap: MAX_HEADER_BYTES });
        }
        let mut header = vec![0u8; header_len as usize];
        read_at(&file, path, 8, &mut header)?;
        let data_start = 8 + header_len;
        let Header { tensors, metadata, data_len } = parse_header(path, &header, data_start)?;
        let expected = data_start.saturating_add(data_len);
        if file_len < expected {
            return Err(Error::Truncated { path: path.to_path_buf(), expected, actual: file_len });
        }
        if file_len > expected {
            return Err(Error::TrailingBytes { path: path.to_path_buf(), expected, actual: file_len });
        }
        let by_name = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(SafetensorsFile { path: path.to_path_buf(), file, tensors, by_name, metadata })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensors in file order.
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The `__metadata__` strings (`{"format": "mlx"}` in MLX files).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Reads the tensor called `name` into host memory.
    ///
    /// # Errors
    /// [`Error::MissingTensor`] when the file has no such tensor; [`Error::Io`] when the read
    /// fails (also when the file was truncated after it was opened).
    pub fn read(&self, name: &str) -> Result<HostTensor> {
        let entry = self
            .get(name)
            .ok_or_else(|| Error::MissingTensor { tensor: name.to_string(), reason: "not in this safetensors file" })?;
        let mut tensor = HostTensor::zeroed(entry.dtype, &entry.shape)?;
        read_at(&self.file, &self.path, entry.file_offset, tensor.bytes_mut())?;
        Ok(tensor)
    }
}

fn read_at(mut file: &File, path: &Path, offset: u64, buf: &mut [u8]) -> Result<()> {
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(buf))
        .map_err(|source| Error::Io { path: path.to_path_buf(), source })
}

/// A validated header.
struct Header {
    /// Tensors in file order.
    tensors: Vec<TensorEntry>,
    metadata: BTreeMap<String, String>,
    /// Bytes of the data section.
    data_len: u64,
}

/// A header as JSON states it: tensors in file order, metadata, and the first name that
/// appeared twice (serde_json would keep the last silently).
struct RawHeader {
    tensors: Vec<(String, RawEntry)>,
    metadata: BTreeMap<String, String>,
    first_duplicate: Option<String>,
}

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_map(RawHeaderVisitor)
    }
}

/// Reads each entry straight into its typed form (no `serde_json::Value` tree), so parsing
/// costs time and memory linear in the header's length with small constants.
struct RawHeaderVisitor;

impl<'de> serde::de::Visitor<'de> for RawHeaderVisitor {
    type Value = RawHeader;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<RawHeader, A::Error> {
        use serde::de::Error as _;
        let mut header = RawHeader { tensors: Vec::new(), metadata: BTreeMap::new(), first_duplicate: None };
        let mut seen = HashSet::new();
        while let Some(name) = map.next_key::<String>()? {
            if !seen.insert(name.clone()) && header.first_duplicate.is_none() {
                header.first_duplicate = Some(name.clone());
            }
            if name == METADATA_KEY {
                // `null` is what the safetensors crate and MLX write for no metadata.
                let strings: Option<BTreeMap<String, String>> = map
                    .next_value()
                    .map_err(|e| A::Error::custom(format!("{METADATA_KEY} must map strings to strings: {e}")))?;
                header.metadata = strings.unwrap_or_default();
            } else {
                let raw: RawEntry =
                    map.next_value().map_err(|e| A::Error::custom(format!("tensor \"{name}\": {e}")))?;
                header.tensors.push((name, raw));
            }
        }
        Ok(header)
    }
}

/// Parses and validates a header; `data_start` is the file offset of the data section.
fn parse_header(path: &Path, header: &[u8], data_start: u64) -> Result<Header> {
    let json_error = |message: String| Error::HeaderJson { path: path.to_path_buf(), message };
    let text = std::str::from_utf8(header).map_err(|e| json_error(format!("not UTF-8 ({e})")))?;
    let raw: RawHeader = serde_json::from_str(text).map_err(|e| json_error(format!("{e} (expected a JSON object)")))?;
    if let Some(name) = raw.first_duplicate {
        return Err(Error::DuplicateTensor { path: path.to_path_buf(), tensor: name });
    }

    let metadata = raw.metadata;
    let mut tensors = Vec::with_capacity(raw.tensors.len());
    for (name, raw) in raw.tensors {
        check_name(path, &name)?;
        let Some(dtype) = FileDType::from_safetensors_name(&raw.dtype) else {
            return Err(Error::UnsupportedDtype { path: path.to_path_buf(), tensor: name, dtype: raw.dtype });
        };
        let expected = byte_count(&raw.shape, dtype).ok_or_else(|| Error::TensorTooLarge {
            path: path.to_path_buf(),
            tensor: name.clone(),
            shape: raw.shape.clone(),
        })?;
        let (start, end) = raw.data_offsets;
        if end >= start && end - start != expected as u64 {
            return Err(Error::TensorSize {
                path: path.to_path_buf(),
                tensor: name,
                dtype,
                shape: raw.shape,
                expected: expected as u64,
                actual: end - start,
            });
        }
        tensors.push((name, dtype, raw.shape, start, end));
    }

    // Offsets must tile the data section from 0 in order: no overlaps, no holes.
    tensors.sort_by(|a, b| (a.3, a.4, &a.0).cmp(&(b.3, b.4, &b.0)));
    let mut next = 0u64;
    let mut entries = Vec::with_capacity(tensors.len());
    for (name, dtype, shape, start, end) in tensors {
        if start != next || end < start {
            return Err(Error::InvalidOffsets {
                path: path.to_path_buf(),
                tensor: name,
                start,
                end,
                expected_start: next,
            });
        }
        let file_offset = data_start.checked_add(start).ok_or_else(|| Error::InvalidOffsets {
            path: path.to_path_buf(),
            tensor: name.clone(),
            start,
            end,
            expected_start: next,
        })?;
        next = end;
        entries.push(TensorEntry { name, dtype, shape, file_offset, size_in_bytes: end - start });
    }
    Ok(Header { tensors: entries, metadata, data_len: next })
}

/// Rejects names that other tools would read differently: empty, over-long, or holding a NUL
/// (which C-string scanners stop at: "hidden tensor injection", safetensors#748).
fn check_name(path: &Path, name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_NAME_BYTES {
        "longer than 4096 bytes"
    } else if name.contains('\0') {
        "contains a NUL byte"
    } else {
        return Ok(());
    };
    let shown: String = name.chars().take(80).collect();
    Err(Error::InvalidTensorName { path: path.to_path_buf(), name: shown, reason })
}

/// The safetensors crate's dtype, whose order is the file layout's.
fn dtype_to_safetensors(dtype: FileDType) -> safetensors::Dtype {
    match dtype {
        FileDType::Bool => safetensors::Dtype::BOOL,
        FileDType::U8 => safetensors::Dtype::U8,
        FileDType::I8 => safetensors::Dtype::I8,
        FileDType::F8E5M2 => safetensors::Dtype::F8_E5M2,
        FileDType::F8E4M3 => safetensors::Dtype::F8_E4M3,
        FileDType::F8E8M0 => safetensors::Dtype::F8_E8M0,
        FileDType::I16 => safetensors::Dtype::I16,
        FileDType::U16 => safetensors::Dtype::U16,
        FileDType::F16 => safetensors::Dtype::F16,
        FileDType::BF16 => safetensors::Dtype::BF16,
        FileDType::I32 => safetensors::Dtype::I32,
        FileDType::U32 => safetensors::Dtype::U32,
        FileDType::F32 => safetensors::Dtype::F32,
        FileDType::C64 => safetensors::Dtype::C64,
        FileDType::F64 => safetensors::Dtype::F64,
        FileDType::I64 => safetensors::Dtype::I64,
        FileDType::U64 => safetensors::Dtype::U64,
    }
}

/// A tensor to be written: its name, dtype and shape (the data comes later).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// The tensor's name.
    pub name: String,
    /// The element type.
    pub dtype: FileDType,
    /// The dimensions.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// Bytes of data, or `None` on overflow.
    pub fn size_in_bytes(&self) -> Option<u64> {
        byte_count(&self.shape, self.dtype).map(|n| n as u64)
    }
}

/// Where each tensor of a file goes: the header bytes (length prefix included) and each
/// tensor's file offset and size, keyed by name.
struct Layout {
    header: Vec<u8>,
    slots: HashMap<String, Slot>,
    file_len: u64,
}

struct Slot {
    spec: TensorSpec,
    file_offset: u64,
    written: bool,
}

/// The layout the safetensors crate's `serialize` gives: tensors sorted by dtype alignment
/// (largest first) then name, so every tensor is aligned to its element size behind the
/// 8-byte-padded header; the header itself is the crate's `Metadata` serialized.
fn layout(path: &Path, specs: Vec<TensorSpec>, metadata: &BTreeMap<String, String>) -> Result<Layout> {
    let mut specs = specs;
    specs.sort_by(|a, b| {
        dtype_to_safetensors(b.dtype).cmp(&dtype_to_safetensors(a.dtype)).then_with(|| a.name.cmp(&b.name))
    });
    let mut offset = 0u64;
    let mut infos = Vec::with_capacity(specs.len());
    let mut data_offsets = Vec::with_capacity(specs.len());
    for pair in specs.windows(2) {
        if pair[0].name == pair[1].name {
            return Err(Error::DuplicateTensor { path: path.to_path_buf(), tensor: pair[0].name.clone() });
        }
    }
    for spec in &specs {
        check_name(path, &spec.name)?;
        let too_large =
            || Error::TensorTooLarge { path: path.to_path_buf(), tensor: spec.name.clone(), shape: spec.shape.clone() };
        let size = spec.size_in_bytes().ok_or_else(too_large)?;
        let end = offset.checked_add(size).ok_or_else(too_large)?;
        infos.push((
            spec.name.clone(),
            safetensors::tensor::TensorInfo {
                dtype: dtype_to_safetensors(spec.dtype),
                shape: spec.shape.clone(),
                data_offsets: (offset as usize, end as usize),
            },
        ));
        data_offsets.push(offset);
        offset = end;
    }
    let header_error =
        |e: &dyn std::fmt::Display| Error::HeaderJson { path: path.to_path_buf(), message: e.to_string() };
    // No metadata is no `__metadata__` key (an empty one next to no tensors serializes as
    // `{,"__metadata__":{}}`, which no reader takes).
    let metadata_map = (!metadata.is_empty())
        .then(|| metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<HashMap<String, String>>());
    let header = safetensors::tensor::Metadata::new(metadata_map, infos).map_err(|e| header_error(&e))?;
    let mut json = serde_json::to_vec(&header).map_err(|e| header_error(&e))?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let header_len = json.len() as u64;
    if header_len > MAX_HEADER_BYTES {
        return Err(Error::HeaderLength {
            path: path.to_path_buf(),
            header_len,
            file_len: 8 + header_len + offset,
            cap: MAX_HEADER_BYTES,
        });
    }
    let mut bytes = Vec::with_capacity(8 + json.len());
    bytes.extend_from_slice(&header_len.to_le_bytes());
    bytes.extend_from_slice(&json);
    let data_start = bytes.len() as u64;
    let slots = specs
        .into_iter()
        .zip(data_offsets)
        .map(|(spec, offset)| (spec.name.clone(), Slot { spec, file_offset: data_start + offset, written: false }))
        .collect();
    Ok(Layout { header: bytes, slots, file_len: data_start + offset })
}

/// Writes one safetensors file whose tensors arrive one at a time, in any order.
///
/// The header is written first from the specs; each tensor then goes to its final offset, so
/// only one tensor is ever in memory. [`SafetensorsWriter::finish`] checks that every tensor
/// was written and syncs the file.
pub struct SafetensorsWriter {
    path: PathBuf,
    file: File,
    layout: Layout,
}

impl SafetensorsWriter {
    /// Creates `path` (truncating it) for the tensors `specs`, with `metadata` in the header.
    ///
    /// # Errors
    /// [`Error::DuplicateTensor`], [`Error::InvalidTensorName`], [`Error::TensorTooLarge`],
    /// [`Error::HeaderLength`] for a header over the cap; [`Error::Io`].
    pub fn create(path: &Path, specs: Vec<TensorSpec>, metadata: &BTreeMap<String, String>) -> Result<Self> {
        let layout = layout(path, specs, metadata)?;
        let io_error = |source| Error::Io { path: path.to_path_buf(), source };
        let mut file = File::create(path).map_err(io_error)?;
        file.write_all(&layout.header).map_err(io_error)?;
        file.set_len(layout.file_len).map_err(io_error)?;
        Ok(SafetensorsWriter { path: path.to_path_buf(), file, layout })
    }

    /// The file's size once complete.
    pub fn file_len(&self) -> u64 {
        self.layout.file_len
    }

    /// Writes the data of the tensor called `name`.
    ///
    /// # Errors
    /// [`Error::UnexpectedTensor`] for a name not in the specs or written twice;
    /// [`Error::TensorDType`] or [`Error::TensorShape`] when `tensor` does not match its spec;
    /// [`Error::Io`].
    pub fn write(&mut self, name: &str, tensor: &HostTensor) -> Result<()> {
        let slot =
            self.layout.slots.get_mut(name).filter(|slot| !slot.written).ok_or_else(|| Error::UnexpectedTensor {
                tensor: name.to_string(),
                reason: "not planned for this file",
            })?;
        if tensor.dtype() != slot.spec.dtype {
            return Err(Error::TensorDType {
                tensor: name.to_string(),
                expected: slot.spec.dtype.safetensors_name(),
                got: tensor.dtype(),
                role: "the dtype planned for it in the output file",
            });
        }
        if tensor.shape() != slot.spec.shape {
            return Err(Error::TensorShape {
                tensor: name.to_string(),
                expected: slot.spec.shape.clone(),
                got: tensor.shape().to_vec(),
            });
        }
        let io_error = |source| Error::Io { path: self.path.clone(), source };
        self.file.seek(SeekFrom::Start(slot.file_offset)).map_err(io_error)?;
        self.file.write_all(tensor.bytes()).map_err(io_error)?;
        slot.written = true;
        Ok(())
    }

    /// Checks that every tensor was written and syncs the file to disk.
    ///
    /// # Errors
    /// [`Error::MissingTensor`] for a tensor never written; [`Error::Io`].
    pub fn finish(self) -> Result<()> {
        let mut missing: Vec<&str> =
            self.layout.slots.iter().filter(|(_, slot)| !slot.written).map(|(name, _)| name.as_str()).collect();
        missing.sort_unstable();
        if let Some(name) = missing.first() {
            return Err(Error::MissingTensor { tensor: name.to_string(), reason: "never written to the output file" });
        }
        self.file.sync_all().map_err(|source| Error::Io { path: self.path.clone(), source })
    }
}

/// Writes a whole safetensors file from tensors in memory (small files, tests, fixtures).
///
/// # Errors
/// As [`SafetensorsWriter::create`] and [`SafetensorsWriter::write`].
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, HostTensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let specs = tensors
        .iter()
        .map(|(name, t)| TensorSpec { name: name.clone(), dtype: t.dtype(), shape: t.shape().to_vec() })
        .collect();
    let mut writer = SafetensorsWriter::create(path, specs, metadata)?;
    for (name, tensor) in tensors {
        writer.write(name, tensor)?;
    }
    writer.finish()
}
