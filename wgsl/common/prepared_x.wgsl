// prepared_x.wgsl: the layout of rows of x that qmv_prepare.wgsl writes and qmv.wgsl's
// several-rows path reads, in 16-byte vectors. A row is quad-major within chunks of
// PREPARED_CHUNK blocks of 32 elements: chunk c holds, for run j = 0 .. 7, quad j (elements
// 4j .. 4j + 3) of each of its blocks, block after block, then a ninth run (j = 8) of
// (Σ of the block, 0, 0, 0). Rows are padded to whole chunks (never read).
// Expects: const PREPARED_CHUNK.

// Vectors in a prepared row of `blocks` blocks (`prepared_row_vectors` in Rust).
fn prepared_row_vectors(blocks: u32) -> u32 {
    return (blocks + PREPARED_CHUNK - 1u) / PREPARED_CHUNK * 9u * PREPARED_CHUNK;
}

// Where block `blk` starts (its quad 0), in vectors from the start of its row.
fn prepared_block(blk: u32) -> u32 {
    return (blk / PREPARED_CHUNK) * 9u * PREPARED_CHUNK + blk % PREPARED_CHUNK;
}

// Run j (quad j, or the sum for j = 8) of the block starting at vector `block`: a constant
// distance from quad 0, which drivers fold into the loads.
fn prepared_run(block: u32, j: u32) -> u32 {
    return block + j * PREPARED_CHUNK;
}
