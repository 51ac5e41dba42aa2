"""The executor's error: a graph this server cannot (or must not) compute."""


class ExecutionError(Exception):
    """The graph asks for something this server cannot compute or that would reach outside
    its tensors (an out-of-range row index, say).  The connection closes; nothing crashes."""
