"""Triton Python-backend models. Imported only inside tritonserver's Python stub, where
`triton_python_backend_utils` exists; each
`virnucpro_triton/model_repository/*/1/model.py` (copied into every exported entry) re-exports
one."""
