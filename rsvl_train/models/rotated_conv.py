"""Adaptive rotated 3x3 convolution that exports to plain ONNX (no grouped conv, no grid_sample).

A 3x3 convolution samples its input at the nine offsets ``p_j = (dy, dx)`` of the kernel grid.
Rotating the kernel by ``theta`` moves tap ``j`` to ``q_j = R(theta) p_j``::

    q_y = cos(theta) * dy - sin(theta) * dx
    q_x = sin(theta) * dy + cos(theta) * dx

and the rotated convolution reads the input at ``p + q_j``, bilinearly interpolated from the
nine integer neighbours ``p + p_k`` (weights that fall outside the 3x3 neighbourhood are dropped,
as when a rotated 3x3 kernel is resampled on its own grid)::

    y(p) = sum_j W_j * sum_k M[j, k](theta) x(p + p_k),
    M[j, k] = relu(1 - |q_yj - dy_k|) * relu(1 - |q_xj - dx_k|).

The per-sample 9x9 matrix ``M`` is pure cos/sin/relu arithmetic. The layer stacks the nine shifted
copies of the feature map (padding + slicing), mixes them with ``M`` by a batched matmul and applies
the static kernel as a 1x1 convolution over the ``9 * C`` stacked channels. ``theta = 0`` gives the
plain convolution; ``theta = 90°`` gives the convolution with ``torch.rot90(W, 1, (-2, -1))``.

``impl="grouped"`` computes the same result by rotating the kernel per sample and running a
grouped convolution (cheaper in memory for training); it is not meant for export.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AdaptiveRotatedConv2d", "RotatedConv3x3", "kernel_offsets", "rotation_mixing_matrix", "shifted_stack"]


def kernel_offsets(device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Offsets ``(dy, dx)`` of the 3x3 kernel taps in row-major order, shape ``[9, 2]``."""
    r = torch.arange(-1, 2, device=device, dtype=dtype)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([dy.reshape(-1), dx.reshape(-1)], dim=1)


def rotation_mixing_matrix(theta: torch.Tensor) -> torch.Tensor:
    """Bilinear rotation matrices ``M[b, j, k]`` for angles ``theta [B]`` (radians), shape ``[B, 9, 9]``.

    Row ``j`` holds the bilinear weights of the rotated tap ``R(theta) p_j`` on the integer
    offsets ``p_k``. Identity at ``theta = 0``, a permutation at multiples of 90 degrees.
    """
    off = kernel_offsets(theta.device, theta.dtype)
    dy, dx = off[:, 0], off[:, 1]  # [9]
    c = torch.cos(theta).unsqueeze(-1)  # [B, 1]
    s = torch.sin(theta).unsqueeze(-1)
    qy = c * dy - s * dx  # [B, 9] rotated tap positions
    qx = s * dy + c * dx
    wy = torch.relu(1.0 - (qy.unsqueeze(-1) - dy).abs())  # [B, 9 (j), 9 (k)]
    wx = torch.relu(1.0 - (qx.unsqueeze(-1) - dx).abs())
    return wy * wx


def shifted_stack(x: torch.Tensor) -> torch.Tensor:
    """The nine shifted copies ``x(p + p_k)`` (zero padded) of ``x [B, C, H, W]``: ``[B, 9, C, H, W]``."""
    h, w = x.shape[-2], x.shape[-1]
    xp = F.pad(x, (1, 1, 1, 1))
    shifts = [xp[:, :, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return torch.stack(shifts, dim=1)


class RotatedConv3x3(nn.Module):
    """A bank of ``kernel_number`` static 3x3 kernels applied after a per-sample rotation.

    ``forward(x, theta, kernel_mix)``: ``theta [B]`` in radians, ``kernel_mix [B, n]`` (ignored,
    and may be None, when ``kernel_number == 1``). Stride 1, padding 1.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_number: int = 1, bias: bool = False,
                 impl: str = "shift") -> None:
        super().__init__()
        if impl not in ("shift", "grouped"):
            raise ValueError(f"impl must be 'shift' (exportable) or 'grouped', got {impl!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_number = kernel_number
        self.impl = impl
        self.weight = nn.Parameter(torch.empty(kernel_number, out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        for i in range(kernel_number):
            nn.init.kaiming_normal_(self.weight.data[i], mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor, theta: torch.Tensor, kernel_mix: torch.Tensor | None = None) -> torch.Tensor:
        m = rotation_mixing_matrix(theta.to(x.dtype))
        if self.impl == "grouped":
            y = self._forward_grouped(x, m, kernel_mix)
        else:
            y = self._forward_shift(x, m, kernel_mix)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y

    def _forward_shift(self, x: torch.Tensor, m: torch.Tensor, kernel_mix: torch.Tensor | None) -> torch.Tensor:
        b, c, h, w = x.shape
        stack = shifted_stack(x).reshape(b, 9, c * h * w)
        mixed = torch.matmul(m, stack).reshape(b, 9 * c, h, w)  # channel order (tap j, c)
        n, o = self.kernel_number, self.out_channels
        w1x1 = self.weight.permute(0, 1, 3, 4, 2).reshape(n * o, 9 * c, 1, 1)
        y = F.conv2d(mixed, w1x1)
        if n == 1:
            return y
        if kernel_mix is None:
            raise ValueError("kernel_mix [B, kernel_number] is required when kernel_number > 1")
        y = y.reshape(b, n, o, h, w) * kernel_mix.to(y.dtype).reshape(b, n, 1, 1, 1)
        return y.sum(dim=1)

    def _forward_grouped(self, x: torch.Tensor, m: torch.Tensor, kernel_mix: torch.Tensor | None) -> torch.Tensor:
        b, c, h, w = x.shape
        n, o = self.kernel_number, self.out_channels
        wt = self.weight.reshape(n, o, c, 9)
        if n > 1:
            if kernel_mix is None:
                raise ValueError("kernel_mix [B, kernel_number] is required when kernel_number > 1")
            wt = torch.matmul(kernel_mix.to(wt.dtype), wt.reshape(n, -1)).reshape(b, o, c, 9)
        else:
            wt = wt.expand(b, o, c, 9)
        # W'_k = sum_j M[j, k] W_j  (the rotated kernel)
        rotated = torch.matmul(wt, m.unsqueeze(1))  # [B, O, C, 9]
        y = F.conv2d(x.reshape(1, b * c, h, w), rotated.reshape(b * o, c, 3, 3), padding=1, groups=b)
        return y.reshape(b, o, h, w)


class AdaptiveRotatedConv2d(nn.Module):
    """3x3 convolution whose kernel rotates per sample by an angle predicted from a condition.

    The routing head sees the globally pooled input feature and a condition vector (the sentence
    feature in CADFormer) and predicts ``theta = tanh(a) * max_angle`` and, for
    ``kernel_number > 1``, softmax weights mixing the kernels. Its last layer starts near zero
    (a near-plain 3x3 convolution, angles of a fraction of a degree) but not at zero: the bilinear
    weights have kinks at integer positions, so the gradient w.r.t. ``theta`` vanishes at exactly 0.
    """

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, kernel_number: int = 1,
                 bias: bool = False, max_angle_deg: float = 180.0, hidden: int | None = None,
                 impl: str = "shift") -> None:
        super().__init__()
        self.kernel_number = kernel_number
        self.max_angle = math.radians(max_angle_deg)
        hidden = hidden or max(16, in_channels // 4)
        self.route_norm = nn.LayerNorm(in_channels + cond_dim)
        self.route = nn.Sequential(nn.Linear(in_channels + cond_dim, hidden), nn.ReLU(inplace=True),
                                   nn.Linear(hidden, 1 + (kernel_number if kernel_number > 1 else 0)))
        nn.init.normal_(self.route[-1].weight, std=1e-3)
        nn.init.zeros_(self.route[-1].bias)
        self.conv = RotatedConv3x3(in_channels, out_channels, kernel_number, bias=bias, impl=impl)

    def routing(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(theta [B] radians, kernel_mix [B, n] or None)`` for input ``x`` and condition ``cond [B, Dc]``."""
        pooled = x.mean(dim=(2, 3))
        r = self.route(self.route_norm(torch.cat([pooled, cond.to(pooled.dtype)], dim=-1)))
        theta = torch.tanh(r[:, 0]) * self.max_angle
        mix = torch.softmax(r[:, 1:], dim=-1) if self.kernel_number > 1 else None
        return theta, mix

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        theta, mix = self.routing(x, cond)
        return self.conv(x, theta, mix)
