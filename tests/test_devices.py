"""``resolve_device``: what ``ihas subnet/pim --device`` accept, and the errors for a device that is not there."""

from __future__ import annotations

import pytest
import torch

from ihas_lightning.devices import resolve_device


@pytest.mark.parametrize("name", ["cpu", " CPU ", "cpu:0", torch.device("cpu")])
def test_the_cpu_in_any_spelling(name) -> None:
    assert resolve_device(name) == torch.device("cpu")


def test_auto_is_the_gpu_only_where_cuda_is_available(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_gpu_is_cuda_and_an_index_past_the_last_device_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("gpu") == torch.device("cuda")
    assert resolve_device("gpu:1") == torch.device("cuda", 1)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"'cuda:2': this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:2")


def test_cuda_without_cuda_says_so_and_what_to_use(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device 'cuda': CUDA is not available here .*use cpu"):
        resolve_device("cuda")


@pytest.mark.parametrize("name, message", [("tpu", "device must be cpu, cuda"), ("meta", "CPU or a CUDA GPU only"),
                                           ("cuda:x", "device must be cpu, cuda")])
def test_unknown_devices_are_refused_by_name(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        resolve_device(name)
    assert f"'{name}'" in str(error.value)


def test_a_device_of_another_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="device must be a str or torch.device, got int"):
        resolve_device(0)
