"""How `python -m bench` measures and prints: samplers taking turns, best of N, one row per
figure with the ratio and the target it is held to.

A sampler is one side of a measurement (our server, the upstream server, a relay): set up
once, on connections of its own, then asked for one sample at a time.  Samples of the sides
alternate where the sides can be connected at once, so that the machine's drifts (this VM's
speed changes for seconds at a time) touch both; the best sample of each side is kept.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

from ggml_rpc_spec.client.rpc import RPCClient

AT_MOST, AT_LEAST = "<=", ">="
HEADER = f"{'measurement':52s} {'ours':>10s} {'upstream':>10s} {'unit':12s} {'ratio':>7s}   target"


class Sampler:
    """One side of a measurement; `clients` (the first is `rpc`) are closed with it."""

    def __init__(self, *clients: RPCClient) -> None:
        self.clients = list(clients)
        self.rpc = clients[0]

    def sample(self) -> tuple[float, ...]:
        raise NotImplementedError

    def close(self) -> None:
        for client in self.clients:
            client.close()


def alternating(sides: list[Callable[[], Sampler]], repeat: int, better=min) -> list[tuple]:
    """Per figure, the best sample of each side, the sides sampled in turn `repeat` times."""
    with contextlib.ExitStack() as stack:
        samplers = []
        for make in sides:
            samplers.append(make())
            stack.callback(samplers[-1].close)
        samples = [[sampler.sample() for sampler in samplers] for _ in range(repeat)]
    return [tuple(better(rnd[side][i] for rnd in samples) for side in range(len(sides)))
            for i in range(len(samples[0][0]))]


def one_after_the_other(sides: list[Callable[[], Sampler]], repeat: int, better=min) -> list[tuple]:
    """As `alternating`, for sides that cannot be connected at once (the upstream server
    serves one connection at a time, and a relay holds one to it): each side's samples in turn."""
    samples = []
    for make in sides:
        sampler = make()
        try:
            samples.append([sampler.sample() for _ in range(repeat)])
        finally:
            sampler.close()
    return [tuple(better(s[i] for s in side) for side in samples) for i in range(len(samples[0][0]))]


def row(name: str, ours: float, theirs: float, unit: str, target: tuple[str, float] | None = None, *,
        ratio: float | None = None) -> str:
    """Both figures, their ratio (ours / theirs unless given) and whether it meets `target`
    (op, bound)."""
    ratio = ours / theirs if ratio is None else ratio
    text = f"{name:52s} {_figure(ours)} {_figure(theirs)} {unit:12s} {ratio:7.3f}"
    if target is None:
        return text
    op, bound = target
    met = ratio <= bound if op == AT_MOST else ratio >= bound
    return f"{text}   {op} {bound:<5g} {'met' if met else 'MISSED'}"


def _figure(value: float) -> str:
    """Ten characters, with as many decimals as fit (op times run from 0.1 us to seconds)."""
    return f"{value:10.{3 if value < 1e3 else 1 if value < 1e5 else 0}f}"


def geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))
