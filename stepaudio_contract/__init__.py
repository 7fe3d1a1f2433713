"""The wire contract between clients, the gateway and the served models: tensor specs, error codes, session
options, Triton-version compatibility and one request helper. Triton-free and torch-free, with no side effects at
import: adapters, gateway, clients, bench and the renderer all import it."""
