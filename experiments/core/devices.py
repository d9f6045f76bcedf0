"""MindSpore's device for this process: chosen once, checked before anything is written.

The installed wheel carries the Ascend and GPU plugins, so whether a device works depends
on the machine (drivers, CUDA or CANN, the card). `unavailable` asks MindSpore in a child
process, which leaves this one free to choose, and keeps MindSpore's own log lines (it
prints several per missing library) out of the terminal: the user gets one line.
"""

from __future__ import annotations

import re
import subprocess
import sys

import mindspore

from experiments.core.config import UserError

_PROBE = ("import mindspore, numpy; mindspore.set_device({device!r}, {device_id}); "
          "mindspore.set_context(mode=mindspore.GRAPH_MODE); "
          "x = mindspore.Tensor(numpy.ones(2, numpy.float32)); (x + x).asnumpy()")
_chosen: tuple[str, int] | None = None


class DeviceError(UserError):
    """This process cannot train on the device a config names (exit 2)."""


def unavailable(device: str, device_id: int = 0) -> str:
    """Why MindSpore cannot run on `device` here, shortened to its own first sentences;
    '' when it can. CPU always can (its id names no card)."""
    if device == "CPU":
        return ""
    code = _PROBE.format(device=device, device_id=device_id)
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=300)
    except subprocess.TimeoutExpired:
        return "MindSpore did not start on it within 300 s"
    if proc.returncode == 0:
        return ""
    return reason(proc.stderr)


def reason(stderr: str) -> str:
    """MindSpore's error, shortened: the exception's message up to its advice."""
    found = re.findall(r"^(?:\w+\.)*\w*(?:Error|Exception): (.+)$", stderr, re.M)
    text = found[-1] if found else (stderr.strip().splitlines() or ["unknown error"])[-1]
    text = re.split(r" Please | For details", text)[0].strip()
    return text[:300]


def use(device: str = "CPU", device_id: int = 0) -> None:
    """Train on `device` (card `device_id`) in this process, in graph mode. MindSpore
    fixes the device when its runtime starts: asking for another one later is an error,
    never a silent run elsewhere."""
    global _chosen  # one device per process, by MindSpore's design
    if _chosen is None:
        try:  # a CPU has no cards: its id is recorded, not used
            mindspore.set_device(device, *(() if device == "CPU" else (device_id,)))
        except RuntimeError as exc:
            # A runtime that something already started (a PyNative op, as the benchmark's
            # tutorial step runs first) refuses set_device even for its own device: that
            # device is the one asked for on CPU, where there is one.
            if not (device == "CPU" and mindspore.get_context("device_target") == "CPU"):
                raise DeviceError(f"device {device}: {reason(f'RuntimeError: {exc}')}") \
                    from None
        _chosen = (device, device_id)
    elif _chosen[0] != device or (device != "CPU" and _chosen[1] != device_id):
        raise DeviceError(f"device {device}:{device_id}: this process already trains on "
                          f"{_chosen[0]}:{_chosen[1]}; one device per process")
    mindspore.set_context(mode=mindspore.GRAPH_MODE)


def current() -> tuple[str, int]:
    """The device this process trains on (CPU:0 unless one was chosen)."""
    return _chosen or ("CPU", 0)


def check(device: str, ids: tuple[int, ...] | list[int]) -> None:
    """DeviceError, in one line, unless MindSpore can run on each card of `device`."""
    for device_id in ids:
        why = unavailable(device, device_id)
        if why:
            raise DeviceError(f"device {device} (device_id {device_id}): MindSpore cannot use "
                              f"it on this machine: {why}")
