"""marco_jax.data.parallelism: the input pipeline's workers, threads and buffers chosen from the
cores when a config says -1 (configs/default.py), and explicit values kept."""

import pytest
from helpers import load_config

from marco_jax.data import parallelism
from marco_jax.training import config_checks


@pytest.mark.parametrize(("cores", "workers"), [(1, 1), (2, 1), (3, 2), (16, 15), (64, 63)])
def test_auto_takes_a_worker_per_core_but_one(cores, workers):
    chosen = parallelism.choose(load_config("default").input, cores)
    assert chosen == parallelism.Parallelism(workers=workers, read_threads=1, prefetch=2)


def test_explicit_values_are_kept_and_in_process_threads_use_the_cores():
    inp = load_config("default").input
    inp.num_workers, inp.prefetch_buffer_size = 3, 5
    assert parallelism.choose(inp, 16) == parallelism.Parallelism(3, 1, 5)
    inp.num_workers = 0  # batches built in this process: the threads are the parallelism
    assert parallelism.choose(inp, 16) == parallelism.Parallelism(0, 16, 5)
    inp.read_threads = 2
    assert parallelism.choose(inp, 16) == parallelism.Parallelism(0, 2, 5)


def test_the_default_cores_are_this_process_s_affinity():
    assert parallelism.choose(load_config("default").input).workers == max(
        1, parallelism.available_cores() - 1
    )


def test_config_checks_accept_auto_and_refuse_other_negatives():
    config = load_config("default")
    assert config_checks.problems(config) == []
    for field in ("num_workers", "read_threads", "prefetch_buffer_size"):
        config.input[field] = -2
    assert [p.split("=")[0] for p in config_checks.problems(config)] == [
        "config.input.num_workers",
        "config.input.prefetch_buffer_size",
        "config.input.read_threads",
    ]
