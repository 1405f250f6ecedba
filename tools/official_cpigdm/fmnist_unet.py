"""The fmnist-ddpm network in PyTorch, with its weights read from the shipped ONNX model.

models/fmnist-ddpm is a small ADM-style UNet (base width 48, 32x32 -> 16x16 -> 8x8, two residual blocks
per level, one 4-head self-attention block at 8x8, GroupNorm(16) + SiLU, sinusoidal embedding of the DDPM
step index 0..999); the architecture is the exporter's ``fmnist-unet`` preset, whose parameter names are
the training state dict's, so the weights load either from that state dict (``torch.load`` of a ``.pt``) or from the repository's own
``denoiser.onnx`` + ``weights.bin``: convolutions and linear layers are initializers named
``model.<parameter>``; the exporter decomposed each GroupNorm into InstanceNormalization -> Reshape ->
Mul(scale) -> Add(shift), so their affine parameters are taken from those Mul/Add constants, in the order
the graph runs the normalisations (the order this module calls them, recorded with hooks).  After loading,
``load_fmnist_unet`` checks the module against ONNX Runtime on a random batch and refuses a mismatch.
"""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tools/, for the exporter's presets
from presets.fmnist_unet import CONFIGS, UNet  # noqa: E402


def FmnistUNet():
    """The exporter's fmnist-unet preset (tools/presets/fmnist_unet.py), ddpm configuration."""
    return UNet(**CONFIGS["ddpm"])


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
        elif "model." + key + "__transposed" in init:
            # The split-VJP export stores linear weights transposed (MatMul operand).
            state[key] = torch.from_numpy(init["model." + key + "__transposed"].T.copy())
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
