//! The pipeline cache and the binding cache: pipelines by kernel key (checked against the
//! device limits before wgpu sees them), their bind group layouts, read-only buffers by content
//! (uniform parameters, small batch tables), and bind groups by the identity of what they bind.

use std::any::{Any, TypeId};
use std::hash::{Hash, Hasher};

use hashbrown::HashTable;
use rustc_hash::{FxHashMap, FxHasher};

use super::{BufferWindow, Dispatch, Gpu};
use crate::error::{Error, Result};
use crate::kernels::{self, KernelKey};
use std::sync::Arc;

/// Distinct contents kept as read-only buffers (parameter blocks, small batch tables); past it
/// the cache starts over. A decode step of a 32-block model uses a few dozen.
const MAX_CONTENTS: usize = 4096;

/// Batch tables up to this size are kept by content, so that a product repeated with the same
/// batch layout (every decode step) binds the same table and hits the bind group cache; larger
/// ones are made per call, whose work dwarfs the upload.
pub(crate) const MAX_CACHED_TABLE_BYTES: usize = 4096;

/// Entries one memo keeps ([`Gpu::memo`]); past it the memo starts over.
const MAX_MEMO_ENTRIES: usize = 1024;

/// Per-device memos of ops' planning, one map per key and value type.
pub(super) type Memos = FxHashMap<TypeId, Box<dyn Any + Send>>;

/// Bind groups kept; past it the cache starts over.
const MAX_BIND_GROUPS: usize = 16384;

/// What a bind group binds: its layout, the parameters' uniform buffer and each window.
#[derive(Clone, PartialEq, Eq)]
struct BindKey {
    layout: wgpu::BindGroupLayout,
    uniform: wgpu::Buffer,
    windows: Vec<(wgpu::Buffer, u64, u64)>,
}

impl BindKey {
    fn hash_value(&self) -> u64 {
        bind_hash(&self.layout, &self.uniform, self.windows.iter().map(|(b, o, s)| (b, *o, *s)))
    }

    /// Whether the key binds exactly these parts (compared without cloning them).
    fn binds(&self, layout: &wgpu::BindGroupLayout, uniform: &wgpu::Buffer, windows: &[BufferWindow<'_>]) -> bool {
        self.layout == *layout
            && self.uniform == *uniform
            && self.windows.len() == windows.len()
            && self.windows.iter().zip(windows).all(|((b, o, s), w)| b == w.buffer && *o == w.offset && *s == w.size)
    }
}

/// The hash of a bind group's key from its parts, owned or borrowed alike, so that a lookup
/// needs no key: building one clones every buffer handle (two reference counts each).
fn bind_hash<'a>(
    layout: &wgpu::BindGroupLayout,
    uniform: &wgpu::Buffer,
    windows: impl Iterator<Item = (&'a wgpu::Buffer, u64, u64)>,
) -> u64 {
    let mut h = FxHasher::default();
    layout.hash(&mut h);
    uniform.hash(&mut h);
    for (buffer, offset, size) in windows {
        buffer.hash(&mut h);
        offset.hash(&mut h);
        size.hash(&mut h);
    }
    h.finish()
}

/// Cached layouts, contents and bind groups. A bind group is cached only when wgquant sees the
/// end of every buffer it binds (tensors' buffers and the cached contents): dropping such a
/// buffer evicts the groups that bind it, so that the cache never keeps memory alive.
#[derive(Default)]
pub(super) struct Bindings {
    layouts: FxHashMap<wgpu::ComputePipeline, wgpu::BindGroupLayout>,
    /// Per usage, buffers by their bytes (looked up by a borrowed slice: no key is built).
    contents: Vec<(wgpu::BufferUsages, FxHashMap<Vec<u8>, wgpu::Buffer>)>,
    groups: HashTable<(BindKey, wgpu::BindGroup)>,
    /// Buffers whose end wgquant sees, with the keys of the cached groups that bind them.
    tracked: FxHashMap<wgpu::Buffer, Vec<BindKey>>,
    /// Bind groups created (cache misses), for [`Gpu::bind_groups_created`].
    created: u64,
}

impl Bindings {
    /// The kept buffer of `usage` holding `contents`, if there is one.
    fn cached_contents(&self, usage: wgpu::BufferUsages, contents: &[u8]) -> Option<&wgpu::Buffer> {
        self.contents.iter().find(|(u, _)| *u == usage).and_then(|(_, map)| map.get(contents))
    }

    fn forget_all_groups(&mut self) {
        self.groups.clear();
        self.tracked.values_mut().for_each(Vec::clear);
    }
}

impl Gpu {
    /// The compute pipeline for `key`, built on first use. Before wgpu sees the shader, its
    /// workgroup memory and size are checked against the device limits: wgpu 30 does not check
    /// workgroup memory, and a kernel over the limit hangs some drivers (the H100) silently.
    pub(crate) fn pipeline(&self, key: &KernelKey) -> Result<Arc<wgpu::ComputePipeline>> {
        if let Some(p) = self.inner.pipelines.lock().ok().and_then(|m| m.get(key).cloned()) {
            return Ok(p);
        }
        let label = key.to_string();
        let source = kernels::source(key);
        let constants = key.constants();
        let usage = kernels::resource_usage(&source, &constants, &self.inner.caps.features)
            .map_err(|message| Error::Validation { what: label.clone(), message })?;
        let limits = &self.inner.caps.limits;
        if usage.workgroup_memory > u64::from(limits.max_compute_workgroup_storage_size) {
            return Err(Error::ExceedsDeviceLimit {
                op: key.op(),
                what: "workgroup memory (bytes)",
                value: usage.workgroup_memory,
                limit: limits.max_compute_workgroup_storage_size.into(),
            });
        }
        if usage.invocations > u64::from(limits.max_compute_invocations_per_workgroup) {
            return Err(Error::ExceedsDeviceLimit {
                op: key.op(),
                what: "invocations per workgroup",
                value: usage.invocations,
                limit: limits.max_compute_invocations_per_workgroup.into(),
            });
        }
        let pipeline = self.scoped(&label, || {
            let module = self.inner.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&label),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
            let constants: Vec<(&str, f64)> = constants.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            self.inner.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&label),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            })
        })?;
        let pipeline = Arc::new(pipeline);
        if let Ok(mut map) = self.inner.pipelines.lock() {
            map.insert(key.clone(), Arc::clone(&pipeline));
        }
        Ok(pipeline)
    }

    /// What `build` makes of `key`, made once per device and key and kept: an op keeps the
    /// planning of a call that repeats (a decode step's products) rather than redo it per
    /// call. `build` runs outside the lock (it may compile pipelines); of two threads building
    /// one key at once, both results are correct and the later is kept.
    pub(crate) fn memo<K, V>(&self, key: &K, build: impl FnOnce() -> Result<V>) -> Result<Arc<V>>
    where
        K: Hash + Eq + Clone + Send + 'static,
        V: Send + Sync + 'static,
    {
        fn map_of<K: Hash + Eq + Send + 'static, V: Send + Sync + 'static>(
            memos: &mut Memos,
        ) -> &mut FxHashMap<K, Arc<V>> {
            memos
                .entry(TypeId::of::<FxHashMap<K, Arc<V>>>())
                .or_insert_with(|| Box::new(FxHashMap::<K, Arc<V>>::default()))
                .downcast_mut()
                .expect("each memo is filed under its own type")
        }
        let lock = || self.inner.memos.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(value) = map_of::<K, V>(&mut lock()).get(key) {
            return Ok(Arc::clone(value));
        }
        let value = Arc::new(build()?);
        let mut memos = lock();
        let map = map_of::<K, V>(&mut memos);
        if map.len() >= MAX_MEMO_ENTRIES {
            map.clear();
        }
        map.insert(key.clone(), Arc::clone(&value));
        Ok(value)
    }

    /// The bind group of `d`: its parameters at binding 0, its windows at 1, 2, ... Served
    /// from the cache when the same layout, parameters and windows were bound before.
    pub(super) fn bind_group(&self, d: &Dispatch<'_>) -> wgpu::BindGroup {
        let device = &self.inner.device;
        let mut b = self.inner.bindings.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // The hit, through borrowed parts only.
        let layout = b.layouts.get(d.pipeline);
        let uniform = b.cached_contents(wgpu::BufferUsages::UNIFORM, &d.params);
        if let (Some(layout), Some(uniform)) = (layout, uniform) {
            let hash = bind_hash(layout, uniform, d.buffers.iter().map(|w| (w.buffer, w.offset, w.size)));
            if let Some((_, group)) = b.groups.find(hash, |(k, _)| k.binds(layout, uniform, &d.buffers)) {
                return group.clone();
            }
        }
        let layout = b.layouts.entry(d.pipeline.clone()).or_insert_with(|| d.pipeline.get_bind_group_layout(0)).clone();
        let uniform = self.buffer_of_contents(&mut b, "wgquant params", &d.params, wgpu::BufferUsages::UNIFORM);
        let key = BindKey {
            layout,
            uniform,
            windows: d.buffers.iter().map(|w| (w.buffer.clone(), w.offset, w.size)).collect(),
        };
        // Not cached: the lookup above missed, or its layout or uniform is new (and so is the key).
        let hash = key.hash_value();
        let mut entries = Vec::with_capacity(key.windows.len() + 1);
        entries.push(wgpu::BindGroupEntry { binding: 0, resource: key.uniform.as_entire_binding() });
        for (i, (buffer, offset, size)) in key.windows.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer,
                    offset: *offset,
                    size: wgpu::BufferSize::new(*size),
                }),
            });
        }
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &key.layout,
            entries: &entries,
        });
        b.created += 1;
        let cacheable =
            b.tracked.contains_key(&key.uniform) && key.windows.iter().all(|w| b.tracked.contains_key(&w.0));
        if cacheable {
            if b.groups.len() >= MAX_BIND_GROUPS {
                b.forget_all_groups();
            }
            for buffer in std::iter::once(&key.uniform).chain(key.windows.iter().map(|w| &w.0)) {
                if let Some(keys) = b.tracked.get_mut(buffer) {
                    keys.push(key.clone());
                }
            }
            b.groups.insert_unique(hash, (key, group.clone()), |(k, _)| k.hash_value());
        }
        group
    }

    /// Bind groups wgquant has created on this device (a diagnostic: a workload that repeats
    /// on the same tensors, such as a decode step, creates none once its groups are cached).
    pub fn bind_groups_created(&self) -> u64 {
        self.inner.bindings.lock().unwrap_or_else(std::sync::PoisonError::into_inner).created
    }

    /// A read-only buffer holding `contents`, shared by every caller that asks for the same
    /// bytes and usage (the contents never change, so sharing is safe while a batch still
    /// binds an evicted one: the bind group keeps it alive).
    fn buffer_of_contents(
        &self,
        b: &mut Bindings,
        what: &str,
        contents: &[u8],
        usage: wgpu::BufferUsages,
    ) -> wgpu::Buffer {
        if let Some(buffer) = b.cached_contents(usage, contents) {
            return buffer.clone();
        }
        if b.contents.iter().map(|(_, map)| map.len()).sum::<usize>() >= MAX_CONTENTS {
            let stale: Vec<wgpu::Buffer> = b.contents.drain(..).flat_map(|(_, map)| map.into_values()).collect();
            stale.iter().for_each(|u| drop(b.tracked.remove(u)));
            b.forget_all_groups();
        }
        let buffer = self.buffer_holding(what, contents, usage);
        match b.contents.iter_mut().find(|(u, _)| *u == usage) {
            Some((_, map)) => drop(map.insert(contents.to_vec(), buffer.clone())),
            None => b.contents.push((usage, FxHashMap::from_iter([(contents.to_vec(), buffer.clone())]))),
        }
        b.tracked.insert(buffer.clone(), Vec::new());
        buffer
    }

    /// A storage buffer holding a kernel's batch table (`words`), kept by content when small
    /// ([`MAX_CACHED_TABLE_BYTES`]).
    pub(crate) fn table_buffer(&self, what: &'static str, words: &[u32]) -> Result<wgpu::Buffer> {
        if std::mem::size_of_val(words) > MAX_CACHED_TABLE_BYTES {
            return self.create_buffer_init(what, bytemuck::cast_slice(words));
        }
        // Padded to whole vectors here (as `create_buffer_init` pads), so equal tables share.
        let mut padded = words.to_vec();
        padded.resize(words.len().max(1).next_multiple_of(super::VECTOR_BYTES as usize / 4), 0);
        let mut b = self.inner.bindings.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(self.buffer_of_contents(&mut b, what, bytemuck::cast_slice(&padded), super::memory::STORAGE_USAGES))
    }

    /// Lets the binding cache hold bind groups that bind `buffer` (its drop must call
    /// [`Gpu::forget_bindings`] or keep it in the pool).
    pub(super) fn track(&self, buffer: &wgpu::Buffer) {
        let mut b = self.inner.bindings.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        b.tracked.insert(buffer.clone(), Vec::new());
    }

    /// Evicts every cached bind group that binds `buffer`, which is going away.
    pub(super) fn forget_bindings(&self, buffer: &wgpu::Buffer) {
        let mut b = self.inner.bindings.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(keys) = b.tracked.remove(buffer) else { return };
        for key in keys {
            if let Ok(entry) = b.groups.find_entry(key.hash_value(), |(k, _)| *k == key) {
                entry.remove();
            }
            // The other buffers' lists must not keep this one alive through the key.
            for other in std::iter::once(&key.uniform).chain(key.windows.iter().map(|w| &w.0)) {
                if other != buffer {
                    if let Some(list) = b.tracked.get_mut(other) {
                        list.retain(|k| k != &key);
                    }
                }
            }
        }
    }
}
