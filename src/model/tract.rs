//! The embedded ONNX engine: [`tract-onnx`](https://github.com/sonos/tract), pure Rust, no shared library.
//! `engine: auto` uses it when no ONNX Runtime library is found, so `cargo run` works on a fresh machine.
//!
//! ## Making tract run the exported graphs
//!
//! The shipped graphs (torch.onnx dynamo export, opset 20, batch dimension symbolic) do not analyse in
//! tract-onnx 0.23 as exported, for two reasons, both fixed here at load time without touching the files:
//!
//! 1. The exporter writes `value_info` shapes for intermediate tensors in terms of its own `batch` symbol.
//!    tract's analyser then fails to unify them with the input facts ("Failed analyse for node #229
//!    node_unsqueeze Unsqueeze13"). We parse with `with_ignore_value_info(true)`: tract infers every
//!    intermediate shape itself from the input facts.
//! 2. `ConstantOfShape` without a `value` attribute means a float32 zero (ONNX spec), but tract-onnx 0.23
//!    builds an f64 zero, which contradicts the float32 consumer (VJP graphs: "Impossible to unify F32
//!    with F64"). We add the explicit float32 `value` attribute to such nodes in the parsed protobuf.
//!
//! Then every input gets a concrete batch size and the model is optimized into a plan, built once per
//! (graph, batch size) and cached (optimizing takes ~0.1–1 s; a concrete batch runs 2–4× faster than
//! tract's symbolic-batch plan).
//!
//! ## Batches and threads
//! On the CPU, tract gains nothing from batching (one 32×32 sample takes as long per sample alone as in
//! a batch of 3), and its kernels round differently for different batch sizes (~1e-6). So a batch is run
//! sample by sample with the batch-1 plan, in parallel on a pool of `runtime.threads` threads (0 = all
//! cores): each sample's output is bit-for-bit independent of the batch it came in, of
//! `runtime.batch_size` and of the thread count. A graph with a fixed batch dimension is instead run in
//! chunks of exactly that size (the last one padded).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ndarray::{Array4, ArrayView4, Axis};
use rayon::prelude::*;
use tract_onnx::pb;
use tract_onnx::prelude::*;

use super::card::{GraphIo, GraphRole, ModelCard, TensorDecl};
use super::{check_batch, run_batched, Denoiser, F32Chunk, ResidualCache, RuntimeOptions};
use crate::error::{Error, Result};

type Plan = Arc<TypedRunnableModel>;

/// A model's forward (and optional VJP) graph on tract.
pub struct TractDenoiser {
    forward: TractGraph,
    vjp: Option<TractGraph>,
    /// The split VJP (forward_residuals, backward), preferred over `vjp` when the card lists it.
    split: Option<(TractGraph, TractGraph)>,
    /// Residuals of forward_residuals calls, as tract values, until their backward call.
    kept: ResidualCache<TVec<TValue>>,
    image: [usize; 3],
    /// Runs samples in parallel; `None` for one thread.
    pool: Option<rayon::ThreadPool>,
}

impl TractDenoiser {
    /// Parse and check the card's graphs in `dir` (plans are built lazily, per batch size).
    pub fn load(dir: &Path, card: &ModelCard, opts: &RuntimeOptions) -> Result<Self> {
        let forward = TractGraph::open(&dir.join(&card.graphs.forward), GraphRole::Forward, card)?;
        let split = match card.graphs.split() {
            Some((f, b)) => {
                let mut fres = TractGraph::open(&dir.join(f), GraphRole::ForwardResiduals, card)?;
                let mut bwd = TractGraph::open(&dir.join(b), GraphRole::Backward, card)?;
                let res = card.check_residuals(dir, &fres.io, &bwd.io)?;
                fres.set_residuals(&res)?;
                bwd.set_residuals(&res)?;
                Some((fres, bwd))
            }
            None => None,
        };
        // The single VJP graph only when there is no split pair (vjp() would never run it).
        let vjp = match (&card.graphs.vjp, &split) {
            (Some(g), None) => Some(TractGraph::open(&dir.join(g), GraphRole::Vjp, card)?),
            _ => None,
        };
        let img = &card.image;
        let threads = match opts.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let pool = if threads > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("conjure-tract-{i}"))
                    .build()
                    .map_err(|e| Error::Model {
                        path: dir.to_path_buf(),
                        message: format!("cannot start {threads} tract threads: {e}"),
                    })?,
            )
        } else {
            None
        };
        // Build the plans now, so a graph tract cannot run fails here, naming its file.
        for g in std::iter::once(&forward).chain(vjp.as_ref()) {
            g.plan(g.fixed_batch.unwrap_or(1))?;
        }
        if let Some((fres, bwd)) = &split {
            // The backward's plan needs the residuals' shapes: one warm-up call of forward_residuals.
            let n = fres.fixed_batch.unwrap_or(1);
            let zeros = || Array4::<f32>::zeros((n, img.channels, img.height, img.width));
            let (_, res) = fres.run_residuals(F32Chunk {
                x: zeros(),
                t: ndarray::Array1::zeros(n),
                cot: None,
            })?;
            bwd.run_backward(res, zeros())?;
        }
        Ok(TractDenoiser {
            forward,
            vjp,
            split,
            kept: ResidualCache::new(
                opts.residual_budget
                    .unwrap_or_else(ResidualCache::<TVec<TValue>>::host_budget),
            ),
            image: [img.channels, img.height, img.width],
            pool,
        })
    }

    /// Evaluate `g` on a batch: per sample with the batch-1 plan (in parallel when a pool exists), or in
    /// fixed-size chunks for a graph with a fixed batch dimension.
    fn eval(
        &self,
        g: &TractGraph,
        x: ArrayView4<f64>,
        t: &[f64],
        cot: Option<ArrayView4<f64>>,
        n_out: usize,
    ) -> Result<Vec<Array4<f64>>> {
        self.eval_with(g.fixed_batch, x, t, cot, n_out, &|c| g.run(c))
    }

    /// [`eval`](Self::eval) with any per-chunk call (`fixed_batch`: the graph's fixed batch size).
    fn eval_with(
        &self,
        fixed_batch: Option<usize>,
        x: ArrayView4<f64>,
        t: &[f64],
        cot: Option<ArrayView4<f64>>,
        n_out: usize,
        call: &(dyn Fn(F32Chunk) -> Result<Vec<Array4<f32>>> + Sync),
    ) -> Result<Vec<Array4<f64>>> {
        check_batch(self.image, x, t, cot)?;
        let b = x.dim().0;
        if fixed_batch.is_some() || b <= 1 {
            return run_batched(self.image, x, t, cot, 1, fixed_batch, n_out, call);
        }
        let one = |i: usize| {
            run_batched(
                self.image,
                sample(x, i),
                &t[i..i + 1],
                cot.map(|c| sample(c, i)),
                1,
                None,
                n_out,
                call,
            )
        };
        let per_sample: Vec<Vec<Array4<f64>>> = match &self.pool {
            Some(pool) => {
                pool.install(|| (0..b).into_par_iter().map(one).collect::<Result<_>>())?
            }
            None => (0..b).map(one).collect::<Result<_>>()?,
        };
        (0..n_out)
            .map(|k| {
                let views: Vec<_> = per_sample.iter().map(|o| o[k].view()).collect();
                ndarray::concatenate(Axis(0), &views).map_err(|e| Error::Shape(e.to_string()))
            })
            .collect()
    }
}

impl Denoiser for TractDenoiser {
    fn engine(&self) -> String {
        "tract".into()
    }

    fn predict(&self, x: ArrayView4<f64>, t: &[f64]) -> Result<Array4<f64>> {
        let mut out = self.eval(&self.forward, x, t, None, 1)?;
        Ok(out.remove(0))
    }

    fn predict_for_vjp(&self, x: ArrayView4<f64>, t: &[f64]) -> Result<Array4<f64>> {
        let Some((fres, _)) = &self.split else {
            return self.predict(x, t);
        };
        let call = |c: F32Chunk| {
            let (out, res) = fres.run_residuals(F32Chunk {
                x: c.x.clone(),
                t: c.t.clone(),
                cot: None,
            })?;
            let bytes = res.iter().map(|v| v.len() * v.datum_type().size_of()).sum();
            self.kept.put(c.x, c.t, out.clone(), res, bytes);
            Ok(vec![out])
        };
        let mut out = self.eval_with(fres.fixed_batch, x, t, None, 1, &call)?;
        Ok(out.remove(0))
    }

    fn has_vjp(&self) -> bool {
        self.vjp.is_some() || self.split.is_some()
    }

    fn vjp(
        &self,
        x: ArrayView4<f64>,
        t: &[f64],
        cot: ArrayView4<f64>,
    ) -> Result<(Array4<f64>, Array4<f64>)> {
        if let Some((fres, bwd)) = &self.split {
            let call = |c: F32Chunk| {
                let (out, res) = match self.kept.take(&c.x, &c.t) {
                    Some(kept) => kept,
                    None => fres.run_residuals(F32Chunk {
                        x: c.x.clone(),
                        t: c.t.clone(),
                        cot: None,
                    })?,
                };
                let cot = c.cot.expect("a vjp chunk has a cotangent");
                Ok(vec![out, bwd.run_backward(res, cot)?])
            };
            let mut outs = self.eval_with(fres.fixed_batch, x, t, Some(cot), 2, &call)?;
            let vjp = outs.pop().expect("two outputs");
            let out = outs.pop().expect("two outputs");
            return Ok((out, vjp));
        }
        let Some(g) = &self.vjp else {
            return Err(Error::Unsupported(
                "tract: the model has no vjp graph; use jacobian: finite-difference or identity"
                    .into(),
            ));
        };
        let mut outs = self.eval(g, x, t, Some(cot), 2)?;
        let vjp = outs.pop().expect("two outputs");
        let out = outs.pop().expect("two outputs");
        Ok((out, vjp))
    }
}

/// One ONNX graph: the parsed model and its optimized plans, one per batch size.
struct TractGraph {
    path: PathBuf,
    model: InferenceModel,
    /// Input positions of x, t, cotangent in the model's inputs (x, t: `usize::MAX` in backward).
    x_in: usize,
    t_in: usize,
    cot_in: Option<usize>,
    /// Split VJP: positions of the residuals (in the card's residual order) among the outputs of
    /// forward_residuals or the inputs of backward.
    res_pos: Vec<usize>,
    role: GraphRole,
    io: GraphIo,
    in_names: Vec<String>,
    /// Output positions of out (and vjp).
    out_pos: Vec<usize>,
    fixed_batch: Option<usize>,
    image: [usize; 3],
    plans: Mutex<HashMap<usize, Plan>>,
}

impl TractGraph {
    fn open(path: &Path, role: GraphRole, card: &ModelCard) -> Result<Self> {
        let err = |message: String| Error::Model {
            path: path.to_path_buf(),
            message,
        };
        let onnx = tract_onnx::onnx().with_ignore_value_info(true);
        let mut proto = onnx
            .proto_model_for_path(path)
            .map_err(|e| err(format!("cannot read the onnx graph: {e:#}")))?;
        let graph = proto
            .graph
            .as_mut()
            .ok_or_else(|| err("the onnx file holds no graph".into()))?;
        patch_constant_of_shape(graph);
        let io = graph_io(graph);
        let fixed_batch = card.check_graph_io(path, role, &io)?;
        let dir = path.parent().and_then(Path::to_str).map(str::to_owned);
        let parsed = onnx
            .parse(&proto, dir.as_deref())
            .map_err(|e| err(format!("tract cannot parse the graph: {e:#}")))?;
        if !parsed.unresolved_inputs.is_empty() {
            return Err(err(format!(
                "graph inputs not found: {:?} (missing external weights file?)",
                parsed.unresolved_inputs
            )));
        }
        let model = parsed.model;
        let in_names: Vec<String> = model
            .input_outlets()
            .map_err(|e| err(format!("{e}")))?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let pos = |name: &str| {
            in_names
                .iter()
                .position(|n| n == name)
                .ok_or_else(|| err(format!("tract sees no input {name} (inputs {in_names:?})")))
        };
        let (x_in, t_in) = match role {
            GraphRole::Backward => (usize::MAX, usize::MAX),
            _ => (pos("x")?, pos("t")?),
        };
        let cot_in = match role {
            GraphRole::Forward | GraphRole::ForwardResiduals => None,
            GraphRole::Vjp | GraphRole::Backward => Some(pos("cotangent")?),
        };
        let out_names: &[&str] = match role {
            GraphRole::Forward | GraphRole::ForwardResiduals => &["out"],
            GraphRole::Vjp => &["out", "vjp"],
            GraphRole::Backward => &["vjp"],
        };
        let out_pos = out_names
            .iter()
            .map(|n| io.output_index(n).expect("checked against the card"))
            .collect();
        let img = &card.image;
        Ok(TractGraph {
            path: path.to_path_buf(),
            model,
            x_in,
            t_in,
            cot_in,
            res_pos: Vec::new(),
            role,
            io,
            in_names,
            out_pos,
            fixed_batch,
            image: [img.channels, img.height, img.width],
            plans: Mutex::new(HashMap::new()),
        })
    }

    /// Record where the residuals `res` (card order) sit among this split graph's outputs or inputs.
    fn set_residuals(&mut self, res: &[String]) -> Result<()> {
        let names: Vec<String> = match self.role {
            GraphRole::ForwardResiduals => self.io.outputs.iter().map(|t| t.name.clone()).collect(),
            _ => self.in_names.clone(),
        };
        self.res_pos = res
            .iter()
            .map(|r| {
                names
                    .iter()
                    .position(|n| n == r)
                    .ok_or_else(|| Error::Model {
                        path: self.path.clone(),
                        message: format!("tract sees no residual {r} (has {names:?})"),
                    })
            })
            .collect::<Result<_>>()?;
        Ok(())
    }

    /// The optimized plan for batch size `n` (built once, then cached).
    fn plan(&self, n: usize) -> Result<Plan> {
        self.plan_with(n, &[])
    }

    /// The plan for batch size `n`; a backward graph also takes its residuals' facts (type and shape,
    /// in `res_pos` order), known from the values forward_residuals returned.
    fn plan_with(&self, n: usize, res_facts: &[InferenceFact]) -> Result<Plan> {
        if let Some(p) = self.plans.lock().expect("plan cache").get(&n) {
            return Ok(p.clone());
        }
        let [c, h, w] = self.image;
        let err = |what: &str, e: TractError| Error::Model {
            path: self.path.clone(),
            message: format!("tract cannot {what} the graph for batch size {n}: {e:#}"),
        };
        let mut model = self.model.clone();
        let img_fact = || InferenceFact::from(f32::fact([n, c, h, w]));
        if self.role == GraphRole::Backward {
            for (&i, f) in self.res_pos.iter().zip(res_facts) {
                model
                    .set_input_fact(i, f.clone())
                    .map_err(|e| err("set the inputs of", e))?;
            }
        } else {
            model
                .set_input_fact(self.x_in, img_fact())
                .and_then(|_| model.set_input_fact(self.t_in, f32::fact([n]).into()))
                .map_err(|e| err("set the inputs of", e))?;
        }
        if let Some(i) = self.cot_in {
            model
                .set_input_fact(i, img_fact())
                .map_err(|e| err("set the inputs of", e))?;
        }
        let plan = model
            .into_optimized()
            .map_err(|e| err("analyse", e))?
            .into_runnable()
            .map_err(|e| err("plan", e))?;
        // Another thread may have built the same plan meanwhile; either is fine.
        self.plans
            .lock()
            .expect("plan cache")
            .insert(n, plan.clone());
        Ok(plan)
    }

    /// forward_residuals on a chunk: `out` and the residuals (tract values, no copy, card order).
    fn run_residuals(&self, chunk: F32Chunk) -> Result<(Array4<f32>, TVec<TValue>)> {
        let n = chunk.x.dim().0;
        let plan = self.plan(n)?;
        let eng = |e: TractError| Error::Engine {
            engine: "tract".into(),
            message: format!("{}: {e:#}", self.path.display()),
        };
        let mut inputs: TVec<TValue> =
            tvec![TValue::from(Tensor::zero::<f32>(&[0]).map_err(eng)?); 2];
        inputs[self.x_in] = to_tensor(chunk.x).map_err(eng)?.into_tvalue();
        inputs[self.t_in] = Tensor::from_shape(&[n], chunk.t.as_slice().expect("contiguous"))
            .map_err(eng)?
            .into_tvalue();
        let outputs = plan.run(inputs).map_err(eng)?;
        let out = self.output4(&outputs, self.out_pos[0])?;
        let res = self.res_pos.iter().map(|&k| outputs[k].clone()).collect();
        Ok((out, res))
    }

    /// backward on kept residuals (card order) and a cotangent chunk.
    fn run_backward(&self, res: TVec<TValue>, cot: Array4<f32>) -> Result<Array4<f32>> {
        let n = cot.dim().0;
        let eng = |e: TractError| Error::Engine {
            engine: "tract".into(),
            message: format!("{}: {e:#}", self.path.display()),
        };
        let facts: Vec<InferenceFact> = res
            .iter()
            .map(|v| InferenceFact::dt_shape(v.datum_type(), v.shape()))
            .collect();
        let plan = self.plan_with(n, &facts)?;
        let n_in = self.res_pos.len() + 1;
        let mut inputs: Vec<Option<TValue>> = (0..n_in).map(|_| None).collect();
        for (&i, v) in self.res_pos.iter().zip(res) {
            inputs[i] = Some(v);
        }
        let ci = self.cot_in.expect("backward reads the cotangent");
        inputs[ci] = Some(to_tensor(cot).map_err(eng)?.into_tvalue());
        let inputs: TVec<TValue> = inputs
            .into_iter()
            .map(|v| v.expect("every input set"))
            .collect();
        let outputs = plan.run(inputs).map_err(eng)?;
        self.output4(&outputs, self.out_pos[0])
    }

    /// Output `k` of a run as a rank-4 f32 array.
    fn output4(&self, outputs: &TVec<TValue>, k: usize) -> Result<Array4<f32>> {
        let eng = |e: TractError| Error::Engine {
            engine: "tract".into(),
            message: format!("{}: {e:#}", self.path.display()),
        };
        let o = outputs.get(k).ok_or_else(|| Error::Engine {
            engine: "tract".into(),
            message: format!("{}: missing output #{k}", self.path.display()),
        })?;
        let view = o.to_plain_array_view::<f32>().map_err(eng)?;
        let shape = view.shape().to_vec();
        if shape.len() != 4 {
            return Err(Error::Shape(format!(
                "{}: output of shape {shape:?} (expected rank 4)",
                self.path.display()
            )));
        }
        let data: Vec<f32> = view.iter().copied().collect();
        Array4::from_shape_vec((shape[0], shape[1], shape[2], shape[3]), data)
            .map_err(|e| Error::Shape(e.to_string()))
    }

    fn run(&self, chunk: F32Chunk) -> Result<Vec<Array4<f32>>> {
        let n = chunk.x.dim().0;
        let plan = self.plan(n)?;
        let eng = |e: TractError| Error::Engine {
            engine: "tract".into(),
            message: format!("{}: {e:#}", self.path.display()),
        };
        let n_in = 2 + usize::from(self.cot_in.is_some());
        let mut inputs: Vec<Option<TValue>> = (0..n_in).map(|_| None).collect();
        inputs[self.x_in] = Some(to_tensor(chunk.x).map_err(eng)?.into_tvalue());
        inputs[self.t_in] = Some(
            Tensor::from_shape(&[n], chunk.t.as_slice().expect("contiguous"))
                .map_err(eng)?
                .into_tvalue(),
        );
        if let (Some(i), Some(cot)) = (self.cot_in, chunk.cot) {
            inputs[i] = Some(to_tensor(cot).map_err(eng)?.into_tvalue());
        }
        let inputs: TVec<TValue> = inputs
            .into_iter()
            .map(|v| v.expect("every input set"))
            .collect();
        let outputs = plan.run(inputs).map_err(eng)?;
        self.out_pos
            .iter()
            .map(|&k| self.output4(&outputs, k))
            .collect()
    }
}

/// Sample `i` of a batch, as a batch of one.
fn sample(a: ArrayView4<'_, f64>, i: usize) -> ArrayView4<'_, f64> {
    a.slice_axis_move(Axis(0), (i..i + 1).into())
}

fn to_tensor(a: Array4<f32>) -> TractResult<Tensor> {
    let shape = a.shape().to_vec();
    let a = a.as_standard_layout();
    Tensor::from_shape(&shape, a.as_slice().expect("standard layout"))
}

/// Give every `ConstantOfShape` without a `value` attribute the explicit float32 zero the ONNX spec
/// defines as its default (tract-onnx 0.23 assumes an f64 zero instead).
fn patch_constant_of_shape(graph: &mut pb::GraphProto) {
    for node in graph.node.iter_mut() {
        if node.op_type == "ConstantOfShape" && !node.attribute.iter().any(|a| a.name == "value") {
            node.attribute.push(pb::AttributeProto {
                name: "value".into(),
                r#type: pb::attribute_proto::AttributeType::Tensor as i32,
                t: Some(pb::TensorProto {
                    dims: vec![1],
                    data_type: 1, // FLOAT
                    float_data: vec![0.0],
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }
}

/// The graph's declared inputs (initializers excluded) and outputs.
fn graph_io(graph: &pb::GraphProto) -> GraphIo {
    let inits: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|i| i.name.as_str()).collect();
    let decl = |v: &pb::ValueInfoProto| {
        let tensor = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(pb::type_proto::Value::TensorType(t)) => Some(t),
            _ => None,
        };
        TensorDecl {
            name: v.name.clone(),
            elem_type: tensor.map(|t| elem_type_name(t.elem_type)),
            dims: tensor.and_then(|t| t.shape.as_ref()).map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => {
                            Some(v as usize)
                        }
                        _ => None,
                    })
                    .collect()
            }),
        }
    };
    GraphIo {
        inputs: graph
            .input
            .iter()
            .filter(|v| !inits.contains(v.name.as_str()))
            .map(decl)
            .collect(),
        outputs: graph.output.iter().map(decl).collect(),
    }
}

/// ONNX `TensorProto.DataType` names.
fn elem_type_name(code: i32) -> String {
    match code {
        1 => "float32",
        2 => "uint8",
        3 => "int8",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        9 => "bool",
        10 => "float16",
        11 => "float64",
        16 => "bfloat16",
        _ => return format!("onnx type {code}"),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_vjp_keeps_residuals_from_predict_for_vjp_to_vjp() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fmnist-ddpm");
        let card = ModelCard::load(&dir).unwrap();
        let opts = RuntimeOptions {
            threads: 2,
            ..RuntimeOptions::default()
        };
        let d = TractDenoiser::load(&dir, &card, &opts).unwrap();
        assert!(d.split.is_some());
        let x = Array4::from_shape_fn((3, 1, 32, 32), |(b, _, h, w)| {
            ((b + h * w) % 7) as f64 * 0.3
        });
        let t = [10.0, 500.0, 900.0];
        let out = d.predict_for_vjp(x.view(), &t).unwrap();
        // tract runs sample by sample: one kept entry per sample, all consumed by the vjp.
        assert_eq!(d.kept.len(), 3);
        let (o, _) = d.vjp(x.view(), &t, x.view()).unwrap();
        assert_eq!(d.kept.len(), 0);
        assert_eq!(o, out);
        d.predict(x.view(), &t).unwrap();
        assert_eq!(d.kept.len(), 0);
    }
}
