#!/usr/bin/env python3
"""Export a pretrained diffusion / flow network to the ONNX graphs conjure runs (docs/model-card.md).

Writes into ``--out DIR``:

* ``forward.onnx``  inputs ``x`` [B,C,H,W] f32, ``t`` [B] f32 → ``out`` [B,C,H,W]
* ``vjp.onnx``      inputs ``x``, ``t``, ``cotangent`` → ``out``, ``vjp`` = (∂out/∂x)ᵀ·cotangent
* ``forward_residuals.onnx``  inputs ``x``, ``t`` → ``out``, ``r0`` … ``r{k-1}`` (the split VJP's forward)
* ``backward.onnx``  inputs ``r0`` … ``r{k-1}``, ``cotangent`` → ``vjp`` (input gradient only)
* ``weights.bin``   the ONE external-data file all graphs read their weights from
* ``model.yaml``    the model card (kind, parameterization, schedule, time input, image, value range)

ONNX opset 20, batch dimension dynamic, float32. The VJP graph follows docs/design.md §5: the function
``(x, t, v) ↦ (out, autograd.grad(out, x, v))`` is traced with ``make_fx(tracing_mode="symbolic")`` through
torch's core ATen decompositions plus three hand-written backward decompositions (convolution_backward's
input gradient as a transposed convolution, upsample_nearest2d_backward as a reshape-sum, avg_pool2d_backward
as a depthwise transposed convolution), with scaled-dot-product attention forced to the math backend, and
the traced graph is exported with ``torch.onnx.export(dynamo=True)``.

The split VJP (:func:`split_vjp`) cuts that same joint trace in two, so that a sampler which needs the
forward output before it can form the cotangent (C-ΠGDM) pays one forward and one backward per step instead of
a forward plus a VJP graph that re-runs the forward. What crosses the cut is chosen for ONNX Runtime on
the CPU, which fuses little: GroupNorm and SiLU are traced through :func:`lean_residuals`, so the residuals
are their inputs only and the backward recomputes the group statistics and σ (cheap passes over memory)
instead of the forward writing them out beside its fused kernels; no convolution or matrix product is ever
re-run (the rule and its reasons are in :func:`split_vjp`).

At the end the export is SELF-CHECKED: ONNX Runtime (CPU) against PyTorch (forward and autograd VJP) on
random inputs at batch 1 and 2; the maximum relative error (max |onnx − torch| / max |torch|) of each output
must be ≤ 1e-4, otherwise the exporter fails with exit status 1 and says which output disagreed.

Presets (tools/presets/): ``adm`` (guided-diffusion UNet: ImageNet-256 unconditional, FFHQ-256),
``diffusers-unet2d`` (diffusers ``UNet2DModel``, e.g. DDPM CelebA-HQ-256) and ``ncsnpp-rf`` (rectified-flow
NCSN++, e.g. RectifiedFlow CelebA-HQ-256). ``--reduced --random-init`` builds a small randomly initialised
instance of the same architecture (what the tests export; no weights can be downloaded there).

Example::

    python3 tools/export_onnx.py --preset adm --config imagenet256-uncond \\
        --checkpoint 256x256_diffusion_uncond.pt --out models/adm-imagenet256
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import operator
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

OPSET = 20
WEIGHTS_FILE = "weights.bin"
FORWARD_FILE = "forward.onnx"
VJP_FILE = "vjp.onnx"
FORWARD_RES_FILE = "forward_residuals.onnx"
BACKWARD_FILE = "backward.onnx"
CARD_FILE = "model.yaml"
#: Agreement the self-check demands between ONNX Runtime and PyTorch (max abs error / max abs reference).
CHECK_RTOL = 1e-4

aten = torch.ops.aten


# --------------------------------------------------------------------------------------------------------
# What a preset hands the exporter
# --------------------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """A network ready to export: ``module(x, t) -> out`` with ``out`` shaped like ``x``."""

    module: torch.nn.Module
    #: The model card (docs/model-card.md) without its ``graphs`` entry, which the exporter adds.
    card: dict
    #: Draws network time inputs ``t`` [B] for the self-check (the values the network sees in use).
    sample_t: Callable[[int, torch.Generator], torch.Tensor]
    notes: list[str] = field(default_factory=list)
    #: Extra text files written beside the card (e.g. an ``alphas-cumprod`` schedule file).
    extra_files: dict[str, str] = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        img = self.card["image"]
        return (int(img["channels"]), int(img["height"]), int(img["width"]))


def diffusion_index_t(timesteps: int):
    """Step indices 0..N−1 as floats (time_input: index of a diffusion model)."""

    def sample(b: int, g: torch.Generator) -> torch.Tensor:
        return torch.randint(0, timesteps, (b,), generator=g).to(torch.float32)

    return sample


def flow_index_t(timesteps: int, t_min: float = 1e-3):
    """(N−1)·t for flow time t ∈ [t_min, 1] (time_input: index of a flow model, NCSN++'s 999 t)."""

    def sample(b: int, g: torch.Generator) -> torch.Tensor:
        u = t_min + (1.0 - t_min) * torch.rand((b,), generator=g, dtype=torch.float64)
        return ((timesteps - 1) * u).to(torch.float32)

    return sample


def unit_t(t_min: float = 1e-3):
    def sample(b: int, g: torch.Generator) -> torch.Tensor:
        return (t_min + (1.0 - t_min) * torch.rand((b,), generator=g, dtype=torch.float64)).to(torch.float32)

    return sample


# --------------------------------------------------------------------------------------------------------
# The three hand-written backward decompositions (docs/design.md §5)
# --------------------------------------------------------------------------------------------------------


def _convolution_backward(
    grad_output, input, weight, bias_sizes, stride, padding, dilation, transposed, output_padding, groups,
    output_mask,
):
    """Input gradient of a (transposed) 1-D or 2-D convolution, as the adjoint convolution.

    Only the input gradient is produced: the exporter freezes every parameter, so autograd never asks for
    the weight or bias gradient (output_mask = [True, False, False]); anything else is refused loudly.
    """
    if output_mask[1] or output_mask[2]:
        raise NotImplementedError("export asks for a weight/bias gradient; parameters must be frozen")
    if not output_mask[0]:
        return (None, None, None)
    nd = weight.dim() - 2  # 1-D (ADM's attention projections) or 2-D
    ks = [weight.shape[2 + i] for i in range(nd)]
    if (not transposed and groups == 1 and all(s == 1 for s in stride) and all(d == 1 for d in dilation)
            and all(k - 1 - p >= 0 for k, p in zip(ks, padding))):
        # Stride 1: the adjoint is itself a convolution, of ȳ with the kernel flipped in space and its
        # in/out channels swapped, padded by k − 1 − p. ONNX Runtime's CPU Conv (im2col/NCHWc kernels) runs
        # it ~1.5× faster than the equivalent ConvTranspose (GEMM + col2im), measured at batch 16 on the
        # Fashion-MNIST UNet's layer sizes; the flipped kernel is a constant subgraph that ONNX Runtime
        # folds at load, so the weights file is unchanged.
        w_adj = weight.flip(list(range(2, 2 + nd))).transpose(0, 1)
        pad = [k - 1 - p for k, p in zip(ks, padding)]
        gi = aten.convolution(grad_output, w_adj, None, [1] * nd, pad, [1] * nd, False, [0] * nd, 1)
        return (gi, None, None)
    if not transposed:
        # y = conv(x, w): x̄ = conv_transpose(ȳ, w) with the output padding that restores x's size.
        op = [
            input.shape[2 + i]
            - ((grad_output.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (weight.shape[2 + i] - 1) + 1)
            for i in range(nd)
        ]
        gi = aten.convolution(grad_output, weight, None, stride, padding, dilation, True, op, groups)
    else:
        # y = conv_transpose(x, w): x̄ = conv(ȳ, w).
        gi = aten.convolution(grad_output, weight, None, stride, padding, dilation, False, [0] * nd, groups)
    return (gi, None, None)


def _upsample_nearest2d_backward(grad_output, output_size, input_size, scales_h=None, scales_w=None):
    """Nearest upsampling by integer factors: the adjoint sums each fh×fw block (a reshape-sum)."""
    n, c, h, w = input_size
    ho, wo = output_size
    fh, fw = ho // h, wo // w
    if fh * h != ho or fw * w != wo:
        raise NotImplementedError(f"nearest upsampling {h}x{w} -> {ho}x{wo} is not by an integer factor")
    return grad_output.reshape(n, c, h, fh, w, fw).sum(dim=(3, 5))


def _upsample_nearest2d_vec_backward(grad_output, output_size, input_size, scale_factors):
    return _upsample_nearest2d_backward(grad_output, output_size, input_size)


def _avg_pool2d_backward(grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                         divisor_override):
    """Average pooling without padding: the adjoint spreads ȳ/(kh·kw) back (a depthwise transposed conv)."""
    kh, kw = (kernel_size * 2)[:2] if len(kernel_size) == 1 else kernel_size
    if not stride:
        stride = (kh, kw)
    sh, sw = (stride * 2)[:2] if len(stride) == 1 else stride
    pads = (padding * 2)[:2] if len(padding) == 1 else padding
    if any(p != 0 for p in pads) or ceil_mode:
        raise NotImplementedError("avg_pool2d backward: only padding 0 and ceil_mode False are supported")
    c = input.shape[1]
    divisor = divisor_override if divisor_override else kh * kw
    kernel = torch.full((1, 1, kh, kw), 1.0 / divisor, dtype=grad_output.dtype, device=grad_output.device)
    kernel = kernel.expand(c, 1, kh, kw)
    op = [
        input.shape[2] - ((grad_output.shape[2] - 1) * sh + kh),
        input.shape[3] - ((grad_output.shape[3] - 1) * sw + kw),
    ]
    return aten.convolution(grad_output, kernel, None, [sh, sw], [0, 0], [1, 1], True, op, c)


def vjp_decompositions() -> dict:
    table = dict(torch._decomp.core_aten_decompositions())
    # Keep layer normalisation whole (one ONNX LayerNormalization, whose InvStdDev output the split VJP
    # keeps for the GroupNorm backward: _GroupNormSavingInput).
    table.pop(aten.native_layer_norm.default, None)
    # Keep nearest upsampling itself whole (one ONNX Resize) instead of index arithmetic + GatherND.
    for op in (aten.upsample_nearest2d.default, getattr(aten.upsample_nearest2d, "vec", None)):
        table.pop(op, None)
    table[aten.convolution_backward.default] = _convolution_backward
    table[aten.upsample_nearest2d_backward.default] = _upsample_nearest2d_backward
    if hasattr(aten.upsample_nearest2d_backward, "vec"):
        table[aten.upsample_nearest2d_backward.vec] = _upsample_nearest2d_vec_backward
    table[aten.avg_pool2d_backward.default] = _avg_pool2d_backward
    return table


class _GroupNormSavingInput(torch.autograd.Function):
    """GroupNorm that keeps its normalised values x̂ and the group inverse deviations r for the backward.

    With the parameters frozen, the input gradient of y = γ·x̂ + β, x̂ = (x − μ)·r, r = (σ² + ε)^(−1/2)
    per (sample, group) of M values, is  x̄ = r·(g − mean(g) − x̂·mean(g·x̂)),  g = γ·ȳ  (means over the
    group). The forward computes x̂ and r with one LayerNormalization over each group (its optional
    InvStdDev output is r, n × groups values), so keeping them costs the residual forward nothing it would
    not compute anyway, and the backward needs two reductions and four elementwise passes. Keeping x
    instead (the previous choice) made the backward recompute μ, r and x̂ (two more reductions, three
    more passes); autograd's own GroupNorm keeps x, μ and r and has the forward compute the statistics a
    second time beside the fused InstanceNormalization."""

    @staticmethod
    def forward(ctx, x, groups, weight, bias, eps):
        n, c = x.shape[0], x.shape[1]
        xr = x.reshape(n, groups, -1)
        xh, _mean, r = aten.native_layer_norm.default(xr, [xr.shape[-1]], None, None, eps)
        ctx.save_for_backward(xh, r, weight)
        ctx.groups = groups
        y = xh.reshape(x.shape)
        shape = (1, c, *([1] * (x.dim() - 2)))
        if weight is not None:
            y = y * weight.reshape(shape)
        if bias is not None:
            y = y + bias.reshape(shape)
        return y

    @staticmethod
    def backward(ctx, grad):
        xh, r, weight = ctx.saved_tensors
        n, c = grad.shape[0], grad.shape[1]
        g = grad if weight is None else grad * weight.reshape(1, c, *([1] * (grad.dim() - 2)))
        g = g.reshape(n, ctx.groups, -1)
        gx = (g - g.mean(-1, keepdim=True) - xh * (g * xh).mean(-1, keepdim=True)) * r
        return gx.reshape(grad.shape), None, None, None, None


class _SiLUSavingInput(torch.autograd.Function):
    """SiLU y·σ(y) keeping only y: ȳ = ō·s·(1 + y·(1 − s)), s = σ(y) recomputed in the backward, so the
    forward's Sigmoid·Mul stays one fused kernel (ONNX Runtime's QuickGelu) instead of writing σ(y) out."""

    @staticmethod
    def forward(ctx, y):
        ctx.save_for_backward(y)
        return y * torch.sigmoid(y)

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        s = torch.sigmoid(y)
        return grad * (s * (1 + y * (1 - s)))


_F_GROUP_NORM = torch.nn.functional.group_norm
_F_SILU = torch.nn.functional.silu


@contextlib.contextmanager
def lean_residuals():
    """Trace GroupNorm and SiLU through :class:`_GroupNormSavingInput` / :class:`_SiLUSavingInput` so that
    the split VJP's residuals are one tensor per normalisation (x̂, plus its n × groups inverse deviations)
    and per activation (its input) instead of autograd's four (input, normalised output, σ, and the
    statistics recomputed beside the fused normalisation): measured on the Fashion-MNIST UNet, the residual
    graph then costs about one forward."""

    def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
        if not input.requires_grad:
            return _F_GROUP_NORM(input, num_groups, weight, bias, eps)
        return _GroupNormSavingInput.apply(input, num_groups, weight, bias, eps)

    def silu(input, inplace=False):
        if not input.requires_grad:
            return _F_SILU(input, inplace=inplace)
        return _SiLUSavingInput.apply(input)

    F = torch.nn.functional
    F.group_norm, F.silu = group_norm, silu
    try:
        yield
    finally:
        F.group_norm, F.silu = _F_GROUP_NORM, _F_SILU


@contextlib.contextmanager
def math_sdpa():
    """Force scaled-dot-product attention onto the math backend (plain matmul/softmax, exportable)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        yield


# --------------------------------------------------------------------------------------------------------
# Tracing and export
# --------------------------------------------------------------------------------------------------------


def trace_forward(net: torch.nn.Module, x, t) -> torch.fx.GraphModule:
    """make_fx trace of (x, t) ↦ out with the same decompositions as the VJP trace, so that both graphs
    fold parameters identically (e.g. linear weights transposed once) and share every weight."""
    from torch.fx.experimental.proxy_tensor import make_fx

    def forward(x, t):
        return net(x, t)

    with math_sdpa(), torch.no_grad():
        gm = make_fx(
            forward, decomposition_table=vjp_decompositions(), tracing_mode="symbolic", _allow_non_fake_inputs=True
        )(x, t)
    return gm.eval()


def trace_vjp(net: torch.nn.Module, x, t, v) -> torch.fx.GraphModule:
    """make_fx trace of (x, t, v) ↦ (out, (∂out/∂x)ᵀ v) with the backward decompositions above."""
    from torch.fx.experimental.proxy_tensor import make_fx

    def vjp(x, t, v):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            out = net(xg, t)
            (g,) = torch.autograd.grad(out, xg, v)
        return out.detach(), g

    with math_sdpa(), lean_residuals():
        gm = make_fx(
            vjp, decomposition_table=vjp_decompositions(), tracing_mode="symbolic", _allow_non_fake_inputs=True
        )(x, t, v)
    return gm.eval()  # the trace is fixed already; eval() only silences torch.onnx's training-mode warning


def _is_sym(node) -> bool:
    """A node whose value is a (symbolic) integer, e.g. the batch size read from an input's shape."""
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return isinstance(val, (int, torch.SymInt, torch.SymFloat, torch.SymBool)) and not isinstance(val, bool)


_VIEWS = {"view", "_unsafe_view", "reshape", "unsqueeze", "squeeze", "expand", "alias", "permute", "t",
          "transpose", "clone"}
_REDUCTIONS = {"mean", "sum"}


def _cheap(node) -> bool:
    """A pointwise op, a view or a mean/sum: cheaper to recompute in the backward than to keep."""
    target = node.target
    if not isinstance(target, torch._ops.OpOverload):
        return False
    name = target.overloadpacket.__name__
    return torch.Tag.pointwise in target.tags or name in _VIEWS or name in _REDUCTIONS


def split_vjp(joint: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, torch.fx.GraphModule, list[str]]:
    """Partition the joint trace (x, t, v) ↦ (out, g) of :func:`trace_vjp` into two graphs:

    * forward-with-residuals (x, t) ↦ (out, r₀ … r_{k−1}) and
    * backward (r₀ … r_{k−1}, cotangent) ↦ g.

    The backward is every node that depends on the cotangent v, plus the cheap nodes (pointwise ops, views,
    means and sums: :func:`_cheap`) that the forward computes only for the backward; the residuals are the
    other values it reads — the rule of AOT autograd's ``default_partition`` with a rematerialization step
    limited to what costs a pass over memory, not its full min-cut search. With the weights frozen, a
    convolution's or matrix product's input gradient reads only the weights, so what the backward reads is
    what the nonlinearities need. Traced through :func:`lean_residuals`, that is per GroupNorm its
    normalised values x̂ and group inverse deviations r (LayerNormalization's outputs), per SiLU its input,
    softmax outputs and attention operands; σ is recomputed. Measured on the Fashion-MNIST UNet (ONNX
    Runtime 1.31.1, CPU, batch 16, 2 threads): keeping everything autograd saves (256 residuals, 4.6 M
    floats per image) made the residual forward 1.33 forwards, because every kept value is a graph output
    ONNX Runtime must write and cannot fuse through (σ stays unfused from the SiLU's Mul, statistics are
    computed twice beside the fused InstanceNormalization); keeping each GroupNorm's input x instead of x̂
    and r (76 residuals, 2.3 M floats) made the backward recompute the statistics, 13 passes over memory
    per GroupNorm where x̂ and r (112 residuals, the same 2.3 M floats) leave 8: the backward fell
    from 1.30–1.48 to 1.08–1.23 forwards, the step from 2.36–2.55 to 1.93–2.22 (3 interleaved runs).
    Residuals the backward does not read once dead code is gone (an alias of the output) are pruned.
    Weights and values computed from weights alone (constants) are not residuals: both graphs hold them
    (from the one shared weights file). Shape arithmetic is recomputed in the backward from the
    cotangent's shape, which equals x's.
    Returns (forward_res, backward, residual names).
    """
    from torch.fx import Graph, GraphModule

    g = joint.graph
    phs = [n for n in g.nodes if n.op == "placeholder"]
    if len(phs) != 3:
        raise RuntimeError(f"split_vjp: expected the joint trace to take (x, t, v), got {len(phs)} inputs")
    x_n, t_n, v_n = phs
    out_node = next(n for n in g.nodes if n.op == "output")
    out_val, grad_val = out_node.args[0]

    tangent: set = set()  # depends on v: the backward
    for n in g.nodes:
        if n is v_n or any(a in tangent for a in n.all_input_nodes):
            tangent.add(n)
    if out_val in tangent:
        raise RuntimeError("split_vjp: the forward output depends on the cotangent")

    movable: set = set()  # constants and shape arithmetic: recomputed in the backward, never residuals
    for n in g.nodes:
        if n in tangent or n.op in ("placeholder", "output"):
            continue
        if n.op == "get_attr" or _is_sym(n):
            movable.add(n)
        elif all(a in movable for a in n.all_input_nodes) and (
            _is_sym(n) or not any(a in (x_n, t_n) for a in n.all_input_nodes)
        ):
            movable.add(n)

    # Cheap values the forward computes only for the backward (the statistics and σ that
    # :func:`lean_residuals` recomputes from the saved inputs) move to the backward: recomputing them
    # there is a few passes over memory, keeping them would be graph outputs the forward must write.
    recompute: set = set()
    for n in reversed(list(g.nodes)):
        if (n in tangent or n in movable or n.op != "call_function" or not n.users
                or not _cheap(n) or not all(u in tangent or u in recompute for u in n.users)):
            continue
        recompute.add(n)
    tangent |= recompute

    residuals: list = []
    for n in g.nodes:
        if n in tangent or n in movable or n.op == "output":
            continue
        if any(u in tangent for u in n.users):
            residuals.append(n)
    # Keep only the residuals the backward reads once dead code is gone (a value read only by a dead
    # node, e.g. an alias of the output, would be a whole tensor written for nothing).
    resset = set(residuals)
    bneed: set = set()
    stack = [grad_val]
    while stack:
        n = stack.pop()
        if n in bneed or n in resset or n is v_n:
            continue
        if not (n in tangent or n in movable):
            raise RuntimeError(f"split_vjp: backward reads {n} that is neither residual nor recomputable")
        bneed.add(n)
        if not _is_sym(n):
            stack.extend(n.all_input_nodes)
    read = {a for n in bneed if not _is_sym(n) for a in n.all_input_nodes} | {grad_val}
    residuals = [r for r in residuals if r in read]
    names = [f"r{i}" for i in range(len(residuals))]

    # forward-with-residuals: everything outside the backward that out or a residual needs
    fg = Graph()
    env: dict = {}
    need: set = set()
    stack = [out_val, *residuals]
    while stack:
        n = stack.pop()
        if n in need:
            continue
        need.add(n)
        stack.extend(n.all_input_nodes)
    env[x_n] = fg.placeholder("x")
    env[t_n] = fg.placeholder("t")
    for n in g.nodes:
        if n in need and n.op != "placeholder":
            env[n] = fg.node_copy(n, lambda a: env[a])
    fg.output((env[out_val], *[env[r] for r in residuals]))
    fwd = GraphModule(joint, fg)

    # backward: the tangent nodes plus the constants and shape arithmetic they read
    bg = Graph()
    benv: dict = {}
    for r, name in zip(residuals, names):
        benv[r] = bg.placeholder(name)
    cot = bg.placeholder("cotangent")
    benv[v_n] = cot
    # Shape arithmetic: make_fx traced every dimension of x symbolically, but only the batch is dynamic in
    # the exported graphs. Each integer the backward uses is re-derived from its symbolic expression: the
    # image dimensions take their traced values and the batch B is read off the cotangent; the expression
    # must then be a·B + b.
    import sympy

    xval = x_n.meta["val"]
    batch_sym = xval.shape[0].node.expr if isinstance(xval.shape[0], torch.SymInt) else None
    fixed = {d.node.expr: d.node.hint for d in list(xval.shape)[1:] if isinstance(d, torch.SymInt)}
    batch_node = None
    for n in g.nodes:
        if n not in bneed:
            continue
        if _is_sym(n):
            val = n.meta["val"]
            expr = val.node.expr.subs(fixed) if isinstance(val, torch.SymInt) else None
            if expr is None or batch_sym is None or batch_sym not in expr.free_symbols:
                benv[n] = val.node.hint if hasattr(val, "node") else val
                continue
            poly = sympy.Poly(sympy.expand(expr), batch_sym)
            if poly.degree() != 1 or not all(c.is_Integer for c in poly.all_coeffs()):
                raise RuntimeError(f"split_vjp: cannot express the size {val} in the batch size")
            a, b = (int(c) for c in poly.all_coeffs())
            if batch_node is None:
                batch_node = bg.call_function(aten.sym_size.int, (cot, 0))
            node = batch_node if a == 1 else bg.call_function(operator.mul, (batch_node, a))
            benv[n] = node if b == 0 else bg.call_function(operator.add, (node, b))
        else:
            benv[n] = bg.node_copy(n, lambda a: benv[a])
    bg.output((benv[grad_val],))
    bwd = GraphModule(joint, bg)
    for m in (fwd, bwd):
        m.graph.eliminate_dead_code()
        m.recompile()
    return fwd.eval(), bwd.eval(), names


def _export(module, args, input_names, output_names, dynamic=None):
    """torch.onnx dynamo export with the batch dimension (dim 0) of every input dynamic, or the given
    ``dynamic_shapes``."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    dyn = dynamic if dynamic is not None else tuple({0: batch} for _ in args)
    with math_sdpa():
        prog = torch.onnx.export(
            module,
            args,
            dynamo=True,
            dynamic_shapes=dyn,
            input_names=input_names,
            output_names=output_names,
            opset_version=OPSET,
            optimize=True,
            verbose=False,
        )
    return prog.model


def _name_parameters(models: list, net: torch.nn.Module) -> int:
    """Give each initializer that holds a parameter or buffer of `net` the name ``model.<state-dict key>``
    (``…__transposed`` when the graph holds it transposed, as a MatMul operand), instead of the tracer's
    anonymous ``_param_constantN``: the graphs then say which weight is which, and tools that rebuild the
    network from a model folder (tools/official_cpigdm) find them by name. Matched by content; a tensor
    that equals several parameters keeps its first name. Returns how many initializers were named."""
    by_key: dict = {}
    for key, p in list(net.state_dict().items()):
        if not p.is_floating_point():
            continue
        a = p.detach().to(torch.float32).contiguous().numpy()
        by_key.setdefault((a.shape, a.tobytes()), f"model.{key}")
        if a.ndim == 2:
            t = np.ascontiguousarray(a.T)
            by_key.setdefault((t.shape, t.tobytes()), f"model.{key}__transposed")
    named = 0
    for model in models:
        taken = set(model.graph.initializers)
        for name, value in list(model.graph.initializers.items()):
            tensor = value.const_value
            if tensor is None or str(tensor.dtype) != "FLOAT":
                continue
            arr = tensor.numpy()
            new = by_key.get((tuple(arr.shape), np.ascontiguousarray(arr).tobytes()))
            if new and new != name and new not in taken:
                value.name = new
                taken.discard(name)
                taken.add(new)
                named += 1
    return named


def _splats_to_nodes(model, min_elements: int = 16) -> int:
    """Replace each initializer whose elements are all equal (the ones a LayerNormalization without an affine
    scale reads) by a ConstantOfShape node, so constants the graph can rebuild from one number are not
    stored in the weights file. ONNX Runtime and tract fold the node at load. Returns how many."""
    import numpy as np
    import onnx_ir as ir

    graph = model.graph
    first = next(iter(graph), None)
    count = 0
    for name, value in list(graph.initializers.items()):
        tensor = value.const_value
        if tensor is None or value.is_graph_input() or value.is_graph_output():
            continue
        arr = tensor.numpy()
        if arr.size < min_elements or not (arr == arr.flat[0]).all():
            continue
        shape = ir.Value(name=f"{name}__shape", const_value=ir.tensor(np.array(arr.shape, dtype=np.int64)))
        graph.register_initializer(shape)
        node = ir.Node("", "ConstantOfShape", inputs=[shape],
                       attributes=[ir.AttrTensor("value", ir.tensor(arr.reshape(-1)[:1].copy()))])
        value.replace_all_uses_with(node.outputs[0])
        del graph.initializers[name]
        node.outputs[0].name = name
        if first is not None:
            graph.insert_before(first, node)
        else:
            graph.append(node)
        count += 1
    return count


def _share_weights(models: list, weights_path: Path, min_bytes: int = 1024) -> int:
    """Move every initializer of ≥ min_bytes of all `models` (onnx_ir Models) into ONE external file.

    Identical tensors (same dtype, shape and bytes) are stored once, so the forward and VJP graphs read the
    same weights from the same offsets. Offsets are 64-byte aligned (4096 for tensors ≥ 1 MiB, so they can
    be memory-mapped). Returns the file size.
    """
    import onnx_ir as ir

    stored: dict[tuple, tuple[int, int]] = {}
    offset = 0
    with open(weights_path, "wb") as f:
        for model in models:
            for name, value in list(model.graph.initializers.items()):
                tensor = value.const_value
                if tensor is None:
                    continue
                data = tensor.tobytes()
                if len(data) < min_bytes:
                    continue
                key = (str(tensor.dtype), tuple(tensor.shape.numpy()), hashlib.sha256(data).hexdigest())
                if key not in stored:
                    align = 4096 if len(data) >= (1 << 20) else 64
                    pad = (-offset) % align
                    if pad:
                        f.write(b"\0" * pad)
                        offset += pad
                    f.write(data)
                    stored[key] = (offset, len(data))
                    offset += len(data)
                off, length = stored[key]
                value.const_value = ir.ExternalTensor(
                    WEIGHTS_FILE, off, length, tensor.dtype, shape=tensor.shape, name=name,
                    base_dir=str(weights_path.parent),
                )
    return offset


def export(prep: Prepared, out_dir: Path, name: str, log=print) -> dict:
    """Write forward.onnx, vjp.onnx, weights.bin and model.yaml for `prep` into `out_dir`."""
    import onnx_ir as ir

    out_dir.mkdir(parents=True, exist_ok=True)
    net = prep.module.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    c, h, w = prep.image_shape
    g = torch.Generator().manual_seed(0)
    b = 2
    x = torch.randn((b, c, h, w), generator=g)
    t = prep.sample_t(b, g)
    v = torch.randn((b, c, h, w), generator=g)

    t0 = time.time()
    fwd = _export(trace_forward(net, x, t), (x, t), ["x", "t"], ["out"])
    log(f"forward graph traced and converted in {time.time() - t0:.1f} s")
    t0 = time.time()
    gm = trace_vjp(net, x, t, v)
    vjp = _export(gm, (x, t, v), ["x", "t", "cotangent"], ["out", "vjp"])
    log(f"vjp graph traced and converted in {time.time() - t0:.1f} s")
    t0 = time.time()
    fres_gm, bwd_gm, res_names = split_vjp(gm)
    res = fres_gm(x, t)[1:]
    fres = _export(fres_gm, (x, t), ["x", "t"], ["out", *res_names])
    # Residuals whose first dimension is a multiple of the batch (attention's batch·heads) get it as a
    # dimension of their own, AUTO: torch.export works out its relation to the cotangent's batch.
    auto = torch.export.Dim.AUTO
    bdyn = tuple({0: auto} if r.dim() > 0 else None for r in res) + ({0: auto},)
    bwd = _export(bwd_gm, (*res, v), [*res_names, "cotangent"], ["vjp"], dynamic=bdyn)
    log(f"split vjp: {len(res_names)} residuals, {sum(r.numel() for r in res) / b:.0f} floats per image; "
        f"traced and converted in {time.time() - t0:.1f} s")

    for model in (fwd, vjp, fres, bwd):
        model.producer_name = "conjure tools/export_onnx.py"
        # Per-node debug records of the exporter (fx node, name scopes): two thirds of a graph file.
        for node in model.graph:
            node.metadata_props.clear()
        # dynamo names the dynamic dimension after the Dim; make the ONNX symbol explicit and uniform.
        for value in list(model.graph.inputs) + list(model.graph.outputs):
            # (residuals keep the exporter's symbols: their first dimension may be a multiple of the batch)
            if value.name in ("x", "t", "cotangent", "out", "vjp") and value.shape is not None \
                    and len(value.shape) >= 1:
                dims = list(value.shape)
                dims[0] = "batch"
                value.shape = ir.Shape(dims)
    _name_parameters([fwd, vjp, fres, bwd], net)
    for model in (fwd, vjp, fres, bwd):
        _splats_to_nodes(model)
    size = _share_weights([fwd, vjp, fres, bwd], out_dir / WEIGHTS_FILE)
    ir.save(fwd, out_dir / FORWARD_FILE)
    ir.save(vjp, out_dir / VJP_FILE)
    ir.save(fres, out_dir / FORWARD_RES_FILE)
    ir.save(bwd, out_dir / BACKWARD_FILE)
    log(f"weights.bin: {size / 2**20:.1f} MiB shared by the four graphs")

    for fname, text in prep.extra_files.items():
        (out_dir / fname).write_text(text)
    card = {"name": name, **prep.card, "graphs": {"forward": FORWARD_FILE, "vjp": VJP_FILE,
                                                "forward_residuals": FORWARD_RES_FILE, "backward": BACKWARD_FILE}}
    write_card(card, out_dir / CARD_FILE, prep.notes)
    return card


def write_card(card: dict, path: Path, notes: list[str]) -> None:
    import yaml

    img = card["image"]
    lines = [f"# {n}" for n in notes]
    lines.append("# Written by tools/export_onnx.py; format: docs/model-card.md.")
    body = {k: v for k, v in card.items() if k != "image"}
    text = yaml.safe_dump(body, sort_keys=False, default_flow_style=False)
    # image on one line, like the shipped cards
    lo, hi = img["value_range"]
    image_line = (
        f"image: {{channels: {img['channels']}, height: {img['height']}, width: {img['width']}, "
        f"value_range: [{_num(lo)}, {_num(hi)}]}}\n"
    )
    head, sep, tail = text.partition("graphs:")
    path.write_text("\n".join(lines) + "\n" + head + image_line + sep + tail)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


# --------------------------------------------------------------------------------------------------------
# Self-check: ONNX Runtime against PyTorch autograd
# --------------------------------------------------------------------------------------------------------


class SelfCheckError(RuntimeError):
    pass


def self_check(prep: Prepared, out_dir: Path, batches=(1, 2), rtol: float = CHECK_RTOL, seed: int = 1,
               log=print) -> dict:
    """Run both graphs with ONNX Runtime and compare with PyTorch (forward, autograd VJP).

    Returns {f"{output}@b{B}": (max_abs_err, rel_err)}; raises SelfCheckError if any rel_err > rtol.
    """
    import onnxruntime as ort

    # Memory: torch references first (one autograd graph alive at a time), then one ONNX Runtime session at a
    # time without the arena cache, so a 256x256 ADM fits next to the torch model in modest RAM.
    net = prep.module.eval()
    c, h, w = prep.image_shape
    g = torch.Generator().manual_seed(seed)
    cases = []
    for b in batches:
        x = torch.randn((b, c, h, w), generator=g)
        t = prep.sample_t(b, g)
        v = torch.randn((b, c, h, w), generator=g)
        xg = x.clone().requires_grad_(True)
        with torch.enable_grad():
            out = net(xg, t)
            (ref_vjp,) = torch.autograd.grad(out, xg, v)
        o = out.detach().numpy()
        ref = {"forward.out": o, "vjp.out": o, "vjp.vjp": ref_vjp.numpy(), "split.out": o, "split.vjp": ref_vjp.numpy()}
        del out, xg, ref_vjp
        cases.append((b, {"x": x.numpy(), "t": t.numpy()}, v.numpy(), ref))

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.enable_cpu_mem_arena = False
    got: dict[int, dict] = {b: {} for b, _, _, _ in cases}
    kept: dict[int, dict] = {}
    for fname in (FORWARD_FILE, VJP_FILE, FORWARD_RES_FILE, BACKWARD_FILE):
        sess = ort.InferenceSession(str(out_dir / fname), so, providers=["CPUExecutionProvider"])
        for b, feeds, v, _ in cases:
            try:
                if fname == FORWARD_FILE:
                    (got[b]["forward.out"],) = sess.run(["out"], feeds)
                elif fname == VJP_FILE:
                    got[b]["vjp.out"], got[b]["vjp.vjp"] = sess.run(["out", "vjp"], {**feeds, "cotangent": v})
                elif fname == FORWARD_RES_FILE:
                    names = [o.name for o in sess.get_outputs()]
                    vals = sess.run(None, feeds)
                    got[b]["split.out"] = vals[names.index("out")]
                    kept[b] = {n: val for n, val in zip(names, vals) if n != "out"}
                else:
                    (got[b]["split.vjp"],) = sess.run(["vjp"], {**kept.pop(b), "cotangent": v})
            except Exception as e:  # ONNX Runtime refusing to run the graphs is a failed check too
                raise SelfCheckError(f"ONNX Runtime failed to run {fname} at batch {b}: {e}") from e
        del sess

    results: dict[str, tuple[float, float]] = {}
    failures = []
    for b, _, _, ref in cases:
        for key, r in ref.items():
            o = got[b][key]
            if o.shape != r.shape:
                failures.append(f"{key} at batch {b}: shape {o.shape} != torch {r.shape}")
                continue
            err = float(np.max(np.abs(o.astype(np.float64) - r.astype(np.float64))))
            scale = float(np.max(np.abs(r)))
            if scale == 0:
                failures.append(f"{key} at batch {b}: torch reference is identically zero, nothing checked")
            rel = err / scale if scale > 0 else err
            if not np.all(np.isfinite(o)):
                rel = math.inf
            results[f"{key}@b{b}"] = (err, rel)
            log(f"self-check {key:12s} batch {b}: max abs err {err:.3e}, relative {rel:.3e}")
            if not rel <= rtol:
                failures.append(f"{key} at batch {b}: relative error {rel:.3e} > {rtol:.0e}")
    if failures:
        raise SelfCheckError("ONNX export disagrees with PyTorch: " + "; ".join(failures))
    return results


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    from presets import PRESETS

    ap = argparse.ArgumentParser(
        description="Export a diffusion/flow checkpoint to conjure's ONNX forward + VJP graphs and model card.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Presets and their --config values:\n"
        + "\n".join(f"  {k}: {v.HELP}" for k, v in PRESETS.items()),
    )
    ap.add_argument("--preset", required=True, choices=sorted(PRESETS))
    ap.add_argument("--config", help="preset configuration: a built-in name or a YAML/JSON file (see below)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="checkpoint file (or diffusers model directory)")
    src.add_argument("--random-init", action="store_true", help="randomly initialised weights (testing)")
    ap.add_argument("--scheduler-config", type=Path,
                    help="diffusers-unet2d: the scheduler_config.json that sets the card's schedule")
    ap.add_argument("--no-ema", action="store_true",
                    help="ncsnpp-rf: use the raw weights instead of the EMA weights of the checkpoint")
    ap.add_argument("--reduced", action="store_true",
                    help="a small instance of the architecture (few channels, 32x32/64x64) for tests")
    ap.add_argument("--out", required=True, type=Path, help="output directory")
    ap.add_argument("--name", help="model name in the card (default: the output directory's name)")
    ap.add_argument("--seed", type=int, default=0, help="seed of --random-init")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    preset = PRESETS[args.preset]
    t0 = time.time()
    try:
        prep = preset.build(
            config=args.config,
            checkpoint=args.checkpoint,
            reduced=args.reduced,
            scheduler_config=args.scheduler_config,
            ema=not args.no_ema,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n_params = sum(p.numel() for p in prep.module.parameters())
    print(f"{args.preset}: {n_params / 1e6:.2f} M parameters, image {prep.image_shape}")
    name = args.name or args.out.resolve().name
    export(prep, args.out, name)
    try:
        self_check(prep, args.out)
    except SelfCheckError as e:
        print(f"SELF-CHECK FAILED: {e}", file=sys.stderr)
        return 1
    print(f"export OK: {args.out} ({time.time() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
