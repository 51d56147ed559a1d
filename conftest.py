"""Doctest collection for the packages (pyproject: `--doctest-modules`, testpaths `modules datamodules callbacks
recipes` besides `tests`).

The `>>>` examples run without the optional extras (pyproject `[project.optional-dependencies]`): an example that
needs one is skipped where it is not installed, and a module that could not even be imported without one is not
collected. The test setup proper (fixtures, offline hub) is tests/conftest.py.
"""

from __future__ import annotations

import importlib.util

import pytest
from _pytest.doctest import DoctestItem

# Examples that need an optional extra: {module or object (a doctest's name, or a prefix of it): import names}.
DOCTEST_REQUIRES: dict[str, tuple[str, ...]] = {
    "modules.retrieval": ("bm25s",),  # [agents]
    "modules.papers.stepsearch.rewards.tfidf_cosines": ("sklearn",),  # [agents]
    "modules.papers.stepsearch.rewards.information_gain_steps": ("sklearn",),
    "modules.papers.stepsearch.rewards.step_rewards": ("sklearn",),
}
# Modules that import an optional extra at import time: {path: import names}. Today every extra is imported
# inside the function that uses it (e.g. `vllm` in modules/rollout/vllm.py), so this is empty.
IMPORT_REQUIRES: dict[str, tuple[str, ...]] = {}


def _missing(names: tuple[str, ...]) -> list[str]:
    def installed(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a parent package missing, or the module blocked in sys.modules
            return False

    return [name for name in names if not installed(name)]


collect_ignore = [path for path, names in IMPORT_REQUIRES.items() if _missing(names)]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not isinstance(item, DoctestItem):
            continue
        needs = [n for key, names in DOCTEST_REQUIRES.items() if item.name == key or item.name.startswith(key + ".")
                 for n in names]
        missing = _missing(tuple(needs))
        if missing:
            item.add_marker(pytest.mark.skip(reason=f"the example needs {', '.join(missing)} (an optional extra)"))
