"""The executor's error: a graph this server cannot (or must not) compute."""


class ExecutionError(Exception):
    """The graph asks for something this server cannot compute or that would reach outside
    its tensors (an out-of-range row index, say).  The connection closes; nothing crashes.
    `rule` names the protocol.rules entry it breaks (default: exec.unsupported)."""

    def __init__(self, message: str, *, rule: str = "exec.unsupported") -> None:
        super().__init__(message)
        self.rule = rule

    def __str__(self) -> str:
        from ggml_rpc_spec.protocol.rules import BY_KEY

        found = BY_KEY.get(self.rule)
        where = f" [{self.rule} §{found.section}]" if found else ""
        return super().__str__() + where
