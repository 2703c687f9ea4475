"""The torch path (backend='torch' and the reference) against the independent per-sample loop."""

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.utils import assert_close, assert_same_outputs_and_grads, make_params, per_sample_loop
from triton_nsr import nsr_conv2d, reference

NAMES = ["input", "weight", "bias", "mlp_weight", "mlp_bias"]

# (in, out, kernel, k, d, stride, padding, dilation, groups, bias, padding_mode, size)
CONFIGS = [
    (4, 8, 3, 4, 2, 1, 1, 1, 1, True, "zeros", (9, 9)),
    (3, 6, 3, 2, 3, 2, 0, 1, 1, False, "zeros", (11, 7)),
    (4, 4, (3, 1), 2, 2, (2, 1), (1, 0), (1, 2), 2, True, "zeros", (13, 10)),
    (6, 6, 3, 3, 1, 1, "same", 2, 3, True, "zeros", (7, 8)),
    (4, 8, 4, 2, 4, 1, "same", 1, 1, True, "zeros", (7, 6)),
    (5, 10, 3, 2, 5, 1, "valid", 1, 5, False, "zeros", (8, 8)),
    (4, 4, 3, 4, 4, 1, 1, 1, 4, True, "zeros", (7, 9)),  # depthwise
    (3, 4, 3, 2, 2, 1, 1, 1, 1, True, "reflect", (7, 7)),
    (3, 4, 3, 2, 2, 2, 2, 1, 1, True, "replicate", (9, 8)),
    (3, 4, 3, 2, 2, 1, (1, 2), 1, 1, False, "circular", (6, 7)),
    (2, 4, 2, 1, 1, 1, "same", 3, 1, True, "reflect", (9, 9)),
]


IMPLEMENTATIONS = {
    "torch_backend": functools.partial(nsr_conv2d, backend="torch"),
    "paper_reference": reference.nsr_conv2d,
}


@pytest.mark.parametrize("config", CONFIGS, ids=[str(i) for i in range(len(CONFIGS))])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
def test_torch_paths_match_per_sample_loop(config, batch, implementation):
    cin, cout, ks, k, d, stride, padding, dilation, groups, bias, mode, size = config
    x = torch.randn(batch, cin, *size, dtype=torch.float64)
    params = make_params(cin, cout, ks, k, d, groups, bias)
    temperature = 0.7
    function = IMPLEMENTATIONS[implementation]

    def run(x, w, b, mw, mb):
        return function(x, w, b, mw, mb, k, d, stride, padding, dilation, groups,
                        temperature=temperature, padding_mode=mode)

    def oracle(x, w, b, mw, mb):
        return per_sample_loop(x, w, b, mw, mb, k, d, stride, padding, dilation, groups,
                               temperature, mode)

    assert_same_outputs_and_grads(run, oracle, [x, *params], NAMES)


def test_reference_function_equals_functional_torch_backend():
    x = torch.randn(2, 4, 8, 8)
    params = make_params(4, 8, 3, 2, 4, dtype=torch.float32)
    a = reference.nsr_conv2d(x, *params, 2, 4, padding=1)
    b = nsr_conv2d(x, *params, 2, 4, padding=1, backend="torch")
    assert_close(b, a)


def test_torch_backend_compiles_once_for_many_batch_sizes():
    """The torch backend keeps the batch symbolic: new batch sizes do not recompile."""
    torch._dynamo.reset()
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    params = [p.detach() for p in make_params(4, 8, 3, 2, 2, dtype=torch.float32)]
    compiled = torch.compile(
        functools.partial(nsr_conv2d, backend="torch", padding=1), backend=counting_backend,
        fullgraph=True,
    )
    for batch in (2, 3, 5, 7, 11):
        x = torch.randn(batch, 4, 6, 6)
        assert_close(compiled(x, *params, 2, 2), reference.nsr_conv2d(x, *params, 2, 2, padding=1))
    assert len(graphs) <= 2


def test_unbatched_input_gives_unbatched_output():
    x = torch.randn(4, 9, 9, dtype=torch.float64)
    params = make_params(4, 6, 3, 2, 3)
    out = nsr_conv2d(x, *params, 2, 3, padding=1, backend="torch")
    assert out.shape == (6, 9, 9)
    assert_close(out, per_sample_loop(x[None], *params, 2, 3, padding=1)[0])


def test_batch_zero_gives_empty_output():
    x = torch.randn(0, 4, 9, 7)
    params = make_params(4, 6, 3, 2, 3, dtype=torch.float32)
    out = nsr_conv2d(x, *params, 2, 3, stride=2, padding=1, backend="torch")
    assert out.shape == (0, 6, 5, 4)


def test_temperature_changes_the_routing():
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    params = make_params(4, 8, 3, 4, 2)
    sharp = nsr_conv2d(x, *params, 4, 2, padding=1, temperature=0.05, backend="torch")
    soft = nsr_conv2d(x, *params, 4, 2, padding=1, temperature=20.0, backend="torch")
    assert not torch.allclose(sharp, soft)
    assert_close(sharp, per_sample_loop(x, *params, 4, 2, padding=1, temperature=0.05))


def test_layouts_give_the_same_result():
    x = torch.randn(3, 6, 10, 12, dtype=torch.float64)
    params = make_params(6, 4, 3, 2, 2)
    expected = nsr_conv2d(x, *params, 2, 2, padding=1, backend="torch")
    channels_last = x.to(memory_format=torch.channels_last)
    sliced = torch.randn(3, 12, 10, 24, dtype=torch.float64)[:, ::2, :, ::2]
    sliced.copy_(x)
    for variant in (channels_last, sliced, x.transpose(2, 3).contiguous().transpose(2, 3)):
        assert_close(nsr_conv2d(variant, *params, 2, 2, padding=1, backend="torch"), expected)


@st.composite
def conv_configs(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    cin = groups * draw(st.integers(1, 3))
    k = draw(st.integers(1, 4))
    d = draw(st.integers(1, 3))
    cout = groups * d * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    if stride == (1, 1) and draw(st.booleans()):
        padding = draw(st.sampled_from(["same", "valid"]))
    else:
        padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    span = ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
    # Reflect padding needs padding < size; keep every mode valid with size > span + 2.
    height = draw(st.integers(span[0] + 2, span[0] + 8))
    width = draw(st.integers(span[1] + 2, span[1] + 8))
    batch = draw(st.integers(1, 3))
    bias = draw(st.booleans())
    return dict(cin=cin, cout=cout, ks=(kh, kw), k=k, d=d, stride=stride, padding=padding,
                dilation=dilation, groups=groups, mode=mode, size=(height, width), batch=batch,
                bias=bias)


@settings(max_examples=30, deadline=None)
@given(conv_configs())
def test_random_configurations_match_per_sample_loop(c):
    x = torch.randn(c["batch"], c["cin"], *c["size"], dtype=torch.float64)
    params = make_params(c["cin"], c["cout"], c["ks"], c["k"], c["d"], c["groups"], c["bias"])
    geometry = (c["k"], c["d"], c["stride"], c["padding"], c["dilation"], c["groups"])

    def run(*inputs):
        return nsr_conv2d(*inputs, *geometry, padding_mode=c["mode"], backend="torch")

    def oracle(*inputs):
        return per_sample_loop(*inputs, *geometry, padding_mode=c["mode"])

    assert_same_outputs_and_grads(run, oracle, [x, *params], NAMES)
