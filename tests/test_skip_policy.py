"""A skip fails the run unless the allow-list names it with a reason (tests/conftest.py)."""
import pathlib

import pytest

pytest_plugins = ["pytester"]
QUICK = ("-p", "no:hypothesispytest")  # its summary imports much of hypothesis
CONFTEST = pathlib.Path(__file__).with_name("conftest.py").read_text()
SKIPPING = """
import pytest

def test_runs():
    pass

def test_needs_a_gpu():
    pytest.skip("no GPU here")
"""


@pytest.fixture
def suite(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\nallowed_skips = allowed.txt\n")
    pytester.makepyfile(test_mod=SKIPPING)
    return pytester


def test_an_unexpected_skip_fails_the_run_and_names_its_reason(suite):
    result = suite.runpytest("-rs", *QUICK)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*skips not on the allow-list*", "test_mod.py::test_needs_a_gpu: *no GPU here"])


def test_an_allowed_skip_passes(suite):
    suite.path.joinpath("allowed.txt").write_text("test_mod.py::test_needs_a_gpu  # CI has no GPU\n")
    assert suite.runpytest(*QUICK).ret == pytest.ExitCode.OK


def test_an_allow_list_entry_without_a_reason_is_refused(suite):
    suite.path.joinpath("allowed.txt").write_text("test_mod.py::*\n")
    result = suite.runpytest(*QUICK)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
