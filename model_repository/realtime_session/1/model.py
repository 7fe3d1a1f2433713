"""realtime_session: a voice conversation per sequence (VAD → turn-taking → speculative replies → barge-in);
the session logic is ``stepaudio_triton.realtime_session``."""

from stepaudio_triton.adapter import parse_config, rendered_parameter
from stepaudio_triton.realtime_session import Metrics, RealtimeService, ServiceConfig
from stepaudio_triton.sequences import LiveGauge, SequenceTable, reaper


class TritonPythonModel:
    def initialize(self, args):
        config = parse_config(args)
        name = args["model_name"]
        service_config = ServiceConfig.from_config(config)
        max_sessions = rendered_parameter(config, "max_sessions", int)
        idle = service_config.controller.idle_timeout_seconds
        self.gauge, self.metrics = LiveGauge(name), Metrics(name)
        table = SequenceTable(name, max_sessions, idle, close=lambda s: s.close(f"no audio for {idle:g} s", error=True),
                              gauge=self.gauge)
        self.service = RealtimeService(service_config, table, self.metrics, max_sessions)
        self.reaper, self.stop_reaper = reaper(table, min(idle, 5.0))

    def execute(self, requests):
        for request in requests:
            self.service.handle(request)
        return None

    def finalize(self):
        self.stop_reaper.set()
        self.reaper.join()
        self.service.close()
        self.metrics.close()
        self.gauge.close()
