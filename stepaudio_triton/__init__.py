"""The Triton adapter layer shared by ``model_repository/*/1/model.py``: tensors ⇄ library types, config
parameters, errors → ``TritonError``. Imported only inside Triton's python stub (it imports
``triton_python_backend_utils``); the library ``stepaudio`` never imports it."""
