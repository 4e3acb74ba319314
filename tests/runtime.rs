//! The GPU runtime: batches across threads, errors inside batches, the buffer pool, device
//! errors (timeout, loss, limits) and devices the caller opens.

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::Rng;
use wgquant::{wgpu, DType, Error, Gpu, GpuOptions, QuantParams, Quantized, Tensor};

/// Threads recording batches at once in `batches_from_threads_equal_serial_results`.
const THREADS: usize = 8;

/// A device of its own, so that other tests' work does not interleave with what a test counts.
fn own_gpu() -> Option<Gpu> {
    common::gpu()?;
    Some(Gpu::with_options(GpuOptions::from_env().unwrap()).unwrap())
}

/// A seeded 4-bit g64 weight of `n` x `k` and its quantized form.
fn weight(gpu: &Gpu, n: usize, k: usize, seed: u64) -> Quantized {
    let values = Rng::new(seed).normals(n * k, 0.05);
    let w = Tensor::from_slice(gpu, &values, &[n, k]).unwrap();
    wgquant::quantize(&w, QuantParams::affine(64, 4)).unwrap()
}

fn x(gpu: &Gpu, m: usize, k: usize, seed: u64) -> Tensor {
    Tensor::from_slice(gpu, &Rng::new(seed).normals(m * k, 1.0), &[m, k]).unwrap()
}

/// The bits of a chain of products through `layers` (each `k` x `k`) from x.
fn chain(x: &Tensor, layers: &[Quantized]) -> wgquant::Result<Tensor> {
    layers.iter().try_fold(x.clone(), |h, q| wgquant::quantized_matmul(&h, q, true))
}

fn bits(t: &Tensor) -> Vec<u32> {
    common::download(t).into_iter().map(f32::to_bits).collect()
}

#[test]
fn batches_from_threads_equal_serial_results() {
    let Some(gpu) = own_gpu() else { return };
    let k = 128;
    let layers: Arc<Vec<Quantized>> = Arc::new((0..4).map(|i| weight(&gpu, k, k, i)).collect());
    let inputs: Vec<Tensor> = (0..THREADS).map(|t| x(&gpu, 1 + t % 3, k, 100 + t as u64)).collect();
    let serial: Vec<Vec<u32>> = inputs.iter().map(|x| bits(&chain(x, &layers).unwrap())).collect();

    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = inputs
        .into_iter()
        .map(|x| {
            let (gpu, layers, start) = (gpu.clone(), Arc::clone(&layers), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                (0..3).map(|_| bits(&gpu.batch(|| chain(&x, &layers)).unwrap())).collect::<Vec<_>>()
            })
        })
        .collect();
    for (t, (h, want)) in handles.into_iter().zip(&serial).enumerate() {
        for got in h.join().expect("thread panicked") {
            assert!(&got == want, "thread {t}: a batched result differs from the serial one");
        }
    }
    assert!(gpu.take_uncaptured_errors().is_empty());
}

#[test]
fn validation_error_inside_a_batch_names_the_op() {
    let Some(gpu) = own_gpu() else { return };
    let q = weight(&gpu, 64, 128, 1);
    let buffer = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("destroyed x"),
        size: 128 * 4,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let x = Tensor::from_buffer(&gpu, buffer.clone(), &[1, 128], DType::F32).unwrap();
    buffer.destroy();
    let err = gpu.batch(|| wgquant::quantized_matmul(&x, &q, true)).unwrap_err();
    assert!(matches!(err, Error::Validation { .. }), "{err}");
    assert!(err.to_string().contains("quantized_matmul"), "the error names the op: {err}");
    // The device stays usable.
    let y = gpu.batch(|| wgquant::quantized_matmul(&Tensor::zeros(&gpu, &[1, 128], DType::F32)?, &q, true)).unwrap();
    assert_eq!(common::download(&y), vec![0.0; 64]);
}

/// A buffer dropped by its tensor while the batch that used it is still unsubmitted must not be
/// handed to the next tensor: the reused buffer's clear (at the start of the submission) would
/// wipe what the batch computes in it. Once the GPU has finished, it is reused, cleared.
#[test]
fn the_pool_never_hands_out_a_buffer_in_use() {
    let Some(gpu) = own_gpu() else { return };
    let k = 128;
    let layers: Vec<Quantized> = (0..2).map(|i| weight(&gpu, k, k, 10 + i)).collect();
    let x = x(&gpu, 1, k, 7);
    let want = bits(&chain(&x, &layers).unwrap());

    let (y, zeros, first_buffer) = gpu
        .batch(|| {
            let h = wgquant::quantized_matmul(&x, &layers[0], true)?;
            let first_buffer = h.buffer().clone();
            let y = wgquant::quantized_matmul(&h, &layers[1], true)?;
            drop(h);
            let zeros = Tensor::zeros(&gpu, &[1, k], DType::F32)?;
            Ok((y, zeros, first_buffer))
        })
        .unwrap();
    assert!(zeros.buffer() != &first_buffer, "a buffer still used by the unsubmitted batch was handed out");
    assert_eq!(bits(&y), want);
    assert_eq!(common::download(&zeros), vec![0.0; k]);

    // After the GPU is done, the same size class comes back from the pool, cleared.
    let released = y.buffer().clone();
    drop(y);
    gpu.synchronize().unwrap();
    let again = Tensor::zeros(&gpu, &[1, k], DType::F32).unwrap();
    assert!(again.buffer() == &released || again.buffer() == &first_buffer, "the pool reuses finished buffers");
    assert_eq!(common::download(&again), vec![0.0; k]);
    assert!(gpu.take_uncaptured_errors().is_empty());
}

#[test]
fn nested_and_per_thread_batches() {
    let Some(gpu) = own_gpu() else { return };
    let k = 128;
    let layers: Vec<Quantized> = (0..2).map(|i| weight(&gpu, k, k, 20 + i)).collect();
    let x = x(&gpu, 2, k, 8);
    let want = bits(&chain(&x, &layers).unwrap());

    // A batch inside a batch joins it: one submission.
    let before = gpu.submission_count();
    let y = gpu.batch(|| gpu.batch(|| chain(&x, &layers[..1])).and_then(|h| chain(&h, &layers[1..]))).unwrap();
    assert_eq!(gpu.submission_count() - before, 1);
    assert_eq!(bits(&y), want);

    // Another thread's work is its own while this thread's batch is open.
    let (other_layers, other_x) = (layers.clone(), x.clone());
    let y = gpu
        .batch(|| {
            let other = std::thread::spawn(move || bits(&chain(&other_x, &other_layers).unwrap()));
            assert_eq!(other.join().expect("thread panicked"), want, "the other thread read its result");
            chain(&x, &layers)
        })
        .unwrap();
    assert_eq!(bits(&y), want);
}

/// A kernel that keeps the device busy for a while when dispatched over [`BUSY_WORKGROUPS`]
/// (a second or so on lavapipe): millions of invocations, each a chain of loads at indices the
/// previous step computed. (A single invocation looping 10^9 times was compiled into a
/// millisecond of work, and the wait then sometimes won the race.)
const BUSY_WGSL: &str = "
@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    var x = id.x;
    for (var i = 0u; i < 256u; i++) {
        x = x * 1664525u + 1013904223u + out[x >> 30u];
    }
    if x == 0xffffffffu {
        out[0] = x;
    }
}
";

/// Workgroups of the busy dispatch: 4 million invocations.
const BUSY_WORKGROUPS: u32 = 65535;

#[test]
fn a_tiny_deadline_is_a_timeout() {
    if common::gpu().is_none() {
        return;
    }
    let options = GpuOptions { timeout: Duration::from_nanos(1), ..GpuOptions::from_env().unwrap() };
    let gpu = Gpu::with_options(options).unwrap();
    let device = gpu.device();
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("busy"),
        source: wgpu::ShaderSource::Wgsl(BUSY_WGSL.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("busy"),
        layout: None,
        module: &module,
        entry_point: None,
        compilation_options: Default::default(),
        cache: None,
    });
    let out = Tensor::zeros(&gpu, &[4], DType::U32).unwrap();
    let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[wgpu::BindGroupEntry { binding: 0, resource: out.buffer().as_entire_binding() }],
    });
    // One busy dispatch keeps lavapipe for most of a second; a GPU (an H200) clears one in
    // tens of microseconds, about what the wait takes to start, so it gets a few hundred.
    let dispatches = if gpu.caps().info.device_type == wgpu::DeviceType::Cpu { 1 } else { 256 };
    gpu.batch(|| (0..dispatches).try_for_each(|_| gpu.dispatch("busy", &pipeline, &group, (BUSY_WORKGROUPS, 1, 1))))
        .unwrap();
    if gpu.caps().info.backend == wgpu::Backend::Gl {
        // wgpu's GL backend runs the work inside the submission: there is nothing to wait for.
        return;
    }
    let err = gpu.synchronize().unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
}

#[test]
fn a_destroyed_device_is_lost_not_a_panic() {
    let Some(gpu) = own_gpu() else { return };
    let w = Tensor::from_slice(&gpu, &[1.0f32; 64 * 64], &[64, 64]).unwrap();
    gpu.device().destroy();
    let err = wgquant::quantize(&w, QuantParams::affine(64, 4))
        .and_then(|q| q.weight.to_vec::<u32>())
        .and_then(|_| gpu.synchronize())
        .unwrap_err();
    assert!(matches!(err, Error::DeviceLost { .. }), "{err}");
}

/// A caller's device with little workgroup memory: wgquant refuses a kernel that needs more
/// before wgpu sees it, and runs what fits.
#[test]
fn from_device_with_little_workgroup_memory() {
    if common::gpu().is_none() {
        return;
    }
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapter = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY))
        .into_iter()
        .min_by_key(|a| a.get_info().device_type == wgpu::DeviceType::Cpu)
        .expect("an adapter");
    let limits = wgpu::Limits { max_compute_workgroup_storage_size: 256, ..adapter.limits() };
    let (device, queue) = pollster::block_on(
        adapter.request_device(&wgpu::DeviceDescriptor { required_limits: limits, ..Default::default() }),
    )
    .unwrap();
    let options = GpuOptions { timeout: Duration::from_secs(60), ..GpuOptions::default() };
    let gpu = Gpu::from_device_with_options(&adapter, device, queue, &options);
    assert_eq!(gpu.caps().limits.max_compute_workgroup_storage_size, 256);
    let q = weight(&gpu, 64, 256, 4);
    let err = wgquant::quantized_matmul(&x(&gpu, 64, 256, 5), &q, true).unwrap_err();
    assert!(
        matches!(err, Error::ExceedsDeviceLimit { what: "workgroup memory (bytes)", .. }),
        "the tiled product needs more than 256 bytes of workgroup memory: {err}"
    );
}

#[test]
fn from_buffer_wraps_without_a_copy_and_checks_the_buffer() {
    let Some(gpu) = common::gpu() else { return };
    let buffer = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("caller's"),
        size: 64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    gpu.queue().write_buffer(&buffer, 0, bytemuck::cast_slice(&[1.5f32; 16]));
    let t = Tensor::from_buffer(&gpu, buffer.clone(), &[4, 4], DType::F32).unwrap();
    assert!(t.buffer() == &buffer, "the tensor is the caller's buffer");
    assert_eq!(t.to_vec::<f32>().unwrap(), vec![1.5; 16]);
    let small = Tensor::from_buffer(&gpu, buffer.clone(), &[5, 4], DType::F32).unwrap_err();
    assert!(matches!(small, Error::BufferTooSmall { needed: 80, .. }), "{small}");
    let uniform = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 64,
        usage: wgpu::BufferUsages::UNIFORM,
        mapped_at_creation: false,
    });
    let err = Tensor::from_buffer(&gpu, uniform, &[4, 4], DType::F32).unwrap_err();
    assert!(matches!(err, Error::BufferUsage { .. }), "{err}");
}

/// `Gpu`, tensors and quantized matrices cross threads.
#[test]
fn handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Gpu>();
    send_sync::<Tensor>();
    send_sync::<Quantized>();
    send_sync::<Error>();
}

/// On a headless machine without `XDG_RUNTIME_DIR`, the binary's stderr carries no Mesa noise.
#[test]
fn headless_runs_print_no_runtime_dir_noise() {
    if common::gpu().is_none() {
        return;
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wgquant"))
        .args(["--layers", "1", "--tokens", "2", "--iterations", "1"])
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("NODEVICE_SELECT")
        .output()
        .expect("run wgquant");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("XDG_RUNTIME_DIR"), "stderr: {stderr}");
}

#[test]
fn a_long_batch_is_submitted_in_parts_as_it_records() {
    let Some(gpu) = own_gpu() else { return };
    let k = 64;
    // 40 chained products of one M = 1 dispatch each: a part of 32 goes to the GPU while the
    // rest records, then the rest; the result is the serial chain's, bit for bit.
    let layers: Vec<Quantized> = (0..4).map(|i| weight(&gpu, k, k, 40 + i)).collect();
    let chain_of_40: Vec<Quantized> = (0..40).map(|i| layers[i % 4].clone()).collect();
    let x = x(&gpu, 1, k, 9);
    let want = bits(&chain(&x, &chain_of_40).unwrap());
    let before = gpu.submission_count();
    let y = gpu.batch(|| chain(&x, &chain_of_40)).unwrap();
    assert_eq!(gpu.submission_count() - before, 2, "40 dispatches: a part of 32, then 8");
    assert_eq!(bits(&y), want);
}

/// A 4-bit g64 weight of `n` x `k` with `dtype` scales, and `m` rows of x in `dtype`.
fn product_in(gpu: &Gpu, m: usize, n: usize, k: usize, dtype: DType, seed: u64) -> (Tensor, Quantized) {
    let w = common::upload(gpu, &Rng::new(seed).normals(n * k, 0.05), &[n, k], dtype);
    let q = wgquant::quantize(&w, QuantParams::affine(64, 4)).unwrap();
    (common::upload(gpu, &Rng::new(seed + 1).normals(m * k, 1.0), &[m, k], dtype), q)
}

/// Products whose kernels write every word of y (`qmv` storing pairs of f16 outputs as whole
/// words) take y from the pool without clearing it: a buffer an earlier tensor left full of
/// other bits must come back holding exactly the product, with one row of x and with x
/// prepared for several rows.
#[test]
fn outputs_written_whole_words_are_not_cleared_and_keep_no_stale_bits() {
    let Some(gpu) = own_gpu() else { return };
    let Some(fresh) = own_gpu() else { return };
    let (k, n) = (128, 64);
    for m in [1, 4] {
        let (x16, q16) = product_in(&gpu, m, n, k, DType::F16, 3);
        let want = bits(&wgquant::quantized_matmul(&x16, &q16, true).unwrap());
        // Stale bits: an f32 product with the same bytes as the f16 y (n / 2 outputs per row).
        let (x32, q32) = product_in(&gpu, m, n / 2, k, DType::F32, 5);
        let stale = wgquant::quantized_matmul(&x32, &q32, true).unwrap();
        assert!(common::download(&stale).iter().all(|v| *v != 0.0), "the planted bits are not zeros");
        let stale_buffer = stale.buffer().clone();
        drop(stale);
        gpu.synchronize().unwrap();
        let y = wgquant::quantized_matmul(&x16, &q16, true).unwrap();
        assert!(y.buffer() == &stale_buffer, "m = {m}: the pool hands back the stale buffer");
        assert_eq!(bits(&y), want, "m = {m}");
        // And the same as on a device whose buffers were never used.
        let (x_fresh, q_fresh) = product_in(&fresh, m, n, k, DType::F16, 3);
        assert_eq!(bits(&wgquant::quantized_matmul(&x_fresh, &q_fresh, true).unwrap()), want, "m = {m}");
    }
}

/// A decode step repeated on the same tensors records without creating bind groups once its
/// first run has cached them: the pool hands each op the buffers it had last time (first in,
/// first out), and x laid out for several rows lives in a scratch buffer kept between calls.
#[test]
fn a_repeated_step_creates_no_bind_groups() {
    let Some(gpu) = own_gpu() else { return };
    let k = 128;
    for m in [1, 4] {
        let layers: Vec<(Tensor, Quantized)> = (0..6).map(|i| product_in(&gpu, m, k, k, DType::F16, 50 + i)).collect();
        let step =
            || layers.iter().map(|(x, q)| wgquant::quantized_matmul(x, q, true)).collect::<wgquant::Result<Vec<_>>>();
        for run in 0..4 {
            let before = gpu.bind_groups_created();
            let outputs = gpu.batch(step).unwrap();
            gpu.synchronize().unwrap();
            drop(outputs);
            let created = gpu.bind_groups_created() - before;
            if run == 0 {
                assert!(created > 0, "m = {m}: the first run creates its bind groups");
            } else {
                assert_eq!(created, 0, "m = {m}, run {run}: a repeated step found its bind groups cached");
            }
        }
    }
}

/// Set in the child process of `an_allocation_the_driver_refuses_is_out_of_memory`.
#[cfg(target_os = "linux")]
const OOM_CHILD: &str = "WGQUANT_TEST_OOM_CHILD";

/// An allocation the driver cannot make is `Error::OutOfMemory` naming the op, and the device
/// works on. lavapipe keeps buffers in the process's address space, lazily (creating 32 GiB of
/// buffers on a 24 GiB machine touches none of it, and nothing refuses them; wgpu's memory
/// budget thresholds have no effect on lavapipe 22, even at 0 %): so a child process
/// caps its own address space (RLIMIT_AS) a third of an output above what it uses, then asks for
/// that output (3/4 of the largest buffer, 1.5 GiB on lavapipe). No memory is touched. Runs on
/// Vulkan CPU adapters (lavapipe, CI's); elsewhere device memory is not the process's address
/// space, and it prints a skip line.
#[cfg(target_os = "linux")]
#[test]
fn an_allocation_the_driver_refuses_is_out_of_memory() {
    let name = "an_allocation_the_driver_refuses_is_out_of_memory";
    let Some(gpu) = common::gpu() else { return };
    let info = &gpu.caps().info;
    if (info.backend, info.device_type) != (wgpu::Backend::Vulkan, wgpu::DeviceType::Cpu) {
        eprintln!("SKIP {name}: needs a Vulkan CPU adapter, not {}", gpu.describe());
        return;
    }
    if std::env::var_os(OOM_CHILD).is_none() {
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(OOM_CHILD, "1")
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
        assert!(stdout.contains("test result: ok. 1 passed"), "the child ran no test:\n{stdout}");
        return;
    }
    // The child: a device of its own, its pipelines compiled by a first product.
    let gpu = own_gpu().unwrap();
    let (n, k) = (1 << 17, 64);
    let y_bytes = (gpu.caps().limits.max_buffer_size / 4 * 3).min(3 << 29);
    let m = (y_bytes / (n as u64 * 4)) as usize;
    let q = wgquant::quantize(&Tensor::zeros(&gpu, &[n, k], DType::F32).unwrap(), QuantParams::affine(64, 4)).unwrap();
    let small = x(&gpu, 2, k, 1);
    let before = common::download(&wgquant::quantized_matmul(&small, &q, true).unwrap());
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let vm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmSize in /proc/self/status");
    let cap = (vm_kib << 10) + y_bytes / 3;
    let limit = rustix::process::Rlimit { current: Some(cap), maximum: Some(cap) };
    rustix::process::setrlimit(rustix::process::Resource::As, limit).unwrap();
    let err = wgquant::quantized_matmul(&x(&gpu, m, k, 2), &q, true).unwrap_err();
    assert!(matches!(&err, Error::OutOfMemory { what, .. } if what == "quantized_matmul"), "{err:?}");
    assert!(err.to_string().starts_with("GPU out of memory in quantized_matmul: "), "{err}");
    // The device works on.
    let after = common::download(&wgquant::quantized_matmul(&small, &q, true).unwrap());
    assert_eq!(before, after);
    gpu.synchronize().unwrap();
    assert!(gpu.take_uncaptured_errors().is_empty());
}
