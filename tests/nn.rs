//! `wgquant::nn`: module trees and `nn::quantize` against what MLX 0.32.4 prints for the same
//! structures (`tests/fixtures/mlx_nn.txt`, made by `gen_nn_fixtures.py`), MLX's
//! `test_nn.py::test_quantize` and `test_quantized_embedding`, predicates, errors, user-defined
//! module types, snapshots of the demo model's tree, and forward passes.

mod common;

use std::collections::HashMap;

use common::{download, Rng};
use wgquant::nn::{
    self, AsModule, Decision, Dict, Embedding, Layer, Linear, LlamaConfig, Model, Module, Node, Quantizable,
    QuantizedEmbedding, QuantizedLinear, RMSNorm, ReLU, Sequential,
};
use wgquant::{ops, DType, Error, Gpu, QuantParams, Result, Tensor};

// ---- the MLX fixture ---------------------------------------------------------------------------

/// `mlx_nn.txt`: `=== name` headers, each followed by its lines.
struct MlxFixture(HashMap<String, Vec<String>>);

impl MlxFixture {
    fn load() -> MlxFixture {
        let path = format!("{}/tests/fixtures/mlx_nn.txt", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(path).expect("mlx_nn.txt");
        let mut sections = HashMap::new();
        let mut current: Option<(String, Vec<String>)> = None;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some(name) = line.strip_prefix("=== ") {
                sections.extend(current.take());
                current = Some((name.to_string(), Vec::new()));
            } else if let Some((_, lines)) = current.as_mut() {
                lines.push(line.to_string());
            }
        }
        sections.extend(current);
        MlxFixture(sections)
    }

    fn lines(&self, name: &str) -> &[String] {
        self.0.get(name).unwrap_or_else(|| panic!("fixture section {name}"))
    }

    fn text(&self, name: &str) -> String {
        self.lines(name).join("\n")
    }

    fn pairs(&self, name: &str) -> Vec<(String, String)> {
        self.lines(name)
            .iter()
            .map(|l| l.split_once('\t').expect("key<TAB>value"))
            .map(|(k, v)| (k.into(), v.into()))
            .collect()
    }
}

fn paths(modules: &[(String, &dyn Module)]) -> Vec<String> {
    modules.iter().map(|(path, _)| path.clone()).collect()
}

fn keys(model: &dyn Module) -> Vec<String> {
    model.parameters().into_iter().map(|(key, _)| key).collect()
}

// ---- building layers ---------------------------------------------------------------------------

fn upload(gpu: &Gpu, values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(gpu, values, shape).expect("upload")
}

/// A Linear as MLX initialises it (uniform in ±1/√input_dims), as a replaceable slot.
fn linear(gpu: &Gpu, rng: &mut Rng, input_dims: usize, output_dims: usize, bias: bool) -> Layer {
    let scale = (input_dims as f32).sqrt().recip();
    let w: Vec<f32> = (0..input_dims * output_dims).map(|_| scale * (2.0 * rng.uniform() - 1.0)).collect();
    let b = bias.then(|| upload(gpu, &rng.normals(output_dims, scale), &[output_dims]));
    Box::new(Linear::new(upload(gpu, &w, &[output_dims, input_dims]), b).unwrap())
}

/// An Embedding as MLX initialises it (normal, standard deviation 1/√dims).
fn embedding(gpu: &Gpu, rng: &mut Rng, num_embeddings: usize, dims: usize) -> Embedding {
    let values = rng.normals(num_embeddings * dims, (dims as f32).sqrt().recip());
    Embedding::new(upload(gpu, &values, &[num_embeddings, dims])).unwrap()
}

fn norm(gpu: &Gpu, dims: usize) -> RMSNorm {
    RMSNorm::new(upload(gpu, &vec![1.0; dims], &[dims]), 1e-5).unwrap()
}

// ---- user-defined module types: the fixture's `nested` model -----------------------------------

struct Attn {
    q_proj: Layer,
    k_proj: Layer,
    v_proj: Layer,
    o_proj: Layer,
}

impl Module for Attn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let scores = ops::multiply(&self.q_proj.forward(x)?, &self.k_proj.forward(x)?)?;
        self.o_proj.forward(&ops::multiply(&scores, &self.v_proj.forward(x)?)?)
    }
    wgquant::module_children!(q_proj, k_proj, v_proj, o_proj);
}

struct Block {
    attn: Attn,
    mlp: Dict<Layer>,
    norms: Vec<RMSNorm>,
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.attn.forward(&self.norms[0].forward(x)?)?;
        let up = self.mlp.get("up").expect("up").forward(&self.norms[1].forward(&h)?)?;
        self.mlp.get("down_proj").expect("down_proj").forward(&ops::relu(&up)?)
    }
    wgquant::module_children!(attn, mlp, norms);
}

/// An array and a child: not a leaf, so `nn::quantize` never offers it to the predicate.
struct Gated {
    gate: Tensor,
    proj: Layer,
}

impl Module for Gated {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::multiply(&self.proj.forward(x)?, &self.gate)
    }
    fn own_parameters(&self) -> Vec<(&str, &Tensor)> {
        vec![("gate", &self.gate)]
    }
    wgquant::module_children!(proj);
}

struct Net {
    embed: Layer,
    layers: Vec<Block>,
    extras: Dict<Node>,
    gated: Gated,
    head: Layer,
}

impl Module for Net {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut h = self.embed.forward(ids)?;
        for block in &self.layers {
            h = block.forward(&h)?;
        }
        self.head.forward(&self.gated.forward(&h)?)
    }
    wgquant::module_children!(embed, layers, extras, gated, head);
}

/// The fixture's `nested` model: dicts and lists inside modules, d = 64.
fn nested_net(gpu: &Gpu) -> Net {
    let mut rng = Rng::new(11);
    let d = 64;
    let mut block = || Block {
        attn: Attn {
            q_proj: linear(gpu, &mut rng, d, d, false),
            k_proj: linear(gpu, &mut rng, d, d, false),
            v_proj: linear(gpu, &mut rng, d, d, true),
            o_proj: linear(gpu, &mut rng, d, d, false),
        },
        mlp: [("up", linear(gpu, &mut rng, d, 2 * d, true)), ("down_proj", linear(gpu, &mut rng, 2 * d, d, false))]
            .into_iter()
            .collect(),
        norms: vec![norm(gpu, d), norm(gpu, d)],
    };
    let layers = vec![block(), block()];
    let mut rng = Rng::new(12);
    let branches = Node::List(vec![
        Node::Layer(linear(gpu, &mut rng, d, 32, true)),
        Node::Dict([("deep", Node::Layer(linear(gpu, &mut rng, 32, d, false)))].into_iter().collect()),
    ]);
    Net {
        embed: Box::new(embedding(gpu, &mut rng, 16, d)),
        layers,
        extras: [("branches", branches), ("act", Node::Layer(Box::new(ReLU)))].into_iter().collect(),
        gated: Gated { gate: upload(gpu, &vec![1.0; d], &[d]), proj: linear(gpu, &mut rng, d, d, true) },
        head: linear(gpu, &mut rng, d, 16, true),
    }
}

#[test]
fn nested_tree_matches_mlx() {
    let gpu = gpu_or_skip!();
    let fixture = MlxFixture::load();
    let mut net = nested_net(&gpu);
    assert_eq!(paths(&net.named_modules()), fixture.lines("nested.before.named_modules"));
    assert_eq!(paths(&net.leaf_modules()), fixture.lines("nested.before.leaf_modules"));
    assert_eq!(keys(&net), fixture.lines("nested.before.parameters"));
    assert_eq!(net.as_module().to_string(), fixture.text("nested.before.repr"));

    // MLX's True / False / dict / {} answers, mixed bits in one model.
    let mut calls = Vec::new();
    let mut predicate = |path: &str, m: &dyn Module| {
        calls.push(path.to_string());
        if path == "head" {
            QuantParams::affine(64, 8).into()
        } else if path.ends_with("down_proj") {
            QuantParams::affine(128, 6).into()
        } else if m.is::<Embedding>() {
            Decision::Skip // MLX: {}
        } else {
            m.is::<Linear>().into()
        }
    };
    let done = nn::quantize(&mut net, QuantParams::affine(32, 4), Some(&mut predicate)).unwrap();
    assert_eq!(calls, fixture.lines("nested.after.predicate_calls"));
    let mut ours: Vec<(String, String)> = done
        .iter()
        .map(|q| (q.path.clone(), format!("{} {} {}", q.params.group_size, q.params.bits, q.params.mode)))
        .collect();
    let mut mlx = fixture.pairs("nested.after.quantized");
    ours.sort();
    mlx.sort();
    assert_eq!(ours, mlx);
    for q in &done {
        assert_eq!(q.explicit, q.path == "head" || q.path.ends_with("down_proj"), "{}", q.path);
    }
    assert_eq!(net.as_module().to_string(), fixture.text("nested.after.repr"));
    assert_eq!(keys(&net), fixture.lines("nested.after.parameters"));
    // The quantized tree still runs, and computes what its dequantized weights compute.
    let tokens = Tensor::from_slice(&gpu, &[1u32, 5, 9], &[3]).unwrap();
    let logits = net.forward(&tokens).unwrap();
    assert_eq!(logits.shape(), &[3, 16]);
    nn::dequantize_model(&mut net).unwrap();
    let reference = download(&net.forward(&tokens).unwrap());
    let err = relative_error(&download(&logits), &reference);
    assert!(err < SUMMATION_ORDER_REL, "quantized vs dequantized: relative error {err}");
}

/// MLX's `test_nn.py::test_quantize`.
#[test]
fn sequential_quantize_matches_mlx_test_quantize() {
    let gpu = gpu_or_skip!();
    let fixture = MlxFixture::load();
    let model = || {
        let mut rng = Rng::new(13);
        Sequential::new(vec![
            Box::new(embedding(&gpu, &mut rng, 5, 256)),
            Box::new(ReLU),
            linear(&gpu, &mut rng, 256, 256, true),
        ])
    };
    let mut m = model();
    assert_eq!(m.to_string(), fixture.text("sequential.before"));
    nn::quantize(&mut m, QuantParams::default(), None).unwrap();
    assert!(m.layers[0].is::<QuantizedEmbedding>());
    assert!(m.layers[1].is::<ReLU>());
    assert!(m.layers[2].is::<QuantizedLinear>());
    assert_eq!(m.to_string(), fixture.text("sequential.default_predicate"));

    let mut m = model();
    let done =
        nn::quantize(&mut m, QuantParams::default(), Some(&mut |_: &str, m: &dyn Module| m.is::<Linear>().into()))
            .unwrap();
    assert!(m.layers[0].is::<Embedding>());
    assert!(m.layers[2].is::<QuantizedLinear>());
    assert_eq!(done.len(), 1);
    assert_eq!(m.to_string(), fixture.text("sequential.linear_only"));
}

fn llama_config(fixture: &MlxFixture, case: &str) -> LlamaConfig {
    let config: HashMap<String, String> = fixture.pairs(&format!("{case}.config")).into_iter().collect();
    let int = |k: &str| config[k].parse::<usize>().unwrap();
    LlamaConfig {
        vocab_size: int("vocab_size"),
        hidden_size: int("hidden_size"),
        intermediate_size: int("intermediate_size"),
        num_hidden_layers: int("num_hidden_layers"),
        num_attention_heads: int("num_attention_heads"),
        rms_norm_eps: config["rms_norm_eps"].parse().unwrap(),
        tie_word_embeddings: config["tie_word_embeddings"] == "True",
    }
}

/// The mixed recipes on mlx-lm's Llama layout: per-path bits as mlx-lm's `quantize_model`
/// writes them into config.json, in its order; then the model after `mixed_4_6`.
#[test]
fn llama_layout_and_mixed_recipes_match_mlx_lm() {
    let gpu = gpu_or_skip!();
    let fixture = MlxFixture::load();
    for case in ["llama", "llama_tied"] {
        let config = llama_config(&fixture, case);
        let mut model = Model::random(&gpu, &config, DType::F32, 1).unwrap();
        assert_eq!(paths(&model.named_modules()), fixture.lines(&format!("{case}.named_modules")), "{case}");
        assert_eq!(model.to_string(), fixture.text(&format!("{case}.repr")), "{case}");
        for recipe in ["mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6"] {
            let mixed = nn::MixedPredicate::new(recipe.parse().unwrap(), &model, 64).unwrap();
            let mut predicate = nn::mlx_lm_predicate(64, |path, m| mixed.decide(path, m));
            let chosen: Vec<(String, String)> = model
                .leaf_modules()
                .into_iter()
                .filter_map(|(path, m)| match predicate(&path, m) {
                    Decision::QuantizeWith(p) => Some((path, p.bits.to_string())),
                    _ => None,
                })
                .collect();
            assert_eq!(chosen, fixture.pairs(&format!("{case}.recipes.{recipe}")), "{case} {recipe}");
        }
        let mixed = nn::mixed_4_6(&model, 64).unwrap();
        let mut predicate = nn::mlx_lm_predicate(64, |path, m| mixed.decide(path, m));
        let done = nn::quantize(&mut model, QuantParams::affine(64, 4), Some(&mut predicate)).unwrap();
        let written: Vec<(String, String)> = done.iter().map(|q| (q.path.clone(), q.params.bits.to_string())).collect();
        assert_eq!(written, fixture.pairs(&format!("{case}.recipes.mixed_4_6")), "{case}");
        assert!(done.iter().all(|q| q.explicit));
        assert_eq!(model.to_string(), fixture.text(&format!("{case}.after_mixed_4_6.repr")), "{case}");
        assert_eq!(keys(&model), fixture.lines(&format!("{case}.after_mixed_4_6.parameters")), "{case}");
        let mlx_bpw: f64 = fixture.text(&format!("{case}.after_mixed_4_6.bits_per_weight")).parse().unwrap();
        let ours = nn::bits_per_weight(&model);
        assert!((ours - mlx_bpw).abs() < 1e-9 * mlx_bpw, "{case}: bits per weight {ours} vs MLX {mlx_bpw}");
    }
}

#[test]
fn errors_use_mlx_words() {
    let gpu = gpu_or_skip!();
    let fixture = MlxFixture::load();
    let errors: HashMap<String, String> = fixture.pairs("errors").into_iter().collect();

    let mut m = Sequential::new(vec![Box::new(norm(&gpu, 8))]);
    let err = nn::quantize(&mut m, QuantParams::default(), Some(&mut |_: &str, _: &dyn Module| Decision::Quantize))
        .unwrap_err();
    assert!(matches!(&err, Error::NotQuantizable { path, type_name } if path == "layers.0" && type_name == "RMSNorm"));
    // MLX names the Python class; we name the Rust type at its path.
    assert!(errors["not_quantizable"].starts_with("Unable to quantize model of type "));
    assert!(errors["not_quantizable"].ends_with("RMSNorm'>"));
    assert_eq!(err.to_string(), "Unable to quantize model of type RMSNorm (at \"layers.0\")");

    let mut rng = Rng::new(14);
    let mut m = Sequential::new(vec![linear(&gpu, &mut rng, 48, 8, true)]);
    let err = nn::quantize(&mut m, QuantParams::affine(64, 4), None).unwrap_err();
    let Error::AtPath { path, source } = &err else { panic!("{err}") };
    assert_eq!(path, "layers.0");
    assert!(matches!(**source, Error::NotDivisibleByGroup { .. }));
    assert_eq!(source.to_string(), errors["not_divisible"]);
    assert_eq!(err.to_string(), format!("layers.0: {}", errors["not_divisible"]));
    assert!(m.layers[0].is::<Linear>());
}

// ---- nn::quantize rules ------------------------------------------------------------------------

#[test]
fn the_root_is_never_replaced() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(15);
    let mut layer = linear(&gpu, &mut rng, 64, 8, false);
    assert!(nn::quantize(layer.as_mut(), QuantParams::default(), None).unwrap().is_empty());
    assert!(layer.is::<Linear>());
    assert!(layer.leaf_modules().is_empty());
    assert_eq!(paths(&layer.named_modules()), [""]);
}

/// A failure at any leaf leaves the whole model as it was (MLX maps every leaf, then updates).
#[test]
fn a_failed_quantize_changes_nothing() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(16);
    let mut m = Sequential::new(vec![linear(&gpu, &mut rng, 64, 64, false), linear(&gpu, &mut rng, 64, 64, false)]);
    let err = nn::quantize(
        &mut m,
        QuantParams::default(),
        Some(&mut |path: &str, _: &dyn Module| {
            if path == "layers.1" {
                QuantParams::affine(64, 7).into()
            } else {
                Decision::Quantize
            }
        }),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::AtPath { path, source } if path == "layers.1" && matches!(**source, Error::UnsupportedBits { bits: 7, .. })),
        "{err}"
    );
    assert!(m.layers.iter().all(|l| l.is::<Linear>()));
}

/// mlx-lm's wrapper skips what cannot be quantized instead of raising.
#[test]
fn mlx_lm_predicate_skips_indivisible_and_unquantizable_layers() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(17);
    let mut m = Sequential::new(vec![
        linear(&gpu, &mut rng, 48, 8, true),
        Box::new(norm(&gpu, 48)),
        linear(&gpu, &mut rng, 64, 8, true),
    ]);
    let mut predicate = nn::mlx_lm_predicate(64, |_, _| Decision::Quantize);
    let done = nn::quantize(&mut m, QuantParams::affine(64, 4), Some(&mut predicate)).unwrap();
    assert_eq!(done.iter().map(|q| q.path.as_str()).collect::<Vec<_>>(), ["layers.2"]);
    assert!(m.layers[0].is::<Linear>() && m.layers[1].is::<RMSNorm>() && m.layers[2].is::<QuantizedLinear>());
}

#[test]
fn recipes_need_down_proj_layers_and_known_names() {
    let gpu = gpu_or_skip!();
    let m = Sequential::new(vec![Box::new(ReLU)]);
    assert!(matches!(nn::mixed_2_6(&m, 64), Err(Error::MixedQuantKeys)));
    assert_eq!(nn::mixed_3_4(&m, 64).unwrap_err().to_string(), "Model does not have expected keys for mixed quant.");
    assert_eq!("mixed_3_6".parse::<nn::Recipe>().unwrap(), nn::Recipe::Mixed3_6);
    assert_eq!("mixed_9_9".parse::<nn::Recipe>().unwrap_err().to_string(), "Invalid quant recipe mixed_9_9");
    drop(gpu);
}

// ---- user-defined module types -----------------------------------------------------------------

/// A user layer that can be quantized: `y = (x @ wᵀ) · scale`, becoming a `QuantizedLinear`
/// followed by the same scale.
struct ScaledLinear {
    inner: Linear,
    scale: Tensor,
}

struct QuantizedScaledLinear {
    inner: QuantizedLinear,
    scale: Tensor,
}

impl Module for ScaledLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::multiply(&self.inner.forward(x)?, &self.scale)
    }
    fn own_parameters(&self) -> Vec<(&str, &Tensor)> {
        vec![("weight", self.inner.weight()), ("scale", &self.scale)]
    }
    fn as_quantizable(&self) -> Option<&dyn Quantizable> {
        Some(self)
    }
}

impl Quantizable for ScaledLinear {
    fn to_quantized(&self, params: QuantParams) -> Result<Layer> {
        let inner = QuantizedLinear::from_linear(&self.inner, params)?;
        Ok(Box::new(QuantizedScaledLinear { inner, scale: self.scale.clone() }))
    }
}

impl Module for QuantizedScaledLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::multiply(&self.inner.forward(x)?, &self.scale)
    }
    fn extra_repr(&self) -> String {
        format!("bits={}", self.inner.params().bits)
    }
    fn quant_params(&self) -> Option<QuantParams> {
        Some(self.inner.params())
    }
}

/// Holds a Linear by type: `nn::quantize` can walk into it but not swap its leaves.
struct Frozen {
    proj: Linear,
}

impl Module for Frozen {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.proj.forward(x)
    }
    wgquant::module_children!(proj);
}

#[test]
fn user_modules_quantize_through_their_own_to_quantized() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(18);
    let weight = upload(&gpu, &rng.normals(8 * 64, 0.1), &[8, 64]);
    let scaled = ScaledLinear { inner: Linear::new(weight, None).unwrap(), scale: upload(&gpu, &[2.0; 8], &[8]) };
    let gated = Gated { gate: upload(&gpu, &[1.0; 8], &[8]), proj: Box::new(ReLU) };
    let mut m = Sequential::new(vec![Box::new(scaled), Box::new(gated)]);
    let x = upload(&gpu, &rng.normals(3 * 64, 1.0), &[3, 64]);
    let before = download(&m.layers[0].forward(&x).unwrap());

    let done = nn::quantize(&mut m, QuantParams::affine(64, 8), None).unwrap();
    assert_eq!(done.iter().map(|q| q.path.as_str()).collect::<Vec<_>>(), ["layers.0"]);
    assert_eq!(m.layers[0].type_name(), "QuantizedScaledLinear");
    assert_eq!(
        m.to_string(),
        "Sequential(\n  (layers.0): QuantizedScaledLinear(bits=8)\n  (layers.1): Gated(\n    (proj): ReLU()\n  )\n)"
    );
    let after = download(&m.layers[0].forward(&x).unwrap());
    let max_err = before.iter().zip(&after).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(max_err < 0.05, "8-bit ScaledLinear error {max_err}");

    // Gated cannot be quantized: a predicate that insists is an error naming it.
    let err = nn::quantize(
        &mut m,
        QuantParams::default(),
        Some(&mut |path: &str, _: &dyn Module| (path == "layers.1.proj").into()),
    )
    .unwrap_err();
    assert!(matches!(&err, Error::NotQuantizable { type_name, .. } if type_name == "ReLU"), "{err}");

    let mut frozen = Sequential::new(vec![Box::new(Frozen {
        proj: Linear::new(upload(&gpu, &[0.0; 64], &[1, 64]), None).unwrap(),
    })]);
    let err = nn::quantize(&mut frozen, QuantParams::default(), None).unwrap_err();
    assert!(
        matches!(&err, Error::NotReplaceable { path, type_name } if path == "layers.0.proj" && type_name == "Linear"),
        "{err}"
    );
}

/// A user module that forgot `module_children!`: its layer is invisible to every walk.
struct Forgetful {
    proj: Layer,
}

impl Module for Forgetful {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.proj.forward(x)
    }
}

/// The ergonomics of user code: a forgotten `module_children!` is an error rather than a
/// model quantized silently not at all, any module prints with `display()`, a predicate kept
/// in a variable needs no annotations, and `?` works on `std::io::Error`.
#[test]
fn user_code_mistakes_are_caught_and_conveniences_work() {
    let mut root = Forgetful { proj: Box::new(ReLU) };
    let err = nn::quantize(&mut root, QuantParams::default(), None).unwrap_err();
    assert!(
        matches!(&err, Error::UndeclaredChildren { path, type_name } if path.is_empty() && type_name == "Forgetful")
    );
    let mut nested = Sequential::new(vec![Box::new(ReLU), Box::new(Forgetful { proj: Box::new(ReLU) })]);
    let err = nn::quantize(&mut nested, QuantParams::default(), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "\"layers.1\": Forgetful has no parameters and declares no children; list them with \
         `wgquant::module_children!(...)` in its `impl Module` (`module_children!()` for a layer that has none)"
    );
    // ReLU declares that it has no children; so does a user activation that says so.
    struct Swish;
    impl Module for Swish {
        fn forward(&self, x: &Tensor) -> Result<Tensor> {
            ops::silu(x)
        }
        wgquant::module_children!();
    }
    let mut fine = Sequential::new(vec![Box::new(ReLU), Box::new(Swish)]);
    let mut keep_all = nn::predicate(|path, m| if path.is_empty() { Decision::Skip } else { nn::quantizable(path, m) });
    assert_eq!(nn::quantize(&mut fine, QuantParams::default(), Some(&mut keep_all)).unwrap(), []);

    assert_eq!(root.display().to_string(), "Forgetful()");
    assert_eq!(Swish.display().to_string(), "Swish()");
    assert_eq!(fine.display().to_string(), fine.to_string());

    fn read_missing() -> wgquant::Result<Vec<u8>> {
        Ok(std::fs::read("/no/such/wgquant/file")?)
    }
    let err = read_missing().unwrap_err();
    assert!(matches!(&err, Error::OtherIo(e) if e.kind() == std::io::ErrorKind::NotFound), "{err}");
    assert!(err.to_string().starts_with("I/O error: "), "{err}");
}

/// A quantizable module with children is not a leaf: only its children are visited (MLX).
#[test]
fn modules_with_children_are_not_leaves() {
    let gpu = gpu_or_skip!();
    struct LinearWithChild {
        own: Linear,
        child: Layer,
    }
    impl Module for LinearWithChild {
        fn forward(&self, x: &Tensor) -> Result<Tensor> {
            self.child.forward(&self.own.forward(x)?)
        }
        fn own_parameters(&self) -> Vec<(&str, &Tensor)> {
            vec![("weight", self.own.weight())]
        }
        fn as_quantizable(&self) -> Option<&dyn Quantizable> {
            self.own.as_quantizable()
        }
        wgquant::module_children!(child);
    }
    let mut rng = Rng::new(19);
    let parent = LinearWithChild {
        own: Linear::new(upload(&gpu, &[0.5; 64 * 64], &[64, 64]), None).unwrap(),
        child: linear(&gpu, &mut rng, 64, 64, false),
    };
    let mut m = Sequential::new(vec![Box::new(parent)]);
    let done = nn::quantize(&mut m, QuantParams::default(), None).unwrap();
    assert_eq!(done.iter().map(|q| q.path.as_str()).collect::<Vec<_>>(), ["layers.0.child"]);
    assert!(m.layers[0].is::<LinearWithChild>());
}

// ---- layers ------------------------------------------------------------------------------------

fn cosine_rows(a: &[f32], b: &[f32], width: usize) -> f32 {
    a.chunks(width)
        .zip(b.chunks(width))
        .map(|(x, y)| {
            let dot: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
            let norm = |v: &[f32]| v.iter().map(|p| p * p).sum::<f32>().sqrt();
            dot / norm(x) / norm(y)
        })
        .fold(f32::INFINITY, f32::min)
}

/// MLX's `test_nn.py::test_quantized_embedding`.
#[test]
fn quantized_embedding_matches_mlx_test() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(20);
    let emb = embedding(&gpu, &mut rng, 32, 256);
    let qemb = QuantizedEmbedding::from_embedding(&emb, QuantParams::affine(64, 8)).unwrap();
    assert_eq!(qemb.to_string(), "QuantizedEmbedding(32, 256, group_size=64, bits=8, mode=affine)");
    let ids = Tensor::from_slice(&gpu, &[2u32, 6, 9, 3, 0, 3], &[6]).unwrap();
    let (y, yq) = (download(&emb.forward(&ids).unwrap()), download(&qemb.forward(&ids).unwrap()));
    let max_scale = download(&qemb.weight().scales).into_iter().map(f32::abs).fold(0.0, f32::max);
    let max_err = y.iter().zip(&yq).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(max_err < max_scale, "|y - yq| {max_err} >= max(scales) {max_scale}");

    let x = upload(&gpu, &(0..2 * 256).map(|_| rng.uniform()).collect::<Vec<_>>(), &[2, 256]);
    let (y, yq) = (download(&emb.as_linear(&x).unwrap()), download(&qemb.as_linear(&x).unwrap()));
    assert_eq!(y.len(), 2 * 32);
    let cosine = cosine_rows(&y, &yq, 32);
    assert!(cosine > 0.99, "as_linear cosine {cosine}");
    // Scalar ids give one row, which dequantize rejects, as in MLX.
    let scalar = Tensor::from_slice(&gpu, &[1u32], &[]).unwrap();
    assert!(matches!(qemb.forward(&scalar), Err(Error::NdimTooSmall { .. })));
}

#[test]
fn layers_check_their_parts() {
    let gpu = gpu_or_skip!();
    let f = |shape: &[usize]| Tensor::zeros(&gpu, shape, DType::F32).unwrap();
    assert!(matches!(Linear::new(f(&[4]), None), Err(Error::NdimMismatch { .. })));
    assert!(matches!(Linear::new(f(&[4, 3]), Some(f(&[3]))), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(
        Embedding::new(Tensor::zeros(&gpu, &[4, 3], DType::U32).unwrap()),
        Err(Error::NotFloatOperand { .. })
    ));
    assert!(matches!(RMSNorm::new(f(&[4, 3]), 1e-5), Err(Error::NdimMismatch { .. })));
    let q = wgquant::quantize(&f(&[4, 64]), QuantParams::default()).unwrap();
    let ql = QuantizedLinear::new(q.clone(), Some(f(&[4]))).unwrap();
    assert_eq!((ql.input_dims(), ql.output_dims()), (64, 4));
    assert!(matches!(QuantizedLinear::new(q.clone(), Some(f(&[5]))), Err(Error::ShapeMismatch { .. })));
    assert_eq!(QuantizedEmbedding::new(q).unwrap().dims(), 64);
}

// ---- the demo model ----------------------------------------------------------------------------

/// The tree the demo prints, before and after `mixed_4_6`.
#[test]
fn demo_model_tree_snapshots() {
    let gpu = gpu_or_skip!();
    let mut model = Model::random(&gpu, &LlamaConfig::default(), DType::F16, 0).unwrap();
    insta::assert_snapshot!("demo_model_before", model.to_string());
    let mixed = nn::mixed_4_6(&model, 64).unwrap();
    let mut predicate = nn::mlx_lm_predicate(64, |path, m| mixed.decide(path, m));
    let done = nn::quantize(&mut model, QuantParams::affine(64, 4), Some(&mut predicate)).unwrap();
    let bits: Vec<String> = done.iter().map(|q| format!("{}: {} bits", q.path, q.params.bits)).collect();
    insta::assert_snapshot!("demo_model_after_mixed_4_6", format!("{model}\n\n{}", bits.join("\n")));
}

fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    let diff: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let norm: f32 = b.iter().map(|y| y * y).sum();
    (diff / norm).sqrt()
}

fn small_llama(tied: bool) -> LlamaConfig {
    LlamaConfig {
        vocab_size: 96,
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: tied,
    }
}

/// How far a quantized model's f32 forward may be from the forward of its dequantized weights:
/// they differ only in f32 summation order (quantized_matmul may sum `scale·Σx·q + bias·Σx`
/// instead of `Σx·ŵ`): relative error 1e-4, about k·ε = 128 · 1.2e-7 per product, compounded
/// over 2 blocks, with margin.
const SUMMATION_ORDER_REL: f32 = 1e-4;

/// A quantized model's forward equals the float forward of its dequantized weights, up to
/// `SUMMATION_ORDER_REL`. It also loses less with more bits.
#[test]
fn quantized_forward_equals_dequantized_forward() {
    let gpu = gpu_or_skip!();
    let tokens = Tensor::from_slice(&gpu, &[3u32, 14, 15, 92, 65, 35, 89, 79], &[2, 4]).unwrap();
    for tied in [false, true] {
        let config = small_llama(tied);
        let float = download(&Model::random(&gpu, &config, DType::F32, 5).unwrap().forward(&tokens).unwrap());
        let mut errors = Vec::new();
        for bits in [4, 8] {
            let mut quantized = Model::random(&gpu, &config, DType::F32, 5).unwrap();
            let done = nn::quantize(&mut quantized, QuantParams::affine(32, bits), None).unwrap();
            assert_eq!(done.len(), 7 * 2 + 1 + usize::from(!tied));
            let logits = quantized.forward(&tokens).unwrap();
            assert_eq!(logits.shape(), &[2, 4, 96]);
            let logits = download(&logits);
            nn::dequantize_model(&mut quantized).unwrap();
            assert!(quantized.leaf_modules().iter().all(|(_, m)| m.quant_params().is_none()));
            let reference = download(&quantized.forward(&tokens).unwrap());
            let err = relative_error(&logits, &reference);
            assert!(err < SUMMATION_ORDER_REL, "tied={tied} bits={bits}: quantized vs dequantized {err}");
            errors.push(relative_error(&logits, &float));
        }
        assert!(errors[1] < errors[0] && errors[0] < 0.5, "tied={tied}: errors vs float {errors:?}");
    }
}

#[test]
fn bits_per_weight_counts_like_mlx_lm() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(21);
    let mut m = Sequential::new(vec![linear(&gpu, &mut rng, 128, 64, false)]);
    assert_eq!(nn::bits_per_weight(&m), 32.0);
    nn::quantize(&mut m, QuantParams::affine(64, 4), None).unwrap();
    // 4 bits per code plus an f32 scale and bias per 64 weights.
    assert_eq!(nn::bits_per_weight(&m), 4.0 + 64.0 / 64.0);
}

/// `cargo run --release`'s demo, on one block and four tokens: the layers it quantizes, the bits
/// per weight it reports (counted here from the model's shapes, as mlx-lm counts: the bytes of
/// every parameter over the weights' elements) and a relative error of the logits in range.
#[test]
fn demo_reports_what_it_did() {
    let _gpu = gpu_or_skip!();
    // Width 256, MLP 512, vocabulary 1024, one block: q, k, v, o 256², gate and up 256 x 512,
    // down 512 x 256, the embedding and the head 1024 x 256, three norms of 256, all f16.
    let (attn, mlp, table, norms) = (256.0 * 256.0, 256.0 * 512.0, 1024.0 * 256.0, 3.0 * 256.0);
    // Bits of a quantized weight at group size 64: its code plus an f16 scale and bias per 64.
    let at = |bits: f64| bits + 32.0 / 64.0;
    let cases = [
        // mixed_3_6: v_proj, down_proj (the one block is the last) and lm_head at 6 bits.
        (
            "mixed_3_6",
            false,
            "quantized 9 layers (6 at 3 bits, 3 at 6 bits)",
            ((3.0 * attn + 2.0 * mlp + table) * at(3.0) + (attn + mlp + table) * at(6.0) + norms * 16.0)
                / (4.0 * attn + 3.0 * mlp + 2.0 * table + norms),
        ),
        // uniform 4 bits, tied: no lm_head.
        (
            "uniform",
            true,
            "quantized 8 layers (8 at 4 bits)",
            ((4.0 * attn + 3.0 * mlp + table) * at(4.0) + norms * 16.0) / (4.0 * attn + 3.0 * mlp + table + norms),
        ),
    ];
    for (recipe, tied, layers, bits_per_weight) in cases {
        let mut args = vec!["demo", "--recipe", recipe, "--bits", "4", "--group-size", "64", "--dtype", "f16"];
        args.extend(["--layers", "1", "--tokens", "4", "--iterations", "1", "--seed", "3"]);
        if tied {
            args.push("--tied");
        }
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_wgquant")).args(&args).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{recipe}: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
        let line = |start: &str| {
            stdout
                .lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("{recipe}: no '{start}' in\n{stdout}"))
        };
        assert!(line("quantized ").starts_with(layers), "{recipe}: {}", line("quantized "));
        let expected = format!("bits per weight: 16.00 -> {bits_per_weight:.2} (mlx-lm's count)");
        assert!(
            line("bits per weight").starts_with(&expected),
            "{recipe}: {} (expected {expected})",
            line("bits per weight")
        );
        let logits = line("logits on 4 tokens: relative error ");
        let error: f64 =
            logits["logits on 4 tokens: relative error ".len()..].split(' ').next().unwrap().parse().unwrap();
        // 3- to 6-bit weights of a random model: a few percent to a few tens of percent.
        assert!((1e-3..0.5).contains(&error), "{recipe}: {logits}");
        assert!(logits.contains("same top-1 token for "), "{recipe}: {logits}");
    }
}

/// `nn::quantize` in the fp modes: QuantizedLinear and QuantizedEmbedding without biases (their
/// parameters are `weight` and `scales`, and the Linear's `bias`), shown as MLX 0.32.4 shows them
/// (recorded with `nn.quantize(nn.Sequential(nn.Linear(64, 8), nn.Embedding(10, 64)),
/// mode=...)`), the linear's forward equal to its dequantized layer's up to f32 summation order
/// (`SUMMATION_ORDER_REL`; the dequantized weights, bfloat16 as MLX's `dequantize` gives them
/// for the fp modes, are exact there) and the embedding's rows those of `dequantize` (bfloat16).
#[test]
fn fp_modes_quantize_layers_as_mlx() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(31);
    for mode in wgquant::params::FP_MODES {
        let params = QuantParams::for_mode(mode);
        let (gs, bits) = mode.defaults();
        let lin = linear(&gpu, &mut rng, 64, 8, true);
        let emb: Layer = Box::new(embedding(&gpu, &mut rng, 10, 64));
        let mut m = Sequential::new(vec![lin, emb]);
        let done = nn::quantize(&mut m, params, None).unwrap();
        assert_eq!(done.len(), 2, "{mode}");
        let want = format!(
            "Sequential(\n  (layers.0): QuantizedLinear(input_dims=64, output_dims=8, bias=True, group_size={gs}, \
             bits={bits}, mode={mode})\n  (layers.1): QuantizedEmbedding(10, 64, group_size={gs}, bits={bits}, \
             mode={mode})\n)"
        );
        assert_eq!(m.to_string(), want, "{mode}");
        let mut names = keys(&m);
        names.sort();
        assert_eq!(
            names,
            ["layers.0.bias", "layers.0.scales", "layers.0.weight", "layers.1.scales", "layers.1.weight"]
        );

        let leaves = m.leaf_modules();
        let x = upload(&gpu, &rng.normals(3 * 64, 1.0), &[3, 64]);
        let y = download(&leaves[0].1.forward(&x).unwrap());
        let ids = Tensor::from_slice(&gpu, &[7u32, 0, 9], &[3]).unwrap();
        let rows = leaves[1].1.forward(&ids).unwrap();
        assert_eq!((rows.shape(), rows.dtype()), (&[3, 64][..], DType::BF16), "{mode}");
        let rows = download(&rows);
        nn::dequantize_model(&mut m).unwrap();
        let leaves = m.leaf_modules();
        let reference = download(&leaves[0].1.forward(&x).unwrap());
        let err = relative_error(&y, &reference);
        assert!(err < SUMMATION_ORDER_REL, "{mode}: quantized vs dequantized linear {err}");
        assert_eq!(rows, download(&leaves[1].1.forward(&ids).unwrap()), "{mode}: embedding rows");
    }
}
