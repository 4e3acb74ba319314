//! CPU twins of the transformer ops: `take`, `rms_norm`, `softmax`, `relu`, `silu`, `add`,
//! `multiply` and `scaled_dot_product_attention`. All compute in f32 and round as the kernels do.

use crate::dtype::DType;

/// Rows `ids` of a table with `width` values per row; an id past the table gives zeros.
pub fn take<T: Copy + Default>(table: &[T], width: usize, ids: &[u32]) -> Vec<T> {
    let rows = table.len() / width.max(1);
    ids.iter()
        .flat_map(|&id| {
            let id = id as usize;
            (0..width).map(move |c| if id < rows { table[id * width + c] } else { T::default() })
        })
        .collect()
}

/// `round(round(x · rsqrt(mean(x²) + eps)) · w)` per row of `w.len()` values, in `out_dtype`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out_dtype: DType) -> Vec<f32> {
    x.chunks(w.len())
        .flat_map(|row| {
            let mean_square = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
            let scale = 1.0 / (mean_square + eps).sqrt();
            row.iter().zip(w).map(move |(&v, &g)| out_dtype.round_f32(out_dtype.round_f32(v * scale) * g))
        })
        .collect()
}

/// `softmax(scale · s)` per row of `cols`; with `causal = Some(queries)` row `r` is query
/// `r % queries` and sees keys `j <= r % queries + cols - queries`.
pub fn softmax(s: &[f32], cols: usize, scale: f32, causal: Option<usize>, out_dtype: DType) -> Vec<f32> {
    s.chunks(cols)
        .enumerate()
        .flat_map(|(r, row)| {
            let visible = causal.map_or(cols, |q| (r % q + cols - q + 1).min(cols));
            let m = row[..visible].iter().map(|&v| scale * v).fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = row[..visible].iter().map(|&v| (scale * v - m).exp()).sum();
            (0..cols).map(move |c| {
                let p = if c < visible { (scale * row[c] - m).exp() / sum } else { 0.0 };
                out_dtype.round_f32(p)
            })
        })
        .collect()
}

/// `max(x, 0)` rounded to `out_dtype`.
pub fn relu(x: &[f32], out_dtype: DType) -> Vec<f32> {
    x.iter().map(|&v| out_dtype.round_f32(v.max(0.0))).collect()
}

/// `x / (1 + exp(-x))` rounded to `out_dtype`.
pub fn silu(x: &[f32], out_dtype: DType) -> Vec<f32> {
    x.iter().map(|&v| out_dtype.round_f32(v / (1.0 + (-v).exp()))).collect()
}

/// `a + b[i % b.len()]` rounded to `out_dtype`.
pub fn add(a: &[f32], b: &[f32], out_dtype: DType) -> Vec<f32> {
    a.iter().enumerate().map(|(i, &u)| out_dtype.round_f32(u + b[i % b.len()])).collect()
}

/// `a * b[i % b.len()]` rounded to `out_dtype`.
pub fn multiply(a: &[f32], b: &[f32], out_dtype: DType) -> Vec<f32> {
    a.iter().enumerate().map(|(i, &u)| out_dtype.round_f32(u * b[i % b.len()])).collect()
}

/// Attention over `batch` sequences: `q (batch, queries, heads·hd)`, `k` and `v`
/// `(batch, keys, heads·hd)`; per head `softmax(scale · q kᵀ) v` with f32 scores and the
/// probabilities rounded to `dtype`, as the GPU op computes it.
#[allow(clippy::too_many_arguments)]
pub fn scaled_dot_product_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (batch, queries, keys): (usize, usize, usize),
    n_heads: usize,
    scale: f32,
    causal: bool,
    dtype: DType,
) -> Vec<f32> {
    let dims = q.len() / (batch * queries).max(1);
    let hd = dims / n_heads;
    let mut out = vec![0f32; q.len()];
    for b in 0..batch {
        for h in 0..n_heads {
            let mut scores = Vec::with_capacity(queries * keys);
            for i in 0..queries {
                for j in 0..keys {
                    let qi = &q[(b * queries + i) * dims + h * hd..][..hd];
                    let kj = &k[(b * keys + j) * dims + h * hd..][..hd];
                    scores.push(qi.iter().zip(kj).map(|(a, c)| a * c).sum::<f32>());
                }
            }
            let probs = softmax(&scores, keys, scale, causal.then_some(queries), dtype);
            for i in 0..queries {
                for d in 0..hd {
                    let acc: f32 = (0..keys).map(|j| probs[i * keys + j] * v[(b * keys + j) * dims + h * hd + d]).sum();
                    out[(b * queries + i) * dims + h * hd + d] = dtype.round_f32(acc);
                }
            }
        }
    }
    out
}
