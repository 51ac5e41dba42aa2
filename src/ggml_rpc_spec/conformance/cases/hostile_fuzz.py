"""Structure-aware hostile fuzzing: requests built from the schemas with the session's live
state, fields drawn from the edges where servers break, judged by the rules table.

Every example opens a connection, allocates the buffers it attacks (their real handles and
base addresses), a canary buffer with a known pattern and a freed buffer (a stale handle),
and sends one hostile request, or a short sequence ending in one:
- tensors whose regions end one byte before, at and after a buffer's end, offsets and sizes
  whose 64-bit sums wrap, `ne`/`nb` whose products overflow, types at and past the type
  count and the removed ones, quantized shapes off the block size, stale and foreign
  handles, data addresses below a buffer's base;
- graphs of any op of the catalogue (protocol.ops) with sources drawn as above, op_params
  at the edges of their layout (bounds, 0, -1, INT32 extremes, NaN and infinities), node
  lists with missing, zero, duplicated or cyclic ids, views running past their source, and
  index tensors (rows, expert and state ids) filled with out-of-range values;
- 2-D transfers (8.0.0) of no, empty, overlapping or out-of-bounds copies, with counts,
  sizes and strides whose 64-bit products wrap;
- GRAPH_RECOMPUTE after the graph's buffer was freed.
What a correct server must do is worked out locally from the rules table (protocol.rules):
a request that breaks a MUST rule must close the connection.  After every example the
suite checks that the server is alive, that it closed what it had to close, that it did not
go silent, and (when the connection stayed open) that the canary's bytes are unchanged.

A server that dies is a finding: the exchange that killed it is saved as a trace file
(replayable with `ggml-rpc-trace replay`), the target is restarted with `--restart-cmd`, and
the run carries on.  Findings are grouped into distinct classes (what the server did, the
command or op, the rule broken, or "no rule: new finding").  When the target can be
restarted (or is the reference server the suite started), hypothesis shrinks each class
to a minimal example; otherwise it only generates.
"""

from __future__ import annotations

import math
import struct
import time
from dataclasses import dataclass, field

import numpy as np
from construct import Container
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ggml_rpc_spec.protocol import Command, Graph, encode_request, make_tensor, message_spec
from ggml_rpc_spec.protocol.errors import ProtocolError
from ggml_rpc_spec.protocol.framing import NEED_DATA, Reply, ReplyParser
from ggml_rpc_spec.protocol.ggml import TYPES
from ggml_rpc_spec.protocol.graph import tensors_from_containers
from ggml_rpc_spec.protocol.messages import device_fields, graph_fields
from ggml_rpc_spec.protocol.ops import CATALOGUE, Param
from ggml_rpc_spec.protocol.rules import BY_KEY, MUST, BufferInfo, request_checks, sized_violation
from ggml_rpc_spec.protocol.tensor import contiguous_strides
from ggml_rpc_spec.protocol.versions import Profile
from ggml_rpc_spec.client.rpc import ServerClosed

from ..core import CaseFailure, Checks, Context
from ..probe import ANSWERED, CLOSED, GRAPH_UID, SILENT

checks = Checks()  # this module's cases (see conformance.cases)

C = Command
I32_MIN, I32_MAX = -(2**31), 2**31 - 1
CANARY = bytes(range(256))
TARGET_SIZE = 4096
MAX_2D_DATA = 1 << 16  # the most data a SET_TENSOR_2D of an example carries


# -- what the server knows, as the rules see it ------------------------------------------------------


@dataclass
class LiveView:
    """protocol.rules.ServerView of the example's connection: the buffers it allocated."""

    profile: Profile
    buffers: dict[int, BufferInfo]
    n_devices: int = 1
    stored: bool = False

    def buffer(self, handle: int) -> BufferInfo | None:
        return self.buffers.get(handle)

    def has_stored_graph(self, device: int, uid: int | None) -> bool:
        return self.stored

    def has_link(self, device: int) -> bool:
        return False


AttackStep = tuple[Command, dict, bytes | None, Graph | None]  # a request: command, body, data, graph


@dataclass
class Attack:
    """The requests of one example; the last is the hostile one."""

    steps: list[AttackStep]
    what: str  # command, or GRAPH_COMPUTE(op)
    hint: str = ""  # a rule the generator aimed at that the rules table cannot see (index values)

    def describe(self) -> str:
        return self.what + (f" [{self.hint}]" if self.hint else "")


@dataclass
class Finding:
    kind: str  # "killed the server", "served a request breaking a MUST rule", "went silent", "canary changed",
    # "stopped serving valid requests"
    what: str
    rule: str  # rule key, or "no rule: new finding"
    detail: str
    trace: str = ""

    @property
    def key(self) -> tuple[str, str]:
        """The class of the finding: what the server did and the rule it broke; for requests no
        rule covers, what the request was."""
        return self.kind, self.rule if self.rule in BY_KEY else self.what.split(" ", 1)[0]

    @property
    def slug(self) -> str:
        return "-".join("".join(ch if ch.isalnum() or ch in "._" else "-" for ch in part) for part in self.key)


class FindingError(AssertionError):
    """Raised inside hypothesis so that it shrinks the example (one subclass per class of finding,
    so hypothesis keeps them apart)."""

    finding: Finding  # set by _error_for


_ERROR_CLASSES: dict[tuple, type] = {}


def _error_for(finding: Finding) -> FindingError:
    cls = _ERROR_CLASSES.get(finding.key)
    if cls is None:
        cls = _ERROR_CLASSES[finding.key] = type("Finding_" + "_".join(
            "".join(ch if ch.isalnum() else "_" for ch in part) for part in finding.key), (FindingError,), {})
    error = cls(f"{finding.kind}: {finding.what} ({finding.rule}): {finding.detail}")
    error.finding = finding
    return error


# -- drawing values at the edges ----------------------------------------------------------------------


def _edges(draw, end: int, *, wide: bool = True) -> int:
    choices = [0, 1, end - 1, end, end + 1, max(end - 4, 0)]
    if wide:
        choices += [2**32 - 1, 2**32, 2**63, 2**64 - 1, 2**64 - 16]
    return draw(st.one_of(st.sampled_from(choices), st.integers(0, max(end + 64, 1))))


def _int_edge(draw, param: Param | None = None) -> int:
    choices = [0, 1, -1, 2, I32_MIN, I32_MAX, 1 << 20, -(1 << 20), 4096]
    if param is not None:
        for bound in (param.low, param.high):
            if bound is not None and not math.isinf(bound):
                choices += [int(bound) - 1, int(bound), int(bound) + 1]
        choices += list(param.choices.values())
    return max(I32_MIN, min(I32_MAX, draw(st.sampled_from(choices))))


def _float_edge(draw) -> float:
    return draw(st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-30, 1e30, 3.4e38, -3.4e38, float("inf"), float("-inf"),
                                 float("nan"), 0.5, 1e-6]))


def _param_word(draw, param: Param) -> int:
    if param.kind == "f32":
        return param.encode(_float_edge(draw))
    return param.encode(_int_edge(draw, param)) if param.kind != "u32" else _int_edge(draw, param)


class Session:
    """The buffers of one example's connection and tensors placed in them."""

    def __init__(self, probe, profile, skip_rules: frozenset[str] = frozenset()) -> None:
        self.probe, self.profile = probe, profile
        self.skip_rules = skip_rules  # rules no attack may aim at (--skip-rule)
        self.target = probe.buffer
        self.canary = probe.rpc.alloc_buffer(len(CANARY))
        probe.rpc.set_tensor(probe.rpc.tensor_for(self.canary, 0, shape=(len(CANARY),), type="I8"), CANARY)
        stale = probe.rpc.alloc_buffer(256)
        probe.rpc.free_buffer(stale)
        probe.rpc.sync()
        self.stale = stale
        self.next_id = 0x5000
        self.n_devices = probe.rpc.device_count()  # the device rule judges indexes against the real count

    def view(self) -> LiveView:
        return LiveView(self.profile, {b.handle: BufferInfo(b.base, b.size) for b in (self.target, self.canary)},
                        n_devices=self.n_devices)

    def tensor(self, draw, *, hostile: bool, type_name: str = "F32", n: int | None = None, **fields) -> Container:
        """An rpc_tensor in the target buffer: plain, or with drawn edge values."""
        self.next_id += 0x10
        kind = next(t for t in TYPES.values() if t.name == type_name)
        n = n if n is not None else kind.block_size * draw(st.integers(1, 8))
        ne = [n, 1, 1, 1]
        values = dict(id=self.next_id, type=kind.value, buffer=self.target.handle, ne=ne,
                      nb=contiguous_strides(kind.type_size, kind.block_size, ne),
                      data=self.target.base + draw(st.integers(0, 31)) * 64, name=f"t{self.next_id:x}")
        if hostile:
            mutation = draw(st.sampled_from(["type", "ne", "nb", "buffer", "data", "blocks", "none"]))
            end = self.target.base + self.target.size
            if mutation == "type":
                values["type"] = draw(st.sampled_from([self.profile.ggml.type_count, self.profile.ggml.type_count + 1,
                                                       4, 5, 31, 200, 2**32 - 1]))
            elif mutation == "ne":
                values["ne"] = [draw(st.sampled_from([0, 1, 2**31, 2**32 - 1, 65536, n])) for _ in range(4)]
            elif mutation == "nb":
                values["nb"] = [draw(st.sampled_from([0, 1, 4, 2**31, 2**32 - 1, self.target.size])) for _ in range(4)]
            elif mutation == "buffer":
                values["buffer"] = draw(st.sampled_from([0, self.stale.handle, self.target.handle ^ 0x40,
                                                         self.canary.handle]))
                if values["buffer"] == 0:
                    values["data"] = draw(st.sampled_from([0, self.target.base, 0x4141_4141_0000]))
            elif mutation == "data":
                values["data"] = draw(st.sampled_from([self.target.base - 1, self.target.base - 4096, end - 1, end,
                                                       end + 1, end - 64, 0, 2**64 - 8, self.canary.base]))
            elif mutation == "blocks":
                q = draw(st.sampled_from([t for t in TYPES.values() if t.block_size > 1 and
                                          self.profile.ggml.tensor_type(t.value) is not None]))
                values.update(type=q.value, ne=[q.block_size + draw(st.integers(1, q.block_size - 1)), 1, 1, 1],
                              nb=[q.type_size, q.type_size * 2, q.type_size * 2, q.type_size * 2])
        values.update(fields)
        return make_tensor(self.profile.tensor, **values)


# -- attacks -------------------------------------------------------------------------------------------


def _region_attack(draw, s: Session) -> Attack:
    command = draw(st.sampled_from([c for c in (C.SET_TENSOR, C.GET_TENSOR, C.MEMSET_TENSOR, C.COPY_TENSOR,
                                                C.INIT_TENSOR, C.GET_ALLOC_SIZE, C.BUFFER_CLEAR, C.FREE_BUFFER,
                                                C.BUFFER_GET_BASE) if c in s.profile.commands]))
    tensor = s.tensor(draw, hostile=draw(st.booleans()))
    size = s.target.size
    if command is C.SET_TENSOR:
        length = draw(st.sampled_from([0, 1, 4, 64, 512]))
        body = {"tensor": tensor, "offset": _edges(draw, size)}
        if s.profile.set_tensor == "cache_flag":
            body["cache_flag"] = draw(st.sampled_from([0, 1, 255]))
        return Attack([(command, body, bytes(length), None)], command.name)
    if command is C.GET_TENSOR:
        return Attack([(command, {"tensor": tensor, "offset": _edges(draw, size), "size": min(
            _edges(draw, size), 1 << 20) if draw(st.booleans()) else _edges(draw, size)}, None, None)], command.name)
    if command is C.MEMSET_TENSOR:
        return Attack([(command, {"tensor": tensor, "offset": _edges(draw, size), "size": _edges(draw, size),
                                  "value": 0xAB}, None, None)], command.name)
    if command is C.COPY_TENSOR:
        other = s.tensor(draw, hostile=draw(st.booleans()), n=draw(st.sampled_from([0, 1, 16, size // 4])))
        return Attack([(command, {"src": tensor, "dst": other} if draw(st.booleans()) else
                        {"src": other, "dst": tensor}, None, None)], command.name)
    if command in (C.INIT_TENSOR, C.GET_ALLOC_SIZE):
        body = {"tensor": tensor, **device_fields(s.profile, draw(st.sampled_from([0, 0, 1, 2**32 - 1])))}
        if command is C.GET_ALLOC_SIZE and s.profile.devices == "multi":
            body["srcs"] = [s.tensor(draw, hostile=True) for _ in range(draw(st.integers(0, 2)))]
            body["srcs"] += [make_tensor(s.profile.tensor, ne=[0, 0, 0, 0])] * (10 - len(body["srcs"]))
        if command is C.INIT_TENSOR:
            body.pop("device", None)
        return Attack([(command, body, None, None)], command.name)
    handle = draw(st.sampled_from([s.stale.handle, s.target.handle ^ 0x40, 0, 2**64 - 1]))
    body = {"remote_ptr": handle, **({"value": 7} if command is C.BUFFER_CLEAR else {})}
    return Attack([(command, body, None, None)], command.name)


def _transfer_2d_attack(draw, s: Session) -> Attack:
    """SET_TENSOR_2D / GET_TENSOR_2D whose copies' count, size, stride and offset sit at the edges
    (none, empty, overlapping, past the tensor or the buffer, products wrapping 64 bits).  A
    SET_TENSOR_2D carries the data its head announces, up to MAX_2D_DATA bytes (beyond: less,
    which a server must refuse too)."""
    command = draw(st.sampled_from([C.SET_TENSOR_2D, C.GET_TENSOR_2D]))
    size = draw(st.sampled_from([0, 1, 4, 16, 64, 2**32, 2**63]))
    n_copies = draw(st.sampled_from([0, 1, 2, 3, 16, 2**32, 2**50]))
    if draw(st.booleans()):
        stride = draw(st.sampled_from([0, size // 2, size, size + 4]))  # overlapping, touching, apart
    else:
        stride = _edges(draw, s.target.size)
    body = {"tensor": s.tensor(draw, hostile=draw(st.booleans())), "offset": _edges(draw, s.target.size),
            "size": size, "n_copies": n_copies, "stride": stride}
    data = bytes(min(size * n_copies, MAX_2D_DATA)) if command is C.SET_TENSOR_2D else None
    return Attack([(command, body, data, None)], command.name)


def _graph_attack(draw, s: Session) -> Attack:
    ggml = s.profile.ggml
    names = [op for op in ggml.ops if op in CATALOGUE and CATALOGUE[op].computes]
    op = draw(st.sampled_from(names))
    spec = CATALOGUE[op]
    sources, hint = [], ""
    steps: list[AttackStep] = []
    for source in spec.sources:
        if source.optional and draw(st.booleans()):
            break
        if source.index_rule and source.index_rule not in s.skip_rules:
            index = s.tensor(draw, hostile=False, type_name=draw(st.sampled_from(["I32", "I64"])), n=4)
            values = [draw(st.sampled_from([0, 1, -1, 2**31 - 1, -(2**31), 1 << 20, 3])) for _ in range(4)]
            raw = b"".join(struct.pack("<q" if index.type == 27 else "<i", v) for v in values)
            body = {"tensor": index, "offset": 0}
            if s.profile.set_tensor == "cache_flag":
                body["cache_flag"] = 0
            steps.append((C.SET_TENSOR, body, raw, None))
            hint = source.index_rule if any(v < 0 or v >= 1 << 20 for v in values) else hint
            sources.append(index)
        else:
            sources.append(s.tensor(draw, hostile=draw(st.integers(0, 3)) == 0,
                                    type_name=draw(st.sampled_from(["F32", "F32", "F16", "I32", "Q8_0"]))))
    sub = None
    params = [0] * 16
    if spec.sub_ops:
        names_of = {"UNARY": ggml.unary_ops, "GLU": ggml.glu_ops}[op]
        sub = draw(st.sampled_from(list(names_of)))
    for param in spec.layout(sub if sub and any(x.name == sub for x in spec.sub_ops) else None):
        params[param.index] = _param_word(draw, param) if draw(st.integers(0, 2)) else 0
    if sub is not None:
        params[0] = draw(st.sampled_from([names_of.index(sub), len(names_of), -1]))
    node = s.tensor(draw, hostile=draw(st.integers(0, 3)) == 0, op=ggml.op_value(op), op_params=params,
                    flags=ggml.compute_flag, src=[t.id for t in sources] + [0] * (10 - len(sources)))
    tensors = sources + [node]
    nodes = [node.id]
    links = draw(st.sampled_from(["ok", "ok", "ok", "missing", "zero-node", "duplicate", "cycle", "view-past"]))
    if links == "missing":
        node.src[0] = 0xDEAD_BEEF
    elif links == "zero-node":
        nodes = [0]
    elif links == "duplicate":
        tensors.append(Container(tensors[0]))
    elif links == "cycle" and sources:
        sources[0].src[0] = node.id
    elif links == "view-past" and sources:
        sources[0].view_src, sources[0].view_offs = node.id, s.target.size
    graph = Graph(np.array(nodes, dtype="<u8"), tensors_from_containers(s.profile, tensors))
    steps.append((C.GRAPH_COMPUTE, graph_fields(s.profile, 0, GRAPH_UID), None, graph))
    return Attack(steps, f"GRAPH_COMPUTE({op}{'/' + sub if sub else ''})", hint)


def _recompute_after_free(draw, s: Session) -> Attack:
    tensors = [s.tensor(draw, hostile=False, n=16, name="a"),
               s.tensor(draw, hostile=False, n=16, name="b")]
    node = s.tensor(draw, hostile=False, n=16, op=s.profile.ggml.op_value("ADD"), flags=s.profile.ggml.compute_flag,
                    src=[tensors[0].id, tensors[1].id] + [0] * 8)
    graph = Graph(np.array([node.id], dtype="<u8"), tensors_from_containers(s.profile, tensors + [node]))
    return Attack([(C.GRAPH_COMPUTE, graph_fields(s.profile, 0, GRAPH_UID), None, graph),
                   (C.FREE_BUFFER, {"remote_ptr": s.target.handle}, None, None),
                   (C.GRAPH_RECOMPUTE, graph_fields(s.profile, 0, GRAPH_UID), None, None)], "GRAPH_RECOMPUTE", "recompute.after-free")


@st.composite
def attacks(draw, session: Session):
    kinds = [_region_attack, _graph_attack, _graph_attack]
    if C.GRAPH_RECOMPUTE in session.profile.commands:
        kinds.append(_recompute_after_free)
    if C.SET_TENSOR_2D in session.profile.commands:
        kinds.append(_transfer_2d_attack)
    return draw(st.sampled_from(kinds))(draw, session)


# -- judging one example --------------------------------------------------------------------------------


def expected_rule(attack: Attack, view: LiveView) -> str | None:
    """The first MUST rule the attack's requests break, as the rules table sees them (None:
    none; SHOULD rules are left to the server)."""
    for command, body, data, graph in attack.steps:
        checks = request_checks(command, message_spec(view.profile, command).request)
        broken = [rule for rule, _ in checks.violations(view, Container(body), graph)]
        if data is not None and not broken:
            found = sized_violation(view, command, Container(body), len(data))
            broken = [found[0]] if found else []
        must = [rule for rule in broken if rule.level == MUST]
        if must:
            return must[0].key
        if command is C.FREE_BUFFER:
            view.buffers.pop(body["remote_ptr"], None)
        elif command is C.GRAPH_COMPUTE:
            view.stored = True
    return attack.hint if attack.hint in BY_KEY else None


def _send(probe, attack: Attack) -> list[tuple[Command, int | None]]:
    """Put the attack on the wire; the replies it expects (command, GET_TENSOR size)."""
    due = []
    for command, body, data, graph in attack.steps:
        probe.send_raw(b"".join(bytes(p) for p in encode_request(probe.profile, command, body, data=data,
                                                                   graph=graph)))
        spec = message_spec(probe.profile, command)
        if spec.has_reply:
            due.append((command, spec.data_size(body)))
    return due


MALFORMED = "answered malformed bytes"


def _outcome(probe, due, session: Session, timeout: float) -> tuple[str, bytes | str | None]:
    """CLOSED, SILENT, MALFORMED with what was wrong, or ANSWERED with the canary's bytes read
    back after the attack."""
    if any(size is not None and size > (1 << 24) for _, size in due):
        return probe.outcome()[0], None  # a huge read was served: do not try to take it all
    canary = session.probe.rpc.tensor_for(session.canary, 0, shape=(len(CANARY),), type="I8")
    get = {"tensor": canary, "offset": 0, "size": len(CANARY)}
    probe.send_raw(b"".join(bytes(p) for p in encode_request(probe.profile, C.GET_TENSOR, get)))
    parser = ReplyParser(probe.profile)
    for command, size in due + [(C.GET_TENSOR, len(CANARY))]:
        parser.expect(command, size=size)
    probe.sock.settimeout(timeout)
    replies: list[Reply] = []
    try:
        while len(replies) < len(due) + 1:
            event = parser.next_event()
            if event is NEED_DATA:
                chunk = probe.sock.recv(1 << 20)
                if not chunk:
                    return CLOSED, None
                probe.transcript.add("received", chunk)
                parser.receive_data(chunk)
            else:
                replies.append(event)
    except TimeoutError:
        return SILENT, None
    except OSError:
        return CLOSED, None
    except ProtocolError as exc:  # replies that break the framing: a finding of their own
        return MALFORMED, str(exc)
    canary = replies[-1].data
    if canary is None:  # the parser stores a data reply whole (it streams nothing)
        raise ValueError("the canary's GET_TENSOR reply carries no data")
    return ANSWERED, bytes(canary)


def judge(ctx: Context, run, attack: Attack, rule: str | None, verdict: str, canary) -> Finding | None:
    """What the attack's outcome says of the target (None: what a correct server does)."""
    if not run.alive():
        return Finding("killed the server", attack.describe(), rule or "no rule: new finding",
                       "the server stopped serving after this request")
    if verdict == SILENT:
        return Finding("went silent", attack.describe(), rule or "no rule: new finding",
                       f"no answer and no close within {ctx.timeout}s")
    if verdict == ANSWERED and rule is not None and rule in BY_KEY and not BY_KEY[rule].serves:
        return Finding("served a request breaking a MUST rule", attack.describe(), rule,
                       f"{BY_KEY[rule].title}, yet the connection stayed open")
    if verdict == MALFORMED:
        return Finding("answered malformed bytes", attack.describe(), rule or "no rule: new finding", str(canary))
    if verdict == ANSWERED and canary is not None and canary != CANARY:
        changed = sum(a != b for a, b in zip(canary, CANARY, strict=True))
        return Finding("canary changed", attack.describe(), rule or "no rule: new finding",
                       f"{changed} of the {len(CANARY)} bytes of another buffer of the connection changed")
    return None


def attribute(run, finding: Finding, traces: list[bytes]) -> None:
    """A finding no static rule predicts: replay its exchange against the reference server,
    and if that closes the connection, name the rule it reports (an execution rule, say)."""
    from ggml_rpc_spec.protocol.trace import decode_trace
    from ggml_rpc_spec.traces.replay import replay

    reference = run.reference()
    before = reference.rejections
    try:
        replay(decode_trace(traces[0]), reference.endpoint, timeout=10.0)
    except Exception:  # a trace the replayer cannot follow: the finding stays unattributed
        return
    if reference.rejections > before:
        key = reference.last_rejection
        finding.rule = key if key in BY_KEY else "a framing rule"
        finding.detail += "; the reference server rejects it" + (f" under {key}" if key else "")


@dataclass
class Campaign:
    """Findings of one fuzzing run, by class."""

    findings: dict[tuple, Finding] = field(default_factory=dict)
    examples: int = 0
    started: float = field(default_factory=time.monotonic)
    session: Session | None = None  # the last example's, for drawing once the time budget is spent


def _example(ctx: Context, run, campaign: Campaign, draw_attack) -> Finding | None:
    ctx.transcripts.clear()  # each example's exchange stands alone (findings save their own)
    try:
        probe = ctx.probe(buffer_size=TARGET_SIZE)
        session = Session(probe, ctx.profile, run.skip_rules if run is not None else frozenset())
    except (OSError, ServerClosed, ProtocolError) as exc:
        if campaign.session is None:
            raise  # not even the first example could start: nothing to fuzz
        _refused_setup(ctx, run, campaign, draw_attack, exc)
        return None
    campaign.session = session
    attack = draw_attack(session)
    rule = expected_rule(attack, session.view())
    due = _send(probe, attack)
    verdict, canary = _outcome(probe, due, session, ctx.timeout)
    probe.close()
    campaign.examples += 1
    finding = judge(ctx, run, attack, rule, verdict, canary)
    if finding is not None:
        if rule is None:
            attribute(run, finding, ctx.traces(finding.what, [("fuzz", probe.transcript)]))
        finding.trace = ", ".join(run.save_transcript(ctx, f"fuzz-{finding.slug}", probe.transcript))
        campaign.findings.setdefault(finding.key, finding)
    if finding is not None and finding.kind == "killed the server" and not run.restart():
        raise StopCampaign("the server died and could not be restarted (--restart-cmd)")
    return finding


def _leaves(error: BaseException):
    """The exceptions inside (nested) exception groups, or the exception itself."""
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


def _refused_setup(ctx: Context, run, campaign: Campaign, draw_attack, error: Exception) -> None:
    """The server no longer serves the valid requests an example starts with (a previous
    attack broke it, without killing it, or it is still dying): a finding of its own, never
    shrunk, since it belongs to no single example.  The example draws as usual (from the last
    session) so that hypothesis sees the same data, and the server is restarted if it died."""
    draw_attack(campaign.session)
    finding = Finding("stopped serving valid requests", "setup of an example", "no rule: new finding",
                      f"{type(error).__name__}: {error}")
    finding.trace = ", ".join(run.save_transcript(ctx, f"fuzz-{finding.slug}", ctx.transcripts[-1][1])
                              if ctx.transcripts else [])
    campaign.findings.setdefault(finding.key, finding)
    if not run.alive() and not run.restart():
        raise StopCampaign("the server died and could not be restarted (--restart-cmd)")


class StopCampaign(Exception):
    pass


ROUND = 100  # examples per round of a --fuzz-seconds campaign


@checks.check("12", "structure-aware hostile requests: closed where a rule says, and the server survives",
       kind="fuzz", destructive=True)
def hostile_fuzz(ctx: Context) -> None:
    run = ctx.run
    campaign = run.campaign
    shrink = run.started is not None or bool(run.restart_cmd)
    deadline = (campaign.started + run.fuzz_seconds) if run.fuzz_seconds else None

    # no explain phase: against a live target each of its variations is another kill and restart
    @settings(max_examples=ctx.fuzz_examples if deadline is None else ROUND, deadline=None, database=None,
              phases=[Phase.generate, Phase.shrink] if shrink else [Phase.generate],
              suppress_health_check=list(HealthCheck), report_multiple_bugs=True)
    @given(st.data())
    def example(data):
        if deadline is not None and time.monotonic() > deadline and campaign.session is not None:
            # the budget is spent: draw what an example draws and send nothing, so that this round's
            # remaining examples and shrink steps end at once (a finding no longer reproduces:
            # hypothesis then reports it as flaky, with the finding inside)
            data.draw(attacks(campaign.session))
            return
        finding = _example(ctx, run, campaign, lambda s: data.draw(attacks(s)))
        if finding is not None and shrink and finding.key not in reported:
            raise _error_for(finding)

    # With a time budget the campaign runs in rounds of ROUND examples until it is spent;
    # classes reported by earlier rounds no longer stop one.
    stopped, reported = "", set()
    while True:
        reported = set(campaign.findings)
        try:
            example()
        except BaseException as exc:  # the findings (hypothesis reports each class once, shrunk)
            errors = list(_leaves(exc))  # findings may come wrapped: several, or flaky on a live server
            stopped = "; ".join(str(e) for e in errors if isinstance(e, StopCampaign))
            unexpected = [e for e in errors if not isinstance(e, (FindingError, StopCampaign))]
            for error in errors:
                if isinstance(error, FindingError):
                    campaign.findings[error.finding.key] = error.finding
            if unexpected:
                raise unexpected[0]
        if deadline is None or stopped or time.monotonic() > deadline:
            break
    if campaign.findings:
        lines = [f"{f.kind}: {f.what} -- rule {f.rule}: {f.detail}\n    trace: {f.trace or '(not saved)'}"
                 for f in campaign.findings.values()]
        raise CaseFailure(f"{len(campaign.findings)} distinct finding(s) in {campaign.examples} examples"
                          f"{' (' + stopped + ')' if stopped else ''}:\n" + "\n".join(lines),
                          rules=tuple(f.rule for f in campaign.findings.values()))
