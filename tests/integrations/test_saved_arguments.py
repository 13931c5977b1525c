"""The one comparison of saved training arguments with a recipe (CFG and `config` both use it)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from resumedoctor.integrations.trl.saved_arguments import differing_keys


@pytest.mark.parametrize(("saved", "recipe", "differs"), [
    ({"reward_weights": [1.0, 2.0]}, {"reward_weights": [2.0, 1.0]}, True),  # weights[i] weighs reward_funcs[i]
    ({"reward_funcs": ["a.f", "b.g"]}, {"reward_funcs": ["b.g", "a.f"]}, True),
    ({"reward_weights": [1, 1, 2]}, {"reward_weights": [1, 2, 2]}, True),
    ({"report_to": ["wandb", "tensorboard"]}, {"report_to": ["tensorboard", "wandb"]}, False),
    ({"lr_scheduler_kwargs": {"min_lr": 1}}, {"lr_scheduler_kwargs": {"min_lr": 1.0}}, False),
    ({"lr_scheduler_kwargs": {"min_lr": 1}}, {"lr_scheduler_kwargs": {"min_lr": 2}}, True),
    ({"optim_target_modules": [1, 1, 2]}, {"optim_target_modules": [1, 2, 2]}, True),  # repeats count
    ({"optim_target_modules": [1, 2]}, {"optim_target_modules": [2, 1]}, False),
    ({"max_steps": 8}, {"max_steps": 8.0}, False),
])
def test_differences(saved, recipe, differs):
    assert differing_keys(saved, recipe) == (set(recipe) if differs else set())


def test_equal_arguments_never_import_deepdiff():
    """DeepDiff imports pandas (~0.3 s): `config` and CFG on an unchanged recipe must not pay it."""
    script = ("import sys\nfrom resumedoctor.integrations.trl.saved_arguments import differing_keys\n"
              "assert differing_keys({'a': [1, 2], 'b': {'c': 1}}, {'a': [1, 2], 'b': {'c': 1.0}}) == set()\n"
              "print('deepdiff' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
