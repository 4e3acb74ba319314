// softfloat.wgsl: IEEE-754 binary32/binary16/bfloat16 conversions and the binary32 operations
// whose rounding decides a quantized code or a stored scale, done in integer arithmetic.
//
// Why: MLX's CPU kernel is correctly rounded (round to nearest, ties to even) with IEEE
// subnormals and NaN, but Vulkan lets a driver compute `a / b` to 2.5 ULP (on the H100 29% of
// WGSL quotients are off), lets pack2x16float round either way, may fuse `a * b + c`, and the
// NVIDIA driver flushes subnormal operands to zero and folds NaN comparisons its own way
// (both seen on an H200). Integer arithmetic is exact on every driver, so these give MLX's bits
// everywhere.

const F32_SIGN: u32 = 0x80000000u;
const F32_INF: u32 = 0x7f800000u;
const F32_QNAN: u32 = 0x7fc00000u;

fn f32_is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > F32_INF;
}

fn f32_abs(x: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(x) & 0x7fffffffu);
}

// Maps binary32 bits to keys that sort as the values do (for non-NaN values).
fn f32_order_key(bits: u32) -> u32 {
    return select(bits | F32_SIGN, ~bits, (bits & F32_SIGN) != 0u);
}

// a < b as IEEE compares it: false when either is NaN, and -0 equals +0.
fn f32_less(a: f32, b: f32) -> bool {
    let ua = bitcast<u32>(a);
    let ub = bitcast<u32>(b);
    if f32_is_nan(a) || f32_is_nan(b) || ((ua | ub) & 0x7fffffffu) == 0u {
        return false;
    }
    return f32_order_key(ua) < f32_order_key(ub);
}

// Rounds sig / 2^24 * 2^(e - 127) to binary32. `sig` holds 25 bits (leading one at bit 24, the
// last bit is the round bit); `sticky` says whether anything non-zero lies below it.
fn f32_round_pack(sign: u32, e: i32, sig: u32, sticky: bool) -> f32 {
    var s = sig;
    var st = sticky;
    var exponent = e;
    if exponent < 1 {
        // Subnormal result: shift to the scale of exponent 1, keeping what falls off as sticky.
        let shift = u32(1 - exponent);
        if shift > 25u {
            return bitcast<f32>(sign);
        }
        st = st || (s & ((1u << shift) - 1u)) != 0u;
        s = s >> shift;
        exponent = 0;
    }
    var mant = s >> 1u;
    if (s & 1u) != 0u && (st || (mant & 1u) != 0u) {
        mant += 1u;
    }
    if exponent == 0 {
        // A carry into bit 23 lands exactly on the smallest normal encoding.
        return bitcast<f32>(sign | mant);
    }
    if mant >= 0x1000000u {
        mant = mant >> 1u;
        exponent += 1;
    }
    if exponent >= 255 {
        return bitcast<f32>(sign | F32_INF);
    }
    return bitcast<f32>(sign | (u32(exponent) << 23u) | (mant & 0x7fffffu));
}

// Splits a finite non-zero binary32 into (significand with the leading one at bit 23, exponent).
fn f32_unpack(bits: u32) -> vec2<i32> {
    let e = (bits >> 23u) & 0xffu;
    let m = bits & 0x7fffffu;
    if e == 0u {
        let shift = 23u - firstLeadingBit(m);
        return vec2<i32>(i32(m << shift), 1 - i32(shift));
    }
    return vec2<i32>(i32(m | 0x800000u), i32(e));
}

// a + b, correctly rounded (ties to even), with IEEE zeros, infinities, NaN and subnormals.
fn f32_add(a: f32, b: f32) -> f32 {
    let ua = bitcast<u32>(a);
    let ub = bitcast<u32>(b);
    let abs_a = ua & 0x7fffffffu;
    let abs_b = ub & 0x7fffffffu;
    if abs_a > F32_INF || abs_b > F32_INF || (abs_a == F32_INF && abs_b == F32_INF && ua != ub) {
        return bitcast<f32>(F32_QNAN);
    }
    if abs_a == F32_INF || abs_b == 0u {
        // Both zero: the sum is -0 only when both are -0.
        return bitcast<f32>(select(ua, ua & ub, abs_a == 0u));
    }
    if abs_b == F32_INF || abs_a == 0u {
        return b;
    }
    // x is the operand of larger magnitude.
    let x = select(ua, ub, abs_b > abs_a);
    let y = select(ub, ua, abs_b > abs_a);
    let sign = x & F32_SIGN;
    var ex = i32((x >> 23u) & 0xffu);
    let ey = i32((y >> 23u) & 0xffu);
    // Significands with three extra low bits (guard, round, sticky); subnormals use exponent 1.
    var mx = select((x & 0x7fffffu) | 0x800000u, x & 0x7fffffu, ex == 0) << 3u;
    var my = select((y & 0x7fffffu) | 0x800000u, y & 0x7fffffu, ey == 0) << 3u;
    ex = max(ex, 1);
    let shift = u32(ex - max(ey, 1));
    if shift >= 27u {
        my = select(0u, 1u, my != 0u);
    } else if shift > 0u {
        my = (my >> shift) | select(0u, 1u, (my & ((1u << shift) - 1u)) != 0u);
    }
    var m: u32;
    if ((x ^ y) & F32_SIGN) == 0u {
        m = mx + my;
    } else {
        m = mx - my;
        if m == 0u {
            return 0.0; // x - x is +0 when rounding to nearest
        }
    }
    var e = ex;
    if m >= 0x8000000u {
        m = (m >> 1u) | (m & 1u);
        e += 1;
    } else {
        // Normalise to bit 26, but not below exponent 1 (the result is then subnormal).
        let up = min(26u - firstLeadingBit(m), u32(e - 1));
        m = m << up;
        e -= i32(up);
    }
    let low = m & 7u;
    var mant = m >> 3u;
    if low > 4u || (low == 4u && (mant & 1u) != 0u) {
        mant += 1u;
    }
    if mant >= 0x1000000u {
        mant = mant >> 1u;
        e += 1;
    }
    if e >= 255 {
        return bitcast<f32>(sign | F32_INF);
    }
    if mant < 0x800000u {
        return bitcast<f32>(sign | mant);
    }
    return bitcast<f32>(sign | (u32(e) << 23u) | (mant & 0x7fffffu));
}

fn f32_sub(a: f32, b: f32) -> f32 {
    return f32_add(a, bitcast<f32>(bitcast<u32>(b) ^ F32_SIGN));
}

// a / b, correctly rounded (ties to even), with IEEE zeros, infinities, NaN and subnormals.
fn f32_div(a: f32, b: f32) -> f32 {
    let ua = bitcast<u32>(a);
    let ub = bitcast<u32>(b);
    let sign = (ua ^ ub) & F32_SIGN;
    let abs_a = ua & 0x7fffffffu;
    let abs_b = ub & 0x7fffffffu;
    if abs_a > F32_INF || abs_b > F32_INF || (abs_a == F32_INF && abs_b == F32_INF) || (abs_a == 0u && abs_b == 0u) {
        return bitcast<f32>(F32_QNAN);
    }
    if abs_a == F32_INF || abs_b == 0u {
        return bitcast<f32>(sign | F32_INF);
    }
    if abs_a == 0u || abs_b == F32_INF {
        return bitcast<f32>(sign);
    }
    let na = f32_unpack(abs_a);
    let nb = f32_unpack(abs_b);
    var ma = u32(na.x);
    let mb = u32(nb.x);
    var e = na.y - nb.y + 127;
    if ma < mb {
        ma = ma << 1u;
        e -= 1;
    }
    // ma / mb lies in [1, 2): restoring division gives 24 significant bits and a round bit.
    var q = 0u;
    var r = ma;
    for (var i = 0u; i < 25u; i++) {
        q = q << 1u;
        if r >= mb {
            r -= mb;
            q |= 1u;
        }
        r = r << 1u;
    }
    return f32_round_pack(sign, e, q, r != 0u);
}

// s * q for a small unsigned integer q (< 256), correctly rounded. Done in integers so that a
// following addition cannot be fused into an FMA (MLX rounds the product, then the sum).
fn f32_mul_uint(s: f32, q: u32) -> f32 {
    return f32_mul_uint_pow2(s, q, 0);
}

// s * q * 2^k for a small unsigned integer q (< 256), correctly rounded (subnormal results
// included, which drivers that flush them would lose in float arithmetic).
fn f32_mul_uint_pow2(s: f32, q: u32, k: i32) -> f32 {
    let us = bitcast<u32>(s);
    let sign = us & F32_SIGN;
    let abs_s = us & 0x7fffffffu;
    if abs_s > F32_INF || (abs_s == F32_INF && q == 0u) {
        return bitcast<f32>(F32_QNAN);
    }
    if abs_s == F32_INF {
        return bitcast<f32>(sign | F32_INF);
    }
    if abs_s == 0u || q == 0u {
        return bitcast<f32>(sign);
    }
    let n = f32_unpack(abs_s);
    let p = u32(n.x) * q; // < 2^24 * 2^8
    let lead = firstLeadingBit(p);
    let e = n.y + i32(lead) - 23 + k;
    if lead > 24u {
        let shift = lead - 24u;
        return f32_round_pack(sign, e, p >> shift, (p & ((1u << shift) - 1u)) != 0u);
    }
    return f32_round_pack(sign, e, p << (24u - lead), false);
}

// 2^112: rebiases an f16 exponent (bias 15) read as an f32 exponent (bias 127).
const F16_REBIAS: f32 = 5192296858534827628530496329220096.0;
// 2^-14, the smallest normal f16.
const F16_MIN_NORMAL: f32 = 0.00006103515625;

// binary16 bits (the low 16 bits of h, higher bits ignored) -> f32, exact, subnormals, infinities
// and NaN payloads included. The one f16 decoder: every kernel reads f16 through it, the hot
// matmul loops included, so it uses full-rate integer and float operations (unpack2x16float is
// missing on some drivers, Mesa without SHADER_F16, and runs at the slow conversion rate
// elsewhere). The magnitude's bits go where an f32's would and a multiplication by a power of two
// rebiases the exponent, which is exact. That would take zero and subnormals through f32
// subnormals, which drivers may flush (NVIDIA's do), so those use 2^-14 · (1 + m / 1024) - 2^-14
// = m · 2^-24 instead (exact: both operands are normal). Infinities and NaNs (exponent 31) come
// out of the multiplication at 2^16 or more, past every finite f16.
fn f16_bits_to_f32(h: u32) -> f32 {
    let magnitude = (h << 13u) & 0x0fffe000u;
    var v = bitcast<f32>(magnitude) * F16_REBIAS;
    v = select(v, bitcast<f32>(magnitude | 0x38800000u) - F16_MIN_NORMAL, magnitude < 0x00800000u);
    v = select(v, bitcast<f32>(magnitude | F32_INF), v >= 65536.0);
    return bitcast<f32>(bitcast<u32>(v) | ((h << 16u) & F32_SIGN));
}

// f32 -> binary16 bits, round to nearest even, overflow to infinity, NaN kept quiet.
fn f32_to_f16_bits(x: f32) -> u32 {
    let u = bitcast<u32>(x);
    let sign = (u >> 16u) & 0x8000u;
    let e = i32((u >> 23u) & 0xffu);
    let m = u & 0x7fffffu;
    if e == 255 {
        return sign | 0x7c00u | select(0u, 0x200u | (m >> 13u), m != 0u);
    }
    let he = e - 112;
    if he >= 31 {
        return sign | 0x7c00u;
    }
    var kept: u32;
    var rest: u32;
    var halfway: u32;
    if he <= 0 {
        if he < -10 {
            return sign;
        }
        // Subnormal half: units of 2^-24.
        let full = m | 0x800000u;
        let shift = u32(14 - he);
        kept = full >> shift;
        rest = full & ((1u << shift) - 1u);
        halfway = 1u << (shift - 1u);
    } else {
        kept = (u32(he) << 10u) | (m >> 13u);
        rest = m & 0x1fffu;
        halfway = 0x1000u;
    }
    if rest > halfway || (rest == halfway && (kept & 1u) != 0u) {
        kept += 1u; // a carry moves into the exponent, up to infinity
    }
    return sign | kept;
}

// bfloat16 bits (the low 16 bits of h, higher bits ignored) -> f32 (exact).
fn bf16_bits_to_f32(h: u32) -> f32 {
    return bitcast<f32>(h << 16u);
}

// f32 -> bfloat16 bits, round to nearest even, NaN kept quiet.
fn f32_to_bf16_bits(x: f32) -> u32 {
    let u = bitcast<u32>(x);
    if (u & 0x7fffffffu) > F32_INF {
        return (u >> 16u) | 0x40u;
    }
    return (u + 0x7fffu + ((u >> 16u) & 1u)) >> 16u;
}
