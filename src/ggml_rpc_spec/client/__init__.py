"""A Python client for any GGML RPC server (`ggml-rpc-client`), and a builder of ggml graphs."""

from .rpc import RemoteBuffer, RPCClient, ServerClosed, parse_endpoint

__all__ = ["RPCClient", "RemoteBuffer", "ServerClosed", "parse_endpoint"]
