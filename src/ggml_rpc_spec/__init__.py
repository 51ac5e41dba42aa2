"""The GGML RPC protocol as an executable specification.

Layers, lowest first; a module imports only from its own layer or the ones below it:

- `protocol`       bytes only: schemas, version profiles, the command table, rules, the op
                   catalogue, sans-IO framing, the trace format, version translation
- `netio`          the socket plumbing every I/O shell shares
- `executor`       the NumPy ggml: device memory and every op, for the reference server
- `server`         the reference server (`ggml-rpc-server`)
- `client`         a Python client (`ggml-rpc-client`) and a graph builder
- `relay`          proxy, version bridge and guard: servers in front of other servers
- `traces`         trace files and packet captures: show, replay, import, export
- `upstream_peers` the real upstream C++ peers, built and driven
- `conformance`    the conformance suite (`ggml-rpc-conformance`, a pytest plugin)
"""
