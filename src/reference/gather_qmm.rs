//! CPU twin of `gather_qmm`: MLX's `mx.gather_qmm` as the loop its definition states. For every
//! entry of the broadcast index shape, the CPU twin of `quantized_matmul` on the matrix of x and
//! the matrix of w its indices name.

use crate::dtype::DType;

use super::quantized_matmul::{quantized_matmul, HostMatrix};

/// An index array on the host: flat `uint32` values and their shape.
#[derive(Clone, Copy, Debug)]
pub struct HostIndices<'a> {
    /// The indices, row-major.
    pub values: &'a [u32],
    /// Their shape.
    pub shape: &'a [usize],
}

/// `gather_qmm(x, w, lhs, rhs, transpose)`: `x` holds the matrices of its batch `x_batch`, `m`
/// rows each; `w` the matrices of the weight's batch `w_batch`. A missing index array is
/// `arange` over its operand's batch; an index past the batch is clamped to the last matrix, as
/// the GPU does. Returns the output shape (`broadcast + (m, n)`) and values in `out_dtype`.
///
/// # Panics
/// If the index shapes do not broadcast, or an operand's batch is empty (the op refuses both
/// first).
#[allow(clippy::too_many_arguments)]
pub fn gather_qmm(
    x: &[f32],
    x_batch: &[usize],
    m: usize,
    w: &[HostMatrix<'_>],
    w_batch: &[usize],
    lhs: Option<HostIndices<'_>>,
    rhs: Option<HostIndices<'_>>,
    transpose: bool,
    out_dtype: DType,
) -> (Vec<usize>, Vec<f32>) {
    let lhs_shape = lhs.map_or(x_batch, |i| i.shape);
    let rhs_shape = rhs.map_or(w_batch, |i| i.shape);
    let rank = lhs_shape.len().max(rhs_shape.len());
    let padded = |s: &[usize]| [vec![1; rank - s.len()], s.to_vec()].concat();
    let (l, r) = (padded(lhs_shape), padded(rhs_shape));
    let out_batch: Vec<usize> = l
        .iter()
        .zip(&r)
        .map(|(&a, &b)| {
            assert!(a == b || a == 1 || b == 1, "index shapes {lhs_shape:?} and {rhs_shape:?} do not broadcast");
            a.max(b)
        })
        .collect();
    // The flat position in `shape` (padded to `rank`) of entry `e` of the broadcast shape.
    let position = |e: usize, shape: &[usize]| {
        let (mut rest, mut pos, mut stride) = (e, 0, 1);
        for (axis, &extent) in out_batch.iter().enumerate().rev() {
            let coord = rest % extent;
            rest /= extent;
            if shape[axis] != 1 {
                pos += coord * stride;
            }
            stride *= shape[axis];
        }
        pos
    };
    let index = |e: usize, given: Option<HostIndices<'_>>, shape: &[usize], matrices: usize| {
        let pos = position(e, shape);
        let i = given.map_or(pos, |g| g.values[pos] as usize);
        i.min(matrices - 1)
    };
    let x_matrices = x_batch.iter().product::<usize>();
    let w_matrices = w_batch.iter().product::<usize>();
    let k = x.len() / (x_matrices * m).max(1);
    let mut y = Vec::new();
    for e in 0..out_batch.iter().product() {
        let xi = index(e, lhs, &l, x_matrices);
        let wi = index(e, rhs, &r, w_matrices);
        y.extend(quantized_matmul(&x[xi * m * k..][..m * k], m, &w[wi], transpose, out_dtype));
    }
    let n = w.first().map_or(0, |w| if transpose { w.rows } else { w.width() });
    (out_batch.into_iter().chain([m, n]).collect(), y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::QuantParams;
    use crate::reference::quantize;

    #[test]
    fn pairs_matrices_by_index_and_clamps() {
        // Two 1 x 32 "experts": all ones and all twos (exact at 4 bits), x two rows of ones.
        let params = QuantParams::affine(32, 4);
        let q: Vec<_> = [1.0f32, 2.0].iter().map(|&v| quantize(&[v; 32], 32, params, DType::F32).unwrap()).collect();
        let w: Vec<_> =
            q.iter().map(|q| HostMatrix { quantized: q, rows: 1, params, scale_dtype: DType::F32 }).collect();
        let x = [1.0f32; 64];
        // rhs [1, 0, 7]: 7 is past the two experts and clamps to the last.
        let rhs = HostIndices { values: &[1, 0, 7], shape: &[3] };
        let (shape, y) = gather_qmm(
            &x,
            &[2],
            1,
            &w,
            &[2],
            Some(HostIndices { values: &[0], shape: &[1] }),
            Some(rhs),
            true,
            DType::F32,
        );
        assert_eq!(shape, [3, 1, 1]);
        assert_eq!(y, [64.0, 32.0, 64.0]);
    }
}
