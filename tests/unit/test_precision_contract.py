"""The contract every registered precision keeps: global state restored by teardown, state_dict round-trips."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from tests.precision_helpers import make_batches, make_model, numeric_state
from trainkit.precision import PRECISIONS, ApexPrecision, Precision
from trainkit.utils.imports import package_available

pytestmark = pytest.mark.usefixtures("restore_numeric_flags")

APEX_MISSING = not package_available("apex")
RUNNABLE = [name for name in PRECISIONS.available() if name != "apex"]


def _one_training_step(precision: Precision, model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    x, y = precision.convert_input(make_batches(1)[0])
    with precision.forward_context():
        loss = nn.functional.mse_loss(model(x).float(), y.float())
    scaled = precision.pre_backward(loss, model)
    precision.backward(scaled, model)
    precision.post_backward(scaled, model)
    precision.unscale_gradients(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    stepped = precision.optimizer_step(optimizer)
    optimizer.zero_grad(set_to_none=True)
    return stepped


def _exercise(precision: Precision) -> None:
    """Every hook once: setup, a training step, an evaluation forward, teardown."""
    precision.setup("cpu")
    model = precision.convert_module(make_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model, connected = precision.connect(model, optimizer)
    assert connected is optimizer
    assert _one_training_step(precision, model, optimizer) in (True, False)
    model.eval()
    with torch.no_grad(), precision.eval_context(model):
        assert torch.isfinite(model(make_batches(1)[0][0]).float()).all()
    precision.teardown()


@pytest.mark.skipif(not APEX_MISSING, reason="apex is installed")
def test_apex_is_registered_and_says_how_to_install_it():
    assert "apex" in PRECISIONS
    with pytest.raises(ImportError, match=r"github\.com/NVIDIA/apex"):
        PRECISIONS.get("apex")
    with pytest.raises(ImportError, match=r"ApexPrecision needs NVIDIA apex.*github\.com/NVIDIA/apex"):
        ApexPrecision("O2")


def test_registry_holds_every_mode():
    assert PRECISIONS.available() == ["apex", "bf16-mixed", "bf16-true", "fp16-mixed", "fp16-true", "fp32"]
    for name in RUNNABLE:
        assert PRECISIONS.get(name).name == name


@pytest.mark.parametrize("tf32", [None, True, False])
@pytest.mark.parametrize("name", RUNNABLE)
def test_teardown_restores_global_state(name, tf32):
    before = numeric_state()
    _exercise(PRECISIONS.get(name, tf32=tf32))
    assert numeric_state() == before


@pytest.mark.parametrize("name", RUNNABLE)
def test_teardown_restores_a_non_default_global_state(name):
    torch.set_default_dtype(torch.float64)
    torch.set_float32_matmul_precision("medium")
    torch.backends.cudnn.allow_tf32 = False
    before = numeric_state()
    _exercise(PRECISIONS.get(name, tf32=True))
    assert numeric_state() == before
    assert torch.get_default_dtype() == torch.float64
    assert torch.get_float32_matmul_precision() == "medium"


@pytest.mark.parametrize("name", RUNNABLE)
def test_full_eval_precision_is_torn_down_with_the_training_one(name):
    before = numeric_state()
    _exercise(PRECISIONS.get(name, tf32=False, eval_precision=PRECISIONS.get("bf16-true", tf32=True)))
    assert numeric_state() == before


@pytest.mark.parametrize("name", RUNNABLE)
def test_state_dict_round_trips(name):
    precision = PRECISIONS.get(name)
    precision.setup("cpu")
    model = precision.convert_module(make_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(3):
        _one_training_step(precision, model, optimizer)
    state = precision.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)  # travels in a checkpoint and loads without unpickling arbitrary objects
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    fresh = PRECISIONS.get(name)
    fresh.setup("cpu")
    fresh.load_state_dict(loaded)
    assert fresh.state_dict() == state
    fresh.teardown()
    precision.teardown()


def test_fp16_mixed_state_is_the_grad_scaler_state():
    precision = PRECISIONS.get("fp16-mixed")
    precision.setup("cpu")
    state = precision.state_dict()
    assert set(state) == {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}
    precision.teardown()


def test_fp32_is_a_null_object():
    precision = Precision()
    precision.setup("cpu")
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = make_batches(1)[0]
    loss = torch.tensor(1.5, requires_grad=True)
    assert precision.convert_module(model) is model
    assert precision.connect(model, optimizer) == (model, optimizer)
    assert precision.convert_input(batch) is batch
    assert precision.pre_backward(loss) is loss
    with precision.forward_context():
        assert not torch.is_autocast_enabled("cpu")
        assert model(batch[0]).dtype == torch.float32
    assert precision.state_dict() == {}
    precision.teardown()


def test_a_mode_without_state_refuses_state():
    with pytest.raises(ValueError, match=r"Precision has no state to load, got keys \['scale'\]"):
        Precision().load_state_dict({"scale": 2.0})


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("fp32", torch.float32), ("bf16-mixed", torch.bfloat16), ("fp16-mixed", torch.float16)],
)
def test_forward_context_computes_linear_layers_in_the_mode_dtype(name, dtype):
    precision = PRECISIONS.get(name)
    precision.setup("cpu")
    layer = nn.Linear(4, 2)
    with precision.forward_context():
        assert layer(torch.randn(3, 4)).dtype == dtype
    assert layer.weight.dtype == torch.float32
    precision.teardown()


@pytest.mark.parametrize(("name", "dtype"), [("bf16-true", torch.bfloat16), ("fp16-true", torch.float16)])
def test_true_half_converts_module_inputs_and_new_tensors(name, dtype):
    precision = PRECISIONS.get(name)
    precision.setup("cpu")
    model = precision.convert_module(make_model())
    assert {p.dtype for p in model.parameters()} == {dtype}
    x, labels = precision.convert_input((torch.randn(2, 8), torch.tensor([1, 2])))
    assert x.dtype == dtype
    assert labels.dtype == torch.int64
    with precision.forward_context():
        assert torch.zeros(1).dtype == dtype
        assert model(x).dtype == dtype
    assert torch.zeros(1).dtype == torch.float32
    precision.teardown()


def test_precision_objects_deep_copy_before_setup():
    precision = PRECISIONS.get("fp16-mixed", tf32=False)
    clone = copy.deepcopy(precision)
    assert repr(clone) == repr(precision) == "MixedPrecision('fp16', tf32=False)"
