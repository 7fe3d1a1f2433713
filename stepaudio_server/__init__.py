"""The serving layer: the Triton launcher (``python -m stepaudio_server``), its HTTP guard in front of Triton's HTTP
endpoint, the stub supervisor and shared-memory cleanup. Deployment code: the library ``stepaudio`` never imports it,
and it never imports the adapter package ``stepaudio_triton`` (that runs only inside Triton's python stubs)."""
