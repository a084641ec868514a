
import pytest
import torch

# Small tensors: one intra-op thread is faster and immune to other processes on the cores.
torch.set_num_threads(1)


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(0)
