//! The integer-arithmetic f32 operations of `wgsl/common/softfloat.wgsl` against the host's
//! IEEE arithmetic, bit for bit, on random operands plus zeros, subnormals, infinities and NaN;
//! and the fp formats of `wgsl/common/fp_formats.wgsl` against their CPU twin. These decide
//! every quantized code and stored scale, so they are checked on their own.

mod common;

use common::Rng;
use half::{bf16, f16};
use wgpu::util::DeviceExt;
use wgquant::{reference, DType};

/// Runs `op(a[i], b[i])` for every i in a one-off kernel around the snippet; returns the bits.
fn run(gpu: &wgquant::Gpu, op: &str, a: &[u32], b: &[u32]) -> Vec<u32> {
    let source = format!(
        "{}\n@group(0) @binding(0) var<storage, read> a: array<u32>;\n\
         @group(0) @binding(1) var<storage, read> b: array<u32>;\n\
         @group(0) @binding(2) var<storage, read_write> out: array<u32>;\n\
         @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) id: vec3<u32>) {{\n\
           let i = id.x; if i >= arrayLength(&out) {{ return; }}\n\
           let x = bitcast<f32>(a[i]); let y = bitcast<f32>(b[i]); let yu = b[i];\n\
           out[i] = {op};\n\
         }}",
        [
            include_str!("../wgsl/common/softfloat.wgsl"),
            include_str!("../wgsl/common/dtype.wgsl"),
            include_str!("../wgsl/common/fp_formats.wgsl"),
        ]
        .join("\n")
    );
    let device = gpu.device();
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("softfloat test"),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("softfloat test"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    let buffer = |data: &[u32]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(data),
            usage,
        })
    };
    let (ba, bb) = (buffer(a), buffer(b));
    let out = wgquant::Tensor::zeros(gpu, &[a.len()], wgquant::DType::U32).unwrap();
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry { binding: 0, resource: ba.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 1, resource: bb.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 2, resource: out.buffer().as_entire_binding() },
        ],
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups((a.len() as u32).div_ceil(64), 1, 1);
    }
    gpu.queue().submit([encoder.finish()]);
    out.to_vec::<u32>().unwrap()
}

/// Random bit patterns biased towards the hard cases.
fn operands(rng: &mut Rng, n: usize) -> Vec<u32> {
    let specials = [
        0u32,
        0x8000_0000,
        1,
        0x8000_0001,
        0x007f_ffff,
        0x0080_0000,
        0x7f7f_ffff,
        0x7f80_0000,
        0xff80_0000,
        0x7fc0_0000,
        0x3f80_0000,
    ];
    (0..n)
        .map(|i| match i % 4 {
            0 => specials[rng.below(specials.len())],
            1 => (rng.next_u64() as u32) & 0x80ff_ffff, // subnormals and tiny normals
            _ => rng.next_u64() as u32,
        })
        .collect()
}

/// Values where the fp formats decide: |v| from 2^-12 to 2^10 with random mantissas, the exact
/// midpoints between neighbouring E2M1 and E4M3 values (their ties), and [`operands`].
fn format_operands(rng: &mut Rng, n: usize) -> Vec<u32> {
    let mut midpoints: Vec<f32> = reference::E2M1_VALUES[..8].windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
    let e4m3: Vec<f32> = (0..0x7fu8).map(reference::e4m3_value).collect();
    midpoints.extend(e4m3.windows(2).map(|w| (w[0] + w[1]) / 2.0));
    let random = operands(rng, n);
    (0..n)
        .map(|i| match i % 3 {
            0 => random[i],
            1 => {
                let exponent = 127 - 12 + rng.below(23) as u32;
                ((rng.next_u64() as u32) & 0x807f_ffff) | (exponent << 23)
            }
            _ => {
                let sign = if rng.below(2) == 0 { 1.0 } else { -1.0 };
                (sign * midpoints[rng.below(midpoints.len())]).to_bits()
            }
        })
        .collect()
}

fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn check(
    name: &str,
    got: &[u32],
    expected: impl Fn(usize) -> u32,
    compare: impl Fn(u32, u32) -> bool,
    a: &[u32],
    b: &[u32],
) {
    let bad: Vec<String> = (0..got.len())
        .filter(|&i| !compare(got[i], expected(i)))
        .take(5)
        .map(|i| format!("{name}({:#010x}, {:#010x}) = {:#010x}, expected {:#010x}", a[i], b[i], got[i], expected(i)))
        .collect();
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn integer_f32_arithmetic_is_ieee_exact() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(7);
    let n = 1 << 16;
    let (a, b) = (operands(&mut rng, n), operands(&mut rng, n));
    let f = |x: u32| f32::from_bits(x);
    let float_eq = |x: u32, y: u32| same(f(x), f(y));

    let got = run(&gpu, "bitcast<u32>(f32_add(x, y))", &a, &b);
    check("add", &got, |i| (f(a[i]) + f(b[i])).to_bits(), float_eq, &a, &b);
    let got = run(&gpu, "bitcast<u32>(f32_sub(x, y))", &a, &b);
    check("sub", &got, |i| (f(a[i]) - f(b[i])).to_bits(), float_eq, &a, &b);
    let got = run(&gpu, "bitcast<u32>(f32_div(x, y))", &a, &b);
    check("div", &got, |i| (f(a[i]) / f(b[i])).to_bits(), float_eq, &a, &b);
    let got = run(&gpu, "u32(f32_less(x, y))", &a, &b);
    check("less", &got, |i| u32::from(f(a[i]) < f(b[i])), |x, y| x == y, &a, &b);
    let codes: Vec<u32> = b.iter().map(|&x| x & 0xff).collect();
    let got = run(&gpu, "bitcast<u32>(f32_mul_uint(x, yu))", &a, &codes);
    check("mul_uint", &got, |i| (f(a[i]) * codes[i] as f32).to_bits(), float_eq, &a, &codes);
    let got = run(&gpu, "f32_to_f16_bits(x)", &a, &b);
    let f16_eq = |x: u32, y: u32| x == y || (f16::from_bits(x as u16).is_nan() && f16::from_bits(y as u16).is_nan());
    check("to_f16", &got, |i| u32::from(f16::from_f32(f(a[i])).to_bits()), f16_eq, &a, &b);
    let got = run(&gpu, "f32_to_bf16_bits(x)", &a, &b);
    let bf16_eq = |x: u32, y: u32| x == y || (bf16::from_bits(x as u16).is_nan() && bf16::from_bits(y as u16).is_nan());
    check("to_bf16", &got, |i| u32::from(bf16::from_f32(f(a[i])).to_bits()), bf16_eq, &a, &b);
    let halves: Vec<u32> = a.iter().map(|&x| x & 0xffff).collect();
    let got = run(&gpu, "bitcast<u32>(f16_bits_to_f32(yu))", &a, &halves);
    check("from_f16", &got, |i| f16::from_bits(halves[i] as u16).to_f32().to_bits(), float_eq, &a, &halves);
}

#[test]
fn fp_formats_match_the_twin() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(8);
    let n = 1 << 14;
    let values = format_operands(&mut rng, n);
    let f = |x: u32| f32::from_bits(x);
    let exact = |x: u32, y: u32| x == y;
    let float_eq = |x: u32, y: u32| same(f(x), f(y));
    let zeros = vec![0u32; n];

    let got = run(&gpu, "e4m3_code(x)", &values, &zeros);
    check("e4m3_code", &got, |i| u32::from(reference::e4m3_code(f(values[i]))), exact, &values, &zeros);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        // The code of a value of `dtype`, as quantize passes it.
        let ys: Vec<u32> = values.iter().map(|&v| reference::mlx_round(dtype, f(v)).to_bits()).collect();
        // dtype.wgsl's ids (`DType::wgsl_id`).
        let id = match dtype {
            DType::F32 => 0,
            DType::F16 => 1,
            _ => 2,
        };
        let op = format!("e2m1_code(x, {id}u)");
        let got = run(&gpu, &op, &ys, &zeros);
        check(&format!("e2m1_code {dtype}"), &got, |i| reference::e2m1_code(f(ys[i]), dtype), exact, &ys, &zeros);
    }
    let bytes: Vec<u32> = (0..256).collect();
    let got = run(&gpu, "bitcast<u32>(e4m3_value(yu))", &bytes, &bytes);
    check("e4m3_value", &got, |i| reference::e4m3_value(i as u8).to_bits(), float_eq, &bytes, &bytes);
    let got = run(&gpu, "bitcast<u32>(e8m0_value(yu))", &bytes, &bytes);
    check("e8m0_value", &got, |i| reference::e8m0_value(i as u8).to_bits(), exact, &bytes, &bytes);

    // s · q · 2^k for q < 256 and k in [-160, 95]: exact in f64, then rounded once to f32.
    let a = operands(&mut rng, n);
    let qk: Vec<u32> = (0..n).map(|_| rng.next_u64() as u32 & 0xffff).collect();
    let got = run(&gpu, "bitcast<u32>(f32_mul_uint_pow2(x, yu & 0xffu, i32(yu >> 8u) - 160))", &a, &qk);
    let expected = |i: usize| {
        let (q, k) = (f64::from(qk[i] & 0xff), (qk[i] >> 8) as i32 - 160);
        ((f64::from(f(a[i])) * q * 2f64.powi(k)) as f32).to_bits()
    };
    check("mul_uint_pow2", &got, expected, float_eq, &a, &qk);
}
