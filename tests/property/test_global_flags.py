"""GlobalFlags restores torch's numeric flags from any starting state user code can reach."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.precision_helpers import numeric_state
from trainkit.precision.flags import GlobalFlags, set_tf32

pytestmark = [
    pytest.mark.usefixtures("restore_numeric_flags"),
    pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"), reason="torch < 2.9"),
]

PRECISIONS = ["none", "ieee", "tf32"]


def _set(path: str, value: str) -> None:
    node = torch.backends
    for part in filter(None, path.split(".")):
        node = getattr(node, part)
    node.fp32_precision = value


# what user code may have done before trainkit's setup(): legacy and new API calls, mixed
USER_CALLS = st.one_of(
    st.tuples(st.just("matmul.allow_tf32"), st.booleans()),
    st.tuples(st.just("cudnn.allow_tf32"), st.booleans()),
    st.tuples(st.just("matmul_precision"), st.sampled_from(["highest", "high", "medium"])),
    st.tuples(st.just(""), st.sampled_from(PRECISIONS)),
    st.tuples(st.just("cudnn"), st.sampled_from(PRECISIONS)),
    st.tuples(st.just("cuda.matmul"), st.sampled_from(PRECISIONS)),
    st.tuples(st.just("cudnn.conv"), st.sampled_from(PRECISIONS)),
    st.tuples(st.just("cudnn.rnn"), st.sampled_from(PRECISIONS)),
    st.tuples(st.just("mkldnn.matmul"), st.sampled_from([*PRECISIONS, "bf16"])),
    st.tuples(st.just("default_dtype"), st.sampled_from([torch.float32, torch.float64])),
)


def _apply(call: tuple[str, object]) -> None:
    name, value = call
    if name == "matmul.allow_tf32":
        torch.backends.cuda.matmul.allow_tf32 = value
    elif name == "cudnn.allow_tf32":
        torch.backends.cudnn.allow_tf32 = value
    elif name == "matmul_precision":
        torch.set_float32_matmul_precision(value)
    elif name == "default_dtype":
        torch.set_default_dtype(value)
    else:
        _set(name, value)


@settings(max_examples=300, deadline=None)
@given(
    history=st.lists(USER_CALLS, max_size=5),
    tf32=st.booleans(),
    matmul_precision=st.none() | st.sampled_from(["highest", "high"]),
    half_default=st.booleans(),
)
def test_restore_returns_every_readable_flag(history, tf32, matmul_precision, half_default):
    for call in history:
        _apply(call)
    before = numeric_state()
    flags = GlobalFlags()
    set_tf32(tf32)
    if matmul_precision:
        torch.set_float32_matmul_precision(matmul_precision)
    if half_default:
        torch.set_default_dtype(torch.float16)
    flags.restore()
    after = numeric_state()
    # a legacy flag torch refused to read before (mixed API state) may read consistently after
    readable = {k: v for k, v in before.items() if not str(v).startswith("unreadable")}
    assert {k: after[k] for k in readable} == readable
