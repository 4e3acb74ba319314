// fp_formats.wgsl: the fp modes' element and scale formats (E2M1, E4M3, E8M0) as MLX 0.32.4's
// CPU computes them, in integer arithmetic (softfloat.wgsl) so that every driver gives the same
// codes and values. The CPU twin, with the reasons for each rule, is src/reference/fp.rs.
// Dtype arguments are dtype.wgsl's ids; kernels pass prelude constants, so switches fold away.
// Expects: modes.wgsl.

// E2M1 magnitudes by index, in halves: 0, 0.5, 1, 1.5, 2, 3, 4, 6.
const E2M1_HALVES = array<u32, 8>(0u, 1u, 2u, 3u, 4u, 6u, 8u, 12u);

// x rounded to `dtype` as MLX rounds: ties to even, and MLX's bfloat16 makes every NaN the
// positive quiet NaN.
fn mlx_round(dtype: u32, x: f32) -> f32 {
    if dtype == DTYPE_BF16 && f32_is_nan(x) {
        return bitcast<f32>(F32_QNAN);
    }
    return dtype_round(dtype, x);
}

// x with its sign bit flipped where `negative`.
fn negate_if(x: f32, negative: bool) -> f32 {
    return bitcast<f32>(bitcast<u32>(x) ^ select(0u, F32_SIGN, negative));
}

// E2M1 code `code` (`sign << 3 | magnitude index`) times s, correctly rounded: the element is
// ±q · 2^-1 with q < 16, so the product is exact unless it leaves f32's range.
fn e2m1_times(code: u32, s: f32) -> f32 {
    return negate_if(f32_mul_uint_pow2(s, E2M1_HALVES[code & 7u], -1), (code & 8u) != 0u);
}

// The value of an E2M1 code, exact.
fn e2m1_value(code: u32) -> f32 {
    return e2m1_times(code, 1.0);
}

// The bits of the midpoints between neighbouring E2M1 magnitudes: 0.25, 0.75, 1.25, 1.75, 2.5,
// 3.5 and 5.
const E2M1_MIDPOINTS = array<u32, 7>(
    0x3e800000u, 0x3f400000u, 0x3fa00000u, 0x3fe00000u, 0x40200000u, 0x40600000u, 0x40a00000u,
);

// The E2M1 code MLX's CPU picks for y (a value of `dtype`): the argmin over the 16-entry table
// of round_dtype(|y - v|), the first index among equals (midpoints go to the smaller magnitude,
// tiny negatives to +0; NaN, infinite and huge y, whose distances are all equal, to +0).
fn e2m1_code(y: f32, dtype: u32) -> u32 {
    let magnitude = bitcast<u32>(y) & 0x7fffffffu;
    if magnitude < 0x41000000u {
        // |y| < 8, what every finite group but a saturated nvfp4 one gives: the distances to
        // the two neighbouring values are exact in `dtype` (Sterbenz), every other distance is
        // larger by at least 0.5, far more than its rounding, so the argmin is the neighbour
        // nearer in exact arithmetic, the smaller magnitude on a tie: the number of midpoints
        // strictly below |y|, signed (with +0, index 0, before -0, index 8).
        var index = 0u;
        for (var i = 0u; i < 7u; i++) {
            index += select(0u, 1u, magnitude > E2M1_MIDPOINTS[i]);
        }
        return select(index | ((bitcast<u32>(y) >> 28u) & 8u), 0u, index == 0u);
    }
    // The argmin itself, in MLX's table order.
    var best = 0u;
    var best_distance = mlx_round(dtype, f32_abs(y));
    for (var code = 1u; code < 16u; code++) {
        let distance = mlx_round(dtype, f32_abs(f32_sub(y, e2m1_value(code))));
        if f32_less(distance, best_distance) {
            best = code;
            best_distance = distance;
        }
    }
    return best;
}

// The E4M3 ("FN") byte of y: round to nearest even, saturating; NaN and magnitudes from 464 up
// give 448 (0x7E) with y's sign bit (MLX's ToFP8, PyTorch's algorithm, in integers).
fn e4m3_code(y: f32) -> u32 {
    let bits = bitcast<u32>(y);
    let sign = bits & F32_SIGN;
    let magnitude = bits ^ sign;
    var code = 0x7eu;
    if magnitude < (121u << 23u) {
        // Below 2^-6, E4M3's subnormals: magnitude is m · 2^(e - 150) (subnormal f32: e = 1),
        // so it holds m >> (141 - e) units of 2^-9 and a remainder, rounded half to even.
        let e = max(magnitude >> 23u, 1u);
        let m = select(magnitude, (magnitude & 0x7fffffu) | 0x800000u, magnitude >= 0x800000u);
        let shift = 141u - e;
        code = 0u;
        if shift <= 24u {
            let rest = m & ((1u << shift) - 1u);
            let half = 1u << (shift - 1u);
            code = m >> shift;
            if rest > half || (rest == half && (code & 1u) != 0u) {
                code += 1u;
            }
        }
    } else if magnitude < (543u << 21u) {
        // Rebias the exponent (127 to 7) and round the 20 dropped mantissa bits half to even
        // (the addition wraps, as PyTorch's unsigned arithmetic does).
        code = (magnitude + 0xc407ffffu + ((magnitude >> 20u) & 1u)) >> 20u;
    }
    return code | (sign >> 24u);
}

// E4M3 byte `code` times s, correctly rounded (0x7F and 0xFF are NaN): the element is ±q · 2^k
// with q < 16, so the product is exact unless it leaves f32's range.
fn e4m3_times(code: u32, s: f32) -> f32 {
    let magnitude = code & 0x7fu;
    if magnitude == 0x7fu {
        return bitcast<f32>(F32_QNAN);
    }
    let e = i32(magnitude >> 3u);
    let m = magnitude & 7u;
    // Subnormal: m · 2^-9; normal: (8 + m) · 2^(e - 10).
    let product = select(f32_mul_uint_pow2(s, 8u + m, e - 10), f32_mul_uint_pow2(s, m, -9), e == 0);
    return negate_if(product, (code & 0x80u) != 0u);
}

// The value of an E4M3 byte, exact.
fn e4m3_value(code: u32) -> f32 {
    return e4m3_times(code, 1.0);
}

// The value of an E8M0 byte, 2^(byte - 127) in f32: byte 0 is the subnormal 2^-127, byte 255
// infinity (MLX's power(2, byte - 127)).
fn e8m0_value(byte: u32) -> f32 {
    return bitcast<f32>(select(byte << 23u, 0x00400000u, byte == 0u));
}

// The smallest e with 2^e >= x, for finite x > 0 given as bits.
fn ceil_log2(bits: u32) -> i32 {
    let exponent = bits >> 23u;
    let mantissa = bits & 0x7fffffu;
    if exponent == 0u {
        // Subnormal: mantissa · 2^-149, and ceil(log2(mantissa)) is the bit length of mantissa - 1.
        return select(i32(firstLeadingBit(mantissa - 1u)) + 1, 0, mantissa == 1u) - 149;
    }
    return i32(exponent) - 127 + select(0, 1, mantissa != 0u);
}

// 2^e as f32 bits, exact, for e in [-149, 127].
fn pow2_bits(e: i32) -> u32 {
    if e >= -126 {
        return u32(e + 127) << 23u;
    }
    return 1u << u32(e + 149);
}

// w / 0 as MLX's CPU computes it on x86-64: a NaN stays itself, ±0 / 0 is the processor's
// default NaN (negative), anything else is infinite with w's sign.
fn divide_by_zero(w: f32) -> f32 {
    let bits = bitcast<u32>(w);
    if f32_is_nan(w) {
        return w;
    }
    if (bits & 0x7fffffffu) == 0u {
        return bitcast<f32>(0xffc00000u);
    }
    return bitcast<f32>((bits & F32_SIGN) | F32_INF);
}
