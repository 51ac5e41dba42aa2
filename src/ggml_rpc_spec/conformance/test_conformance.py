"""Every registered case, parametrized with its SPEC.md section in the id."""

from ggml_rpc_spec.conformance.runner import run_case


def test_case(check, conformance, request):
    run_case(check, conformance, request)
