#!/usr/bin/env python3
"""Real MLX on the other side of wgquant's checkpoint I/O.

Run with mlx[cpu]==0.32.4, mlx-lm==0.32.2 and numpy (CI: `.ci/run` makes the virtualenv):

    python tests/interop/mlx_interop.py make-float DIR [--layers N] [--hidden H] [--dtype bf16]
        A small float model in Hugging Face layout (config.json, model.safetensors,
        tokenizer files) for `wgquant convert` to quantize.

    python tests/interop/mlx_interop.py check FLOAT_DIR CONVERTED_DIR
            [--mode affine] [--group-size 64] [--bits 4] [--recipe mixed_3_6] [--skip REGEX]
            [--dtype f16]
        Loads wgquant's output with mx.load and checks, against the options convert had
        (group size and bits default to the mode's): every key, dtype and shape; packed
        weights, scales and (affine) biases bit-identical to mx.quantize of the original
        tensors in that mode (the fp modes: uint8 scales, no biases key), and mx.dequantize
        of them runs; the other tensors equal to the originals cast
        to the dtype; config.json's "quantization" (and its "quantization_config" copy)
        with mlx-lm's per-layer entries for recipes (mlx-lm's own mixed_quant_predicate_builder,
        so mlx-lm==0.32.2 must be installed for --recipe); the index (sorted weight_map, total_size)
        and the {"format": "mlx"} metadata of every shard.

    python tests/interop/mlx_interop.py check-saved FLOAT_DIR SAVED_DIR
        wgquant's `io::save_model` output (tests/io_load.rs save_model_for_mlx): mlx-lm's
        `load_model` loads it (quantization rule, strict load_weights) with the arrays as
        written; every quantized layer bit-identical to mx.quantize of FLOAT_DIR's weight with
        its per-path or default parameters, the rest equal to FLOAT_DIR; index and metadata.

    python tests/interop/mlx_interop.py make-quantized DIR [--seed 1]
        An MLX-quantized checkpoint, as mlx_lm.convert would save it: two shards with an
        index, a mixed per-layer "quantization" section (2, 3, 4, 5, 6 and 8 bits, group
        sizes 32, 64 and 128, a layer left in float), plus `mlx_expected.safetensors` with
        mx.dequantize of every quantized layer and mx.quantized_matmul of a fixed input.
        `tests/io_convert.rs` loads it (tests/fixtures/mlx_checkpoint is this output with the
        default seed; CI also makes one with another seed, so the live check sees new data).

Every MLX call runs on the CPU stream. Exit status 0 means every check passed.
"""

import argparse
import glob
import json
import os
import re
import sys

import numpy as np
import mlx.core as mx

EXPECTED_MLX = "0.32.4"
DTYPES = {"f32": mx.float32, "f16": mx.float16, "bf16": mx.bfloat16}
TORCH_NAMES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}
MODE_DEFAULTS = {"affine": (64, 4), "mxfp4": (32, 4), "mxfp8": (32, 8), "nvfp4": (16, 4)}

mx.set_default_device(mx.cpu)


def model_tensors(layers, hidden, intermediate, vocab, seed):
    """Llama-like float32 tensors (numpy), plus a weight whose last dim (48) no group divides."""
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)

    t = {"model.embed_tokens.weight": normal(vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}"
        t[f"{p}.input_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)
        t[f"{p}.post_attention_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)
        for name in ["q_proj", "k_proj", "v_proj", "o_proj"]:
            t[f"{p}.self_attn.{name}.weight"] = normal(hidden, hidden)
        t[f"{p}.self_attn.q_proj.bias"] = normal(hidden)
        t[f"{p}.mlp.gate_proj.weight"] = normal(intermediate, hidden)
        t[f"{p}.mlp.up_proj.weight"] = normal(intermediate, hidden)
        t[f"{p}.mlp.down_proj.weight"] = normal(hidden, intermediate)
    t["model.norm.weight"] = np.ones(hidden, np.float32)
    t["model.odd_proj.weight"] = normal(8, 48)
    t["lm_head.weight"] = normal(vocab, hidden)
    return t


def write_config(path, extra):
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "rms_norm_eps": 1e-05,
        "tie_word_embeddings": False,
    }
    config.update(extra)
    with open(path, "w") as f:
        json.dump(config, f, indent=4)


def make_float(args):
    os.makedirs(args.dir)
    tensors = model_tensors(args.layers, args.hidden, 2 * args.hidden, args.vocab, args.seed)
    dtype = DTYPES[args.dtype]
    arrays = {k: mx.array(v).astype(dtype) for k, v in tensors.items()}
    # One float32 buffer, kept in f32 unless convert is told a dtype.
    arrays["model.layers.0.self_attn.rotary_emb.inv_freq"] = mx.arange(args.hidden // 2, dtype=mx.float32)
    mx.save_safetensors(os.path.join(args.dir, "model.safetensors"), arrays)
    write_config(
        os.path.join(args.dir, "config.json"),
        {
            "hidden_size": args.hidden,
            "intermediate_size": 2 * args.hidden,
            "num_hidden_layers": args.layers,
            "vocab_size": args.vocab,
            "torch_dtype": TORCH_NAMES[args.dtype],
        },
    )
    with open(os.path.join(args.dir, "tokenizer.json"), "w") as f:
        json.dump({"version": "1.0", "model": {"type": "BPE", "vocab": {}}}, f)
    with open(os.path.join(args.dir, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": 2048}, f)


def load_dir(path):
    """All tensors of a model directory, and each shard's metadata."""
    tensors, metadata = {}, {}
    for file in sorted(glob.glob(os.path.join(path, "model*.safetensors"))):
        arrays, meta = mx.load(file, return_metadata=True)
        for k, v in arrays.items():
            assert k not in tensors, f"{k} is in two shards"
            tensors[k] = v
        metadata[os.path.basename(file)] = (meta, set(arrays))
    return tensors, metadata


def mixed_bits_rule(recipe, layer_paths, group_size):
    """mlx-lm's own mixed_quant_predicate_builder (convert.py), asked about each layer path."""
    from mlx_lm.convert import mixed_quant_predicate_builder

    down_keys = [k for k in layer_paths if "down_proj" in k]
    layer_location = next((i for i, k in enumerate(down_keys[0].split(".")) if k.isdigit()), 0) if down_keys else 0
    # len(model.layers): the largest index in the list that holds the first down_proj, plus one.
    prefix = down_keys[0].split(".")[:layer_location] if down_keys else []
    indices = [p.split(".")[layer_location] for p in layer_paths
               if p.split(".")[:layer_location] == prefix and len(p.split(".")) > layer_location]

    class Paths:
        """What the builder reads of a model: its module paths and the number of layers."""

        layers = range(max((int(i) for i in indices if i.isdigit()), default=-1) + 1)

        def named_modules(self):
            return [(p, None) for p in layer_paths]

    predicate = mixed_quant_predicate_builder(recipe, Paths(), group_size)
    return lambda path: predicate(path, None)["bits"]


def raw_bits(a):
    """The array's bits as numpy integers (numpy has no bfloat16)."""
    if a.dtype in (mx.float16, mx.bfloat16):
        a = a.view(mx.uint16)
    elif a.dtype == mx.float32:
        a = a.view(mx.uint32)
    return np.array(a)


def bits_equal(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(raw_bits(a), raw_bits(b))


def check(args):
    failures = []

    def expect(ok, message):
        if not ok:
            failures.append(message)

    float_tensors, _ = load_dir(args.float_dir)
    ours, shard_meta = load_dir(args.converted_dir)
    with open(os.path.join(args.float_dir, "config.json")) as f:
        float_config = json.load(f)
    with open(os.path.join(args.converted_dir, "config.json")) as f:
        config = json.load(f)

    torch_dtype = {v: k for k, v in TORCH_NAMES.items()}.get(float_config.get("torch_dtype"))
    dtype_name = args.dtype or torch_dtype
    cast = (lambda a: a.astype(DTYPES[dtype_name])) if dtype_name else (lambda a: a)

    mode = args.mode
    group_size, bits_default = MODE_DEFAULTS[mode]
    args.group_size = args.group_size or group_size
    args.bits = args.bits or bits_default
    q = config.get("quantization")
    expect(q is not None, "config.json has no quantization section")
    expect(config.get("quantization_config") == q, "quantization_config is not a copy of quantization")
    expect(q.get("group_size") == args.group_size and q.get("bits") == args.bits and q.get("mode") == mode,
           f"quantization defaults {q}")
    expect(config["model_type"] == float_config["model_type"], "config.json lost its keys")

    layer_paths = sorted(k[: -len(".weight")] for k in float_tensors if k.endswith(".weight"))
    rule = mixed_bits_rule(args.recipe, layer_paths, args.group_size) if args.recipe else None
    skip = re.compile(args.skip) if args.skip else None
    expected_keys = set()
    quantized = 0
    for key, original in float_tensors.items():
        path = key[: -len(".weight")] if key.endswith(".weight") else None
        quantizable = (
            path is not None
            and mx.issubdtype(original.dtype, mx.floating)
            and original.ndim >= 2
            and original.shape[-1] % args.group_size == 0
            and not (skip and skip.search(path))
        )
        if not quantizable:
            expected_keys.add(key)
            if key not in ours:
                continue
            want = cast(original) if mx.issubdtype(original.dtype, mx.floating) else original
            expect(ours[key].dtype == want.dtype and ours[key].shape == want.shape,
                   f"{key}: {ours[key].dtype} {ours[key].shape}, expected {want.dtype} {want.shape}")
            expect(bits_equal(ours[key], want), f"{key}: values differ from the cast original")
            continue
        bits = args.bits
        if rule:
            bits = rule(path)
            entry = q.get(path)
            expect(entry == {"group_size": args.group_size, "bits": bits, "mode": "affine"},
                   f"{path}: per-layer entry {entry}, mlx-lm's rule gives {bits} bits")
        else:
            expect(path not in q, f"{path}: unexpected per-layer entry")
        names = [f"{path}.weight", f"{path}.scales"] + ([f"{path}.biases"] if mode == "affine" else [])
        expected_keys.update(names)
        if not all(n in ours for n in names):
            continue
        quantized += 1
        reference = mx.quantize(cast(original), group_size=args.group_size, bits=bits, mode=mode)
        reference = [a for a in reference if a is not None]
        expect(len(reference) == len(names), f"{path}: mx.quantize gives {len(reference)} arrays")
        for name, want in zip(names, reference):
            got = ours[name]
            expect(got.dtype == want.dtype and got.shape == want.shape,
                   f"{name}: {got.dtype} {got.shape}, mx.quantize gives {want.dtype} {want.shape}")
            expect(bits_equal(got, want), f"{name}: not bit-identical to mx.quantize")
        # MLX itself takes the layer as a quantized matrix of this mode.
        parts = [ours[n] for n in names]
        deq = mx.dequantize(*parts[:2], parts[2] if len(parts) > 2 else None,
                            group_size=args.group_size, bits=bits, mode=mode)
        expect(deq.shape == original.shape, f"{path}: mx.dequantize gives shape {deq.shape}")
    missing = sorted(expected_keys - set(ours))
    extra = sorted(set(ours) - expected_keys)
    expect(not missing, f"missing keys: {missing}")
    expect(not extra, f"unexpected keys: {extra}")

    with open(os.path.join(args.converted_dir, "model.safetensors.index.json")) as f:
        index = json.load(f)
    weight_map = index["weight_map"]
    expect(list(weight_map) == sorted(weight_map), "weight_map is not sorted")
    expect(set(weight_map) == set(ours), "weight_map does not list exactly the tensors")
    expect(index["metadata"]["total_size"] == sum(a.nbytes for a in ours.values()), "total_size is wrong")
    for file, (meta, names) in shard_meta.items():
        expect(meta.get("format") == "mlx", f"{file}: metadata {meta}")
        expect(all(weight_map.get(n) == file for n in names), f"{file}: index disagrees with the file")
    for name in ["tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"]:
        if os.path.exists(os.path.join(args.float_dir, name)):
            expect(os.path.exists(os.path.join(args.converted_dir, name)), f"{name} was not copied")

    print(f"checked {len(ours)} tensors in {len(shard_meta)} file(s); {quantized} layers bit-identical to mx.quantize")
    for message in failures:
        print("FAIL:", message)
    return 1 if failures else 0


def check_saved(args):
    """wgquant's `io::save_model` output (tests/io_load.rs save_model_for_mlx), as mlx-lm loads it."""
    from pathlib import Path

    from mlx.utils import tree_flatten
    from mlx_lm.utils import load_model

    failures = []

    def expect(ok, message):
        if not ok:
            failures.append(message)

    float_tensors, _ = load_dir(args.float_dir)
    ours, shard_meta = load_dir(args.saved_dir)
    with open(os.path.join(args.saved_dir, "config.json")) as f:
        config = json.load(f)
    q = config.get("quantization") or {}
    expect(q and config.get("quantization_config") == q, f"quantization sections {q}")
    expect("_name_or_path" not in config, "_name_or_path was kept")

    # mlx-lm loads it: its rule quantizes the layers that have scales, with the per-path entries
    # or the defaults, then load_weights(strict=True) takes every array.
    model, _ = load_model(Path(args.saved_dir))
    loaded = dict(tree_flatten(model.parameters()))
    expect(set(loaded) == set(ours), f"mlx-lm's model has {sorted(set(loaded) ^ set(ours))} differently")
    for key in set(loaded) & set(ours):
        expect(bits_equal(loaded[key], ours[key]), f"{key}: mlx-lm loaded other values")

    quantized = 0
    for key, original in float_tensors.items():
        path = key[: -len(".weight")]
        if key.endswith(".weight") and f"{path}.scales" in ours:
            entry = q.get(path, q)
            gs, bits = entry["group_size"], entry["bits"]
            reference = mx.quantize(original, group_size=gs, bits=bits)
            for name, want in zip([key, f"{path}.scales", f"{path}.biases"], reference):
                expect(name in ours and bits_equal(ours[name], want), f"{name}: not bit-identical to mx.quantize")
            quantized += 1
        else:
            expect(key in ours and bits_equal(ours[key], original), f"{key}: differs from the float model")

    with open(os.path.join(args.saved_dir, "model.safetensors.index.json")) as f:
        index = json.load(f)
    expect(set(index["weight_map"]) == set(ours), "weight_map does not list exactly the tensors")
    expect(index["metadata"]["total_size"] == sum(a.nbytes for a in ours.values()), "total_size is wrong")
    for file, (meta, names) in shard_meta.items():
        expect(meta.get("format") == "mlx", f"{file}: metadata {meta}")
    print(f"mlx-lm loaded {len(loaded)} arrays from {len(shard_meta)} file(s); {quantized} layers bit-identical to mx.quantize")
    for message in failures:
        print("FAIL:", message)
    return 1 if failures else 0


# Per-layer quantization of the MLX-written checkpoint: every bit width, every group size,
# a per-layer `false`, and layers that follow the defaults because they have scales.
MIXED = {
    "model.embed_tokens": {"group_size": 32, "bits": 6, "mode": "affine"},
    "model.layers.0.self_attn.q_proj": {"group_size": 64, "bits": 2, "mode": "affine"},
    "model.layers.0.self_attn.v_proj": {"group_size": 32, "bits": 6, "mode": "affine"},
    "model.layers.0.mlp.down_proj": {"group_size": 128, "bits": 8},
    "model.layers.0.mlp.up_proj": {"group_size": 64, "bits": 5, "mode": "affine"},
    "model.layers.1.self_attn.k_proj": {"group_size": 32, "bits": 3, "mode": "affine"},
    "model.layers.1.self_attn.o_proj": False,
    "lm_head": {"group_size": 64, "bits": 3, "mode": "affine"},
}


def make_quantized(args):
    os.makedirs(args.dir)
    tensors = model_tensors(layers=2, hidden=64, intermediate=128, vocab=64, seed=args.seed)
    del tensors["model.odd_proj.weight"]
    rng = np.random.default_rng(args.seed + 1)
    weights, expected = {}, {}
    section = {"group_size": 64, "bits": 4, "mode": "affine"}
    for key, value in tensors.items():
        array = mx.array(value).astype(mx.float16)
        path = key[: -len(".weight")]
        entry = MIXED.get(path, section) if key.endswith(".weight") and array.ndim >= 2 else False
        if entry is False:
            weights[key] = array
            continue
        gs, bits = entry.get("group_size", 64), entry.get("bits", 4)
        wq, scales, biases = mx.quantize(array, group_size=gs, bits=bits)
        weights.update({f"{path}.weight": wq, f"{path}.scales": scales, f"{path}.biases": biases})
        x = mx.array(rng.standard_normal((3, array.shape[-1])).astype(np.float32)).astype(mx.float16)
        expected[f"{path}.dequantized"] = mx.dequantize(wq, scales, biases, group_size=gs, bits=bits)
        expected[f"{path}.x"] = x
        expected[f"{path}.y"] = mx.quantized_matmul(x, wq, scales, biases, transpose=True, group_size=gs, bits=bits)

    config_section = dict(section)
    config_section.update(MIXED)
    names = sorted(weights)
    shards = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        mx.save_safetensors(os.path.join(args.dir, file), {k: weights[k] for k in shard}, metadata={"format": "mlx"})
        weight_map.update({k: file for k in shard})
    index = {
        "metadata": {"total_size": sum(a.nbytes for a in weights.values())},
        "weight_map": {k: weight_map[k] for k in sorted(weight_map)},
    }
    with open(os.path.join(args.dir, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=4)
    write_config(
        os.path.join(args.dir, "config.json"),
        {"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 64, "torch_dtype": "float16",
         "quantization": config_section, "quantization_config": config_section},
    )
    mx.save_safetensors(os.path.join(args.dir, "mlx_expected.safetensors"), expected,
                        metadata={"mlx_version": mx.__version__})
    print(f"wrote an MLX {mx.__version__} checkpoint with {len(expected) // 3} quantized layers to {args.dir}")
    return 0


def main():
    if mx.__version__ != EXPECTED_MLX:
        print(f"warning: mlx {mx.__version__}, expected {EXPECTED_MLX}", file=sys.stderr)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make-float")
    p.add_argument("dir")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--dtype", choices=DTYPES, default="bf16")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("check")
    p.add_argument("float_dir")
    p.add_argument("converted_dir")
    p.add_argument("--mode", choices=MODE_DEFAULTS, default="affine")
    p.add_argument("--group-size", type=int)
    p.add_argument("--bits", type=int)
    p.add_argument("--recipe")
    p.add_argument("--skip")
    p.add_argument("--dtype", choices=DTYPES)
    p = sub.add_parser("make-quantized")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=1)
    p = sub.add_parser("check-saved")
    p.add_argument("float_dir")
    p.add_argument("saved_dir")
    args = parser.parse_args()
    if args.command == "make-float":
        make_float(args)
        return 0
    if args.command == "check":
        return check(args)
    if args.command == "check-saved":
        return check_saved(args)
    return make_quantized(args)


if __name__ == "__main__":
    sys.exit(main())
