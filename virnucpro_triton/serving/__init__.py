"""Triton Python-backend models. Imported only inside tritonserver's Python stub, where
`triton_python_backend_utils` exists; each exported entry's 1/model.py (generated from its spec,
repository/config.py) re-exports one."""
