//! Shader portability without a GPU: every kernel specialisation wgquant can build is parsed and
//! validated by naga, then translated to MSL (Metal), SPIR-V (Vulkan) and HLSL (DX12), so Metal
//! and DX12 users are covered even though CI has no Mac or Windows machine. The MSL of one
//! canonical specialisation per kernel is kept as an insta snapshot, so a change to what Metal
//! receives shows up in review.

use naga::back::{hlsl, msl, spv};
use naga::valid::Capabilities;
use wgquant::kernels::{self, KernelKey};

/// What the kernels may use: f16 and subgroups (the optional features wgquant requests).
const CAPABILITIES: Capabilities = Capabilities::SHADER_FLOAT16.union(Capabilities::SUBGROUP);

fn module(key: &KernelKey) -> (naga::Module, naga::valid::ModuleInfo) {
    kernels::validated_module(&kernels::source(key), &key.constants(), CAPABILITIES)
        .unwrap_or_else(|e| panic!("{key}: {e}"))
}

fn to_msl(key: &KernelKey) -> String {
    let (module, info) = module(key);
    // MSL 2.4 (macOS 12): the oldest version with every simdgroup builtin naga emits.
    let options = msl::Options { lang_version: (2, 4), ..Default::default() };
    let pipeline =
        msl::PipelineOptions { entry_point: Some((naga::ShaderStage::Compute, "main".into())), ..Default::default() };
    msl::write_string(&module, &info, &options, &pipeline).unwrap_or_else(|e| panic!("{key}: MSL: {e:?}")).0
}

#[test]
fn every_specialisation_translates_to_msl_spirv_and_hlsl() {
    let keys = KernelKey::all();
    assert!(keys.len() >= 2 * 63, "{} specialisations", keys.len());
    for key in &keys {
        assert!(!to_msl(key).is_empty());
        let (module, info) = module(key);
        let spv_pipeline =
            spv::PipelineOptions { shader_stage: naga::ShaderStage::Compute, entry_point: "main".into() };
        let words = spv::write_vec(&module, &info, &spv::Options::default(), Some(&spv_pipeline))
            .unwrap_or_else(|e| panic!("{key}: SPIR-V: {e:?}"));
        assert_eq!(words[0], 0x0723_0203, "{key}: SPIR-V magic");
        // Shader model 6.0: wave (subgroup) intrinsics.
        let options = hlsl::Options { shader_model: hlsl::ShaderModel::V6_0, ..Default::default() };
        let pipeline = hlsl::PipelineOptions { entry_point: Some((naga::ShaderStage::Compute, "main".into())) };
        let mut hlsl_source = String::new();
        hlsl::Writer::new(&mut hlsl_source, &options, &pipeline)
            .write(&module, &info, None)
            .unwrap_or_else(|e| panic!("{key}: HLSL: {e:?}"));
        assert!(hlsl_source.contains("[numthreads("), "{key}: HLSL entry point");
    }
}

#[test]
fn kernels_fit_every_target_adapter() {
    // 32 KiB of workgroup memory and 1024 invocations: what lavapipe and Apple GPUs offer, the
    // smallest of the adapters wgquant targets (the H100 has 48 KiB). A device with less (the
    // WebGPU default is 16 KiB) gets `Error::ExceedsDeviceLimit` from `Gpu::pipeline`.
    for key in KernelKey::all() {
        let usage = kernels::resource_usage(&kernels::source(&key), &key.constants(), &wgpu::Features::all())
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        assert!(usage.workgroup_memory <= 32 * 1024, "{key}: {usage:?}");
        assert!(usage.invocations <= 1024, "{key}: {usage:?}");
    }
}

#[test]
fn msl_snapshots() {
    // One canonical specialisation per kernel: f16, group 64 and 4 bits where the kernel has
    // them, else the first key `all()` lists for that kernel.
    let keys = KernelKey::all();
    let mut seen = Vec::new();
    let canonical = keys
        .iter()
        .filter(|k| {
            !k.to_string().contains("f32") || !keys.iter().any(|o| same_kernel(o, k) && o.to_string().contains("f16"))
        })
        .filter(|k| {
            let label = k.to_string();
            // Bits and group size appear as `_b<bits>` and `_gs<size>` in labels.
            let bits = label.split('_').find(|p| p.len() == 2 && p.starts_with('b') && p[1..].parse::<u32>().is_ok());
            bits.is_none_or(|b| b == "b4") && (!label.contains("_gs") || label.contains("gs64"))
        });
    for key in canonical {
        if seen.iter().any(|s: &KernelKey| same_kernel(s, key)) {
            continue;
        }
        seen.push(key.clone());
        insta::assert_snapshot!(key.to_string(), to_msl(key));
    }
    assert!(seen.len() >= 10, "{} kernels snapshotted", seen.len());
}

fn same_kernel(a: &KernelKey, b: &KernelKey) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

#[test]
fn cooperative_kernel_validates_and_translates_to_spirv() {
    // qmv_coop runs only on Vulkan devices with wgpu's experimental cooperative matrices (CI's
    // lavapipe has none), so naga's check and SPIR-V translation are what CI can give it. It
    // must also fit NVIDIA's 48 KiB of workgroup memory with room for two workgroups.
    let key = KernelKey::QmvCoop { subgroups: 8 };
    let capabilities = CAPABILITIES
        | Capabilities::SUBGROUP_BARRIER
        | Capabilities::COOPERATIVE_MATRIX
        | Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    let (module, info) = kernels::validated_module(&kernels::source(&key), &key.constants(), capabilities)
        .unwrap_or_else(|e| panic!("{key}: {e}"));
    let spv_pipeline = spv::PipelineOptions { shader_stage: naga::ShaderStage::Compute, entry_point: "main".into() };
    let words = spv::write_vec(&module, &info, &spv::Options::default(), Some(&spv_pipeline))
        .unwrap_or_else(|e| panic!("{key}: SPIR-V: {e:?}"));
    assert_eq!(words[0], 0x0723_0203, "{key}: SPIR-V magic");
    let usage = kernels::resource_usage(&kernels::source(&key), &key.constants(), &wgpu::Features::all())
        .unwrap_or_else(|e| panic!("{key}: {e}"));
    assert!(usage.workgroup_memory <= 24 * 1024, "{key}: {usage:?}");
    assert_eq!(usage.invocations, 256, "{key}: {usage:?}");
}
