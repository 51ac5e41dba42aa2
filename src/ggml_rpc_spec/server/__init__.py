"""The reference server: NumPy CPU devices behind the GGML RPC protocol (`ggml-rpc-server`)."""
