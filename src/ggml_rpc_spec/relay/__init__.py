"""Servers in front of other servers: the recording proxy and the version bridge (`ggml-rpc-proxy`)."""
