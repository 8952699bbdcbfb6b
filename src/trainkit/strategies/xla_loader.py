"""The XLA device loader: batches are sent to the device ahead of use, and a step is marked between them.

torch_xla's ``MpDeviceLoader`` yields device batches. trainkit's loops count label tokens and
examples on each batch before the forward pass (the exact loss normalisation of a window); on a
device batch every count would be a device round trip. ``XLADeviceLoader`` therefore yields the
host batch, after sending it to the device, and keeps the device copy in ``DeviceCopies``, where
``XLAStrategy.batch_to_device`` takes it: the counts stay on the host and the transfer is already
under way when the step needs the batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection

__all__ = ["DeviceCopies", "XLADeviceLoader", "send_to_xla"]

_END = object()


class DeviceCopies:
    """Device copies of host batches, keyed by the host batch's identity until they are taken."""

    def __init__(self) -> None:
        self._copies: dict[int, tuple[Any, Any]] = {}  # the host batch is held so its id stays unique
        self._handed_out: set[int] = set()

    def put(self, host: Any, device_copy: Any) -> None:
        self._copies[id(host)] = (host, device_copy)

    def hand_out(self, host: Any) -> None:
        """``host`` goes to the loop: its copy is taken now or never (a batch skipped on resume)."""
        self._handed_out.add(id(host))

    def take(self, host: Any) -> Any:
        """The device copy of ``host`` (removed from here), or None when none was sent."""
        self._handed_out.discard(id(host))
        entry = self._copies.pop(id(host), None)
        return entry[1] if entry is not None else None

    def discard(self, host: Any) -> None:
        self._handed_out.discard(id(host))
        self._copies.pop(id(host), None)

    def discard_handed_out(self) -> None:
        """Drop the copies of batches the loop received but never moved (their device memory), keeping those
        sent ahead; called after each optimizer step, when every batch of the window has been moved."""
        for key in self._handed_out:
            self._copies.pop(key, None)
        self._handed_out.clear()

    def __len__(self) -> int:
        return len(self._copies)


def send_to_xla(batch: Any, device: torch.device, sharding_for: Callable[[torch.Tensor], Any] | None = None) -> Any:
    """``batch`` with its CPU tensors sent to ``device``, one transfer per sharding.

    ``sharding_for(tensor)`` gives the SPMD ``ShardingSpec`` a tensor is sent with (None: replicated);
    the container types (dicts, ``BatchEncoding``, tuples, dataclasses) are kept.
    """
    import torch_xla.core.xla_model as xm

    host: list[torch.Tensor] = []
    apply_to_collection(batch, torch.Tensor, lambda t: host.append(t) if t.device.type == "cpu" else None)
    if not host:
        return batch
    groups: dict[int, tuple[Any, list[torch.Tensor]]] = {}
    for tensor in host:
        spec = sharding_for(tensor) if sharding_for is not None else None
        groups.setdefault(id(spec), (spec, []))[1].append(tensor)
    moved: dict[int, torch.Tensor] = {}
    for spec, group in groups.values():
        for source, target in zip(group, xm.send_cpu_data_to_device(group, device, spec)):
            moved[id(source)] = target
    return apply_to_collection(batch, torch.Tensor, lambda t: moved.get(id(t), t))


class XLADeviceLoader:
    """Wraps a DataLoader: yields its host batches, each already sent to the device, marking a step between.

    ``prefetch`` batches beyond the current one are sent ahead. Attributes the loops read
    (``batch_sampler``, ``generator``, ``dataset``, ``len()``) are the wrapped DataLoader's, so
    resuming part-way through an epoch and per-epoch seeding work as without the wrapper.
    """

    def __init__(
        self, dataloader: Iterable[Any], send: Callable[[Any], Any], copies: DeviceCopies, prefetch: int = 2
    ) -> None:
        if prefetch < 0:
            raise ValueError(f"XLADeviceLoader: prefetch must be >= 0, got {prefetch}")
        self.dataloader = dataloader
        self._send = send
        self._copies = copies
        self.prefetch = prefetch

    def __len__(self) -> int:
        return len(self.dataloader)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name == "dataloader":  # not set yet (copy/pickle): no recursion
            raise AttributeError(name)
        return getattr(self.dataloader, name)

    def __iter__(self) -> Iterator[Any]:
        import torch_xla

        source = iter(self.dataloader)
        ahead: deque[Any] = deque()
        try:
            while True:
                while len(ahead) <= self.prefetch and self._fetch(source, ahead):
                    pass
                if not ahead:
                    return
                torch_xla.sync()  # the step mark: what the previous batch traced runs as one graph
                host = ahead.popleft()
                self._copies.hand_out(host)
                yield host
        finally:
            for host in ahead:  # an epoch left early: drop the copies nobody will take
                self._copies.discard(host)

    def _fetch(self, source: Iterator[Any], ahead: deque[Any]) -> bool:
        host = next(source, _END)
        if host is _END:
            return False
        self._copies.put(host, self._send(host))
        ahead.append(host)
        return True
