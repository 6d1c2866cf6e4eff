"""Training never loses work, never destroys data, never answers wrong in silence.

Checkpoint verification and fallback, the NaN message, the workdir lock, resume across worker
counts, orphan-free SIGKILL, stored-config comparison, unreadable checkpoints and a full disk,
exit states, and config validation. Most cases work on copies of the session's trained ci
workdir (steps 3 and 6) and call the checkpoint layer directly, so that few of them compile.
"""

from __future__ import annotations

import gc
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import ci_config, load_config, main_command, started, subprocess_env

from marco_jax import parallel
from marco_jax.model import inception
from marco_jax.runs import integrity, lock, store
from marco_jax.training import checkpoints, config_checks, train
from marco_jax.training import step as train_step


def _abstract_state(config):
    """The replicated TrainState a run of `config` restores into."""
    model = inception.create_model(config, rngs=config.seed)
    _, state, _ = train_step.create(config, model, steps_per_epoch=1)
    return jax.device_put(state, parallel.replicated(parallel.create_mesh()))


@pytest.fixture
def workdir(trained_workdir, tmp_path) -> pathlib.Path:
    """A private copy of the trained ci workdir (checkpoints 3 and 6)."""
    copy = tmp_path / "run"
    shutil.copytree(trained_workdir, copy)
    return copy


def _restore(workdir: pathlib.Path, config):
    manager = store.create_manager(str(workdir), config.keep_checkpoints)
    try:
        return checkpoints.restore_latest(manager, _abstract_state(config))
    finally:
        manager.close()


def _largest_chunk(step_dir: pathlib.Path) -> pathlib.Path:
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    return max(files, key=lambda p: p.stat().st_size)


def _flip_bytes(path: pathlib.Path, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))  # same size


# ---------------------------------------------------------------------------- 1. verification


def test_bit_flip_in_latest_checkpoint_falls_back_to_previous(workdir, tfds_data_dir, caplog):
    config = ci_config(tfds_data_dir)
    chunk = _largest_chunk(workdir / "checkpoints" / "6")
    size = chunk.stat().st_size
    _flip_bytes(chunk)
    assert chunk.stat().st_size == size
    state, progress = _restore(workdir, config)
    assert int(state.step) == 3
    assert "Checkpoint 6" in caplog.text and "checkpoint 3" in caplog.text
    # Set aside, not deleted; the manager no longer sees it.
    assert [p.name.split("-")[0] for p in (workdir / "checkpoints_rejected").iterdir()] == ["6"]
    assert store.create_manager(str(workdir), read_only=True).all_steps() == [3]


def test_restored_values_are_checked_against_the_saved_record(workdir, tfds_data_dir):
    """The record catches a changed value even where the file format's own checks would not."""
    config = ci_config(tfds_data_dir)
    state, _ = _restore(workdir, config)
    record = integrity.state_record(state)
    assert all(leaf["finite"] for leaf in record.values())
    params = jax.tree.map(np.array, state.params)
    leaf = jax.tree.leaves(params)[0]
    leaf.flat[0] = 3.7e30
    tampered = state.replace(params=params)
    with pytest.raises(checkpoints.CheckpointError, match="checksum mismatch.*3.7e\\+30"):
        checkpoints.verify_restored(tampered, {"leaves": record})


def test_save_refuses_a_non_finite_state(workdir, tfds_data_dir):
    config = ci_config(tfds_data_dir)
    state, progress = _restore(workdir, config)
    bad = state.replace(opt_state=jax.tree.map(lambda x: x * np.nan, state.opt_state))
    manager = store.create_manager(str(workdir), config.keep_checkpoints)
    with pytest.raises(checkpoints.NonFiniteStateError, match="step 9 holds non-finite"):
        checkpoints.Saver(manager, config).save(9, bad, progress)
    manager.close()
    assert store.create_manager(str(workdir), read_only=True).all_steps() == [3, 6]


def test_at_least_two_checkpoints_are_kept(tmp_path):
    """With keep_checkpoints=1 the newest verified checkpoint would go as the next is written."""
    manager = store.create_manager(str(tmp_path), keep=1)
    policies = manager._options.preservation_policy.policies
    assert policies[0].n == store.MIN_KEPT == 2
    manager.close()


# ---------------------------------------------------------------------------- 7. unreadable


def _damage(step_dir: pathlib.Path, how: str) -> None:
    if how == "truncated":
        chunk = _largest_chunk(step_dir)
        chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 3])
    elif how == "deleted":
        _largest_chunk(step_dir).unlink()
    elif how == "garbage_metadata":
        (step_dir / "state" / "_METADATA").write_bytes(os.urandom(4000))
    elif how == "garbage_checkpoint_metadata":
        (step_dir / "_CHECKPOINT_METADATA").write_bytes(b"\xff\xfe" + os.urandom(500))


@pytest.fixture
def unraisable(monkeypatch) -> list:
    """Exceptions that would print "Exception ignored in ..." (abandoned I/O coroutines)."""
    seen: list = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    yield seen


@pytest.mark.parametrize("how", ["truncated", "deleted", "garbage_metadata"])
def test_damaged_latest_checkpoint_falls_back_with_one_warning(
    workdir, tfds_data_dir, how, caplog, capfd, unraisable
):
    config = ci_config(tfds_data_dir)
    _damage(workdir / "checkpoints" / "6", how)
    state, _ = _restore(workdir, config)
    assert int(state.step) == 3
    warnings = [r for r in caplog.records if "unreadable or corrupt" in r.getMessage()]
    assert len(warnings) == 1 and "checkpoint 3" in warnings[0].getMessage()
    gc.collect()
    assert not unraisable
    assert "Event loop is closed" not in capfd.readouterr().err


def test_garbage_checkpoint_metadata_alone_still_restores_verified_state(workdir, tfds_data_dir):
    """Orbax's step metadata is not needed to read the state, and the state checks out."""
    config = ci_config(tfds_data_dir)
    _damage(workdir / "checkpoints" / "6", "garbage_checkpoint_metadata")
    state, _ = _restore(workdir, config)
    assert int(state.step) == 6


def test_stray_empty_step_directory_is_set_aside(workdir, tfds_data_dir):
    config = ci_config(tfds_data_dir)
    (workdir / "checkpoints" / "40").mkdir()
    state, _ = _restore(workdir, config)
    assert int(state.step) == 6
    assert not (workdir / "checkpoints" / "40").exists()


def test_no_readable_checkpoint_is_one_clear_error_exit_4(workdir, tfds_data_dir):
    _damage(workdir / "checkpoints" / "6", "truncated")
    _damage(workdir / "checkpoints" / "3", "deleted")
    result = subprocess.run(
        main_command(workdir, tfds_data_dir),
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 4
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no readable checkpoint" in errors[0]
    assert "step 6:" in errors[0] and "step 3:" in errors[0]
    assert "Event loop is closed" not in result.stderr
    assert "Exception ignored" not in result.stderr and "Traceback" not in result.stderr
    # Nothing was moved away when no checkpoint is good.
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["3", "6"]


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs: too small for a ci checkpoint (needs root to mount)."""
    mount = tmp_path / "full"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode:
        pytest.skip(f"cannot mount a small tmpfs: {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_save_is_one_error_and_removes_its_tmp_dir(
    workdir, tfds_data_dir, full_disk, capfd
):
    config = ci_config(tfds_data_dir)
    state, progress = _restore(workdir, config)
    manager = store.create_manager(str(full_disk), config.keep_checkpoints)
    saver = checkpoints.Saver(manager, config)
    with pytest.raises(checkpoints.CheckpointError) as error:
        saver.save(6, state, progress)
        saver.finish()
    message = str(error.value)
    assert "\n" not in message and "saving checkpoint 6" in message
    assert "No space left on device" in message or "space" in message.lower()
    assert not [p for p in (full_disk / "checkpoints").iterdir() if "tmp" in p.name]
    assert "Event loop is closed" not in capfd.readouterr().err
    manager.close()


# ---------------------------------------------------------------------------- 3. lock


def test_second_process_on_a_workdir_is_refused_naming_the_holder(tmp_path):
    with lock.WorkdirLock(str(tmp_path)):
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from marco_jax.runs import lock as w\n"
                "try:\n w.WorkdirLock(sys.argv[1]).acquire()\n"
                "except w.WorkdirLockedError as e:\n print(e); sys.exit(2)",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 2
        assert f"in use by pid {os.getpid()} on host" in result.stdout
    assert not (tmp_path / lock.LOCK_FILE).exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / lock.LOCK_FILE).write_text(
        json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": 0})
    )
    with lock.WorkdirLock(str(tmp_path)) as held:
        holder = json.loads(pathlib.Path(held.path).read_text())
        assert holder["pid"] == os.getpid()


def test_training_on_a_locked_workdir_is_refused_before_any_work(workdir, tfds_data_dir):
    (workdir / lock.LOCK_FILE).write_text(
        json.dumps({"pid": 1, "host": os.uname().nodename, "started": 0})
    )
    before = (workdir / "config.json").read_text()
    with pytest.raises(lock.WorkdirLockedError, match="in use by pid 1 on host"):
        train.train_and_evaluate(ci_config(tfds_data_dir), str(workdir))
    assert (workdir / "config.json").read_text() == before


# ---------------------------------------------------------------------------- 6. config change


def test_model_or_data_changes_are_refused_in_one_line_naming_them(workdir, tfds_data_dir):
    config = ci_config(tfds_data_dir)
    config.model.image_size = 199
    config.input.global_batch_size = 16
    config.model.depth_multiplier = 0.2
    before = (workdir / "config.json").read_text()
    with pytest.raises(config_checks.ConfigError) as error:
        train.train_and_evaluate(config, str(workdir))
    message = str(error.value)
    assert "\n" not in message
    for field in ("model.image_size 151 -> 199", "input.global_batch_size 8 -> 16"):
        assert field in message
    assert "model.depth_multiplier" in message
    assert (workdir / "config.json").read_text() == before  # never overwritten on refusal


def test_dataset_variant_change_is_refused():
    stored = load_config("ci").to_dict()
    config = load_config("ci")
    config.dataset.config_name = "synthetic"
    config.dataset.config_overrides = {"num_train": 100}
    refused, allowed = config_checks.compare_with_stored(json.loads(json.dumps(stored)), config)
    assert set(refused) == {"dataset.config_name", "dataset.config_overrides"} and not allowed


def test_safe_changes_resume_and_are_recorded(workdir, tfds_data_dir):
    """A finished run relaunched with other logging/eval cadence: recorded, no step trained."""
    config = ci_config(tfds_data_dir)
    config.log_every_steps = 1
    config.eval_every_steps = 2
    config.input.num_workers = 1
    result = train.train_and_evaluate(config, str(workdir))
    assert result["status"] == train.FINISHED and result["step"] == 6
    assert store.create_manager(str(workdir), read_only=True).all_steps() == [3, 6]
    history = [
        json.loads(line) for line in (workdir / train.CONFIG_CHANGES_FILE).read_text().splitlines()
    ]
    assert history[-1]["step"] == 6
    assert history[-1]["changes"]["log_every_steps"] == [2, 1]
    assert json.loads((workdir / "config.json").read_text())["eval_every_steps"] == 2


# ---------------------------------------------------------------------------- 9. validation

BAD_VALUES = {
    "num_train_steps": -5,
    "optimizer.learning_rate": -0.01,
    "optimizer.momentum": 1.5,
    "model.depth_multiplier": 0,
    "keep_checkpoints": 0,
    "model.num_classes": 3,
    "input.eval_batch_size": 0,
    "checkpoint_every_steps": 0,
    "eval_every_steps": 0,
    "input.global_batch_size": 0,
    "dataset.config_name": "nosuch",
    "model.compute_dtype": "bfloat",
    "input.num_workers": -2,
}


def _set(config, field: str, value) -> None:
    *parents, name = field.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    node[name] = value


@pytest.mark.parametrize("field", sorted(BAD_VALUES))
def test_each_bad_value_is_one_line_naming_the_field(field):
    config = load_config("ci")
    _set(config, field, BAD_VALUES[field])
    problems = config_checks.problems(config)
    assert len(problems) == 1, problems
    assert f"config.{field}=" in problems[0] and "\n" not in problems[0]


def test_ema_decay_above_one_negative_batch_and_depth_cap():
    config = load_config("ci")
    config.optimizer.ema_decay = 1.5
    config.optimizer.ema_warmup = False
    config.input.global_batch_size = -8
    config.model.depth_caps["Mixed_6b"] = -4
    problems = config_checks.problems(config)
    assert len(problems) == 3
    assert [p.split("=")[0] for p in problems] == [
        "config.model.depth_caps",
        "config.input.global_batch_size",
        "config.optimizer.ema_decay",
    ]


def test_shipped_configs_are_valid_and_unknown_fields_tolerated():
    for name in ("default", "table3", "synthetic", "ci"):
        config = load_config(name)
        config.some_future_field = 3
        config.model.layer_depths = {"Conv2d_1a_3x3": 32}
        assert config_checks.problems(config) == [], name


def test_a_label_mapping_allows_another_class_count():
    config = load_config("ci")
    config.model.num_classes = 3
    config.dataset.label_map = {"crystals": 0, "precipitate": 1, "clear": 2, "other": 2}
    assert config_checks.problems(config) == []


def test_main_prints_one_line_and_exits_2_for_bad_values(tmp_path, tfds_data_dir):
    for override in ("--config.num_train_steps=-5", "--config.model.compute_dtype=bfloat"):
        result = subprocess.run(
            main_command(tmp_path / "w", tfds_data_dir, override), capture_output=True, text=True
        )
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: config."), lines
        assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------------------- 2. NaN


def test_nan_without_any_checkpoint_says_so(tfds_data_dir, tmp_path):
    config = ci_config(tfds_data_dir)
    config.optimizer.learning_rate = 1e30
    with pytest.raises(train.NonFiniteLossError, match="at step [12]\\b.*No checkpoint has been"):
        train.train_and_evaluate(config, str(tmp_path / "fresh"))


# ---------------------------------------------------------------------------- 4, 8. resume


def test_resume_with_other_worker_count_is_bit_identical(trained_workdir, workdir, tfds_data_dir):
    """Trained with 0 workers to step 6; resumed from step 3 with 2 workers: the same state."""
    shutil.rmtree(workdir / "checkpoints" / "6")
    config = ci_config(tfds_data_dir)
    config.input.num_workers = 2
    result = train.train_and_evaluate(config, str(workdir))
    assert result["status"] == train.FINISHED
    manager = store.create_manager(str(workdir), read_only=True)
    assert manager.latest_step() == 6
    resumed = store.restore_on_this_host(manager, 6)
    reference = store.create_manager(str(trained_workdir), read_only=True)
    expected = store.restore_on_this_host(reference, 6)
    for x, y in zip(jax.tree.leaves(expected), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(x, y)


def test_early_stopped_run_stays_stopped(workdir, tfds_data_dir):
    """progress says patience is exhausted: a relaunch trains no further step."""
    config = ci_config(tfds_data_dir)
    config.num_train_steps = 12
    config.early_stopping_patience = 1
    progress_file = next((workdir / "checkpoints" / "6" / "progress").iterdir())
    progress = json.loads(progress_file.read_text())
    progress_file.write_text(json.dumps(progress | {"evals_since_best": 1}))
    for _ in range(2):
        result = train.train_and_evaluate(config, str(workdir))
        assert result["status"] == train.EARLY_STOPPED and result["step"] == 6
    assert store.create_manager(str(workdir), read_only=True).all_steps() == [3, 6]


# ---------------------------------------------------------------------------- 5. orphans


def _steps(workdir: pathlib.Path) -> list[int]:
    directory = workdir / "checkpoints"
    if not directory.exists():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _children(pid: int) -> list[int]:
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_sigkill_leaves_no_grain_worker_alive(tmp_path, tfds_data_dir):
    """Killed while its 2 workers serve batches (after the first checkpoint, no eval workers
    starting up), the trainer's children all end within a few seconds."""
    workdir = tmp_path / "w"
    command = main_command(
        workdir,
        tfds_data_dir,
        "--config.num_train_steps=100000",
        "--config.eval_every_steps=100000",
        "--config.checkpoint_every_steps=2",
        "--config.input.num_workers=2",
    )
    output = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    with started(command, env=subprocess_env(), **output) as process:
        deadline = time.time() + 400
        # Any saved step: on a loaded machine step 2 can be saved and rotated out between polls.
        while not _steps(workdir):
            assert time.time() < deadline and process.poll() is None, "no checkpoint saved"
            time.sleep(0.2)
        workers = [p for p in _children(process.pid) if _alive(p)]
        assert len(workers) >= 2
        process.send_signal(signal.SIGKILL)
        process.wait()
        deadline = time.time() + 10
        while any(_alive(p) for p in workers) and time.time() < deadline:
            time.sleep(0.2)
        alive = [p for p in workers if _alive(p)]
    assert not alive, f"{len(alive)} of {len(workers)} children outlived the trainer"


# ---------------------------------------------------------------------------- soak


@pytest.mark.soak  # 5 training processes and 3 kills: 5-15 minutes; run with `pytest -m soak`
def test_soak_random_sigkills_and_worker_changes_end_bit_identical(tmp_path, tfds_data_dir):
    """Three SIGKILLs at random moments (compile, steps, saves, evals), restarts alternating
    between 0 and 2 grain workers; the end state equals an uninterrupted run's, bit for bit."""
    env = subprocess_env()
    overrides = ("--config.num_train_steps=12", "--config.checkpoint_every_steps=2")
    reference = tmp_path / "reference"
    subprocess.run(
        main_command(reference, tfds_data_dir, *overrides), env=env, check=True, capture_output=True
    )
    soaked = tmp_path / "soaked"
    rng = np.random.default_rng(12)
    kills = 0
    for attempt in range(10):
        workers = f"--config.input.num_workers={2 * (attempt % 2)}"
        command = main_command(soaked, tfds_data_dir, *overrides, workers)
        if kills == 3:
            result = subprocess.run(command, env=env, capture_output=True, text=True)
            assert result.returncode == 0, result.stderr[-2000:]
            break
        before = _steps(soaked)
        output = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        with started(command, env=env, **output) as process:
            deadline = time.time() + 400
            while process.poll() is None and time.time() < deadline:
                if _steps(soaked) != before:  # progress: kill at a random moment after it
                    time.sleep(rng.uniform(0, 2.5))
                    break
                time.sleep(0.05)
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
            process.wait()
    assert kills == 3
    assert not list((soaked / "checkpoints").glob("*tmp*"))
    assert not (soaked / "checkpoints_rejected").exists()
    expected = store.create_manager(str(reference), read_only=True)
    actual = store.create_manager(str(soaked), read_only=True)
    assert expected.latest_step() == actual.latest_step() == 12
    a = store.restore_on_this_host(expected, 12)
    b = store.restore_on_this_host(actual, 12)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
