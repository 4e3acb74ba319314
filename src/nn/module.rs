//! The module tree: MLX's `nn.Module` (`python/mlx/nn/layers/base.py`) as a Rust trait.
//!
//! An MLX module is a dict whose values are arrays (its parameters), other modules, or dicts and
//! lists of them, in insertion order. Here a type implements [`Module`]: its own parameters come
//! from [`Module::own_parameters`], its children from [`Module::children`] and
//! [`Module::children_mut`], both flattened to dotted paths relative to the module
//! (`attn.q_proj`, `layers.0`, `mlp.up` for a dict), which is all MLX's walks and repr use.
//! [`module_children!`](crate::module_children) writes both child methods from a field list;
//! fields may be a [`Layer`] (a slot [`quantize`](super::quantize) can swap), any concrete module,
//! and `Vec`s, `Option`s and [`Dict`]s of them, or a free-form [`Node`] ([`Container`]).

use std::any::Any;
use std::fmt;

use crate::error::Result;
use crate::params::QuantParams;
use crate::tensor::Tensor;

/// A replaceable child: what MLX's `update_modules` can swap for a module of another type
/// (`Linear` for `QuantizedLinear`).
pub type Layer = Box<dyn Module>;

/// Views of any module as `&dyn Module` and `&dyn Any`; implemented for every [`Module`], so
/// trait methods can hand the receiver to code that takes trait objects.
pub trait AsModule {
    /// `self` as a trait object.
    fn as_module(&self) -> &dyn Module;
    /// `self` as `Any`, for [`downcast_ref`](trait.Module.html#method.downcast_ref).
    fn as_any(&self) -> &dyn Any;

    /// MLX's repr of any module, your own types included (`println!("{}", block.display())`),
    /// without casting to `&dyn Module`. wgquant's layers also implement `Display` directly.
    fn display(&self) -> ModuleDisplay<'_> {
        ModuleDisplay(self.as_module())
    }
}

/// A module's MLX repr, from [`AsModule::display`].
pub struct ModuleDisplay<'a>(&'a dyn Module);

impl fmt::Display for ModuleDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.0, f)
    }
}

impl<T: Module> AsModule for T {
    fn as_module(&self) -> &dyn Module {
        self
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A layer or model: MLX's `nn.Module`.
///
/// Implement [`forward`](Module::forward), and where the type has them, its parameters
/// ([`own_parameters`](Module::own_parameters)), its children
/// ([`module_children!`](crate::module_children)) and its MLX repr details
/// ([`extra_repr`](Module::extra_repr)). A layer that can be quantized returns itself from
/// [`as_quantizable`](Module::as_quantizable); a quantized layer reports its parameters from
/// [`quant_params`](Module::quant_params). The walks ([`named_modules`](Module::named_modules),
/// [`leaf_modules`](Module::leaf_modules), [`parameters`](Module::parameters)) are provided and
/// follow MLX's orders; they are not meant to be overridden.
///
/// # Example
/// ```
/// use wgquant::nn::{Layer, Module};
/// use wgquant::{Result, Tensor};
///
/// /// A residual wrapper: `x + inner(x)`.
/// struct Residual {
///     inner: Layer,
/// }
///
/// impl Module for Residual {
///     fn forward(&self, x: &Tensor) -> Result<Tensor> {
///         wgquant::ops::add(x, &self.inner.forward(x)?)
///     }
///     wgquant::module_children!(inner);
/// }
/// ```
pub trait Module: AsModule + Send + Sync + 'static {
    /// The layer's computation: MLX's `__call__`.
    ///
    /// # Errors
    /// Whatever the ops it calls return.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;

    /// The class name MLX's repr prints. Defaults to the type's name without its module path.
    fn type_name(&self) -> &'static str {
        short_type_name(std::any::type_name::<Self>())
    }

    /// What MLX's repr prints between the parentheses (MLX's `_extra_repr`).
    fn extra_repr(&self) -> String {
        String::new()
    }

    /// This module's own arrays in insertion order, by key (`weight`, `scales`, `bias`, ...).
    fn own_parameters(&self) -> Vec<(&str, &Tensor)> {
        Vec::new()
    }

    /// Direct children at paths relative to this module, in insertion order (dict and list
    /// entries flattened: `layers.0`, `mlp.up`). Must list what
    /// [`children_mut`](Module::children_mut) lists, in the same order;
    /// [`module_children!`](crate::module_children) writes both.
    fn children(&self) -> Vec<(String, &dyn Module)> {
        Vec::new()
    }

    /// The children of [`children`](Module::children), mutably.
    fn children_mut(&mut self) -> Vec<(String, Slot<'_>)> {
        Vec::new()
    }

    /// Whether the type declared its children ([`module_children!`](crate::module_children)
    /// says `true`, with an empty list for a layer that has none). A module with neither
    /// children declared nor parameters is most likely one whose `module_children!` was
    /// forgotten, hiding its layers from every walk: [`quantize`](super::quantize) refuses it.
    fn declares_children(&self) -> bool {
        false
    }

    /// Replaces the own array `key` (one of [`own_parameters`](Module::own_parameters)) with
    /// `value` of the same shape, as MLX's `load_weights` sets each array in place. Layers with
    /// parameters implement it; the default has none to set.
    ///
    /// # Errors
    /// [`Error::NoSuchParameter`](crate::Error::NoSuchParameter) for a key the module does not
    /// have; [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) for a shape other than the
    /// current one; [`Error::NotFloatOperand`](crate::Error::NotFloatOperand) for a non-float
    /// array.
    fn set_parameter(&mut self, key: &str, _value: Tensor) -> Result<()> {
        Err(no_such_parameter(self.as_module(), key))
    }

    /// `Some(self)` for layers with a quantized counterpart (MLX: `hasattr(m, "to_quantized")`).
    fn as_quantizable(&self) -> Option<&dyn Quantizable> {
        None
    }

    /// The quantization parameters of a quantized layer (MLX: its `group_size`, `bits`, `mode`).
    fn quant_params(&self) -> Option<QuantParams> {
        None
    }

    /// A layer of experts' computation (mlx-lm's `__call__(x, indices, sorted_indices)`):
    /// each row of x through the experts `indices` names. Layers without experts refuse it.
    ///
    /// # Errors
    /// [`Error::TakesNoIndices`](crate::Error::TakesNoIndices) for a layer without experts;
    /// whatever the ops it calls return.
    fn forward_experts(&self, x: &Tensor, indices: &Tensor, sorted_indices: bool) -> Result<Tensor> {
        let _ = (x, indices, sorted_indices);
        Err(crate::error::Error::TakesNoIndices { layer: self.type_name() })
    }

    /// Every module with its path, the root first as `""`, in MLX's order: a depth-first walk
    /// with a stack, so children come in reverse insertion order (MLX's `named_modules`).
    fn named_modules(&self) -> Vec<(String, &dyn Module)> {
        let mut out = Vec::new();
        let mut stack = vec![(String::new(), self.as_module())];
        while let Some((path, module)) = stack.pop() {
            stack.extend(module.children().into_iter().map(|(key, child)| (join(&path, &key), child)));
            out.push((path, module));
        }
        out
    }

    /// The modules without children, in insertion order, with their paths; the root is never
    /// one of them (MLX's `leaf_modules`, flattened).
    fn leaf_modules(&self) -> Vec<(String, &dyn Module)> {
        let mut out = Vec::new();
        for (path, child) in self.children() {
            push_leaves(path, child, &mut out);
        }
        out
    }

    /// Every array in the tree by its dotted path (`layers.0.attn.q_proj.weight`, `.scales`,
    /// `.biases`, `.bias`): the keys a checkpoint stores. Each module's own arrays come before
    /// its children's.
    fn parameters(&self) -> Vec<(String, &Tensor)> {
        let mut out = Vec::new();
        push_parameters(String::new(), self.as_module(), &mut out);
        out
    }
}

impl dyn Module {
    /// The module as its concrete type, if it is a `T`.
    pub fn downcast_ref<T: Module>(&self) -> Option<&T> {
        self.as_any().downcast_ref()
    }

    /// Whether the module is a `T` (MLX: `isinstance(m, T)`).
    pub fn is<T: Module>(&self) -> bool {
        self.as_any().is::<T>()
    }
}

/// A layer with a quantized counterpart: MLX's `to_quantized` protocol.
pub trait Quantizable {
    /// The quantized layer that replaces this one (MLX's `m.to_quantized(group_size, bits,
    /// mode)`), with the weights quantized on the GPU.
    ///
    /// # Errors
    /// Whatever [`crate::quantize`] returns for this layer's weight and `params`, such as MLX's
    /// `[quantize] ... divisible ...` error when the input size does not split into groups.
    fn to_quantized(&self, params: QuantParams) -> Result<Layer>;
}

/// Mutable access to one child: a [`Layer`] slot that can be replaced, or a module held by its
/// concrete type that can only be walked into.
pub enum Slot<'a> {
    /// A `Box<dyn Module>` field, list entry or dict value.
    Layer(&'a mut Layer),
    /// A module held by type (`norm: RMSNorm`, `layers: Vec<TransformerBlock>`).
    Fixed(&'a mut dyn Module),
}

impl<'a> Slot<'a> {
    /// The module in the slot.
    pub fn module(&self) -> &dyn Module {
        match self {
            Slot::Layer(layer) => &***layer,
            Slot::Fixed(module) => &**module,
        }
    }

    /// The module in the slot, mutably, borrowed for as long as the slot was.
    pub fn into_module(self) -> &'a mut dyn Module {
        match self {
            Slot::Layer(layer) => layer.as_mut(),
            Slot::Fixed(module) => module,
        }
    }

    /// The module's own children, borrowed for as long as the slot was.
    pub fn into_children(self) -> Vec<(String, Slot<'a>)> {
        match self {
            Slot::Layer(layer) => layer.as_mut().children_mut(),
            Slot::Fixed(module) => module.children_mut(),
        }
    }
}

/// Something a module holds its children in: a [`Layer`], a concrete module, or a `Vec`,
/// `Option` or [`Dict`] of those. It lists the modules it holds at paths below `path`, as
/// MLX's `tree_flatten` does (list index or dict key appended with a dot).
pub trait Container {
    /// Appends `(path, module)` for every module held.
    fn collect<'a>(&'a self, path: String, out: &mut Vec<(String, &'a dyn Module)>);
    /// Appends `(path, slot)` for every module held, in the order of [`Container::collect`].
    fn collect_mut<'a>(&'a mut self, path: String, out: &mut Vec<(String, Slot<'a>)>);
}

impl Container for Layer {
    fn collect<'a>(&'a self, path: String, out: &mut Vec<(String, &'a dyn Module)>) {
        out.push((path, self.as_ref()));
    }

    fn collect_mut<'a>(&'a mut self, path: String, out: &mut Vec<(String, Slot<'a>)>) {
        out.push((path, Slot::Layer(self)));
    }
}

impl<M: Module> Container for M {
    fn collect<'a>(&'a self, path: String, out: &mut Vec<(String, &'a dyn Module)>) {
        out.push((path, self));
    }

    fn collect_mut<'a>(&'a mut self, path: String, out: &mut Vec<(String, Slot<'a>)>) {
        out.push((path, Slot::Fixed(self)));
    }
}

impl<T: Container> Container for Vec<T> {
    fn collect<'a>(&'a self, path: String, out: &mut Vec<(String, &'a dyn Module)>) {
        for (i, item) in self.iter().enumerate() {
            item.collect(join(&path, &i.to_string()), out);
        }
    }

    fn collect_mut<'a>(&'a mut self, path: String, out: &mut Vec<(String, Slot<'a>)>) {
        for (i, item) in self.iter_mut().enumerate() {
            item.collect_mut(join(&path, &i.to_string()), out);
        }
    }
}

/// `None` holds nothing (MLX: an attribute set to `None` is not in the module's dict).
impl<T: Container> Container for Option<T> {
    fn collect<'a>(&'a self, path: String, out: &mut Vec<(String, &'a dyn Module)>) {
        if let Some(item) = self {
            item.collect(path, out);
        }
    }

    fn collect_mut<'a>(&'a mut self, path: String, out: &mut Vec<(String, Slot<'a>)>) {
        if let Some(item) = self {
            item.collect_mut(path, out);
        }
    }
}

/// Named children in insertion order: MLX's plain dict attribute (`self.mlp = {"up": ...}`).
#[derive(Default)]
pub struct Dict<T = Layer> {
    entries: Vec<(String, T)>,
}

impl<T> Dict<T> {
    /// An empty dict.
    pub fn new() -> Self {
        Dict { entries: Vec::new() }
    }

    /// Sets `key` to `value`: a new key goes last, an existing key keeps its place (as a Python
    /// dict). Returns the value it replaced.
    pub fn insert(&mut self, key: impl Into<String>, value: T) -> Option<T> {
        let key = key.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some((_, slot)) => Some(std::mem::replace(slot, value)),
            None => {
                self.entries.push((key, value));
                None
            }
        }
    }

    /// The value at `key`.
    pub fn get(&self, key: &str) -> Option<&T> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The value at `key`, mutably.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut T> {
        self.entries.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Entries in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the dict is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<K: Into<String>, T> FromIterator<(K, T)> for Dict<T> {
    fn from_iter<I: IntoIterator<Item = (K, T)>>(iter: I) -> Self {
        let mut dict = Dict::new();
        for (key, value) in iter {
            dict.insert(key, value);
        }
        dict
    }
}

impl<T: Container> Container for Dict<T> {
    fn collect<'a>(&'a self, path: String, out: &mut Vec<(String, &'a dyn Module)>) {
        for (key, item) in &self.entries {
            item.collect(join(&path, key), out);
        }
    }

    fn collect_mut<'a>(&'a mut self, path: String, out: &mut Vec<(String, Slot<'a>)>) {
        for (key, item) in &mut self.entries {
            item.collect_mut(join(&path, key), out);
        }
    }
}

/// A child tree of any shape: a layer, or a list or dict of nodes nested freely, as MLX lets
/// a module attribute hold (`{"branches": [Linear, {"deep": Linear}], "act": ReLU}`). Fixed
/// shapes read better as typed fields (`Vec<Layer>`, `Dict<Layer>`).
pub enum Node {
    /// A layer.
    Layer(Layer),
    /// A list: children at `.0`, `.1`, ...
    List(Vec<Node>),
    /// A dict: children at `.key`, in insertion order.
    Dict(Dict<Node>),
}

impl Container for Node {
    fn collect<'a>(&'a self, path: String, out: &mut Vec<(String, &'a dyn Module)>) {
        match self {
            Node::Layer(layer) => layer.collect(path, out),
            Node::List(list) => list.collect(path, out),
            Node::Dict(dict) => dict.collect(path, out),
        }
    }

    fn collect_mut<'a>(&'a mut self, path: String, out: &mut Vec<(String, Slot<'a>)>) {
        match self {
            Node::Layer(layer) => layer.collect_mut(path, out),
            Node::List(list) => list.collect_mut(path, out),
            Node::Dict(dict) => dict.collect_mut(path, out),
        }
    }
}

/// Writes [`Module::children`] and [`Module::children_mut`] inside an `impl Module` block from
/// the fields that hold children, in insertion order; each field is a [`Container`] and its name
/// is its path. A layer without children or parameters (an activation) writes
/// `module_children!()`, so that [`quantize`](crate::nn::quantize) can tell it from a module
/// whose children were forgotten ([`Module::declares_children`]).
///
/// ```
/// # use wgquant::nn::{Layer, Module, RMSNorm};
/// # use wgquant::{Result, Tensor};
/// struct Block {
///     norm: RMSNorm,       // held by type: walked into, never replaced
///     layers: Vec<Layer>,  // paths layers.0, layers.1, ...
/// }
///
/// impl Module for Block {
///     fn forward(&self, x: &Tensor) -> Result<Tensor> {
///         let mut h = self.norm.forward(x)?;
///         for layer in &self.layers {
///             h = layer.forward(&h)?;
///         }
///         Ok(h)
///     }
///     wgquant::module_children!(norm, layers);
/// }
/// ```
#[macro_export]
macro_rules! module_children {
    ($($field:ident),* $(,)?) => {
        fn declares_children(&self) -> bool {
            true
        }

        #[allow(unused_mut)] // a layer without children lists none
        fn children(&self) -> ::std::vec::Vec<(::std::string::String, &dyn $crate::nn::Module)> {
            let mut out = ::std::vec::Vec::new();
            $( $crate::nn::Container::collect(&self.$field, ::std::string::String::from(stringify!($field)), &mut out); )*
            out
        }

        #[allow(unused_mut)]
        fn children_mut(&mut self) -> ::std::vec::Vec<(::std::string::String, $crate::nn::Slot<'_>)> {
            let mut out = ::std::vec::Vec::new();
            $( $crate::nn::Container::collect_mut(&mut self.$field, ::std::string::String::from(stringify!($field)), &mut out); )*
            out
        }
    };
}

/// MLX's repr: `Type(extra` then each child as `(path): repr` indented by two spaces, then `)`.
impl fmt::Display for dyn Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({}", self.type_name(), self.extra_repr())?;
        let children = self.children();
        for (path, child) in &children {
            let entry = format!("({path}): {child}");
            for line in entry.lines() {
                write!(f, "\n  {line}")?;
            }
        }
        if !children.is_empty() {
            writeln!(f)?;
        }
        write!(f, ")")
    }
}

/// `Display` for concrete module types through the tree repr of `dyn Module`.
macro_rules! display_as_module {
    ($($t:ty),* $(,)?) => {
        $(impl ::std::fmt::Display for $t {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                ::std::fmt::Display::fmt($crate::nn::AsModule::as_module(self), f)
            }
        })*
    };
}
pub(crate) use display_as_module;

/// `prefix.key`, or `key` at the root.
pub(crate) fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn push_leaves<'a>(path: String, module: &'a dyn Module, out: &mut Vec<(String, &'a dyn Module)>) {
    let children = module.children();
    if children.is_empty() {
        out.push((path, module));
        return;
    }
    for (key, child) in children {
        push_leaves(join(&path, &key), child, out);
    }
}

fn push_parameters<'a>(path: String, module: &'a dyn Module, out: &mut Vec<(String, &'a Tensor)>) {
    out.extend(module.own_parameters().into_iter().map(|(key, t)| (join(&path, key), t)));
    for (key, child) in module.children() {
        push_parameters(join(&path, &key), child, out);
    }
}

/// The leaves of `root` as mutable slots, in [`Module::leaf_modules`] order.
pub(crate) fn leaf_slots(root: &mut dyn Module) -> Vec<(String, Slot<'_>)> {
    fn push<'a>(path: String, slot: Slot<'a>, out: &mut Vec<(String, Slot<'a>)>) {
        if slot.module().children().is_empty() {
            out.push((path, slot));
            return;
        }
        for (key, child) in slot.into_children() {
            push(join(&path, &key), child, out);
        }
    }
    let mut out = Vec::new();
    for (path, slot) in root.children_mut() {
        push(path, slot, &mut out);
    }
    out
}

/// Sets `*slot` to `value` when it is a float array of the same shape: the check MLX's
/// `load_weights` makes (`Expected shape ... but received shape ...`), for
/// [`Module::set_parameter`] implementations.
pub(crate) fn set_checked(op: &'static str, what: &'static str, slot: &mut Tensor, value: Tensor) -> Result<()> {
    use crate::error::Error;
    if value.shape() != slot.shape() {
        return Err(Error::ShapeMismatch { op, what, expected: slot.shape().to_vec(), actual: value.shape().to_vec() });
    }
    if !value.dtype().is_float() {
        return Err(Error::NotFloatOperand { op, what, dtype: value.dtype() });
    }
    *slot = value;
    Ok(())
}

/// [`Module::set_parameter`]'s error for a key the module does not have.
pub(crate) fn no_such_parameter(module: &dyn Module, key: &str) -> crate::error::Error {
    crate::error::Error::NoSuchParameter { key: key.to_string(), type_name: module.type_name().to_string() }
}

/// `wgquant::nn::linear::Linear` → `Linear`; `a::Wrapper<b::Inner>` → `Wrapper`.
fn short_type_name(full: &'static str) -> &'static str {
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

/// `True` or `False`, as MLX's reprs print Python booleans.
pub(crate) fn python_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// Formats a float as Python's `repr` does (`1e-05`, `0.0001`, `1.0`), for MLX's reprs.
pub(crate) fn python_float(x: f32) -> String {
    if !x.is_finite() {
        return if x.is_nan() {
            "nan".into()
        } else if x > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    let scientific = format!("{x:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if x == 0.0 || (-4..16).contains(&exponent) {
        let plain = x.to_string();
        if plain.contains('.') {
            plain
        } else {
            format!("{plain}.0")
        }
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_reprs() {
        assert_eq!(python_float(1e-5), "1e-05");
        assert_eq!(python_float(1e-6), "1e-06");
        assert_eq!(python_float(2.5e-7), "2.5e-07");
        assert_eq!(python_float(1e-4), "0.0001");
        assert_eq!(python_float(1.0), "1.0");
        assert_eq!(python_float(0.0), "0.0");
        assert_eq!(python_float(1e20), "1e+20");
    }

    #[test]
    fn type_names_drop_paths_and_generics() {
        assert_eq!(short_type_name("wgquant::nn::linear::Linear"), "Linear");
        assert_eq!(short_type_name("a::Wrapper<b::Inner>"), "Wrapper");
        assert_eq!(short_type_name("Plain"), "Plain");
    }

    #[test]
    fn dict_keeps_insertion_order_and_replaces_in_place() {
        let mut d: Dict<u32> = [("b", 1), ("a", 2)].into_iter().collect();
        assert_eq!(d.insert("b", 3), Some(1));
        assert_eq!(d.insert("c", 4), None);
        assert_eq!(
            d.iter().map(|(k, v)| (k.to_string(), *v)).collect::<Vec<_>>(),
            [("b".to_string(), 3), ("a".to_string(), 2), ("c".to_string(), 4)]
        );
        assert_eq!(d.get("a"), Some(&2));
        assert_eq!(d.len(), 3);
    }
}
