"""The fault matrix of the farm (issue 7), one test per case of tests/fault_cases.py.

Every case is a real run (local Ray, real Blender at 32², 2 views, Cycles 1 spp, 6 shapes) with
a real fault, its expected outcome checked, then the recovery a user would do; after it, the
root must hold exactly 6 shapes and 12 views, nothing ledgered, no temporary or unlisted file, and
every file byte-identical to one undisturbed run with the same seed (built once for the module).
Slow or timing-dependent cases (a whole node killed, kill -9 of the driver, a hang on every
attempt, a render hang on a real 4 s clock: the default suite covers that one with a virtual clock
in test_render.py) are marked `chaos`: `make chaos` runs them; `python bench/chaos.py` prints the
whole table.
"""

from __future__ import annotations

import pytest

from fault_cases import CASES, build_reference, run_case

pytestmark = [pytest.mark.ray, pytest.mark.blender]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, ray_local):
    return build_reference(tmp_path_factory.mktemp("reference") / "root")


def test_the_matrix_has_at_least_twenty_cases_and_most_run_in_ci():
    assert len(CASES) >= 20 and len({c.name for c in CASES}) == len(CASES)
    assert sum(not c.chaos for c in CASES) >= 20  # the default suite (CI) runs these


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.name, marks=[pytest.mark.chaos] if c.chaos else []) for c in CASES]
)
def test_fault(case, reference, tmp_path):
    outcome = run_case(case, reference, tmp_path)
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    assert outcome.error is None, f"{case.name} ({case.fault}): {outcome.error}"
    assert outcome.state.identical, f"{case.name}: after recovery: " + "; ".join(outcome.state.problems)
    assert (outcome.state.shapes, outcome.state.views) == (6, 12)
