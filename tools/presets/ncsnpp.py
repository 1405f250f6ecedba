"""NCSN++ (Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations").

Written here, since no registry package ships it, following the architecture of score_sde_pytorch's
``models/ncsnpp.py``, ``layerspp.py``, ``layers.py`` and ``up_or_down_sampling.py`` as used unchanged by
RectifiedFlow (Liu et al. 2023, ``ImageGeneration/models/ncsnpp.py``). Module names, the order of
``all_modules`` and parameter shapes are those of the original, so its checkpoints (``model`` state dicts and
the EMA ``shadow_params`` list, in parameter order) load as they are.

What differs is only how the FIR resampling is computed: the original's ``upfirdn2d_native`` (zero
insertion, padding, a correlation with the flipped kernel on a [B·C, 1, H, W] view, striding) is written as
zero insertion, padding and one depthwise ``conv2d`` with the flipped kernel and stride ``down``: the same
numbers, one graph node instead of a reshape chain. tools/tests check it against a direct implementation.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------------------
# Initialisation (layers.py: variance_scaling / default_init) — only matters for --random-init.
# ---------------------------------------------------------------------------------------------------------


def default_init(scale: float = 1.0):
    """JAX-style variance scaling, fan_avg, uniform (scale 0 is replaced by 1e-10, as in the original)."""
    scale = 1e-10 if scale == 0 else scale

    def init(shape):
        shape = tuple(shape)
        receptive = int(np.prod(shape)) / shape[1] / shape[0]
        fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
        var = scale / ((fan_in + fan_out) / 2.0)
        return (torch.rand(shape) * 2.0 - 1.0) * math.sqrt(3 * var)

    return init


def conv1x1(in_planes, out_planes, stride=1, bias=True, init_scale=1.0, padding=0):
    conv = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=padding, bias=bias)
    conv.weight.data = default_init(init_scale)(conv.weight.data.shape)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def conv3x3(in_planes, out_planes, stride=1, bias=True, dilation=1, init_scale=1.0, padding=1):
    conv = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=padding, dilation=dilation,
                     bias=bias)
    conv.weight.data = default_init(init_scale)(conv.weight.data.shape)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def get_timestep_embedding(timesteps, embedding_dim, max_positions=10000):
    """Transformer sinusoidal embedding [sin | cos] of DDPM (layers.py)."""
    half = embedding_dim // 2
    freq = math.log(max_positions) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=timesteps.device) * -freq)
    emb = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if embedding_dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


# ---------------------------------------------------------------------------------------------------------
# FIR resampling (up_or_down_sampling.py)
# ---------------------------------------------------------------------------------------------------------


def setup_kernel(k) -> np.ndarray:
    k = np.asarray(k, dtype=np.float32)
    if k.ndim == 1:
        k = np.outer(k, k)
    return k / np.sum(k)


def upfirdn2d(x, kernel, up: int = 1, down: int = 1, pad=(0, 0)):
    """Upsample by zero insertion, pad, convolve with the FIR `kernel` [K, K], downsample by `down`.

    Same output as score_sde's ``upfirdn2d_native`` (a true convolution: correlation with the flipped
    kernel) for non-negative pads, computed per channel with one depthwise convolution.
    """
    p0, p1 = pad
    if p0 < 0 or p1 < 0:
        raise ValueError("upfirdn2d: negative padding is not supported")
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    if up > 1:
        x = x.reshape(-1, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(-1, c, h * up, w * up)
    x = F.pad(x, [p0, p1, p0, p1])
    kh, kw = kernel.shape
    weight = torch.flip(kernel, [0, 1]).reshape(1, 1, kh, kw).expand(c, 1, kh, kw).to(x.dtype)
    return F.conv2d(x, weight, stride=down, groups=c)


def upsample_2d(x, kernel, factor: int = 2):
    """FIR upsampling; `kernel` is already normalised and multiplied by factor² (gain 1)."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x, kernel, factor: int = 2):
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


def naive_upsample_2d(x, factor=2):
    _n, c, h, w = x.shape
    x = x.reshape(-1, c, h, 1, w, 1).repeat(1, 1, 1, factor, 1, factor)
    return x.reshape(-1, c, h * factor, w * factor)


def naive_downsample_2d(x, factor=2):
    _n, c, h, w = x.shape
    return x.reshape(-1, c, h // factor, factor, w // factor, factor).mean(dim=(3, 5))


def _kernel_buffer(module: nn.Module, fir_kernel, gain: float) -> None:
    module.register_buffer("resample_k", torch.from_numpy(setup_kernel(fir_kernel) * gain), persistent=False)


class FirConv2d(nn.Module):
    """``up_or_down_sampling.Conv2d``: a 3x3 convolution fused with FIR up- or downsampling."""

    def __init__(self, in_ch, out_ch, kernel, up=False, down=False, resample_kernel=(1, 3, 3, 1), use_bias=True,
                 kernel_init=None):
        super().__init__()
        assert not (up and down) and kernel >= 1 and kernel % 2 == 1
        self.weight = nn.Parameter(torch.zeros(out_ch, in_ch, kernel, kernel))
        if kernel_init is not None:
            self.weight.data = kernel_init(self.weight.data.shape)
        if use_bias:
            self.bias = nn.Parameter(torch.zeros(out_ch))
        self.up, self.down, self.kernel, self.use_bias = up, down, kernel, use_bias
        _kernel_buffer(self, resample_kernel, 4.0 if up else 1.0)  # gain·factor² for up, factor 2

    def forward(self, x):
        factor = 2
        if self.up:
            # upsample_conv_2d: transposed conv (stride 2) with the spatially flipped, in/out-swapped
            # weight, then the FIR filter.
            w = self.weight
            conv_h, conv_w = w.shape[2], w.shape[3]
            in_c = w.shape[1]
            groups = x.shape[1] // in_c
            w = w.reshape(groups, -1, in_c, conv_h, conv_w)
            w = torch.flip(w, [3, 4]).permute(0, 2, 1, 3, 4).reshape(groups * in_c, -1, conv_h, conv_w)
            x = F.conv_transpose2d(x, w, stride=factor, padding=0)
            p = (self.resample_k.shape[0] - factor) - (conv_w - 1)
            x = upfirdn2d(x, self.resample_k, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))
        elif self.down:
            # conv_downsample_2d: FIR filter, then the strided convolution.
            conv_w = self.weight.shape[3]
            p = (self.resample_k.shape[0] - factor) + (conv_w - 1)
            x = upfirdn2d(x, self.resample_k, pad=((p + 1) // 2, p // 2))
            x = F.conv2d(x, self.weight, stride=factor, padding=0)
        else:
            x = F.conv2d(x, self.weight, stride=1, padding=self.kernel // 2)
        if self.use_bias:
            x = x + self.bias.reshape(1, -1, 1, 1)
        return x


# ---------------------------------------------------------------------------------------------------------
# Layers (layerspp.py, layers.NIN)
# ---------------------------------------------------------------------------------------------------------


class NIN(nn.Module):
    """1x1 "network in network" projection over channels: y[b,:,h,w] = x[b,:,h,w] W + b."""

    def __init__(self, in_dim, num_units, init_scale=0.1):
        super().__init__()
        self.W = nn.Parameter(default_init(scale=init_scale)((in_dim, num_units)), requires_grad=True)
        self.b = nn.Parameter(torch.zeros(num_units), requires_grad=True)

    def forward(self, x):
        y = torch.einsum("bchw,cd->bdhw", x, self.W)
        return y + self.b.reshape(1, -1, 1, 1)


class GaussianFourierProjection(nn.Module):
    """Fixed random Fourier features [sin(2π W s) | cos(2π W s)] of a scalar s (here log of the time input)."""

    def __init__(self, embedding_size=256, scale=1.0):
        super().__init__()
        self.W = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

    def forward(self, x):
        x_proj = x[:, None] * self.W[None, :] * 2 * np.pi
        return torch.cat([torch.sin(x_proj), torch.cos(x_proj)], dim=-1)


class Combine(nn.Module):
    """Combine the input-pyramid image (1x1 conv) with the feature map, by concatenation or sum."""

    def __init__(self, dim1, dim2, method="cat"):
        super().__init__()
        self.Conv = conv1x1(dim1, dim2)  # named Conv (not Conv_0) in the original
        self.method = method

    def forward(self, x, y):
        h = self.Conv(x)
        if self.method == "cat":
            return torch.cat([h, y], dim=1)
        if self.method == "sum":
            return h + y
        raise ValueError(f"method {self.method} not recognized")


class AttnBlockpp(nn.Module):
    """Single-head channel attention over all H·W positions (DDPM attention), NIN projections."""

    def __init__(self, channels, skip_rescale=False, init_scale=0.0):
        super().__init__()
        self.GroupNorm_0 = nn.GroupNorm(num_groups=min(channels // 4, 32), num_channels=channels, eps=1e-6)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x):
        _b, c, hh, ww = x.shape
        h = self.GroupNorm_0(x)
        q, k, v = self.NIN_0(h), self.NIN_1(h), self.NIN_2(h)
        w = torch.einsum("bchw,bcij->bhwij", q, k) * (int(c) ** (-0.5))
        w = torch.reshape(w, (-1, hh, ww, hh * ww))
        w = F.softmax(w, dim=-1)
        w = torch.reshape(w, (-1, hh, ww, hh, ww))
        h = torch.einsum("bhwij,bcij->bchw", w, v)
        h = self.NIN_3(h)
        return (x + h) / np.sqrt(2.0) if self.skip_rescale else x + h


class Upsample(nn.Module):
    def __init__(self, in_ch=None, out_ch=None, with_conv=False, fir=False, fir_kernel=(1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch if out_ch else in_ch
        if not fir:
            if with_conv:
                self.Conv_0 = conv3x3(in_ch, out_ch)
        elif with_conv:
            self.Conv2d_0 = FirConv2d(in_ch, out_ch, kernel=3, up=True, resample_kernel=fir_kernel, use_bias=True,
                                      kernel_init=default_init())
        else:
            _kernel_buffer(self, fir_kernel, 4.0)
        self.fir, self.with_conv = fir, with_conv

    def forward(self, x):
        _b, _c, h, w = x.shape
        if not self.fir:
            x = F.interpolate(x, (h * 2, w * 2), mode="nearest")
            return self.Conv_0(x) if self.with_conv else x
        if not self.with_conv:
            return upsample_2d(x, self.resample_k, factor=2)
        return self.Conv2d_0(x)


class Downsample(nn.Module):
    def __init__(self, in_ch=None, out_ch=None, with_conv=False, fir=False, fir_kernel=(1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch if out_ch else in_ch
        if not fir:
            if with_conv:
                self.Conv_0 = conv3x3(in_ch, out_ch, stride=2, padding=0)
        elif with_conv:
            self.Conv2d_0 = FirConv2d(in_ch, out_ch, kernel=3, down=True, resample_kernel=fir_kernel,
                                      use_bias=True, kernel_init=default_init())
        else:
            _kernel_buffer(self, fir_kernel, 1.0)
        self.fir, self.with_conv = fir, with_conv

    def forward(self, x):
        if not self.fir:
            x = F.pad(x, (0, 1, 0, 1))  # as the original, before the conv and before average pooling
            if self.with_conv:
                return self.Conv_0(x)
            return F.avg_pool2d(x, 2, stride=2)
        if not self.with_conv:
            return downsample_2d(x, self.resample_k, factor=2)
        return self.Conv2d_0(x)


class ResnetBlockDDPMpp(nn.Module):
    """ResNet block of DDPM++ (GroupNorm, SiLU, 3x3 convs, additive time embedding)."""

    def __init__(self, act, in_ch, out_ch=None, temb_dim=None, conv_shortcut=False, dropout=0.1,
                 skip_rescale=False, init_scale=0.0):
        super().__init__()
        out_ch = out_ch if out_ch else in_ch
        self.GroupNorm_0 = nn.GroupNorm(num_groups=min(in_ch // 4, 32), num_channels=in_ch, eps=1e-6)
        self.Conv_0 = conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = nn.Linear(temb_dim, out_ch)
            self.Dense_0.weight.data = default_init()(self.Dense_0.weight.data.shape)
            nn.init.zeros_(self.Dense_0.bias)
        self.GroupNorm_1 = nn.GroupNorm(num_groups=min(out_ch // 4, 32), num_channels=out_ch, eps=1e-6)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
        if in_ch != out_ch:
            if conv_shortcut:
                self.Conv_2 = conv3x3(in_ch, out_ch)
            else:
                self.NIN_0 = NIN(in_ch, out_ch)
        self.skip_rescale, self.act, self.out_ch, self.conv_shortcut = skip_rescale, act, out_ch, conv_shortcut

    def forward(self, x, temb=None):
        h = self.act(self.GroupNorm_0(x))
        h = self.Conv_0(h)
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.act(self.GroupNorm_1(h))
        h = self.Dropout_0(h)
        h = self.Conv_1(h)
        if x.shape[1] != self.out_ch:
            x = self.Conv_2(x) if self.conv_shortcut else self.NIN_0(x)
        return (x + h) / np.sqrt(2.0) if self.skip_rescale else x + h


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN-style ResNet block with optional FIR (or naive) up/down resampling inside the block."""

    def __init__(self, act, in_ch, out_ch=None, temb_dim=None, up=False, down=False, dropout=0.1, fir=False,
                 fir_kernel=(1, 3, 3, 1), skip_rescale=True, init_scale=0.0):
        super().__init__()
        out_ch = out_ch if out_ch else in_ch
        self.GroupNorm_0 = nn.GroupNorm(num_groups=min(in_ch // 4, 32), num_channels=in_ch, eps=1e-6)
        self.up, self.down, self.fir = up, down, fir
        if fir and (up or down):
            _kernel_buffer(self, fir_kernel, 4.0 if up else 1.0)
        self.Conv_0 = conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = nn.Linear(temb_dim, out_ch)
            self.Dense_0.weight.data = default_init()(self.Dense_0.weight.shape)
            nn.init.zeros_(self.Dense_0.bias)
        self.GroupNorm_1 = nn.GroupNorm(num_groups=min(out_ch // 4, 32), num_channels=out_ch, eps=1e-6)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
        if in_ch != out_ch or up or down:
            self.Conv_2 = conv1x1(in_ch, out_ch)
        self.skip_rescale, self.act, self.in_ch, self.out_ch = skip_rescale, act, in_ch, out_ch

    def forward(self, x, temb=None):
        h = self.act(self.GroupNorm_0(x))
        if self.up:
            if self.fir:
                h = upsample_2d(h, self.resample_k, factor=2)
                x = upsample_2d(x, self.resample_k, factor=2)
            else:
                h, x = naive_upsample_2d(h, factor=2), naive_upsample_2d(x, factor=2)
        elif self.down:
            if self.fir:
                h = downsample_2d(h, self.resample_k, factor=2)
                x = downsample_2d(x, self.resample_k, factor=2)
            else:
                h, x = naive_downsample_2d(h, factor=2), naive_downsample_2d(x, factor=2)
        h = self.Conv_0(h)
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.act(self.GroupNorm_1(h))
        h = self.Dropout_0(h)
        h = self.Conv_1(h)
        if self.in_ch != self.out_ch or self.up or self.down:
            x = self.Conv_2(x)
        return (x + h) / np.sqrt(2.0) if self.skip_rescale else x + h


# ---------------------------------------------------------------------------------------------------------
# The network (ncsnpp.py)
# ---------------------------------------------------------------------------------------------------------


class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ UNet. `cfg` is a flat dict of the score_sde ``config.model`` fields plus
    ``image_size``, ``num_channels``, ``centered`` (``config.data``)."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = dict(cfg)
        self.act = act = nn.SiLU()  # config.model.nonlinearity = 'swish' in every NCSN++ config
        sigmas = np.exp(np.linspace(np.log(cfg["sigma_max"]), np.log(cfg["sigma_min"]), cfg["num_scales"]))
        self.register_buffer("sigmas", torch.tensor(sigmas))

        self.nf = nf = cfg["nf"]
        ch_mult = cfg["ch_mult"]
        self.num_res_blocks = num_res_blocks = cfg["num_res_blocks"]
        self.attn_resolutions = attn_resolutions = tuple(cfg["attn_resolutions"])
        dropout = cfg["dropout"]
        resamp_with_conv = cfg["resamp_with_conv"]
        self.num_resolutions = num_resolutions = len(ch_mult)
        all_resolutions = [cfg["image_size"] // (2**i) for i in range(num_resolutions)]
        self.conditional = conditional = cfg["conditional"]
        fir, fir_kernel = cfg["fir"], tuple(cfg["fir_kernel"])
        self.skip_rescale = skip_rescale = cfg["skip_rescale"]
        self.resblock_type = resblock_type = cfg["resblock_type"].lower()
        self.progressive = progressive = cfg["progressive"].lower()
        self.progressive_input = progressive_input = cfg["progressive_input"].lower()
        self.embedding_type = embedding_type = cfg["embedding_type"].lower()
        init_scale = cfg["init_scale"]
        assert progressive in ("none", "output_skip", "residual")
        assert progressive_input in ("none", "input_skip", "residual")
        assert embedding_type in ("fourier", "positional")
        combine_method = cfg["progressive_combine"].lower()
        combiner = functools.partial(Combine, method=combine_method)

        modules = []
        if embedding_type == "fourier":
            modules.append(GaussianFourierProjection(embedding_size=nf, scale=cfg["fourier_scale"]))
            embed_dim = 2 * nf
        else:
            embed_dim = nf
        if conditional:
            for d_in in (embed_dim, nf * 4):
                lin = nn.Linear(d_in, nf * 4)
                lin.weight.data = default_init()(lin.weight.shape)
                nn.init.zeros_(lin.bias)
                modules.append(lin)

        attn_block = functools.partial(AttnBlockpp, init_scale=init_scale, skip_rescale=skip_rescale)
        upsample = functools.partial(Upsample, with_conv=resamp_with_conv, fir=fir, fir_kernel=fir_kernel)
        downsample = functools.partial(Downsample, with_conv=resamp_with_conv, fir=fir, fir_kernel=fir_kernel)
        if progressive == "output_skip":
            self.pyramid_upsample = Upsample(fir=fir, fir_kernel=fir_kernel, with_conv=False)
        elif progressive == "residual":
            pyramid_upsample = functools.partial(Upsample, fir=fir, fir_kernel=fir_kernel, with_conv=True)
        if progressive_input == "input_skip":
            self.pyramid_downsample = Downsample(fir=fir, fir_kernel=fir_kernel, with_conv=False)
        elif progressive_input == "residual":
            pyramid_downsample = functools.partial(Downsample, fir=fir, fir_kernel=fir_kernel, with_conv=True)

        if resblock_type == "ddpm":
            resnet = functools.partial(ResnetBlockDDPMpp, act=act, dropout=dropout, init_scale=init_scale,
                                       skip_rescale=skip_rescale, temb_dim=nf * 4)
        elif resblock_type == "biggan":
            resnet = functools.partial(ResnetBlockBigGANpp, act=act, dropout=dropout, fir=fir,
                                       fir_kernel=fir_kernel, init_scale=init_scale, skip_rescale=skip_rescale,
                                       temb_dim=nf * 4)
        else:
            raise ValueError(f"resblock type {resblock_type} unrecognized")

        channels = cfg["num_channels"]
        input_pyramid_ch = channels
        modules.append(conv3x3(channels, nf))
        hs_c = [nf]
        in_ch = nf
        for i_level in range(num_resolutions):
            for _ in range(num_res_blocks):
                out_ch = nf * ch_mult[i_level]
                modules.append(resnet(in_ch=in_ch, out_ch=out_ch))
                in_ch = out_ch
                if all_resolutions[i_level] in attn_resolutions:
                    modules.append(attn_block(channels=in_ch))
                hs_c.append(in_ch)
            if i_level != num_resolutions - 1:
                if resblock_type == "ddpm":
                    modules.append(downsample(in_ch=in_ch))
                else:
                    modules.append(resnet(down=True, in_ch=in_ch))
                if progressive_input == "input_skip":
                    modules.append(combiner(dim1=input_pyramid_ch, dim2=in_ch))
                    if combine_method == "cat":
                        in_ch *= 2
                elif progressive_input == "residual":
                    modules.append(pyramid_downsample(in_ch=input_pyramid_ch, out_ch=in_ch))
                    input_pyramid_ch = in_ch
                hs_c.append(in_ch)

        in_ch = hs_c[-1]
        modules.append(resnet(in_ch=in_ch))
        modules.append(attn_block(channels=in_ch))
        modules.append(resnet(in_ch=in_ch))

        pyramid_ch = 0
        for i_level in reversed(range(num_resolutions)):
            for _ in range(num_res_blocks + 1):
                out_ch = nf * ch_mult[i_level]
                modules.append(resnet(in_ch=in_ch + hs_c.pop(), out_ch=out_ch))
                in_ch = out_ch
            if all_resolutions[i_level] in attn_resolutions:
                modules.append(attn_block(channels=in_ch))
            if progressive != "none":
                if i_level == num_resolutions - 1:
                    if progressive == "output_skip":
                        modules.append(nn.GroupNorm(min(in_ch // 4, 32), in_ch, eps=1e-6))
                        modules.append(conv3x3(in_ch, channels, init_scale=init_scale))
                        pyramid_ch = channels
                    else:
                        modules.append(nn.GroupNorm(min(in_ch // 4, 32), in_ch, eps=1e-6))
                        modules.append(conv3x3(in_ch, in_ch, bias=True))
                        pyramid_ch = in_ch
                else:
                    if progressive == "output_skip":
                        modules.append(nn.GroupNorm(min(in_ch // 4, 32), in_ch, eps=1e-6))
                        modules.append(conv3x3(in_ch, channels, bias=True, init_scale=init_scale))
                        pyramid_ch = channels
                    else:
                        modules.append(pyramid_upsample(in_ch=pyramid_ch, out_ch=in_ch))
                        pyramid_ch = in_ch
            if i_level != 0:
                if resblock_type == "ddpm":
                    modules.append(upsample(in_ch=in_ch))
                else:
                    modules.append(resnet(in_ch=in_ch, up=True))
        assert not hs_c
        if progressive != "output_skip":
            modules.append(nn.GroupNorm(min(in_ch // 4, 32), in_ch, eps=1e-6))
            modules.append(conv3x3(in_ch, channels, init_scale=init_scale))
        self.all_modules = nn.ModuleList(modules)

    def forward(self, x, time_cond):
        mods = iter(self.all_modules)
        if self.embedding_type == "fourier":
            used_sigmas = time_cond
            temb = next(mods)(torch.log(used_sigmas))
        else:
            used_sigmas = self.sigmas[time_cond.long()] if self.cfg["scale_by_sigma"] else None
            temb = get_timestep_embedding(time_cond, self.nf)
        if self.conditional:
            temb = next(mods)(temb)
            temb = next(mods)(self.act(temb))
        else:
            temb = None
        if not self.cfg["centered"]:
            x = 2 * x - 1.0  # data in [0, 1]

        input_pyramid = x if self.progressive_input != "none" else None
        hs = [next(mods)(x)]
        for i_level in range(self.num_resolutions):
            for _ in range(self.num_res_blocks):
                h = next(mods)(hs[-1], temb)
                if h.shape[-1] in self.attn_resolutions:
                    h = next(mods)(h)
                hs.append(h)
            if i_level != self.num_resolutions - 1:
                if self.resblock_type == "ddpm":
                    h = next(mods)(hs[-1])
                else:
                    h = next(mods)(hs[-1], temb)
                if self.progressive_input == "input_skip":
                    input_pyramid = self.pyramid_downsample(input_pyramid)
                    h = next(mods)(input_pyramid, h)
                elif self.progressive_input == "residual":
                    input_pyramid = next(mods)(input_pyramid)
                    input_pyramid = (input_pyramid + h) / np.sqrt(2.0) if self.skip_rescale else input_pyramid + h
                    h = input_pyramid
                hs.append(h)

        h = hs[-1]
        h = next(mods)(h, temb)
        h = next(mods)(h)
        h = next(mods)(h, temb)

        pyramid = None
        for i_level in reversed(range(self.num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                h = next(mods)(torch.cat([h, hs.pop()], dim=1), temb)
            if h.shape[-1] in self.attn_resolutions:
                h = next(mods)(h)
            if self.progressive != "none":
                if i_level == self.num_resolutions - 1:
                    pyramid = self.act(next(mods)(h))
                    pyramid = next(mods)(pyramid)
                elif self.progressive == "output_skip":
                    pyramid = self.pyramid_upsample(pyramid)
                    pyramid_h = self.act(next(mods)(h))
                    pyramid_h = next(mods)(pyramid_h)
                    pyramid = pyramid + pyramid_h
                else:
                    pyramid = next(mods)(pyramid)
                    pyramid = (pyramid + h) / np.sqrt(2.0) if self.skip_rescale else pyramid + h
                    h = pyramid
            if i_level != 0:
                if self.resblock_type == "ddpm":
                    h = next(mods)(h)
                else:
                    h = next(mods)(h, temb)
        assert not hs

        if self.progressive == "output_skip":
            h = pyramid
        else:
            h = self.act(next(mods)(h))
            h = next(mods)(h)
        assert next(mods, None) is None, "module order out of step with the architecture"
        if self.cfg["scale_by_sigma"]:
            h = h / used_sigmas.to(h.dtype).reshape(-1, 1, 1, 1)
        return h
