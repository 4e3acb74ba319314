// gather_table.wgsl: gather_qmm's batch table, built on the GPU from its index arrays so that
// nothing is read back. Entry e of the broadcast index shape is the three words the matmul
// kernels read per batch entry (`QuantizedMatmulBindings::batches`): x offset lhs[e] · x_step,
// w_q row offset rhs[e] · w_step, y offset e · y_step. A missing index array is MLX's default,
// arange over that operand's batch shaped like it: its value at a position is the position.
// Out-of-range indices are clamped to the last matrix of their operand (MLX reads out of
// bounds there; reporting them would need a read-back), so no kernel reads past a buffer.
// Bindings: 0 params | 1 axes (per axis of the broadcast shape, outermost first: extent,
//           lhs stride, rhs stride; stride 0 on broadcast axes) | 2 lhs | 3 rhs | 4 table
// Dispatch: one invocation per entry.

struct Params {
    entries: u32,
    rank: u32,
    // Bit 0: lhs is given; bit 1: rhs is given (else the position is the index).
    given: u32,
    x_matrices: u32,
    w_matrices: u32,
    x_step: u32,
    w_step: u32,
    y_step: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> axes: array<u32>;
@group(0) @binding(2) var<storage, read> lhs: array<u32>;
@group(0) @binding(3) var<storage, read> rhs: array<u32>;
@group(0) @binding(4) var<storage, read_write> table: array<u32>;

override WG_SIZE: u32 = 64u;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let entry = linear_workgroup(wg, num_wg) * WG_SIZE + local;
    if entry >= params.entries {
        return;
    }
    // Positions of the entry in lhs and rhs, walking the broadcast shape innermost first.
    var rest = entry;
    var lhs_pos = 0u;
    var rhs_pos = 0u;
    for (var axis = params.rank; axis > 0u; axis--) {
        let extent = axes[3u * (axis - 1u)];
        let coord = rest % extent;
        rest /= extent;
        lhs_pos += coord * axes[3u * (axis - 1u) + 1u];
        rhs_pos += coord * axes[3u * (axis - 1u) + 2u];
    }
    var x_matrix = lhs_pos;
    if (params.given & 1u) != 0u {
        x_matrix = lhs[lhs_pos];
    }
    var w_matrix = rhs_pos;
    if (params.given & 2u) != 0u {
        w_matrix = rhs[rhs_pos];
    }
    table[3u * entry] = min(x_matrix, params.x_matrices - 1u) * params.x_step;
    table[3u * entry + 1u] = min(w_matrix, params.w_matrices - 1u) * params.w_step;
    table[3u * entry + 2u] = entry * params.y_step;
}
