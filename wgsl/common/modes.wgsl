// modes.wgsl: the quantization modes' ids, as `Mode::wgsl_id` numbers them. Kernels get their
// mode as the prelude constant MODE, so branches on it fold away.

const MODE_AFFINE: u32 = 0u;
const MODE_MXFP4: u32 = 1u;
const MODE_MXFP8: u32 = 2u;
const MODE_NVFP4: u32 = 3u;
