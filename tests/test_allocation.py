"""kernels/allocation.Empty gives what torch.empty gives, for a fraction of its host time."""

import pytest
import torch

from triton_nsr.kernels.allocation import Empty

CPU = torch.device("cpu")


@pytest.mark.parametrize("shape,memory_format", [
    ((2, 3), torch.contiguous_format),
    ((2, 8, 5, 3), torch.contiguous_format),
    ((2, 8, 5, 3), torch.channels_last),
    ((2, 1, 1, 3), torch.channels_last),
    ((0, 4, 3), torch.contiguous_format),
])
def test_a_new_tensor_has_torch_empty_s_shape_strides_dtype_and_device(shape, memory_format):
    new = Empty(shape, memory_format)
    for dtype in (torch.float32, torch.bfloat16, torch.float32):  # a dtype change and back
        tensor = new(CPU, dtype)
        like = torch.empty(shape, dtype=dtype, device=CPU, memory_format=memory_format)
        assert (tensor.shape, tensor.stride(), tensor.dtype, tensor.device) == \
            (like.shape, like.stride(), like.dtype, like.device)
        assert not tensor.requires_grad and tensor.storage_offset() == 0


def test_every_call_gets_its_own_memory():
    new = Empty((4, 5))
    first, second = new(CPU, torch.float32), new(CPU, torch.float32)
    assert first.untyped_storage().data_ptr() != second.untyped_storage().data_ptr()
    assert first.untyped_storage().nbytes() == 4 * 5 * 4


def test_padding_channels_are_zeroed_and_the_others_left():
    # Pre-fill what the allocator hands back next with NaN: the padding must be written.
    new = Empty((3, 2, 7), zero_from=5)
    for _ in range(3):
        tensor = new(CPU, torch.float32)
        assert torch.equal(tensor[..., 5:], torch.zeros(3, 2, 2))
        tensor.fill_(float("nan"))
    assert Empty((3, 2, 5), zero_from=5).zero_from is None  # no padding: no fill


def test_a_stand_in_made_in_inference_mode_serves_autograd_later():
    new = Empty((2, 3))
    with torch.inference_mode():
        assert new(CPU, torch.float32).is_inference()
    tensor = new(CPU, torch.float32)
    assert not tensor.is_inference()
    x = torch.randn(2, 3, requires_grad=True)
    (x * tensor.normal_()).sum().backward()
    assert torch.equal(x.grad, tensor)
