"""The GGML RPC protocol as data: schemas, version profiles and sans-IO framing.

Nothing in this package touches a socket.  See SPEC.md for the protocol itself; its field
tables are generated from these schemas (tools/generate_spec.py).
"""

from .commands import Command
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError, UnsupportedVersion
from .framing import (
    CLOSED,
    DEFAULT_MAX_PAYLOAD,
    NEED_DATA,
    Reply,
    ReplyParser,
    Request,
    RequestParser,
    build_reply,
    build_request,
    encode_reply,
    encode_request,
)
from .ggml import GGML_RELEASES, TYPES, TensorType, nbytes
from .graph import Graph, decode_graph, encode_graph
from .messages import CONN_CAPS_SIZE, HASH_THRESHOLD, MessageSpec, message_spec, specs
from .tensor import RPC_TENSOR, RPC_TENSOR_DTYPE, RPC_TENSOR_SIZE, decode_name, encode_name, make_tensor
from .versions import BY_VERSION, DESIGN_TARGET, NEWEST, PROFILES, Profile, parse_version, profile_for

__all__ = [name for name in dir() if not name.startswith("_")]
