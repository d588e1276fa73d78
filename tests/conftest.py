"""Running a test module on both implementations.

A module that tests the public API, not one implementation's internals,
declares ``pytestmark = pytest.mark.usefixtures("each_backend")``: every test
in it then runs twice, on ``zsmalloc.model`` and on ``zsmalloc.engine``, with
the module's ``Pool`` and ``Memory`` names bound to that implementation's
classes for the test (the module imports them from ``zsmalloc`` as a user
would).  ``impl`` is the implementation's module, for tests that want it
directly.  A test that does read one implementation's internals says so
with ``@pytest.mark.model_only`` (or ``engine_only``) and runs once.
"""

from __future__ import annotations

from types import ModuleType

import pytest

from zsmalloc import engine, model

IMPLEMENTATIONS = {"model": model, "engine": engine}


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
    return impl
