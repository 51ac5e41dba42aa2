"""Property-based cases: a stateful model of buffers and tensors, and malformed frames.

The state machine keeps its own copy of every buffer's bytes and checks every GET_TENSOR
against it while hypothesis drives random valid command sequences (allocate, free, write,
read, clear, copy, memset).  The frame fuzzer sends random and mutated frames and only
asks that the server survive: a new client must be served afterwards.  Against an
external target the suite runs them without shrinking (`--fuzz-examples` sets the count).
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from ggml_rpc_spec.protocol import Command
from ggml_rpc_spec.client.rpc import RemoteBuffer

from ..core import Checks, Context, new_buffer, require

checks = Checks()  # this module's cases (see conformance.cases)

C = Command


def _settings(ctx: Context) -> settings:
    return settings(max_examples=ctx.fuzz_examples, deadline=None, database=None,
                    phases=[Phase.generate] if ctx.live_fuzz else list(Phase),
                    suppress_health_check=list(HealthCheck), stateful_step_count=25)


def _machine(ctx: Context):
    class Buffers(RuleBasedStateMachine):
        """Model: bytes of every live buffer; the server must agree on every read.

        The bundle holds the model's own buffer numbers, not the server's handles: a server
        may hand a freed handle out again, and draws must not depend on what it chose."""

        buffers = Bundle("buffers")

        @initialize()
        def connect(self):
            self.rpc = ctx.client()
            self.live: dict[int, tuple[RemoteBuffer, bytearray]] = {}  # number -> (server buffer, its bytes)
            self.allocated = 0

        def teardown(self):
            self.rpc.close()

        @rule(target=buffers, size=st.integers(1, 4096), fill=st.integers(0, 255))
        def alloc(self, size, fill):
            buf = new_buffer(self.rpc, size, ctx.device)
            self.rpc.buffer_clear(buf, fill)
            self.allocated += 1
            self.live[self.allocated] = (buf, bytearray([fill]) * size)
            return self.allocated

        def _region(self, data, number):
            size = len(self.live[number][1])
            start = data.draw(st.integers(0, size - 1))
            length = data.draw(st.integers(0, size - start))
            return start, length

        def _tensor(self, number, start, length):
            return self.rpc.tensor_for(self.live[number][0], start, shape=(max(length, 1),), type="I8")

        @rule(number=buffers, data=st.data())
        def write(self, number, data):
            if number not in self.live:
                return
            start, length = self._region(data, number)
            payload = data.draw(st.binary(min_size=length, max_size=length))
            self.rpc.set_tensor(self._tensor(number, start, length), payload)
            self.live[number][1][start:start + length] = payload

        @rule(number=buffers, data=st.data())
        def read(self, number, data):
            if number not in self.live:
                return
            start, length = self._region(data, number)
            got = bytes(self.rpc.get_tensor(self._tensor(number, start, length), 0, length))
            require(got == bytes(self.live[number][1][start:start + length]),
                    f"bytes [{start}, +{length}) as the model has them", "different bytes")

        @rule(number=buffers, value=st.integers(0, 255))
        def clear(self, number, value):
            if number not in self.live:
                return
            buf, model = self.live[number]
            self.rpc.buffer_clear(buf, value)
            model[:] = bytes([value]) * len(model)

        @rule(source=buffers, destination=buffers, data=st.data())  # (rule() reserves "target")
        def copy(self, source, destination, data):
            if source not in self.live or destination not in self.live:
                return
            (src_buf, src_model), (dst_buf, dst_model) = self.live[source], self.live[destination]
            start, length = self._region(data, source)
            length = (min(length, len(dst_model)) // 4) * 4
            if length == 0:
                return
            at = data.draw(st.integers(0, len(dst_model) - length))
            src = self.rpc.tensor_for(src_buf, start, shape=(length // 4,), type="F32")
            dst = self.rpc.tensor_for(dst_buf, at, shape=(length // 4,), type="F32")
            require(self.rpc.copy_tensor(src, dst), "result 1", "0")
            dst_model[at:at + length] = src_model[start:start + length]

        @rule(number=buffers, value=st.integers(0, 255), data=st.data())
        def memset(self, number, value, data):
            if number not in self.live or C.MEMSET_TENSOR not in ctx.profile.commands:
                return
            start, length = self._region(data, number)
            if length == 0:
                return
            self.rpc.memset_tensor(self._tensor(number, start, length), value, 0, length)
            self.live[number][1][start:start + length] = bytes([value]) * length

        @rule(number=buffers)
        def free(self, number):
            if number not in self.live:
                return
            self.rpc.free_buffer(self.live.pop(number)[0])

        @invariant()  # (invariants run only after connect)
        def alive(self):
            require(self.rpc.alignment(ctx.device) > 0, "the connection serves", "it does not")

    return Buffers


@checks.check("7", "random valid command sequences match a model of the buffers", kind="fuzz")
def stateful(ctx: Context) -> None:
    run_state_machine_as_test(_machine(ctx), settings=_settings(ctx))


def _valid_frame(command: Command, payload: bytes) -> bytes:
    return struct.pack("<BQ", command, len(payload)) + payload


# Sizes a frame announces but never delivers: small ones (the server waits, then sees the
# connection close) and ones beyond any memory (it must refuse).  Sizes in between, a few
# GiB, would make a server that allocates what a frame announces zero-fill gigabytes per
# example: a memory-exhaustion test of the target's host, not a framing test.
LYING_SIZES = st.one_of(st.integers(0, 1 << 20), st.integers(1 << 48, 2**64 - 1))


@checks.check("2", "malformed frames never take the server down", kind="fuzz")
def malformed_frames(ctx: Context) -> None:
    from hypothesis import given

    commands = [c for c in ctx.profile.commands if c is not C.HELLO]

    frames = st.one_of(
        st.binary(min_size=1, max_size=64),  # garbage
        st.builds(_valid_frame, st.sampled_from(commands), st.binary(max_size=700)),
        st.builds(lambda c, n, p: struct.pack("<BQ", c, n) + p, st.sampled_from(commands),
                  LYING_SIZES, st.binary(max_size=64)),
    )

    @_settings(ctx)
    @given(frame=frames)
    def survive(frame):
        probe = ctx.probe(buffer_size=0)  # the frames name no buffer
        probe.send_raw(frame)
        probe.close()
        rpc = ctx.client()
        require(rpc.alignment(ctx.device) > 0, "a new client is served after the frame", "it is not")
        rpc.close()

    survive()
