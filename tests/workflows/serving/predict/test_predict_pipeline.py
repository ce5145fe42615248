"""Tests of workflows/serving/predict/pipeline.py: Ray Data's settings hold only while the pipeline runs."""

from __future__ import annotations

import pytest
import ray.data

from workflows.serving.predict.pipeline import BLOCK_BYTES, actor_count, data_context


def settings() -> tuple[bool, int | None, bool]:
    context = ray.data.DataContext.get_current()
    return (
        context.execution_options.preserve_order,
        context.target_max_block_size,
        context.raise_original_map_exception,
    )


def test_the_data_context_is_put_back_after_the_pipeline_even_when_it_fails():
    before = settings()
    with data_context():
        assert settings() == (True, BLOCK_BYTES, True)
    assert settings() == before
    with pytest.raises(RuntimeError, match="the pipeline failed"), data_context():
        raise RuntimeError("the pipeline failed")
    assert settings() == before


def test_actor_count_leaves_a_cpu_to_reading_and_writing():
    assert actor_count(4.0, None, 1000) == 3
    assert actor_count(4.0, 8, 1000) == 3 and actor_count(4.0, 2, 1000) == 2
    assert actor_count(1.0, None, 1000) == 1  # one CPU: still one actor
    assert actor_count(4.0, None, 2) == 2  # never more actors than patches
