"""DistributedDataParallel: two gloo processes on CPU give the gradients of one big batch."""

import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from tests.utils import assert_close
from triton_nsr.models import WDSRNSR

WORLD_SIZE = 2
RANK_TIMEOUT_S = 120


def tiny(backend="torch"):
    return WDSRNSR(scale=2, num_blocks=2, num_residual_units=4, width_multiplier=2,
                   num_sparsity_groups=2, num_sparsity_cardinals=2, backend=backend,
                   dtype=torch.float64)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_step_on_rank(rank, port, state, inputs, targets, result_path, backend):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        model = tiny(backend)
        model.load_state_dict(state)
        ddp = DistributedDataParallel(model)
        F.l1_loss(ddp(inputs[rank]), targets[rank]).backward()
        grads = {name: p.grad for name, p in model.named_parameters()}
        torch.save(grads, f"{result_path}.{rank}")
        # DDP's reducer goes before its process group: destroyed after it, when this frame
        # unwinds, it sometimes hung the rank in gloo's teardown.
        del ddp
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_two_processes_match_one_process_on_the_whole_batch(tmp_path, backend):
    """Each rank runs ``backend`` (triton: the kernels in the interpreter, inherited from the
    test environment); the single process runs the torch backend on the whole batch."""
    if backend == "triton":
        pytest.importorskip("triton_nsr.ops")
    model = tiny()
    inputs = torch.rand(WORLD_SIZE, 2, 3, 8, 8, dtype=torch.float64)
    targets = torch.rand(WORLD_SIZE, 2, 3, 16, 16, dtype=torch.float64)
    result_path = str(tmp_path / "grads")
    ranks = mp.spawn(train_step_on_rank, nprocs=WORLD_SIZE, join=False,
                     args=(free_port(), model.state_dict(), inputs, targets, result_path,
                           backend))
    # A rank stuck in the process group's teardown must fail this test, not hang the suite.
    deadline = time.monotonic() + RANK_TIMEOUT_S
    while not ranks.join(timeout=1):
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail(f"the {WORLD_SIZE} ranks did not finish within {RANK_TIMEOUT_S} s")

    F.l1_loss(model(inputs.flatten(0, 1)), targets.flatten(0, 1)).backward()
    for rank in range(WORLD_SIZE):
        grads = torch.load(f"{result_path}.{rank}")
        assert set(grads) == {name for name, _ in model.named_parameters()}
        for name, p in model.named_parameters():
            assert_close(grads[name], p.grad, f"rank {rank} grad of {name}")
