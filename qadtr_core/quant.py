"""Fake quantization with runtime-switchable bit-width.

One model carries every precision: each quantized layer holds a learned step size (LSQ, Esser et al.
2020) per bit-width and each BatchNorm is a :class:`SwitchBatchNorm2d` with one BatchNorm per
bit-width. ``set_bits(model, b)`` (or ``with bits(model, b):``) picks the active precision at run time;
``32`` means full precision, where every quantizer is the identity.

Scheme (``protocol.md``): symmetric, per-output-channel weights on the grid
``{-(2^(b-1)-1), ..., 2^(b-1)-1} * step`` (ternary at 2 bits) and unsigned, per-tensor activations on
``{0, ..., 2^b-1} * step``. Rounding uses a straight-through estimator: the gradient passes unchanged
inside the clipping range and is zero outside it. Steps start at the value that minimises the squared
quantization error of the first tensor seen at that bit-width (weights: the weights themselves;
activations: the first batch), which is also what post-training quantization uses.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

FULL_PRECISION = 32
QUANT_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
VALID_BITS: tuple[int, ...] = QUANT_BITS + (FULL_PRECISION,)


def check_bits(bits: int) -> int:
    """Return ``bits`` if it is a supported bit-width (2..8 or 32), else raise ``ValueError``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in VALID_BITS:
        raise ValueError(f"bit-width {bits!r} is not supported; allowed: 2, 3, 4, 5, 6, 7, 8 or 32 (full precision)")
    return bits


def weight_range(bits: int) -> tuple[int, int]:
    """Integer grid of a symmetric signed quantizer: ``(-(2^(b-1)-1), 2^(b-1)-1)``."""
    q = 2 ** (check_bits(bits) - 1) - 1
    return -q, q


def act_range(bits: int) -> tuple[int, int]:
    """Integer grid of an unsigned quantizer: ``(0, 2^b - 1)``."""
    return 0, 2 ** check_bits(bits) - 1


class _FakeQuant(torch.autograd.Function):
    """LSQ fake quantization in few passes over memory (activations dominate the cost of QAT)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int, grad_scale: float) -> torch.Tensor:
        v = x / step
        q = torch.round(v).clamp_(qmin, qmax)
        ctx.save_for_backward(v, q, step)
        ctx.qmin, ctx.qmax, ctx.grad_scale = qmin, qmax, grad_scale
        return q * step

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        v, q, step = ctx.saved_tensors
        inside = (v >= ctx.qmin) & (v <= ctx.qmax)
        grad_x = grad * inside  # straight-through inside the clipping range, zero outside
        if not ctx.needs_input_grad[1]:  # a frozen step (an attack): the input gradient alone
            return grad_x, None, None, None, None
        # d(q*s)/ds = round(v) - v inside, and the clamp bound (= q) outside.
        dstep = grad * (q - v * inside)
        if step.dim() == 0:
            grad_step = dstep.sum()
        else:
            reduce = [d for d in range(grad.dim()) if step.shape[d] == 1]
            grad_step = dstep.sum(dim=reduce, keepdim=True)
        return grad_x, grad_step * ctx.grad_scale, None, None, None


def fake_quant(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int, grad_scale: float = 1.0) -> torch.Tensor:
    """Quantize-dequantize ``x`` on ``step * {qmin..qmax}`` with a straight-through round.

    ``step`` broadcasts against ``x`` (a scalar for per-tensor, shape ``(C,1,1,1)`` per channel).
    The gradient wrt ``x`` is 1 where ``qmin*step <= x <= qmax*step`` and 0 elsewhere; the gradient
    wrt ``step`` is LSQ's (``round(x/s) - x/s`` inside, the clamp bound outside) times ``grad_scale``.
    """
    return _FakeQuant.apply(x, _grid_step(step), qmin, qmax, grad_scale)


def _grid_step(step: torch.Tensor) -> torch.Tensor:
    # A learned step can cross zero during QAT (small 8-bit weight steps do); the grid depends on its size only.
    return step.abs().clamp_min(1e-12)


def grid_levels(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """The integer levels :func:`fake_quant` puts ``x`` on (its output is these levels times ``|step|``)."""
    return torch.round(x / _grid_step(step)).clamp(qmin, qmax)


@torch.no_grad()
def mse_step(x: torch.Tensor, qmin: int, qmax: int, dim: int | None = None, grid: int = 64) -> torch.Tensor:
    """Step size minimising the squared error of quantizing ``x`` (per slice of ``dim`` if given).

    Candidates are ``max|x| * k / grid / qmax`` for ``k = 1..grid``; returns a tensor of shape
    ``(x.shape[dim],)`` or a scalar.
    """
    flat = x.detach().flatten(1) if dim == 0 else x.detach().reshape(1, -1)
    amax = flat.abs().amax(dim=1).clamp_min(1e-8)
    best_err = torch.full_like(amax, float("inf"))
    best = amax / qmax
    for k in range(1, grid + 1):
        s = amax * (k / grid) / qmax
        q = torch.clamp(torch.round(flat / s[:, None]), qmin, qmax) * s[:, None]
        err = (q - flat).pow(2).sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, s, best)
    return best if dim == 0 else best[0]


class _Precision:
    """Mixin: the active bit-width of one layer (set by :func:`set_bits`) and an optional pinned width."""

    bits: int = FULL_PRECISION
    fixed_bits: int | None = None

    def _init_precision(self, fixed_bits: int | None) -> None:
        self.bits = FULL_PRECISION
        self.fixed_bits = None if fixed_bits is None else check_bits(fixed_bits)

    def effective_bits(self) -> int:
        """The width this layer quantizes at now: 32 if the model is at 32, else the pinned width if any."""
        if self.bits == FULL_PRECISION or self.fixed_bits is None:
            return self.bits
        return self.fixed_bits


class _StepBank(nn.Module):
    """One learned step per quantized bit-width, initialised from data on first use."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.steps = nn.ParameterDict({str(b): nn.Parameter(torch.ones(shape)) for b in QUANT_BITS})
        self.register_buffer("initialized", torch.zeros(len(QUANT_BITS), dtype=torch.bool))

    def get(self, bits: int, init: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The step at ``bits``; ``init()`` computes its first value (only called once)."""
        i = QUANT_BITS.index(bits)
        step = self.steps[str(bits)]
        if not bool(self.initialized[i]):
            with torch.no_grad():
                step.copy_(init().reshape(step.shape))
                self.initialized[i] = True
        return step

    def reset(self, bits: int) -> None:
        """Forget the step at ``bits`` so that the next forward re-initialises it from data."""
        self.initialized[QUANT_BITS.index(check_bits(bits))] = False


class QuantConv2d(_Precision, nn.Conv2d):
    """Conv2d with per-channel symmetric fake-quantized weights.

    ``fixed_bits`` pins the weight precision whenever the model is quantized (the first layer stays at
    8 bits by default); at 32 bits the layer is a plain convolution.
    """

    def __init__(self, *args, fixed_bits: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_precision(fixed_bits)
        self.wstep = _StepBank((self.out_channels, 1, 1, 1))

    def quantized_weight(self) -> torch.Tensor:
        b = self.effective_bits()
        if b == FULL_PRECISION:
            return self.weight
        qmin, qmax = weight_range(b)
        step = self.wstep.get(b, lambda: mse_step(self.weight, qmin, qmax, dim=0))
        return fake_quant(self.weight, step, qmin, qmax, grad_scale=(self.weight[0].numel() * qmax) ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class QuantLinear(_Precision, nn.Linear):
    """Linear layer with per-output-row symmetric fake-quantized weights (see :class:`QuantConv2d`)."""

    def __init__(self, *args, fixed_bits: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_precision(fixed_bits)
        self.wstep = _StepBank((self.out_features, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.effective_bits()
        w = self.weight
        if b != FULL_PRECISION:
            qmin, qmax = weight_range(b)
            step = self.wstep.get(b, lambda: mse_step(w, qmin, qmax, dim=0))
            w = fake_quant(w, step, qmin, qmax, grad_scale=(w.shape[1] * qmax) ** -0.5)
        return F.linear(x, w, self.bias)


class QuantAct(_Precision, nn.Module):
    """Unsigned per-tensor fake quantization of a non-negative activation (after a ReLU)."""

    def __init__(self, fixed_bits: int | None = None) -> None:
        super().__init__()
        self._init_precision(fixed_bits)
        self.astep = _StepBank(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.effective_bits()
        if b == FULL_PRECISION:
            return x
        qmin, qmax = act_range(b)
        step = self.astep.get(b, lambda: mse_step(x, qmin, qmax))
        return fake_quant(x, step, qmin, qmax, grad_scale=(x[0].numel() * qmax) ** -0.5)


class SwitchBatchNorm2d(nn.Module):
    """One BatchNorm2d per bit-width; the active one follows the model's bit-width.

    A BatchNorm is *ready* once trained or copied (``prepare_bits``); using one that is not raises,
    because its default statistics would silently ruin accuracy.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.bits = FULL_PRECISION
        self.bns = nn.ModuleDict({str(b): nn.BatchNorm2d(num_features) for b in VALID_BITS})
        ready = torch.zeros(len(VALID_BITS), dtype=torch.bool)
        ready[VALID_BITS.index(FULL_PRECISION)] = True
        self.register_buffer("ready", ready)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = VALID_BITS.index(self.bits)
        if self.training:
            self.ready[i] = True
        elif not bool(self.ready[i]):
            raise RuntimeError(
                f"the BatchNorm for {self.bits} bits was never trained; train at {self.bits} bits "
                f"or call prepare_bits(model, {self.bits}) to copy the full-precision one (PTQ)"
            )
        return self.bns[str(self.bits)](x)


def _bit_modules(model: nn.Module) -> Iterator[nn.Module]:
    return (m for m in model.modules() if isinstance(m, (QuantConv2d, QuantLinear, QuantAct, SwitchBatchNorm2d)))


def set_bits(model: nn.Module, bits: int) -> nn.Module:
    """Switch every quantized layer and BatchNorm of ``model`` to ``bits`` (2..8, or 32 = full precision)."""
    check_bits(bits)
    for m in _bit_modules(model):
        m.bits = bits
    model.qadtr_bits = bits
    return model


def get_bits(model: nn.Module) -> int:
    """The bit-width the model currently runs at (32 if it was never switched)."""
    return getattr(model, "qadtr_bits", FULL_PRECISION)


@contextlib.contextmanager
def bits(model: nn.Module, bits: int) -> Iterator[nn.Module]:
    """Run a block at ``bits`` and restore the previous bit-width afterwards."""
    previous = get_bits(model)
    set_bits(model, bits)
    try:
        yield model
    finally:
        set_bits(model, previous)


@torch.no_grad()
def prepare_bits(model: nn.Module, bits: int, source_bits: int = FULL_PRECISION) -> nn.Module:
    """Make ``bits`` usable before training it: copy BatchNorms from ``source_bits`` and reset steps.

    The steps re-initialise from the next forward pass, so a forward over calibration data at
    ``bits`` afterwards is post-training quantization. With ``source_bits == bits`` there is nothing
    to copy and the call changes nothing: a model fine-tuned from a QAT model at the same width (PBAT)
    keeps the steps and BatchNorms that QAT learned.
    """
    check_bits(bits)
    check_bits(source_bits)
    if bits == source_bits:
        return model
    for m in model.modules():
        if isinstance(m, SwitchBatchNorm2d):
            m.bns[str(bits)].load_state_dict(m.bns[str(source_bits)].state_dict())
            m.ready[VALID_BITS.index(bits)] = True
        elif bits != FULL_PRECISION and isinstance(m, _StepBank):
            m.reset(bits)
    return model
