"""The executor's error: a graph this server cannot (or must not) compute."""

from __future__ import annotations

from ggml_rpc_spec.protocol.rules import Rule, rule

UNSUPPORTED = rule("exec.unsupported")


class ExecutionError(Exception):
    """The graph asks for something this server cannot compute or that would reach outside
    its tensors (an out-of-range row index, say).  The connection closes; nothing crashes.
    `rule` is the protocol.rules entry it breaks (default: exec.unsupported)."""

    def __init__(self, message: str, *, rule: Rule = UNSUPPORTED) -> None:
        super().__init__(message)
        self.rule = rule

    def __str__(self) -> str:
        return super().__str__() + f" [{self.rule.key} §{self.rule.section}]"
