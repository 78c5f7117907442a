"""Noise generators across devices: a state restores on its own device type and is ignored on another."""

import torch

from ihas_lightning.noise import generator_on, state_device


def test_a_state_restores_on_its_own_device_type_and_seeds_afresh_on_another() -> None:
    drawn = generator_on(torch.device("cpu"), seed=7)
    torch.rand(5, generator=drawn)
    state = drawn.get_state()
    expected = torch.rand(3, generator=drawn)
    resumed = generator_on(torch.device("cpu"), seed=7, state=state)
    assert torch.equal(torch.rand(3, generator=resumed), expected)
    fresh = torch.rand(3, generator=generator_on(torch.device("cpu"), seed=7))
    # a CUDA generator's state (16 bytes; a search trained on a GPU, evaluated on the CPU) is not set on the CPU
    cuda_state = torch.zeros(16, dtype=torch.uint8)
    assert state_device(cuda_state) == "cuda" and state_device(state) == "cpu" and state_device(None) is None
    assert torch.equal(torch.rand(3, generator=generator_on(torch.device("cpu"), 7, cuda_state)), fresh)
    # the device type recorded with the state wins over its size
    assert torch.equal(torch.rand(3, generator=generator_on(torch.device("cpu"), 7, state, "cuda")), fresh)
