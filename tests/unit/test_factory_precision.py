"""build_precision: TrainingArguments' precision flags -> Precision objects, and the combinations it refuses."""

from __future__ import annotations

import pytest
import torch

from trainkit import TrainingArguments
from trainkit.factory import build_components, build_precision
from trainkit.precision import PRECISIONS, HalfPrecision, MixedPrecision, Precision
from trainkit.utils.imports import package_available

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)


def make(**kw) -> TrainingArguments:
    kw.setdefault("output_dir", "out")
    return TrainingArguments(**kw)


def with_fields(args: TrainingArguments, **fields) -> TrainingArguments:
    """Set fields after validation: the factory must refuse what TrainingArguments' own checks would."""
    for name, value in fields.items():
        setattr(args, name, value)
    return args


def full_eval(args: TrainingArguments, mode: str) -> TrainingArguments:
    # fp16_full_eval / bf16_full_eval are refused by TrainingArguments until the evaluation loop
    # (issue 6) exists; the factory's mapping is tested on its own here
    return with_fields(args, **{f"{mode}_full_eval": True})


@pytest.fixture
def fake_cuda(monkeypatch):
    """A CUDA device of a given compute capability and bf16 support, without touching a GPU."""

    def install(capability: tuple[int, int] = (8, 0), bf16: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake V100")

    return install


# -------------------------------------------------------------------------- mapping
def test_defaults_give_plain_fp32():
    precision = build_precision(make(), CPU)
    assert type(precision) is Precision
    assert (precision.tf32, precision.eval_precision) == (None, None)


@pytest.mark.parametrize(
    ("flags", "name"),
    [
        ({"fp16": True}, "fp16-mixed"),
        ({"bf16": True}, "bf16-mixed"),
        ({"bf16": True, "half_precision_backend": "cpu_amp"}, "bf16-mixed"),
        ({"fp16": True, "half_precision_backend": "cpu_amp"}, "fp16-mixed"),
        ({"fp16": True, "use_cpu": True}, "fp16-mixed"),
        ({"tf32": False}, "fp32"),
    ],
)
def test_flags_map_to_registered_precisions_on_cpu(flags, name):
    precision = build_precision(make(**flags), CPU)
    assert precision.name == name
    assert precision.tf32 == flags.get("tf32")


def test_cuda_amp_and_tf32_on_an_ampere_device(fake_cuda):
    fake_cuda((8, 0))
    precision = build_precision(make(bf16=True, half_precision_backend="cuda_amp", tf32=True), CUDA)
    assert isinstance(precision, MixedPrecision)
    assert (precision.name, precision.tf32) == ("bf16-mixed", True)


@pytest.mark.parametrize("training", [{}, {"bf16": True}, {"fp16": True}])
@pytest.mark.parametrize(("mode", "dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_full_eval_becomes_the_eval_precision_of_any_training_precision(training, mode, dtype):
    precision = build_precision(full_eval(make(**training), mode), CPU)
    assert isinstance(precision.eval_precision, HalfPrecision)
    assert precision.eval_precision.dtype == dtype
    assert precision.name == {"bf16": "bf16-mixed", "fp16": "fp16-mixed"}.get(next(iter(training), ""), "fp32")


@pytest.mark.skipif(package_available("apex"), reason="apex is installed")
def test_apex_on_cuda_without_apex_says_how_to_install(fake_cuda):
    fake_cuda()
    with pytest.raises(ImportError, match=r"precision 'apex' needs apex.*github\.com/NVIDIA/apex"):
        build_precision(make(fp16=True, half_precision_backend="apex", fp16_opt_level="O2"), CUDA)


def test_a_user_registered_precision_is_what_the_factory_builds():
    class MyBF16(MixedPrecision):
        pass

    original = PRECISIONS.entry("bf16-mixed")
    PRECISIONS.register("bf16-mixed", MyBF16, override=True, precision="bf16")
    try:
        assert type(build_precision(make(bf16=True), CPU)) is MyBF16
    finally:
        PRECISIONS.register("bf16-mixed", original.factory, override=True, **original.defaults)


def test_build_components_gives_the_strategy_its_precision_and_objects_win():
    components = build_components(make(bf16=True, use_cpu=True))
    assert components.strategy.root_device == CPU
    assert components.strategy.precision is components.precision
    assert components.precision.name == "bf16-mixed"
    mine = HalfPrecision("bf16")
    assert build_components(make(fp16=True, use_cpu=True), precision=mine).strategy.precision is mine


# -------------------------------------------------------------------------- refused
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (with_fields(make(fp16=True), bf16=True), "fp16=True and bf16=True are exclusive"),
        (
            with_fields(make(), fp16_full_eval=True, bf16_full_eval=True),
            "fp16_full_eval=True and bf16_full_eval=True are exclusive",
        ),
        (with_fields(make(bf16=True), half_precision_backend="apex"), "'apex' does not support bf16=True"),
        (make(half_precision_backend="cpu_amp"), "half_precision_backend='cpu_amp' has no effect without fp16"),
        (make(fp16_opt_level="O2"), "fp16_opt_level='O2' is an apex setting"),
        (make(fp16=True, half_precision_backend="cuda_amp"), "fp16=True with .*'cuda_amp' needs a CUDA device.* cpu"),
        (make(bf16=True, half_precision_backend="cuda_amp"), "bf16=True with .*'cuda_amp' needs a CUDA device.* cpu"),
        (make(fp16=True, half_precision_backend="apex"), "fp16=True with .*'apex' needs a CUDA device.* cpu"),
        (make(tf32=True), "tf32=True needs a CUDA device of the Ampere generation or newer, got cpu"),
    ],
)
def test_contradictions_and_modes_the_cpu_cannot_run_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        build_precision(args, CPU)


def test_cpu_amp_on_a_cuda_device_is_refused(fake_cuda):
    fake_cuda()
    with pytest.raises(ValueError, match=r"'cpu_amp' needs a CPU device, but the device is cuda:0"):
        build_precision(make(bf16=True, half_precision_backend="cpu_amp"), CUDA)


@pytest.mark.parametrize("flag", ["bf16", "bf16_full_eval"])
def test_bf16_on_a_cuda_device_without_bf16_names_device_and_mode(fake_cuda, flag):
    fake_cuda((7, 0), bf16=False)
    args = with_fields(make(), **{flag: True})
    with pytest.raises(ValueError, match=rf"{flag}=True needs a device with bfloat16 support; cuda:0 \(Fake V100\)"):
        build_precision(args, CUDA)


def test_tf32_on_a_pre_ampere_cuda_device_is_refused(fake_cuda):
    fake_cuda((7, 0))
    with pytest.raises(ValueError, match="tf32=True needs a CUDA device of the Ampere generation or newer, got cuda:0"):
        build_precision(make(tf32=True), CUDA)
