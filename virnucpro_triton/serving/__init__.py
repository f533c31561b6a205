"""Triton Python-backend models. Imported only inside tritonserver's Python stub, where
`triton_python_backend_utils` exists; each `model_repository/*/1/model.py` re-exports one."""
