// gather.wgsl: out[r, c] = table[ids[r], c], MLX's `table[ids]` on rows. Elements are copied as
// bits (ELEMENT_BYTES = 4 for f32/u32 such as packed quantized rows, 2 for f16/bf16, 1 for u8
// such as the fp modes' scales), so any dtype of that size gathers exactly. An id past the table gives a row of zeros (MLX reads out of
// bounds there; a host check would need a read-back).
// Prelude: const ELEMENT_BYTES
// Overrides: WG_SIZE
// Bindings: 0 params | 1 ids (u32) | 2 table | 3 out   (ids and out are windows of one chunk)
// Dispatch: one invocation per output word.

struct Params {
    n_elements: u32,
    width: u32,
    table_rows: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

override WG_SIZE: u32 = 64u;

const PER_WORD: u32 = 4u / ELEMENT_BYTES;
const ELEMENT_BITS: u32 = ELEMENT_BYTES * 8u;
const ELEMENT_MASK: u32 = 0xffffffffu >> (32u - ELEMENT_BITS);

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let slot = linear_workgroup(wg, num_wg) * WG_SIZE + local;
    let first = slot * PER_WORD;
    if first >= params.n_elements {
        return;
    }
    var word = 0u;
    for (var lane = 0u; lane < PER_WORD; lane++) {
        let i = first + lane;
        if i >= params.n_elements {
            break;
        }
        let id = ids[i / params.width];
        if id < params.table_rows {
            let src = id * params.width + i % params.width;
            let bits = (table[src / PER_WORD] >> (ELEMENT_BITS * (src % PER_WORD))) & ELEMENT_MASK;
            word |= bits << (ELEMENT_BITS * lane);
        }
    }
    out[slot] = word;
}
