"""Fails in initialize on purpose: the launcher must report this text."""


class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("smoke_broken refuses to load: deliberate test failure")

    def execute(self, requests):
        return []
