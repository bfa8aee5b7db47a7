"""Training in two processes (DDP on this CPU, gloo backend) learns what one process learns.

`batch_size` is the global micro-batch: 8 is 1 x 8 in one process and 2 x 4 in two, and the Trainer hands
batch k of the same sampled order to rank k % 2, so each optimizer step sees the same rows. In fp32 with
no dropout only the order of the gradient sum differs (the all-reduce): the loss curves agree to rel
1e-5 (measured: 1e-7) and the adapters to atol 1e-4 (measured: 4e-5, on weights up to 0.14; Adam divides
by the root of tiny second moments, which spreads the rounding). Under bf16 autocast the curves measured
2e-4 apart, from bf16 rounding alone.
"""
from __future__ import annotations

import json
import os

import pytest

from curation.errors import ConfigError
from training import distributed
from training.config import TrainConfig

# The launch test's workers import this module to find their function: the model stack is imported in
# the tests that train, not here, so that the workers start in seconds.


def _ddp_config(student, processes: int, **kw) -> TrainConfig:
    from tests.test_training import _config

    return _config(student, processes=processes, **kw)


class Recorder:
    """A progress wrapper (StepContext.track's contract) that remembers what it was asked to show."""

    def __init__(self):
        self.calls: list[tuple[str, int]] = []
        self.items: list = []

    def __call__(self, iterable, description, total):
        self.calls.append((description, total))
        for item in iterable:
            self.items.append(item)
            yield item


def test_two_processes_learn_what_one_does_with_the_same_global_batch(tiny_llama_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    from tests.test_training import _rows
    from training.checkpoints import SEAL
    from training.trainer import train

    rows, heldout = _rows(48), _rows(16, offset=3)
    kw = dict(max_steps=6, save_steps=3, lora_dropout=0.0, compute_dtype="fp32", eval_steps=3,
              early_stopping_patience=2)  # never stops here; rank 0 keeps best/ and the adapter comes from it
    one = train(rows, _ddp_config(tiny_llama_dir, 1, **kw), tmp_path / "one", seed=3, eval_df=heldout)
    progress = Recorder()
    two = train(rows, _ddp_config(tiny_llama_dir, 2, **kw), tmp_path / "two", seed=3, eval_df=heldout,
                progress=progress)

    assert two.steps == one.steps == 6
    assert two.losses == pytest.approx(one.losses, rel=1e-5)
    assert (two.tokens_seen, two.answer_tokens_seen) == (one.tokens_seen, one.answer_tokens_seen)  # every rank's
    # Held-out loss is a mean of per-batch means, and a rank's batch is half as large: close, not equal.
    assert two.eval_steps == one.eval_steps == [3, 6]
    assert two.eval_losses == pytest.approx(one.eval_losses, rel=2e-2)
    a, b = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (tmp_path / "one", tmp_path / "two"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-4)
    # rank 0 wrote the card and the result; each checkpoint holds both ranks' RNG states under one seal
    assert (tmp_path / "two" / "best" / "STEP").read_text() == "6"
    assert (tmp_path / "two" / "adapter" / "README.md").is_file() and (tmp_path / "two" / "train.DONE").is_file()
    assert json.loads((tmp_path / "two" / "train-result.json").read_text())["result"]["losses"] == two.losses
    checkpoint = tmp_path / "two" / "checkpoints" / "checkpoint-6"
    assert {"rng_state_0.pth", "rng_state_1.pth", SEAL} <= {p.name for p in checkpoint.iterdir()}
    # the bar is driven here, by rank 0's steps
    assert progress.calls == [("train", 6)] and progress.items == list(range(6))


def test_more_processes_than_cores_or_a_batch_that_does_not_split_is_one_line(tiny_llama_dir, tmp_path, monkeypatch):
    from pydantic import ValidationError

    from tests.test_training import _rows
    from training.trainer import train

    rows = _rows(8)
    cores = len(os.sched_getaffinity(0))
    with pytest.raises(ConfigError, match=f"train.processes={cores + 1} is more than this machine's {cores} "
                                          "CPU cores") as too_many:
        train(rows, _ddp_config(tiny_llama_dir, cores + 1, batch_size=8 * (cores + 1)), tmp_path / "a")
    assert not (tmp_path / "a").exists()  # refused before anything is written
    with pytest.raises(ValidationError, match="batch_size=7 does not split over 2 processes"):
        TrainConfig(batch_size=7, processes=2)  # a recipe with it does not load
    # under a launcher the launcher's world size is what the batch must split over
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    with pytest.raises(ConfigError, match="batch_size=7 does not split over 2 processes") as uneven:
        train(rows, _ddp_config(tiny_llama_dir, 1, batch_size=7), tmp_path / "b")
    assert "\n" not in str(too_many.value) + str(uneven.value)
    assert not (tmp_path / "b").exists()


def test_processes_is_an_option_that_leaves_existing_keys_and_recipe_hashes_alone():
    from pond.recipe import parse_recipe

    one, two = TrainConfig(), TrainConfig(processes=2)
    assert "processes" not in one.model_dump() and "processes" not in one.model_dump_json()
    assert two.model_dump()["processes"] == 2
    text = "name: x\ninput: {path: a.jsonl}\ntrain: {batch_size: 8%s}\n"
    plain, with_one = parse_recipe(text % "", "r.yaml"), parse_recipe(text % ", processes: 1", "r.yaml")
    assert plain.digest() == with_one.digest() and "processes" not in plain.to_yaml()
    assert parse_recipe(text % ", processes: 2", "r.yaml").digest() != plain.digest()
    with pytest.raises(ValueError, match="train.processes: Input should be greater than 0"):
        parse_recipe(text % ", processes: 0", "r.yaml")


@pytest.mark.slow  # ~20 s; make test keeps SFT in two processes (the same launcher and rank-0 rule)
def test_dpo_in_two_processes_learns_what_one_does_and_rank_0_alone_writes(tiny_llama_dir, tmp_path):
    """train: {method: dpo, processes: 2}: the SFT stage and then DPO each in two workers (gloo), rank 0 the only
    writer of the key, the adapter, its card, train-result.json and train.DONE, as for SFT."""
    import torch
    from safetensors.torch import load_file

    from tests.test_dpo import _config as _dpo_config, _rows as _pair_rows
    from training.checkpoints import SEAL
    from training.dpo import SFT_DIR, train_dpo

    rows = _pair_rows(24)
    kw = dict(reference="sft", lora_dropout=0.0, compute_dtype="fp32", save_steps=2)
    one = train_dpo(rows, _dpo_config(tiny_llama_dir, **kw), tmp_path / "one", seed=5)
    progress = Recorder()
    two = train_dpo(rows, _dpo_config(tiny_llama_dir, processes=2, **kw), tmp_path / "two", seed=5, progress=progress)

    assert two.steps == one.steps == 4 and two.method == "dpo" and two.rows == one.rows == 16
    assert two.losses == pytest.approx(one.losses, rel=1e-4)
    assert (two.tokens_seen, two.answer_tokens_seen) == (one.tokens_seen, one.answer_tokens_seen)  # every rank's
    a, b = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (tmp_path / "one", tmp_path / "two"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-4)
    for stage in (tmp_path / "two", tmp_path / "two" / SFT_DIR):  # both stages trained in two processes
        checkpoint = stage / "checkpoints" / "checkpoint-2"
        assert {"rng_state_0.pth", "rng_state_1.pth", SEAL} <= {p.name for p in checkpoint.iterdir()}
        assert (stage / "adapter" / "README.md").is_file() and (stage / "train.DONE").is_file()
    assert json.loads((tmp_path / "two" / "train-result.json").read_text())["result"]["losses"] == two.losses
    assert "processes" not in json.loads((tmp_path / "two" / "train-key.json").read_text())["config"]
    assert progress.calls == [("train", 3), ("dpo", 4)] and progress.items == [0, 1, 2, 0, 1, 2, 3]


def _work(fail_on: int | None, progress=None) -> None:
    """A worker for launch(): rank 0 drives a progress bar; rank `fail_on` raises a pond error."""
    if progress is not None:
        for _ in progress(range(3), "work", 3):
            pass
    # the workers share the cores (the test starts them with no OMP_NUM_THREADS set)
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    assert (os.environ["WORLD_SIZE"], os.environ["OMP_NUM_THREADS"]) == ("2", str(threads))
    if distributed.rank() == fail_on:
        raise ConfigError(f"refused on rank {fail_on}")


def test_launch_relays_rank_0s_progress_and_raises_a_workers_error_as_itself(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    progress = Recorder()
    distributed.launch(2, _work, (None,), {}, progress)
    assert progress.calls == [("work", 3)] and progress.items == [0, 1, 2]
    with pytest.raises(ConfigError, match="refused on rank 1"):
        distributed.launch(2, _work, (1,), {}, None)
