//! Dispatch geometry: buffer windows, row chunks and workgroup grids. Pure functions of shapes
//! and device limits; nothing here touches the GPU.

use std::ops::Range;

use crate::error::{Error, Result};

/// Buffers and their bound windows come in whole 16-byte vectors, so that kernels may read any
/// operand as `vec4<u32>`s (qmv reads weights and x that way) without the last words falling
/// outside the binding.
pub(crate) const VECTOR_BYTES: u64 = 16;

/// A window of a buffer bound to one kernel binding.
pub(crate) struct BufferWindow<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

impl<'a> BufferWindow<'a> {
    /// Rows `rows` of a buffer holding `row_bytes` bytes per row.
    pub fn rows(buffer: &'a wgpu::Buffer, row_bytes: u64, rows: &Range<usize>) -> Self {
        let offset = rows.start as u64 * row_bytes;
        BufferWindow::bytes(buffer, offset, (rows.end - rows.start) as u64 * row_bytes)
    }

    /// `size` bytes of a buffer from `offset`, widened to whole [`VECTOR_BYTES`] where the
    /// buffer allows (ours always do when `offset` is a multiple of 16).
    pub fn bytes(buffer: &'a wgpu::Buffer, offset: u64, size: u64) -> Self {
        let room = buffer.size().saturating_sub(offset);
        let size = size.max(1).next_multiple_of(VECTOR_BYTES).min(room).max(4);
        BufferWindow { buffer, offset, size }
    }
}

/// Rows between consecutive row offsets that are multiples of `alignment`.
pub(crate) fn aligned_row_step(row_bytes: u64, alignment: u64) -> usize {
    if row_bytes == 0 {
        1
    } else {
        (alignment / gcd(row_bytes, alignment)) as usize
    }
}

/// Lays `n` workgroups out as `(x, y)` with both at most `max`: kernels recover the linear
/// index as `wg.y * num_workgroups.x + wg.x` and ignore the overshoot. `None` past `max * max`.
pub(crate) fn grid(n: u32, max: u32) -> Option<(u32, u32)> {
    if n <= max {
        Some((n.max(1), 1))
    } else {
        let y = n.div_ceil(max);
        (y <= max).then_some((max, y))
    }
}

/// Splits `rows` rows into chunks whose windows (`row_bytes` per row in each bound buffer) fit
/// `max_binding` bytes and start at offsets that are multiples of `alignment`.
pub(crate) fn row_chunks(
    op: &'static str,
    rows: usize,
    row_bytes: &[u64],
    max_binding: u64,
    alignment: u64,
) -> Result<Vec<Range<usize>>> {
    if rows == 0 {
        return Ok(Vec::new());
    }
    let fits_whole = row_bytes.iter().all(|&b| (rows as u64).checked_mul(b).is_some_and(|t| t <= max_binding));
    if fits_whole {
        return Ok(std::iter::once(0..rows).collect());
    }
    // Chunk starts must put every buffer's window on an aligned offset.
    let align_rows = row_bytes.iter().filter(|&&b| b > 0).fold(1u64, |acc, &b| lcm(acc, alignment / gcd(b, alignment)));
    let max_rows = row_bytes.iter().filter(|&&b| b > 0).map(|&b| max_binding / b).min().unwrap_or(rows as u64);
    let chunk = max_rows / align_rows * align_rows;
    if chunk == 0 {
        let widest = row_bytes.iter().copied().max().unwrap_or(0);
        return Err(Error::ExceedsDeviceLimit {
            op,
            what: "one aligned block of rows in a storage binding (bytes)",
            value: widest * align_rows,
            limit: max_binding,
        });
    }
    let chunk = chunk as usize;
    Ok((0..rows).step_by(chunk).map(|s| s..(s + chunk).min(rows)).collect())
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: u64, b: u64) -> u64 {
    a / gcd(a, b) * b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_rows_and_align() {
        // f16 input of 96 per row, 4-bit packed (48 B), two f16 scales (4 B): 4 KiB bindings.
        // Starts must be multiples of 8 rows (4 B scale rows on 32 B alignment).
        let chunks = row_chunks("t", 1000, &[192, 48, 4], 4096, 32).unwrap();
        assert!(chunks.len() > 1);
        assert_eq!(chunks.first().unwrap().start, 0);
        assert_eq!(chunks.last().unwrap().end, 1000);
        for c in &chunks {
            for b in [192u64, 48, 4] {
                assert_eq!(c.start as u64 * b % 32, 0);
                assert!((c.end - c.start) as u64 * b <= 4096);
            }
        }
    }

    #[test]
    fn chunk_too_wide_is_an_error() {
        assert!(row_chunks("t", 10, &[4096], 1024, 32).is_err());
        assert_eq!(row_chunks("t", 3, &[100], 1024, 32).unwrap(), std::iter::once(0..3).collect::<Vec<_>>());
        assert!(row_chunks("t", 0, &[100], 1024, 32).unwrap().is_empty());
    }

    #[test]
    fn grid_splits_past_the_dimension_limit() {
        assert_eq!(grid(10, 65535), Some((10, 1)));
        assert_eq!(grid(65536, 65535), Some((65535, 2)));
        assert_eq!(grid(0, 65535), Some((1, 1)));
        assert_eq!(grid(10, 3), None);
    }
}
