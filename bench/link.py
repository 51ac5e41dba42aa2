"""`python -m bench`'s row of the 8.0.0 server-to-server link (SPEC.md §10):

  all-reduce of an F32 tensor of 4 MiB and of 16 MiB    ratio of MB/s    target >= 0.9
    two reference servers linked vs two real 8.0.0 servers linked

The project's client makes the two servers ranks 0 and 1 (COMM_INIT to both at once: rank 0
answers only once rank 1 has connected), uploads a partial to each, then sends COMM_ALLREDUCE
to both, ROUNDS times, and times until both have answered a GET_ALIGNMENT sent behind
(COMM_ALLREDUCE has no reply).  MB/s counts the F32 tensor's bytes reduced per second;
tensors this large cross the link as BF16, half those bytes, each way (upstream's rule).
"""

from __future__ import annotations

import threading
import time

import numpy as np

from ggml_rpc_spec.client.rpc import RPCClient
from ggml_rpc_spec.upstream_peers.server import comm_safe_port

from bench import servers
from bench.measure import AT_LEAST, Sampler, alternating, row

SIZES = (4 << 20, 16 << 20)  # bytes of F32: upstream's large partials (a prompt's FFN outputs and up)
ROUNDS = 4


class AllReduce(Sampler):
    """MB/s of F32 reduced by a linked pair of servers, per size in SIZES."""

    def __init__(self, endpoints: list[str], profile) -> None:
        super().__init__(*(RPCClient(endpoint, proto=profile) for endpoint in endpoints))
        rank0, rank1 = self.clients
        port = comm_safe_port()
        answer: dict = {}
        waiting = threading.Thread(target=lambda: answer.update(ok=rank0.comm_init(rank=0, port=port)))
        waiting.start()
        linked = rank1.comm_init(rank=1, port=port, host="127.0.0.1")
        waiting.join()
        if not (linked and answer.get("ok")):
            raise RuntimeError(f"the servers at {' and '.join(endpoints)} did not link (rank 0: {answer}, "
                               f"rank 1: {linked})")
        rng = np.random.default_rng(0)
        self.partials = [rng.standard_normal(size // 4).astype(np.float32) * 1e-3 for size in SIZES]
        self.tensors = [[rpc.tensor_for(rpc.alloc_buffer(size), 0, partial, name="ffn_out-0") for rpc in self.clients]
                        for size, partial in zip(SIZES, self.partials)]

    def sample(self) -> tuple[float, ...]:
        rates = []
        for size, partial, pair in zip(SIZES, self.partials, self.tensors):
            for rpc, tensor in zip(self.clients, pair):
                rpc.set_tensor(tensor, partial)
                rpc.sync()
            started = time.perf_counter()
            for _ in range(ROUNDS):
                for rpc, tensor in zip(self.clients, pair):
                    rpc.comm_allreduce(tensor)
            for rpc in self.clients:
                rpc.sync()
            rates.append(ROUNDS * size / (time.perf_counter() - started) / 1e6)
        return tuple(rates)

    def close(self) -> None:
        for rpc in self.clients:
            rpc.comm_free()
        super().close()


def rows(peer, profile, repeat: int) -> list[str]:
    """Two of our servers linked against two real ones: a row per size."""
    with servers.setup(("ours", "ours"), peer) as ours, servers.setup(("real", "real"), peer) as theirs:
        figures = alternating([lambda: AllReduce(ours, profile), lambda: AllReduce(theirs, profile)], repeat,
                              better=max)
    return [row(f"all-reduce over the link, F32 {size >> 20} MiB", a, b, "MB/s", (AT_LEAST, 0.9))
            for size, (a, b) in zip(SIZES, figures)]
