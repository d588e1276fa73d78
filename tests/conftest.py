"""Running a test module on both implementations.

A module that tests the public API, not one implementation's internals,
declares ``pytestmark = pytest.mark.usefixtures("each_backend")``: every test
in it then runs twice, on ``zsmalloc.model`` and on ``zsmalloc.engine``, with
the module's ``Pool``, ``Memory`` and ``ZramDevice`` names bound to that
implementation's classes for the test (the module imports them from ``zsmalloc`` as a user
would).  ``impl`` is the implementation's module, for tests that want it
directly.  A test that does read one implementation's internals says so
with ``@pytest.mark.model_only`` (or ``engine_only``) and runs once.
"""

from __future__ import annotations

from types import ModuleType

import pytest

from zsmalloc import engine, model
from zsmalloc.zram import device as zram_model
from zsmalloc.zram import engine as zram_engine

IMPLEMENTATIONS = {"model": model, "engine": engine}
#: each implementation's zram device, bound to a module's ``ZramDevice`` name as Pool and Memory are
ZRAM_DEVICES = {"model": zram_model.ZramDevice, "engine": zram_engine.ZramDevice}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """``zsmalloc.model`` or ``zsmalloc.engine``."""
    marks = {m.name for m in request.node.iter_markers()}
    if f"{'engine' if request.param == 'model' else 'model'}_only" in marks:
        pytest.skip(f"not about the {request.param}")
    return IMPLEMENTATIONS[request.param]


@pytest.fixture
def each_backend(
    impl: ModuleType, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> ModuleType:
    for name in ("Pool", "Memory"):
        if hasattr(request.module, name):
            monkeypatch.setattr(request.module, name, getattr(impl, name))
    if hasattr(request.module, "ZramDevice"):
        monkeypatch.setattr(request.module, "ZramDevice", ZRAM_DEVICES[impl.__name__.rsplit(".", 1)[1]])
    return impl
