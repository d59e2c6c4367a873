"""RepLK (Ding et al., "Scaling Up Your Kernels to 31x31", CVPR 2022) for 2D and 3D.

A large depthwise kernel (e.g. 13x13x13) trained together with a parallel small depthwise kernel
(3x3x3); each branch ends in batch norm. For inference both branches and their norms fold into
one large depthwise convolution with a bias (:meth:`RepLKConv.reparameterize`), which computes the
same function in eval mode. Batch norm is used inside this convolution (and only here) because an
instance norm depends on the input and cannot be folded into weights.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers import Conv, Norm

from models.modules.conv import conv_norm_act


def _fuse_conv_bn(conv: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of the bias-free ``conv`` followed by ``bn`` in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
    return weight, bn.bias - bn.running_mean * scale


class RepLKConv(nn.Module):
    """Depthwise large-kernel conv + BN in parallel with a depthwise small-kernel conv + BN, summed.

    Args:
        spatial_dims: 2 or 3.
        channels: input = output channels (depthwise).
        kernel_size: the large kernel (odd), e.g. 13.
        small_kernel: the parallel small kernel (odd, smaller than ``kernel_size``); 0 disables it.

    After :meth:`reparameterize` the module holds a single ``fused`` convolution.
    """

    def __init__(self, spatial_dims: int, channels: int, kernel_size: int = 13, small_kernel: int = 3):
        super().__init__()
        if kernel_size % 2 == 0 or (small_kernel and (small_kernel % 2 == 0 or small_kernel >= kernel_size)):
            raise ValueError(
                f"RepLKConv: kernel_size must be odd and small_kernel odd and smaller (or 0), "
                f"got kernel_size={kernel_size}, small_kernel={small_kernel}"
            )
        conv, bn = Conv[Conv.CONV, spatial_dims], Norm[Norm.BATCH, spatial_dims]
        self.kernel_size, self.small_kernel = kernel_size, small_kernel

        def branch(k: int) -> nn.Sequential:
            return nn.Sequential(conv(channels, channels, k, padding=k // 2, groups=channels, bias=False), bn(channels))

        self.large = branch(kernel_size)
        self.small = branch(small_kernel) if small_kernel else None
        self.fused: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.fused(x)
        y = self.large(x)
        return y + self.small(x) if self.small is not None else y

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold both branches and their batch norms (running statistics) into one conv with bias.

        Exact in eval mode; afterwards the module keeps only ``fused`` and cannot be un-fused.
        """
        if self.fused is not None:
            return
        weight, bias = _fuse_conv_bn(*self.large)
        if self.small is not None:
            w_small, b_small = _fuse_conv_bn(*self.small)
            pad = (self.kernel_size - self.small_kernel) // 2
            weight = weight + F.pad(w_small, [pad] * (2 * (weight.dim() - 2)))
            bias = bias + b_small
        src = self.large[0]
        fused = type(src)(
            src.in_channels, src.out_channels, self.kernel_size, padding=self.kernel_size // 2,
            groups=src.groups, bias=True,
        ).to(weight)
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
        self.fused = fused
        self.large, self.small = None, None


class ConvFFN(nn.Module):
    """Pointwise feed-forward with a residual: ``x + W2(act(W1 x))``, hidden width ``expansion * channels``."""

    def __init__(self, spatial_dims: int, channels: int, expansion: int = 2):
        super().__init__()
        if expansion < 1:
            raise ValueError(f"ConvFFN: expansion must be >= 1, got {expansion}")
        self.ffn = nn.Sequential(
            conv_norm_act(spatial_dims, channels, channels * expansion, 1),
            conv_norm_act(spatial_dims, channels * expansion, channels, 1, act=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(x)


class RepLKBlock(nn.Module):
    """RepLK block: ``x + PW2(act(RepLKConv(PW1 x)))``, optionally followed by a ``ConvFFN``.

    Args:
        spatial_dims: 2 or 3.
        channels: input = output channels.
        kernel_size: the large depthwise kernel (13 in the dual-branch models).
        small_kernel: the parallel small kernel.
        ffn_expansion: 0 for no FFN, else the FFN expansion (2 = "FFN2").
    """

    def __init__(
        self, spatial_dims: int, channels: int, kernel_size: int = 13, small_kernel: int = 3, ffn_expansion: int = 0
    ):
        super().__init__()
        self.pw1 = conv_norm_act(spatial_dims, channels, channels, 1)
        self.large_kernel = RepLKConv(spatial_dims, channels, kernel_size, small_kernel)
        self.act = nn.LeakyReLU(0.01)
        self.pw2 = conv_norm_act(spatial_dims, channels, channels, 1, act=False)
        self.ffn = ConvFFN(spatial_dims, channels, ffn_expansion) if ffn_expansion else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pw2(self.act(self.large_kernel(self.pw1(x))))
        return self.ffn(x)


def reparameterize_model(model: nn.Module) -> int:
    """Fuse every :class:`RepLKConv` of ``model`` in place; returns how many were fused."""
    convs = [m for m in model.modules() if isinstance(m, RepLKConv) and m.fused is None]
    for m in convs:
        m.reparameterize()
    return len(convs)
