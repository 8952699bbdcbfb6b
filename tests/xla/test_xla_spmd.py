"""XLASPMDStrategy on two virtual CPU devices gives the one-device results (data parallel and fully sharded).

SPMD mode is process-wide, so each SPMD run happens in a fresh process (tests/xla/spmd_run.py);
the one-device reference runs here, in the test process (not in SPMD mode).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch_xla = pytest.importorskip("torch_xla")

import torch  # noqa: E402

from tests.helpers import TokenModel  # noqa: E402
from tests.xla.helpers import (  # noqa: E402
    FP32_TOLERANCE,
    RunResult,
    assert_runs_agree,
    cpu_devices_env,
    train_evaluate_predict,
)
from tests.xla.spmd_run import ODD_BATCH  # noqa: E402
from trainkit.strategies.xla import XLAStrategy  # noqa: E402
from trainkit.strategies.xla_spmd import XLASPMDStrategy, partition_spec  # noqa: E402

pytestmark = pytest.mark.xla

SCRIPT = Path(__file__).with_name("spmd_run.py")


@pytest.fixture(scope="module")
def one_device(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    return train_evaluate_predict(XLAStrategy(), str(tmp_path_factory.mktemp("one")))


@pytest.fixture(scope="module")
def one_device_odd_batch(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    return train_evaluate_predict(XLAStrategy(), str(tmp_path_factory.mktemp("one_odd")), **ODD_BATCH)


def _spmd_run(mode: str, tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / f"{mode}.pt"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), mode, str(out)],
        env=cpu_devices_env(2),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = torch.load(out, weights_only=False)
    return result


def _as_run(result: dict[str, Any]) -> RunResult:
    fields = ("losses", "grad_norms", "eval_loss", "predictions", "label_ids", "weights")
    return RunResult(**{k: result[k] for k in fields}, trainer=None)


@pytest.mark.parametrize("mode", ["data_parallel", "fully_sharded", "fully_sharded_checkpointed"])
def test_spmd_on_two_devices_equals_one_device(mode: str, one_device: RunResult, tmp_path: Path):
    result = _spmd_run(mode, tmp_path)
    assert result["devices"] == 2
    assert result["world_size"] == 1
    assert_runs_agree(one_device, _as_run(result), FP32_TOLERANCE)
    sharded = {k: spec for k, spec in result["param_sharding"].items() if "devices=[2" in spec}
    if mode == "data_parallel":
        assert sharded == {}
        assert set(result["param_sharding"].values()) <= {"", "{replicated}"}
    else:
        assert set(sharded) == set(result["param_sharding"])  # every parameter split over the two devices
    # the batch is split on its first dimension (3 rows too: the last shard is padded); a scalar is replicated
    assert result["input_sharding"]["input_ids"].startswith("{devices=[2,1]")
    assert result["input_sharding"]["odd"].startswith("{devices=[2,1]")
    assert result["input_sharding"]["labels"].startswith("{devices=[2]")
    assert result["input_sharding"]["odd_labels"].startswith("{devices=[2]")
    assert "devices=" not in result["input_sharding"]["scalar"]
    assert result["state_dict_devices"] == ["cpu"]
    assert result["checkpointed"] == (["head", "norm"] if mode == "fully_sharded_checkpointed" else [])


def test_partition_spec_splits_the_largest_dimension():
    assert partition_spec((8, 32)) == (None, "fsdp")
    assert partition_spec((32, 8)) == ("fsdp", None)
    assert partition_spec((16, 16)) == ("fsdp", None)
    assert partition_spec((5,)) == ("fsdp",)
    assert partition_spec(()) == ()


def test_checkpointing_names_the_missing_layer_classes():
    strategy = XLASPMDStrategy(activation_checkpointing=True)
    with pytest.raises(ValueError, match=r"TokenModel has no _no_split_modules, so set layer_classes"):
        strategy._named_layers(TokenModel())
    strategy = XLASPMDStrategy(activation_checkpointing=True, layer_classes=["DecoderLayer", "Linear"])
    with pytest.raises(ValueError, match=r"layer classes \['DecoderLayer'\] .* are not in TokenModel"):
        strategy._named_layers(TokenModel())


def test_named_layers_default_to_the_models_no_split_modules():
    model = TokenModel()
    model._no_split_modules = ["LayerNorm"]  # type: ignore[assignment]
    assert XLASPMDStrategy()._named_layers(model) == [model.norm]
    assert XLASPMDStrategy()._named_layers(TokenModel()) == []


def test_spmd_with_batches_the_devices_do_not_divide_equals_one_device(one_device_odd_batch: RunResult, tmp_path: Path):
    result = _spmd_run("fully_sharded_odd_batch", tmp_path)
    assert_runs_agree(one_device_odd_batch, _as_run(result), FP32_TOLERANCE)


def test_spmd_resume_keeps_the_sharding_and_equals_one_device(one_device: RunResult, tmp_path: Path):
    """Fully sharded, resumed from step 3: parameters and optimizer state are loaded split over the devices,
    the run equals one device's uninterrupted one, and with dropout the SPMD uninterrupted one bit for bit."""
    result = _spmd_run("fully_sharded_resumed", tmp_path)
    assert_runs_agree(one_device, _as_run(result), FP32_TOLERANCE)
    at_resume = result["sharding_at_resume"]
    assert set(at_resume["parameters"]) == set(one_device.weights)
    for name, spec in at_resume["parameters"].items():
        assert spec.startswith("{devices=[2"), name
        assert at_resume["optimizer_state"][name] == {"exp_avg": spec, "exp_avg_sq": spec}
    assert_runs_agree(_as_run(result["dropout_full"]), _as_run(result["dropout_resumed"]), 0.0)
