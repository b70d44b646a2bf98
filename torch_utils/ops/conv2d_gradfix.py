"""2D convolutions that are differentiable to any order and can skip weight gradients.

`conv2d` and `conv_transpose2d` take exactly the arguments of their `torch.nn.functional`
counterparts and return the same values. When the custom path applies (the module flag `enabled`
is set, this torch provides `aten::convolution_backward`, the padding is not a string and no
autocast region is active), they run through two autograd Functions defined here:

- `_Conv` computes the convolution; its backward calls `_ConvBackward`.
- `_ConvBackward` computes (grad_input, grad_weight, grad_bias) with ONE call of
  `aten::convolution_backward` whose `output_mask` asks only for what is needed. Its own backward
  is again written with `_Conv` and `_ConvBackward`, so every order of gradient stays inside these
  two Functions and stays exact.

On the CPU, 3x3 stride-1 convolutions with many channels (torch_utils/ops/winograd.py says which)
run by Winograd's F(2x2, 3x3) algorithm instead, also differentiable to any order; there
`_WeightGradientGate` honours `no_weight_gradients()`.

Why not plain torch: the R1 and path-length regularisers take gradients with respect to the
*input* only (first pass) and then differentiate that gradient (second pass). Inside
`no_weight_gradients()` the first pass tells `aten::convolution_backward` not to compute the weight
gradient at all, which saves a full weight-gradient convolution per layer.

The flag set by `no_weight_gradients()` is process-wide on purpose: autograd runs backward
functions of CUDA tensors on its own device threads, so a thread-local flag would not be seen.
"""

import contextlib

import torch

from torch_utils.ops import winograd

# Public flag (official pickles and training loops set it): False = always use torch.nn.functional.
enabled = True

# True while inside no_weight_gradients(); read by _Conv.backward at backward time.
weight_gradients_disabled = False


def _find_aten_op(name):
    """Return `torch.ops.aten.<name>` or None when this torch does not provide it."""
    try:
        return getattr(torch.ops.aten, name)
    except (AttributeError, RuntimeError):
        return None


# Feature detection (no version strings): the custom path needs both aten ops.
_aten_convolution = _find_aten_op("convolution")
_aten_convolution_backward = _find_aten_op("convolution_backward")
HAS_CONVOLUTION_BACKWARD = _aten_convolution is not None and _aten_convolution_backward is not None


@contextlib.contextmanager
def no_weight_gradients(disable=True):
    """Context manager: while active (and `disable` is True), conv backward skips weight gradients.

    Nestable: an inner `no_weight_gradients(False)` keeps an outer disable in force; the previous
    state is restored on exit. Affects the first-order backward of convolutions run through this
    module's custom path; gradients w.r.t. inputs are unchanged.
    """
    global weight_gradients_disabled  # process-wide on purpose (see the module docstring)
    previous = weight_gradients_disabled
    weight_gradients_disabled = previous or bool(disable)
    try:
        yield
    finally:
        weight_gradients_disabled = previous


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # noqa: A002 -- torch's name
    """Same as `torch.nn.functional.conv2d`: input `[N, Cin, H, W]`, weight `[Cout, Cin/groups, kh, kw]`
    -> `[N, Cout, H', W']`; twice (any order) differentiable, honours `no_weight_gradients()`."""
    if not _use_custom_op(input, padding):
        return torch.nn.functional.conv2d(input, weight, bias, stride, padding, dilation, groups)
    params = _ConvParams.make(False, stride, padding, dilation, 0, groups)
    if winograd.applicable(input, weight, params.stride, params.padding, params.dilation, params.groups):
        output = winograd.conv2d(input, _WeightGradientGate.apply(weight), params.padding)
        return output if bias is None else output + bias.reshape(1, -1, 1, 1)
    return _apply_conv(input, weight, bias, params)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):  # noqa: A002
    """Same as `torch.nn.functional.conv_transpose2d`: input `[N, Cin, H, W]`, weight
    `[Cin, Cout/groups, kh, kw]` -> `[N, Cout, H', W']`; any-order differentiable, honours
    `no_weight_gradients()`."""
    if not _use_custom_op(input, padding):
        return torch.nn.functional.conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation)
    params = _ConvParams.make(True, stride, padding, dilation, output_padding, groups)
    return _apply_conv(input, weight, bias, params)


def _use_custom_op(input, padding):  # noqa: A002
    """True when the custom Functions handle this call.

    String paddings ('same') and autocast regions stay with torch: autocast casts at the level of
    F.conv2d, which the raw aten call inside our Function would bypass (different output dtype).
    """
    if not enabled or not HAS_CONVOLUTION_BACKWARD:
        return False
    if not isinstance(input, torch.Tensor) or isinstance(padding, str):
        return False
    return not _autocast_active(input.device.type)


def _autocast_active(device_type):
    """Whether autocast is on for `device_type` (older torch only answers for CUDA)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:
        return device_type == "cuda" and torch.is_autocast_enabled()


def _apply_conv(input, weight, bias, params):  # noqa: A002
    """Run `_Conv`, adding and removing the batch dimension for unbatched `[C, H, W]` input."""
    if input.ndim == 3:
        return _Conv.apply(input.unsqueeze(0), weight, bias, params).squeeze(0)
    return _Conv.apply(input, weight, bias, params)


def _pair(value, name):
    """Normalise an int or a 1-/2-sequence of ints to a 2-tuple (y, x) as torch does."""
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) == 1:
        return value * 2
    if len(value) != 2:
        raise ValueError(f"conv2d_gradfix: {name}={value} must be an int or a pair of ints")
    return value


class _ConvParams(tuple):
    """Hashable, immutable bundle of the non-tensor convolution arguments."""

    __slots__ = ()

    @classmethod
    def make(cls, transposed, stride, padding, dilation, output_padding, groups):
        return cls((bool(transposed), _pair(stride, "stride"), _pair(padding, "padding"),
                    _pair(dilation, "dilation"), _pair(output_padding, "output_padding"), int(groups)))

    transposed = property(lambda self: self[0])
    stride = property(lambda self: self[1])
    padding = property(lambda self: self[2])
    dilation = property(lambda self: self[3])
    output_padding = property(lambda self: self[4])
    groups = property(lambda self: self[5])


def _convolution(input, weight, bias, params):  # noqa: A002
    """The raw (non-recording) convolution described by `params`."""
    return _aten_convolution(input, weight, bias, list(params.stride), list(params.padding),
                             list(params.dilation), params.transposed, list(params.output_padding),
                             params.groups)


class _Conv(torch.autograd.Function):
    """y = conv(x, w) + b for the convolution described by `params` (plain or transposed)."""

    @staticmethod
    def forward(ctx, input, weight, bias, params):  # noqa: A002
        ctx.save_for_backward(input, weight)
        ctx.params = params
        ctx.bias_shape = None if bias is None else tuple(bias.shape)
        return _convolution(input, weight, bias, params)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors  # noqa: A001
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        # The whole point of no_weight_gradients(): do not even ask aten for the weight gradient.
        need_weight = need_weight and not weight_gradients_disabled
        mask = (need_input, need_weight, need_bias and ctx.bias_shape is not None)
        if not any(mask):
            return None, None, None, None
        grad_input, grad_weight, grad_bias = _ConvBackward.apply(
            grad_output, input, weight, ctx.bias_shape, ctx.params, mask)
        return grad_input, grad_weight, grad_bias, None


class _WeightGradientGate(torch.autograd.Function):
    """Identity on the weight whose backward drops the gradient inside no_weight_gradients()
    (for convolutions that do not run through _Conv, e.g. the CPU Winograd path)."""

    @staticmethod
    def forward(ctx, weight):
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        return None if weight_gradients_disabled else grad


class _ConvBackward(torch.autograd.Function):
    """(grad_input, grad_weight, grad_bias) of `_Conv` for grad_output `go`; None where not in `mask`.

    The three results are bilinear: grad_input(go, w), grad_weight(go, x), grad_bias(go). Their
    derivatives therefore are convolutions and convolution backward passes of the same geometry,
    which is what `backward` builds, through these same Functions (any order).
    """

    @staticmethod
    def forward(ctx, grad_output, input, weight, bias_shape, params, mask):  # noqa: A002
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(grad_output, input, weight)
        ctx.params = params
        bias_sizes = None if bias_shape is None else list(bias_shape)
        results = _aten_convolution_backward(
            grad_output, input, weight, bias_sizes, list(params.stride), list(params.padding),
            list(params.dilation), params.transposed, list(params.output_padding), params.groups,
            list(mask))
        return tuple(r if m else None for r, m in zip(results, mask))

    @staticmethod
    def backward(ctx, gg_input, gg_weight, gg_bias):
        grad_output, input, weight = ctx.saved_tensors  # noqa: A001
        params = ctx.params
        need_go, need_input, need_weight = ctx.needs_input_grad[:3]
        d_go = d_input = d_weight = None
        if need_go:
            # <gg_in, grad_input(go, w)> = <go, conv(gg_in, w)>; likewise for the weight and bias terms.
            terms = []
            if gg_input is not None:
                terms.append(_Conv.apply(gg_input, weight, None, params))
            if gg_weight is not None:
                terms.append(_Conv.apply(input, gg_weight, None, params))
            if gg_bias is not None:
                terms.append(gg_bias.reshape(1, -1, 1, 1).expand_as(grad_output))
            d_go = _sum_terms(terms)
        if need_input and gg_weight is not None:
            # d/dx <go, conv(x, gg_w)> = the input gradient of a conv with weight gg_w.
            d_input = _ConvBackward.apply(grad_output, input, gg_weight, None, params, (True, False, False))[0]
        if need_weight and gg_input is not None:
            # d/dw <go, conv(gg_in, w)> = the weight gradient of a conv with input gg_in.
            d_weight = _ConvBackward.apply(grad_output, gg_input, weight, None, params, (False, True, False))[1]
        return d_go, d_input, d_weight, None, None, None


def _sum_terms(terms):
    """Sum of a list of same-shape tensors; None for an empty list (= zero gradient)."""
    if not terms:
        return None
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total
