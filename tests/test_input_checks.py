"""Input checked at the door: every bad argument is refused at construction or at set(), with a message
naming the argument, what was given and what is allowed; a refused set() changes nothing."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import small_run
from torch.utils.data import DataLoader, Dataset, TensorDataset

from trainlab import History

g = torch.Generator().manual_seed(0)
X = torch.randn(60, 2, generator=g)
Y = (X[:, 0] > 0).long()


class _Dicts(Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return {"image": torch.randn(2), "label": i % 2}


class _Empty(Dataset):
    def __len__(self):
        return 0

    def __getitem__(self, i):
        raise IndexError(i)


CONSTRUCTION = [
    # (what the user passed, words the error must contain)
    (dict(batch_size=True), ["batch_size=True", "whole number", "True/False"]),
    (dict(eval_every=True), ["eval_every=True", "whole number"]),
    (dict(lr=torch.tensor(0.1)), ["lr=tensor(0.1000)", "number", "Tensor", "float(lr)"]),
    (dict(seed=1.7), ["seed=1.7", "whole number", "truncated"]),
    (dict(seed="abc"), ["seed='abc'", "whole number"]),
    (dict(seed=2**64), ["seed=18446744073709551616", "2**63 - 2"]),
    (dict(seed=-1), ["seed=-1", "from 0"]),
    (dict(probes=[object()]), ["probes[0]=", "trainlab.Probe"]),
    (dict(probes="GradNorm"), ["probes='GradNorm'", "list of trainlab.Probe"]),
    (dict(history="x"), ["history='x'", "trainlab.History"]),
    (dict(device="bogus"), ["device='bogus'", "'auto', 'cpu', 'cuda'"]),
    (dict(device=3.5), ["device=3.5", "'auto'"]),
    (dict(grad_noise=1e300), ["grad_noise=1e+300", "[0, 100]"]),
    (dict(lr=float("nan")), ["lr=nan", "not finite"]),
    (dict(data=(X, torch.zeros(60, dtype=torch.long))), ["single class", "every label is 0"]),
    (dict(data=(X, torch.where(Y == 0, -100, Y))), ["label -100", "ignore_index"]),
    (dict(data=(X, Y - 1)), ["label -1", "0, 1, ..., C-1"]),
    (dict(data=(X[:0], Y[:0])), ["empty"]),
    (dict(data=_Empty()), ["empty"]),
    (dict(data=_Dicts()), ["dicts", "'image'", "(input, label) pairs"]),
    (dict(data=DataLoader(TensorDataset(X, Y, Y), batch_size=8)), ["(input, label)", "3 parts"]),
    (dict(data=(X, Y), val_data=(X[:, :1], Y)), ["val_data", "shape (1,)", "(2,)"]),
    (dict(data=(X, Y), val_data=(X, Y + 5)), ["val_data has label", "classes 0..1"]),
    (dict(data=(X, Y), val_data=(X[:0], Y[:0])), ["val_data is empty"]),
    (dict(data=(X, Y), val_data="moons"), ["val_data must be"]),
    (dict(model=42), ["model must be a name"]),
]


@pytest.mark.parametrize("kw, words", CONSTRUCTION, ids=[", ".join(k for k in kw) + f"-{i}"
                                                         for i, (kw, _) in enumerate(CONSTRUCTION)])
def test_a_bad_argument_is_refused_at_construction(kw, words):
    kw = {"data": (X, Y), **kw}
    with pytest.raises((ValueError, TypeError)) as err:
        small_run(**kw)
    message = str(err.value)
    assert all(w in message for w in words), message


SET = [
    (dict(batch_size=True), ["batch_size=True", "whole number"]),
    (dict(batch_size=2.5), ["batch_size=2.5", "whole number"]),
    (dict(eval_every=0), ["eval_every=0", "[1, inf)"]),
    (dict(lr=torch.tensor(0.1)), ["lr=", "Tensor"]),
    (dict(lr=-1.0), ["lr=-1.0", "(0, inf)"]),
    (dict(lr="0.1"), ["lr='0.1'", "number"]),
    (dict(grad_noise=1e300), ["grad_noise", "[0, 100]"]),
    (dict(momentum=1.0), ["momentum=1.0", "[0, 1)"]),
    (dict(nesterov=True), ["Nesterov", "momentum"]),
    (dict(optimizer="nope"), ["unknown optimizer 'nope'", "sgd"]),
    (dict(schedule=("cosine", {"total": 0})), ["total=0", "[1, inf)"]),
    (dict(whatever=1), ["unknown setting 'whatever'"]),
]


@pytest.mark.parametrize("kw, words", SET, ids=[f"{next(iter(kw))}-{i}" for i, (kw, _) in enumerate(SET)])
def test_a_bad_setting_is_refused_by_set_and_the_run_keeps_everything(kw, words):
    run = small_run(data=(X, Y))
    run.step(5)
    before, frame, steps = run.settings(), run.history.frame(), run.steps
    with pytest.raises((ValueError, TypeError)) as err:
        run.set(**kw)
    message = str(err.value)
    assert all(w in message for w in words), message
    assert run.settings() == before and run.steps == steps
    assert run.history.frame().equals(frame)
    assert run.step(3) == 3  # and it trains on unchanged


def test_numbers_of_other_kinds_are_taken_as_plain_python_numbers():
    run = small_run(data=(X, Y), lr=np.float32(0.25), batch_size=np.int64(16), seed=np.int64(3))
    assert type(run.lr) is float and run.lr == 0.25 and type(run.batch_size) is int and run.seed == 3
    run.set(batch_size=np.int32(8))
    assert type(run.batch_size) is int and run.batch_size == 8


def test_a_dataloader_of_pairs_and_a_dataset_of_pairs_are_fine():
    run = small_run(data=DataLoader(TensorDataset(X, Y), batch_size=8), val_data=TensorDataset(X, Y))
    assert run.step(3) == 3 and "val_loss" in run.evaluate()
    h = History()
    assert small_run(data=(X, Y), history=h).history is h
