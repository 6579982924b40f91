"""The garbage-collector setting while the DAG is built (gpubio/dag_memory.py)."""

from __future__ import annotations

import gc

import pytest

from gpubio import dag_memory


@pytest.fixture(autouse=True)
def python_defaults():
    before = gc.get_threshold()
    yield before
    gc.set_threshold(*before)
    gc.unfreeze()


def test_collects_less_while_building_and_restores_after(python_defaults):
    previous = dag_memory.collect_less(environ={})
    assert previous == python_defaults
    young, middle, old = gc.get_threshold()
    assert young >= 100 * python_defaults[0] and middle > python_defaults[1] and old > python_defaults[2]
    dag_memory.restore(previous)
    assert gc.get_threshold() == python_defaults


def test_freeze_exempts_what_lives_now():
    assert gc.get_freeze_count() == 0
    dag_memory.freeze(environ={})
    assert gc.get_freeze_count() > 1000  # this test process's modules, at least


def test_gpubio_gc_default_keeps_python_settings(python_defaults):
    env = {"GPUBIO_GC": "Default "}
    assert dag_memory.collect_less(environ=env) == python_defaults
    assert gc.get_threshold() == python_defaults
    dag_memory.freeze(environ=env)
    assert gc.get_freeze_count() == 0
