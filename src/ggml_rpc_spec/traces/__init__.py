"""Trace files and packet captures of GGML RPC sessions (`ggml-rpc-trace`): show, replay, import, export."""
