"""Shared test setup, and the skip policy: README promises a green run skips nothing, so a
skip fails the run unless ``tests/allowed_skips.txt`` lists it with a reason (``-rs`` in
``setup.cfg`` prints every skip's reason)."""
import fnmatch
import os
import warnings

import pytest
import torch

# pytest-xdist runs one worker per core: more intra-op threads than cores slows torch
# down many times over, so each worker computes on one thread.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    warnings.filterwarnings("ignore", category=FutureWarning)
    yield


def pytest_addoption(parser):
    parser.addini("allowed_skips", "file of node id patterns allowed to skip, one per line with '# why'",
                  default="tests/allowed_skips.txt")


def allowed_skips(config) -> list[str]:
    """The patterns of the allow-list; each must say why after '#'."""
    path = config.rootpath / config.getini("allowed_skips")
    patterns = []
    for number, line in enumerate(path.read_text().splitlines() if path.exists() else [], 1):
        pattern, _, why = line.partition("#")
        if pattern.strip() and not why.strip():
            raise pytest.UsageError(f"{path}:{number}: say after '#' why {pattern.strip()} may skip")
        if pattern.strip():
            patterns.append(pattern.strip())
    return patterns


def unexpected_skips(config) -> list:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    patterns = allowed_skips(config)
    return [r for r in skipped if not any(fnmatch.fnmatchcase(r.nodeid, p) for p in patterns)]


def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "workerinput"):  # xdist workers: the controller decides
        return
    if unexpected_skips(session.config) and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    unexpected = unexpected_skips(config)
    if unexpected:
        terminalreporter.section("skips not on the allow-list (they fail the run)", red=True)
        for report in unexpected:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            terminalreporter.line(f"{report.nodeid}: {reason}")
