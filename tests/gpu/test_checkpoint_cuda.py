"""CUDA RNG states and CUDA tensors through a checkpoint (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from trainkit.checkpoint import SafetensorsCheckpointIO, capture_rng_state, restore_rng_state

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_rng_states_of_every_device_round_trip(tmp_path):
    torch.cuda.manual_seed_all(5)
    SafetensorsCheckpointIO().save({"rng": capture_rng_state()}, tmp_path / "c")
    expected = [torch.rand(3, device=f"cuda:{i}").tolist() for i in range(torch.cuda.device_count())]
    torch.cuda.manual_seed_all(6)
    state = SafetensorsCheckpointIO().load(tmp_path / "c")["rng"]
    assert len(state["cuda"]) == torch.cuda.device_count()
    restore_rng_state(state)
    assert [torch.rand(3, device=f"cuda:{i}").tolist() for i in range(torch.cuda.device_count())] == expected


def test_cuda_tensors_save_and_load_to_a_chosen_device(tmp_path):
    model = torch.nn.Linear(4, 4).cuda()
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4, device="cuda")).sum().backward()
    optimizer.step()
    io = SafetensorsCheckpointIO()
    io.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "c")
    on_cpu = io.load(tmp_path / "c", map_location="cpu")
    on_gpu = io.load(tmp_path / "c", map_location="cuda")
    assert on_cpu["model"]["weight"].device.type == "cpu"
    assert on_gpu["optimizer"]["state"][0]["exp_avg"].device.type == "cuda"
    assert torch.equal(on_gpu["model"]["weight"], model.weight.detach())
