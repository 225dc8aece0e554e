"""fluxgate/auth/failures.py and the auth_metrics master service: refusals counted across
processes, rendered as fluxgate_auth_failures_total{method,reason}."""

from __future__ import annotations

import asyncio

from fluxgate.auth.failures import AuthFailures
from fluxgate.master.auth_metrics import AuthMetricsService
from fluxgate.metrics import MetricsTable, ProcessMetric
from tests.support.gateway import run_in_children


class FakeMaster:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir


def test_counts_are_shared_across_processes(tmp_path):
    service = AuthMetricsService(FakeMaster(str(tmp_path)))
    asyncio.run(service.start(None))
    try:
        def worker() -> bool:  # maps the file by path and counts into it
            table = AuthFailures.open(str(tmp_path))
            for _ in range(3):
                table.count("jwt", "expired")
            table.count("jwt", "no-such-reason")
            table.count("api_key", "invalid_key")
            return True

        assert run_in_children(1, worker) == [0]
        rows = {(dict(m.labels)["method"], dict(m.labels)["reason"]): m.value
                for m in service.metrics()}
        assert rows == {("jwt", "expired"): 3, ("jwt", "other"): 1, ("api_key", "invalid_key"): 1}
    finally:
        asyncio.run(service.stop())
    assert not (tmp_path / "auth_failures.bin").exists()


def test_labelled_process_metrics_render_as_one_family(tmp_path):
    table = MetricsTable.create(str(tmp_path / "m.bin"), capacity=2)
    try:
        text = table.render({0: ""}, [
            ProcessMetric("fluxgate_x_total", "counter", "X.", 1, (("a", "1"), ("b", 'q"uote'))),
            ProcessMetric("fluxgate_x_total", "counter", "X.", 2, (("a", "2"), ("b", "z"))),
            ProcessMetric("fluxgate_y", "gauge", "Y.", 3.5),
        ])
    finally:
        table.close()
    assert text.count("# TYPE fluxgate_x_total counter") == 1
    assert 'fluxgate_x_total{a="1",b="q\\"uote"} 1' in text
    assert 'fluxgate_x_total{a="2",b="z"} 2' in text
    assert "fluxgate_y 3.5" in text
