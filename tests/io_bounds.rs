//! Resource bounds of checkpoint I/O (issue 18 item 10), measured rather than assumed.
//!
//! - Header parsing is linear: heap bytes and allocations counted by a counting allocator
//!   (exact, independent of the machine's speed) grow in proportion to the number of tensors,
//!   and 200,000 tensors parse within a wall-time limit generous for two slow cores.
//! - `convert`'s peak resident memory grows with the largest tensor by a bounded factor:
//!   measured with `getrusage(RUSAGE_CHILDREN)` on a child `wgquant convert` at two sizes.

mod common;
mod io_common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use io_common::{temp_dir, write_model};
use wgquant::io::{HostTensor, SafetensorsFile};

/// Counts live heap bytes, their high-water mark and the number of allocations.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The tests of this file measure the whole process: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Heap high-water mark above the starting level, and allocations, while `f` runs.
fn measure<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    let start = LIVE.load(Ordering::Relaxed);
    PEAK.store(start, Ordering::Relaxed);
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    let value = f();
    (value, PEAK.load(Ordering::Relaxed) - start, ALLOCATIONS.load(Ordering::Relaxed) - allocations)
}

/// A safetensors file of `n` one-byte tensors, names as long as real ones (~50 bytes).
fn many_tensors(dir: &std::path::Path, n: usize) -> (std::path::PathBuf, usize) {
    let mut header = String::with_capacity(n * 110);
    header.push('{');
    for i in 0..n {
        if i > 0 {
            header.push(',');
        }
        header.push_str(&format!(
            r#""model.layers.{}.block_sparse_moe.experts.{}.w{}.weight":{{"dtype":"U8","shape":[1],"data_offsets":[{i},{}]}}"#,
            i / 3000,
            i / 3 % 1000,
            i % 3,
            i + 1
        ));
    }
    header.push('}');
    let path = dir.join(format!("{n}.safetensors"));
    std::fs::write(&path, io_common::safetensors_bytes(&header, &vec![0; n])).unwrap();
    (path, header.len())
}

/// Heap bytes per header byte while parsing: the header itself, the parsed entries (name,
/// shape and offsets, ~3x the ~100 bytes of JSON each) and the name index.
const HEAP_PER_HEADER_BYTE: f64 = 8.0;
/// Allocations per tensor: its name twice (entry and index), its shape, and amortized vectors.
const ALLOCATIONS_PER_TENSOR: f64 = 8.0;
/// 200,000 tensors (a 20 MB header) in well under the 10 s the issue asks for 1M tensors on
/// one fast core, with room for two slow shared cores and the test profile.
const PARSE_LIMIT: Duration = Duration::from_secs(20);

#[test]
fn header_parsing_is_linear() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir();
    let mut measured = Vec::new();
    for n in [50_000, 200_000] {
        let (path, header_len) = many_tensors(dir.path(), n);
        let start = Instant::now();
        let (file, peak, allocations) = measure(|| SafetensorsFile::open(&path).unwrap());
        let elapsed = start.elapsed();
        assert_eq!(file.tensors().len(), n);
        drop(file);
        let per_byte = peak as f64 / header_len as f64;
        let per_tensor = allocations as f64 / n as f64;
        eprintln!("{n} tensors, {header_len} header bytes: {elapsed:?}, peak heap {peak} ({per_byte:.2}/byte), {allocations} allocations ({per_tensor:.2}/tensor)");
        assert!(per_byte <= HEAP_PER_HEADER_BYTE, "{n} tensors: {per_byte:.2} heap bytes per header byte");
        assert!(per_tensor <= ALLOCATIONS_PER_TENSOR, "{n} tensors: {per_tensor:.2} allocations per tensor");
        measured.push((per_byte, per_tensor));
        if n == 200_000 {
            assert!(elapsed <= PARSE_LIMIT, "{n} tensors took {elapsed:?}");
        }
    }
    // Linear: four times the tensors cost the same per byte and per tensor (within 25%).
    let ((small_bytes, small_allocs), (large_bytes, large_allocs)) = (measured[0], measured[1]);
    assert!(large_bytes <= small_bytes * 1.25, "heap per byte grew from {small_bytes:.2} to {large_bytes:.2}");
    assert!(
        large_allocs <= small_allocs * 1.25,
        "allocations per tensor grew from {small_allocs:.2} to {large_allocs:.2}"
    );
}

#[repr(C)]
struct Timeval {
    seconds: i64,
    microseconds: i64,
}

/// `struct rusage` of Linux (x86_64 and aarch64): two timevals, then 14 longs.
#[repr(C)]
struct Rusage {
    user: Timeval,
    system: Timeval,
    max_rss_kib: i64,
    rest: [i64; 13],
}

extern "C" {
    fn getrusage(who: i32, usage: *mut Rusage) -> i32;
}

const RUSAGE_CHILDREN: i32 = -1;

/// The largest peak resident set of the children waited for so far, in bytes.
fn children_peak_rss() -> u64 {
    let mut usage = std::mem::MaybeUninit::<Rusage>::zeroed();
    // SAFETY: getrusage fills the struct, whose layout is Linux's `struct rusage`.
    let rc = unsafe { getrusage(RUSAGE_CHILDREN, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage failed");
    // SAFETY: zero-initialized and filled by getrusage.
    unsafe { usage.assume_init() }.max_rss_kib as u64 * 1024
}

/// Peak RSS of `wgquant convert` on a model whose one large tensor has `bytes` bytes of f32.
fn convert_peak_rss(dir: &std::path::Path, bytes: usize) -> u64 {
    let input = dir.join(format!("in-{bytes}"));
    let k = 4096;
    let rows = bytes / 4 / k;
    let values: Vec<f32> = (0..rows * k).map(|i| ((i % 4093) as f32 - 2046.0) / 4096.0).collect();
    let tensors = vec![
        ("big.weight".to_string(), HostTensor::from_values(&values, &[rows, k]).unwrap()),
        ("norm.weight".to_string(), HostTensor::from_values(&[1.0f32; 64], &[64]).unwrap()),
    ];
    write_model(&input, &serde_json::json!({"model_type": "llama"}), &tensors);
    drop(tensors);
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_wgquant"))
        .args(["convert", "-q"])
        .arg(&input)
        .arg(dir.join(format!("out-{bytes}")))
        .status()
        .unwrap();
    assert!(status.success());
    children_peak_rss()
}

/// Bytes of resident memory per byte of the largest tensor. On a GPU with its own memory the
/// tensor is on the host twice at most (read, and its cast; issue 18: peak <= 2x the largest
/// tensor + 200 MB). A software adapter (lavapipe, CI) keeps GPU buffers in host memory as
/// well: the weight's storage buffer and its upload staging copy add two more.
fn rss_per_tensor_byte(software: bool) -> f64 {
    if software {
        4.5
    } else {
        2.0
    }
}

/// What a conversion holds besides the tensor: the binary, the driver and its shader
/// compiler, the wgpu device (issue 18's 200 MB).
const RSS_BASE: u64 = 200 << 20;

#[test]
fn convert_peak_memory_follows_the_largest_tensor() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let gpu = gpu_or_skip!();
    // `describe` names the adapter's wgpu::DeviceType.
    let software = gpu.describe().contains(", Cpu,");
    drop(gpu);
    let dir = temp_dir();
    let (small, large) = (16usize << 20, 64usize << 20);
    // Children's peaks are a running maximum: measure the small one first.
    let small_rss = convert_peak_rss(dir.path(), small);
    let large_rss = convert_peak_rss(dir.path(), large);
    let slope = (large_rss.saturating_sub(small_rss)) as f64 / (large - small) as f64;
    let per_byte = rss_per_tensor_byte(software);
    eprintln!(
        "peak RSS {} MiB at {} MiB, {} MiB at {} MiB: {slope:.2} bytes per tensor byte (software adapter: {software})",
        small_rss >> 20,
        small >> 20,
        large_rss >> 20,
        large >> 20
    );
    assert!(slope <= per_byte, "peak RSS grows by {slope:.2} bytes per byte of the largest tensor (bound {per_byte})");
    let bound = (per_byte * large as f64) as u64 + RSS_BASE;
    assert!(large_rss <= bound, "peak RSS {large_rss} over {bound}");
}
