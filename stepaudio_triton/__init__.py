"""The Triton adapter layer shared by ``model_repository/*/1/model.py``: tensors ⇄ library types, config
parameters, errors → ``TritonError``. Imported only inside Triton's python stub (it imports
``triton_python_backend_utils``); the library ``stepaudio`` never imports it."""

import faulthandler
import sys

# A stub that crashes writes every thread's Python stack to the server log (its stderr) before it dies.
faulthandler.enable(file=sys.stderr, all_threads=True)
