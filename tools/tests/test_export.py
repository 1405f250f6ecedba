"""Tests of tools/export_onnx.py: each preset exported at reduced size and checked against PyTorch.

Run with the exporter's environment: ``bash tools/ci_exporter.sh`` (or ``python -m pytest tools/tests``).
"""

from __future__ import annotations

import json
import operator
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
import yaml

TOOLS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOOLS))

import export_onnx as ex  # noqa: E402
from presets import PRESETS  # noqa: E402
from presets import ncsnpp  # noqa: E402

CARD_KEYS = ["name", "kind", "parameterization", "schedule", "time_input", "image", "graphs"]


# --------------------------------------------------------------------------------------------------------
# Full exports of the three presets (reduced, random init): one export per preset, shared by the tests
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(PRESETS))
def exported(request, tmp_path_factory):
    name = request.param
    torch.manual_seed(0)
    prep = PRESETS[name].build(config=None, checkpoint=None, reduced=True, scheduler_config=None, ema=True)
    out = tmp_path_factory.mktemp(name)
    card = ex.export(prep, out, f"{name}-reduced", log=lambda *_: None)
    return name, prep, out, card


def test_files_and_card(exported):
    name, prep, out, _ = exported
    assert sorted(p.name for p in out.iterdir()) == [
        "backward.onnx", "forward.onnx", "forward_residuals.onnx", "model.yaml", "vjp.onnx", "weights.bin"]
    card = yaml.safe_load((out / "model.yaml").read_text())
    assert list(card) == CARD_KEYS
    assert card["name"] == f"{name}-reduced"
    assert card["graphs"] == {"forward": "forward.onnx", "vjp": "vjp.onnx",
                              "forward_residuals": "forward_residuals.onnx", "backward": "backward.onnx"}
    c, h, w = prep.image_shape
    channels = 1 if name == "fmnist-unet" else 3
    assert card["image"] == {"channels": channels, "height": 32, "width": 32, "value_range": [-1, 1]}
    assert (c, h, w) == (channels, 32, 32)
    expected = {
        "adm": ("diffusion", "eps", {"type": "ddpm-linear", "beta_start": 0.0001, "beta_end": 0.02,
                                     "timesteps": 1000}, "index"),
        "diffusers-unet2d": ("diffusion", "eps", {"type": "ddpm-linear", "beta_start": 0.0001, "beta_end": 0.02,
                                                  "timesteps": 1000}, "index"),
        "ncsnpp-rf": ("flow", "velocity", {"type": "rectified-flow"}, "index"),
        "fmnist-unet": ("diffusion", "eps", {"type": "ddpm-linear", "beta_start": 0.0001, "beta_end": 0.02,
                                             "timesteps": 1000}, "index"),
    }[name]
    assert (card["kind"], card["parameterization"], card["schedule"], card["time_input"]) == expected


def test_graph_io_opset_and_dynamic_batch(exported):
    _, prep, out, _ = exported
    res = [o.name for o in onnx.load(str(out / "forward_residuals.onnx"), load_external_data=False).graph.output][1:]
    assert res and res == [f"r{i}" for i in range(len(res))]
    for fname, ins, outs in (("forward.onnx", ["x", "t"], ["out"]),
                             ("vjp.onnx", ["x", "t", "cotangent"], ["out", "vjp"]),
                             ("forward_residuals.onnx", ["x", "t"], ["out", *res]),
                             ("backward.onnx", [*res, "cotangent"], ["vjp"])):
        m = onnx.load(str(out / fname), load_external_data=False)
        assert [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] == [20]
        assert [i.name for i in m.graph.input] == ins
        assert [o.name for o in m.graph.output] == outs
        for v in list(m.graph.input) + list(m.graph.output):
            dims = v.type.tensor_type.shape.dim
            # residuals: the first dimension is dynamic (the batch or a multiple of it)
            assert not dims[0].HasField("dim_value"), (fname, v.name)
            if v.name in res:
                continue
            assert dims[0].dim_param == "batch", (fname, v.name)
            assert v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
            assert [d.dim_value for d in dims[1:]] == ([] if v.name == "t" else list(prep.image_shape))


def _external(m):
    from onnx.external_data_helper import uses_external_data

    res = {}
    for t in m.graph.initializer:
        if uses_external_data(t):
            info = {e.key: e.value for e in t.external_data}
            res[t.name] = (info["location"], int(info.get("offset", 0)), int(info["length"]))
    return res


def test_all_graphs_share_one_weights_file(exported):
    _, prep, out, _ = exported
    fwd, vjp, fres, bwd = (_external(onnx.load(str(out / f), load_external_data=False))
                           for f in ("forward.onnx", "vjp.onnx", "forward_residuals.onnx", "backward.onnx"))
    assert fwd and vjp and fres and bwd
    for ext in (fwd, vjp, fres, bwd):
        assert {loc for loc, _, _ in ext.values()} == {"weights.bin"}
    # The forward graph's weights are all read by the VJP graph from the same bytes of the same file, and
    # the split pair reads no weight of its own either.
    spans = lambda ext: {(o, n) for _, o, n in ext.values()}  # noqa: E731
    fwd_spans = spans(fwd)
    vjp_spans = spans(vjp)
    assert fwd_spans <= vjp_spans
    assert spans(fres) | spans(bwd) <= vjp_spans | fwd_spans
    size = (out / "weights.bin").stat().st_size
    assert all(o + n <= size for o, n in vjp_spans)
    # Stored once: the file is not (much) larger than the parameters, not twice their size.
    param_bytes = sum(p.numel() * 4 for p in prep.module.parameters())
    assert size < 1.5 * param_bytes


def test_weights_carry_their_parameter_names(exported):
    """Every weight of the four graphs that holds a parameter is named after it (model.<state-dict key>,
    …__transposed for a MatMul operand) and its bytes are that parameter's; what stays unnamed is a
    constant the exporter computed (folded from parameters or shapes), equal to no parameter."""
    _, prep, out, _ = exported
    state = {f"model.{k}": v.detach().float().numpy() for k, v in prep.module.state_dict().items()}
    by_bytes = {}
    for k, a in state.items():
        by_bytes[(a.shape, a.tobytes())] = k
        if a.ndim == 2:
            by_bytes[(a.T.shape, np.ascontiguousarray(a.T).tobytes())] = k + "__transposed"
    for f in ("forward.onnx", "vjp.onnx", "forward_residuals.onnx", "backward.onnx"):
        m = onnx.load(str(out / f))
        named = 0
        for t in m.graph.initializer:
            arr = onnx.numpy_helper.to_array(t, base_dir=str(out))
            if arr.dtype != np.float32:
                continue
            if t.name.startswith("model."):
                key = t.name.removesuffix("__transposed")
                ref = state[key].T if t.name.endswith("__transposed") else state[key]
                assert np.array_equal(arr, ref), (f, t.name)
                named += 1
            else:
                assert (arr.shape, arr.tobytes()) not in by_bytes, (f, t.name, by_bytes.get((arr.shape, arr.tobytes())))
        assert named, f


def test_self_check_onnxruntime_matches_torch(exported):
    _, prep, out, _ = exported
    res = ex.self_check(prep, out, batches=(1, 2), log=lambda *_: None)
    keys = ("forward.out", "vjp.out", "vjp.vjp", "split.out", "split.vjp")
    assert sorted(res) == sorted(f"{k}@b{b}" for k in keys for b in (1, 2))
    for key, (abs_err, rel) in res.items():
        assert rel <= 1e-4, (key, abs_err, rel)


def test_lean_group_norm_and_silu_backward_equal_autograd():
    """The hand-written backward of lean_residuals' GroupNorm (x̂ and the group inverse deviations kept) and
    SiLU (input kept, σ recomputed) equals PyTorch's own autograd, in float64, for input gradients (what the
    export asks)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(3)
    x = torch.randn((3, 12, 5, 4), generator=g, dtype=torch.float64) * 2 + 0.5
    w = torch.randn(12, generator=g, dtype=torch.float64)
    b = torch.randn(12, generator=g, dtype=torch.float64)
    v = torch.randn((3, 12, 5, 4), generator=g, dtype=torch.float64)

    def grad():
        xg = x.clone().requires_grad_(True)
        y = F.silu(F.group_norm(xg, 4, w, b, 1e-5))
        (gx,) = torch.autograd.grad(y, xg, v)
        return y.detach(), gx, y.grad_fn.name()

    ref_y, ref_g, ref_fn = grad()
    with ex.lean_residuals():
        y, gx, fn = grad()
    assert "SiLUSavingInput" in fn and "SiLUSavingInput" not in ref_fn
    assert torch.allclose(y, ref_y, rtol=0, atol=1e-13)
    assert torch.allclose(gx, ref_g, rtol=0, atol=1e-12), (gx - ref_g).abs().max()
    assert F.silu is ex._F_SILU and F.group_norm is ex._F_GROUP_NORM  # restored


def test_split_vjp_keeps_what_the_forward_computes_recomputes_only_cheap_ops_and_matches_the_joint_trace():
    """The split's contract: the forward writes as residuals only what the backward reads and what it
    computes anyway (no σ, no statistic computed beside the normalisation, no unused alias), the backward
    recomputes from residuals alone only pointwise ops, views and means/sums (never a convolution or a
    matrix product), and both halves together give the joint trace's (out, vjp) at a batch size other than
    the traced one."""
    torch.manual_seed(0)
    prep = PRESETS["fmnist-unet"].build(config=None, checkpoint=None, reduced=True)
    net = prep.module.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn((2, 1, 32, 32), generator=g), torch.randn((2, 1, 32, 32), generator=g)
    t = prep.sample_t(2, g)
    joint = ex.trace_vjp(net, x, t, v)
    fwd, bwd, names = ex.split_vjp(joint)
    assert names == [f"r{i}" for i in range(len(names))] and names
    phs = [n for n in bwd.graph.nodes if n.op == "placeholder"]
    assert [n.target for n in phs] == [*names, "cotangent"]
    assert all(n.users for n in phs), [n.target for n in phs if not n.users]
    dep_cot = set()
    from_res = set()
    for n in bwd.graph.nodes:
        if n.op == "placeholder":
            (dep_cot if n.target == "cotangent" else from_res).add(n)
            continue
        if any(a in dep_cot for a in n.all_input_nodes):
            dep_cot.add(n)
        elif any(a in from_res for a in n.all_input_nodes):
            from_res.add(n)
            assert ex._cheap(n), f"the backward recomputes {n.format_node()} from residuals alone"
    # Per GroupNorm its layer normalisation's x̂ and inverse deviation (outputs 0 and 2, never the mean), per
    # SiLU its input (plus attention's operands); no σ(y), no statistic computed beside the normalisation:
    # the forward writes nothing it does not compute anyway.
    fwd_out = next(n for n in fwd.graph.nodes if n.op == "output").args[0]
    layer_norm = torch.ops.aten.native_layer_norm.default
    n_ln = sum(1 for n in fwd.graph.nodes if n.target is layer_norm)
    kept = {0: 0, 2: 0}
    for node in fwd_out[1:]:
        assert node.target not in (torch.ops.aten.sigmoid.default, torch.ops.aten.rsqrt.default), node.format_node()
        shape = node.meta["val"].shape
        if node.target is operator.getitem and node.args[0].target is layer_norm:
            assert node.args[1] in kept, node.format_node()
            kept[node.args[1]] += 1
            continue
        assert len(shape) >= 3 and shape[-1] != 1, (node.format_node(), shape)
    assert n_ln > 0 and kept == {0: n_ln, 2: n_ln}, (n_ln, kept)
    for b in (2, 3):
        x, t, v = torch.randn((b, 1, 32, 32)), prep.sample_t(b, g), torch.randn((b, 1, 32, 32))
        out, *res = fwd(x, t)
        (vjp,) = bwd(*res, v)
        ref_out, ref_vjp = joint(x, t, v)
        assert torch.equal(out, ref_out) and torch.allclose(vjp, ref_vjp, atol=1e-6, rtol=0)


def test_onnx_batch_rows_are_independent(exported):
    """Each sample of a batch is computed on its own: batch 3 equals three batch-1 runs."""
    import onnxruntime as ort

    _, prep, out, _ = exported
    sess = ort.InferenceSession(str(out / "vjp.onnx"), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(5)
    shape = (3, *prep.image_shape)
    x = torch.randn(shape, generator=g).numpy()
    t = prep.sample_t(3, g).numpy()
    v = torch.randn(shape, generator=g).numpy()
    full_out, full_vjp = sess.run(None, {"x": x, "t": t, "cotangent": v})
    for i in range(3):
        o, j = sess.run(None, {"x": x[i:i + 1], "t": t[i:i + 1], "cotangent": v[i:i + 1]})
        np.testing.assert_allclose(full_out[i:i + 1], o, rtol=1e-4, atol=1e-5 * np.abs(o).max())
        np.testing.assert_allclose(full_vjp[i:i + 1], j, rtol=1e-4, atol=1e-5 * np.abs(j).max())


def test_self_check_fails_on_corrupted_weights(exported, tmp_path):
    _, prep, out, _ = exported
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    m = onnx.load(str(bad / "forward.onnx"), load_external_data=False)
    data = np.fromfile(bad / "weights.bin", dtype=np.uint8)
    spans = [(o, n) for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT
             for _, o, n in [_external(m).get(t.name, (None, None, None))] if o is not None]
    assert spans
    for o, n in spans:  # every float weight of the forward graph, scaled by 1.5
        floats = data[o:o + n].view(np.float32)
        floats *= np.float32(1.5)
    data.tofile(bad / "weights.bin")
    with pytest.raises(ex.SelfCheckError, match="disagrees"):
        ex.self_check(prep, bad, batches=(1,), log=lambda *_: None)


# --------------------------------------------------------------------------------------------------------
# The hand-written backward decompositions, against autograd (traced graph run directly, no ONNX)
# --------------------------------------------------------------------------------------------------------


class _Op(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, t):
        return self.fn(x) * (1 + t.reshape(-1, *([1] * (x.dim() - 1))))


_g = torch.Generator().manual_seed(3)
_W = {
    "conv_s2_p1_odd": torch.randn((6, 4, 3, 3), generator=_g),
    "conv_groups_dil": torch.randn((6, 2, 3, 3), generator=_g),
    "convt_s2": torch.randn((4, 5, 4, 4), generator=_g),
    "conv1d": torch.randn((5, 4, 1), generator=_g),
    "conv_s1": torch.randn((6, 4, 3, 5), generator=_g),
}
CASES = {
    # stride 2 on an odd size: the adjoint needs an output padding to restore the input size
    "conv_s2_p1_odd": ((2, 4, 9, 9), lambda x: F.conv2d(x, _W["conv_s2_p1_odd"], stride=2, padding=1)),
    "conv_groups_dil": ((2, 4, 8, 8), lambda x: F.conv2d(x, _W["conv_groups_dil"], padding=2, dilation=2,
                                                         groups=2)),
    "conv_transpose_s2": ((2, 4, 5, 5), lambda x: F.conv_transpose2d(x, _W["convt_s2"], stride=2, padding=1)),
    "conv1d": ((2, 4, 7), lambda x: F.conv1d(x, _W["conv1d"])),
    # stride 1: the adjoint is a plain convolution with the flipped, channel-swapped kernel
    "conv_s1_rect": ((2, 4, 7, 6), lambda x: F.conv2d(x, _W["conv_s1"], padding=(1, 2))),
    "conv_s1_valid": ((2, 4, 7, 8), lambda x: F.conv2d(x, _W["conv_s1"], padding=(0, 1))),
    "upsample_nearest": ((2, 3, 4, 5), lambda x: F.interpolate(x, scale_factor=2, mode="nearest") ** 2),
    "avg_pool": ((2, 3, 8, 6), lambda x: F.avg_pool2d(x, 2, stride=2) ** 2),
    "fir_resampling": ((2, 3, 8, 8), lambda x: ncsnpp.downsample_2d(
        ncsnpp.upsample_2d(x, torch.from_numpy(ncsnpp.setup_kernel([1, 3, 3, 1]) * 4)) ** 2,
        torch.from_numpy(ncsnpp.setup_kernel([1, 3, 3, 1])))),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_backward_decompositions_match_autograd(case):
    shape, fn = CASES[case]
    net = _Op(fn)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(shape, generator=g)
    t = torch.rand((shape[0],), generator=g)
    with torch.no_grad():
        out_shape = net(x, t).shape
    v = torch.randn(out_shape, generator=g)
    gm = ex.trace_vjp(net, x, t, v)
    targets = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    for op in ("convolution_backward", "upsample_nearest2d_backward", "avg_pool2d_backward"):
        assert not any(op in s for s in targets), f"{op} left in the traced graph"
    if case.startswith("conv_s1"):
        transposed = [n.args[6] for n in gm.graph.nodes if n.target == torch.ops.aten.convolution.default]
        assert transposed == [False, False], transposed  # the forward and its adjoint: no ConvTranspose
    xg = x.clone().requires_grad_(True)
    out = net(xg, t)
    (ref,) = torch.autograd.grad(out, xg, v)
    # the symbolic trace is reusable at another batch size
    for b in (shape[0], 1):
        got_out, got = gm(x[:b], t[:b], v[:b])
        torch.testing.assert_close(got_out, out[:b].detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got, ref[:b], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------------
# NCSN++ FIR resampling against a direct implementation of upfirdn2d's definition
# --------------------------------------------------------------------------------------------------------


def _upfirdn_reference(x: np.ndarray, k: np.ndarray, up: int, down: int, pad: tuple[int, int]) -> np.ndarray:
    """Zero insertion, padding, true 2-D convolution with k (valid), keep every `down`-th sample."""
    n, c, h, w = x.shape
    z = np.zeros((n, c, h * up, w * up))
    z[:, :, ::up, ::up] = x
    p0, p1 = pad
    z = np.pad(z, ((0, 0), (0, 0), (p0, p1), (p0, p1)))
    kh, kw = k.shape
    oh, ow = z.shape[2] - kh + 1, z.shape[3] - kw + 1
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            # convolution: y[i, j] = sum_ab z[i + a, j + b] k[kh - 1 - a, kw - 1 - b]
            y[:, :, i, j] = np.einsum("ncab,ab->nc", z[:, :, i:i + kh, j:j + kw], k[::-1, ::-1])
    return y[:, :, ::down, ::down]


@pytest.mark.parametrize("up,down,pad", [(2, 1, (2, 1)), (1, 2, (1, 1)), (1, 1, (1, 1))])
def test_upfirdn2d_matches_definition(up, down, pad):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 6))
    k = rng.standard_normal((4, 4))  # asymmetric: catches a missing kernel flip
    got = ncsnpp.upfirdn2d(torch.from_numpy(x), torch.from_numpy(k), up=up, down=down, pad=pad).numpy()
    np.testing.assert_allclose(got, _upfirdn_reference(x, k, up, down, pad), rtol=1e-10, atol=1e-12)


def test_fir_resampling_shapes_and_constants():
    k = torch.from_numpy(ncsnpp.setup_kernel([1, 3, 3, 1]))
    x = torch.ones((1, 2, 8, 8), dtype=torch.float32)
    up = ncsnpp.upsample_2d(x, k * 4)
    down = ncsnpp.downsample_2d(x, k)
    assert up.shape == (1, 2, 16, 16) and down.shape == (1, 2, 4, 4)
    # a constant image stays constant away from the zero-padded border
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.ones_like(up[..., 2:-2, 2:-2]))
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.ones_like(down[..., 1:-1, 1:-1]))
    conv_up = ncsnpp.FirConv2d(2, 5, 3, up=True, kernel_init=ncsnpp.default_init())
    conv_down = ncsnpp.FirConv2d(2, 5, 3, down=True, kernel_init=ncsnpp.default_init())
    assert conv_up(x).shape == (1, 5, 16, 16) and conv_down(x).shape == (1, 5, 4, 4)


# --------------------------------------------------------------------------------------------------------
# Checkpoint loading
# --------------------------------------------------------------------------------------------------------


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_adm_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(1)
    a = PRESETS["adm"].build(reduced=True)
    torch.save({"module." + k: v for k, v in a.module.net.state_dict().items()}, tmp_path / "adm.pt")
    torch.manual_seed(2)
    b = PRESETS["adm"].build(reduced=True, checkpoint=tmp_path / "adm.pt")
    pa, pb = _params(a.module), _params(b.module)
    assert pa.keys() == pb.keys()
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    bad = {k: v for k, v in list(a.module.net.state_dict().items())[1:]}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not match"):
        PRESETS["adm"].build(reduced=True, checkpoint=tmp_path / "bad.pt")


def test_ncsnpp_checkpoint_with_ema(tmp_path):
    torch.manual_seed(1)
    a = PRESETS["ncsnpp-rf"].build(reduced=True)
    net = a.module
    shadow = [p.detach() + 1.0 for p in net.parameters() if p.requires_grad]
    ckpt = {"model": {"module." + k: v for k, v in net.state_dict().items()},
            "ema": {"decay": 0.999, "num_updates": 5, "shadow_params": shadow}, "step": 5}
    torch.save(ckpt, tmp_path / "checkpoint_8.pth")
    for ema in (True, False):
        torch.manual_seed(2)
        b = PRESETS["ncsnpp-rf"].build(reduced=True, checkpoint=tmp_path / "checkpoint_8.pth", ema=ema)
        trainable = [p for p in b.module.parameters() if p.requires_grad]
        expected = shadow if ema else [p for p in net.parameters() if p.requires_grad]
        assert len(trainable) == len(expected)
        assert all(torch.equal(p, q) for p, q in zip(trainable, expected))
        # the frozen Fourier features come from the model state, never from the EMA list
        torch.testing.assert_close(b.module.all_modules[0].W, net.all_modules[0].W, rtol=0, atol=0)


def test_diffusers_directory_with_scheduler(tmp_path):
    from presets import diffusers_unet2d as du

    torch.manual_seed(1)
    from diffusers import UNet2DModel

    unet = UNet2DModel(**du.REDUCED)
    unet.save_pretrained(str(tmp_path / "model"))
    sched = {"_class_name": "DDPMScheduler", "beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 100,
             "prediction_type": "sample"}
    (tmp_path / "model" / "scheduler_config.json").write_text(json.dumps(sched))
    prep = PRESETS["diffusers-unet2d"].build(checkpoint=tmp_path / "model")
    assert prep.card["parameterization"] == "x0"
    assert prep.card["schedule"] == {"type": "alphas-cumprod", "file": "alphas_cumprod.txt"}
    ac = np.array([float(v) for v in prep.extra_files["alphas_cumprod.txt"].split()])
    assert len(ac) == 100 and np.all(np.diff(ac) < 0) and 0 < ac[-1] < ac[0] < 1
    # the cosine schedule ᾱ(t) = f(t)/f(0), f(t) = cos²((t/N + s)/(1 + s)·π/2), s = 0.008, β clipped at 0.999
    n, s = 100, 0.008
    f = lambda t: np.cos((t / n + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    betas = np.minimum(1 - f(np.arange(1, n + 1)) / f(np.arange(n)), 0.999)
    # diffusers stores β in float32 (this matters where 1 − β is small: β clipped at 0.999)
    betas = betas.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(ac, np.cumprod(1 - betas), rtol=1e-6)
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in prep.module.net.state_dict().items())


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------


def test_cli_refuses_bad_arguments(tmp_path):
    cmd = [sys.executable, str(TOOLS / "export_onnx.py")]
    r = subprocess.run(cmd + ["--preset", "adm", "--out", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "--checkpoint" in r.stderr
    r = subprocess.run(cmd + ["--preset", "adm", "--config", "imagenet512", "--random-init", "--out",
                              str(tmp_path)], capture_output=True, text=True)
    assert r.returncode != 0 and "unknown config 'imagenet512'" in r.stderr
