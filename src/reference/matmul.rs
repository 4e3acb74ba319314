//! CPU twin of `matmul` / `linear`: f32 sums in order of k, the bias added to the sum, one
//! rounding to the output dtype.

use crate::dtype::DType;

/// `x (m, k) @ wᵀ` for `w (n, k)` when `transpose`, else `x @ w` for `w (k, n)`, plus `bias (n,)`,
/// rounded to `out_dtype`.
pub fn matmul(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    (m, n, k): (usize, usize, usize),
    transpose: bool,
    out_dtype: DType,
) -> Vec<f32> {
    let mut y = Vec::with_capacity(m * n);
    for row in 0..m {
        for col in 0..n {
            let mut acc = 0f32;
            for i in 0..k {
                let wv = if transpose { w[col * k + i] } else { w[i * n + col] };
                acc += x[row * k + i] * wv;
            }
            if let Some(b) = bias {
                acc += b[col];
            }
            y.push(out_dtype.round_f32(acc));
        }
    }
    y
}
