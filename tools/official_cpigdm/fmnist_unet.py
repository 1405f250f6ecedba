"""The fmnist-ddpm network in PyTorch, with its weights read from the shipped ONNX model.

models/fmnist-ddpm is a small ADM-style UNet (base width 48, 32x32 -> 16x16 -> 8x8, two residual blocks
per level, one 4-head self-attention block at 8x8, GroupNorm(16) + SiLU, sinusoidal embedding of the DDPM
step index 0..999).  This module rebuilds it with the parameter names of the training state dict, so the
weights load either from that state dict (``torch.load`` of a ``.pt``) or from the repository's own
``denoiser.onnx`` + ``weights.bin``: convolutions and linear layers are initializers named
``model.<parameter>``; the exporter decomposed each GroupNorm into InstanceNormalization -> Reshape ->
Mul(scale) -> Add(shift), so their affine parameters are taken from those Mul/Add constants, in the order
the graph runs the normalisations (the order this module calls them, recorded with hooks).  After loading,
``load_fmnist_unet`` checks the module against ONNX Runtime on a random batch and refuses a mismatch.
"""

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def sinusoidal(t, dim):
    """[cos(t f_i), sin(t f_i)] with f_i = 10000^(-i / (dim/2)), i < dim/2."""
    half = dim // 2
    f = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    a = t.float()[:, None] * f[None]
    return torch.cat([torch.cos(a), torch.sin(a)], dim=1)


class Res(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding added in between, a 1x1 skip when widths differ."""

    def __init__(self, cin, cout, temb):
        super().__init__()
        self.n1 = nn.GroupNorm(16, cin)
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.t = nn.Linear(temb, cout)
        self.n2 = nn.GroupNorm(16, cout)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.c1(F.silu(self.n1(x))) + self.t(emb)[:, :, None, None]
        return self.skip(x) + self.c2(F.silu(self.n2(h)))


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels, residual."""

    def __init__(self, ch, heads=4):
        super().__init__()
        self.norm = nn.GroupNorm(16, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.out = nn.Conv2d(ch, ch, 1)
        self.heads = heads

    def forward(self, x):
        b, c, h, w = x.shape
        d = c // self.heads
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, d, h * w).unbind(1)
        a = torch.softmax(torch.einsum("bhdi,bhdj->bhij", q, k) / math.sqrt(d), dim=-1)
        return x + self.out(torch.einsum("bhij,bhdj->bhdi", a, v).reshape(b, c, h, w))


class FmnistUNet(nn.Module):
    """eps(x, t): x [B, 1, 32, 32] in [-1, 1], t [B] the DDPM step index (float)."""

    def __init__(self, ch=48, mults=(1, 2, 2), nres=2, in_ch=1):
        super().__init__()
        temb = 4 * ch
        self.ch = ch
        self.temb = nn.Sequential(nn.Linear(ch, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.inp = nn.Conv2d(in_ch, ch, 3, padding=1)
        self.down, widths, cur = nn.ModuleList(), [ch], ch
        for level, m in enumerate(mults):
            for _ in range(nres):
                self.down.append(Res(cur, ch * m, temb))
                cur = ch * m
                widths.append(cur)
            if level + 1 < len(mults):
                self.down.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                widths.append(cur)
        self.mid1 = Res(cur, cur, temb)
        self.mid_attn = SelfAttention(cur)
        self.mid2 = Res(cur, cur, temb)
        self.up = nn.ModuleList()
        for level, m in reversed(list(enumerate(mults))):
            for _ in range(nres + 1):
                self.up.append(Res(cur + widths.pop(), ch * m, temb))
                cur = ch * m
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
                self.up.append(nn.Conv2d(cur, cur, 3, padding=1))
        self.out = nn.Sequential(nn.GroupNorm(16, cur), nn.SiLU(), nn.Conv2d(cur, in_ch, 3, padding=1))

    def forward(self, x, t):
        emb = self.temb(sinusoidal(t, self.ch))
        h = self.inp(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, Res) else layer(h)
            skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for layer in self.up:
            h = layer(torch.cat([h, skips.pop()], dim=1), emb) if isinstance(layer, Res) else layer(h)
        return self.out(h)


def _groupnorm_order(net):
    """Names of the GroupNorm modules in the order one forward calls them."""
    order, hooks = [], []
    for name, mod in net.named_modules():
        if isinstance(mod, nn.GroupNorm):
            hooks.append(mod.register_forward_hook(lambda m, i, o, name=name: order.append(name)))
    with torch.no_grad():
        net(torch.zeros(1, 1, 32, 32), torch.zeros(1))
    for h in hooks:
        h.remove()
    return order


def state_dict_from_onnx(net, onnx_path):
    """The state dict of ``net`` read from the initializers of an exported fmnist-ddpm forward graph."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))  # external data (weights.bin) from the same folder
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    users = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)

    def next_op(out, op):
        nodes = [n for n in users.get(out, []) if n.op_type == op]
        if len(nodes) != 1:
            raise ValueError("%s: unexpected graph around a normalisation (%s after %s)" % (onnx_path, op, out))
        node = nodes[0]
        const = [init[n] for n in node.input if n in init]
        return node, const

    affine = []
    for node in model.graph.node:
        if node.op_type != "InstanceNormalization":
            continue
        reshape, _ = next_op(node.output[0], "Reshape")
        mul, scale = next_op(reshape.output[0], "Mul")
        _, shift = next_op(mul.output[0], "Add")
        if len(scale) != 1 or len(shift) != 1:
            raise ValueError("%s: GroupNorm affine parameters not found" % onnx_path)
        affine.append((scale[0].reshape(-1), shift[0].reshape(-1)))
    names = _groupnorm_order(net)
    if len(names) != len(affine):
        raise ValueError("%s: %d normalisations, the module has %d" % (onnx_path, len(affine), len(names)))
    state = {}
    for key in net.state_dict():
        if "model." + key in init:
            state[key] = torch.from_numpy(init["model." + key].copy())
    for name, (w, b) in zip(names, affine):
        state[name + ".weight"] = torch.from_numpy(w.copy())
        state[name + ".bias"] = torch.from_numpy(b.copy())
    return state


def load_fmnist_unet(model_dir, torch_weights=None, check=True):
    """The network of ``model_dir`` (models/fmnist-ddpm) in eval mode, weights from ``torch_weights`` (a
    state dict .pt) or else from the model's own ONNX files; with ``check``, compared with ONNX Runtime on a
    random batch (max abs difference <= 1e-4, else ValueError)."""
    net = FmnistUNet()
    if torch_weights:
        state = torch.load(str(torch_weights), map_location="cpu")
    else:
        state = state_dict_from_onnx(net, Path(model_dir) / "denoiser.onnx")
    net.load_state_dict(state, strict=True)
    net.eval()
    if check:
        import onnxruntime as ort

        rng = np.random.default_rng(7)
        x = rng.standard_normal((2, 1, 32, 32)).astype(np.float32)
        t = np.array([17.0, 640.0], np.float32)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(Path(model_dir) / "denoiser.onnx"), so, providers=["CPUExecutionProvider"])
        want = sess.run(None, {"x": x, "t": t})[0]
        with torch.no_grad():
            got = net(torch.from_numpy(x), torch.from_numpy(t)).numpy()
        err = float(np.max(np.abs(got - want)))
        if not err <= 1e-4:
            raise ValueError("the PyTorch network differs from %s by %.3g" % (model_dir, err))
    return net
