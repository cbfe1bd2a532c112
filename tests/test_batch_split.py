"""One batch-split rule for Ray Data and the workers: a global batch that does not divide is refused up front."""

import contextlib

import pytest

from raysemi.config import load_config
from raysemi.data.streams import StreamSpec, worker_batch
from raysemi.engine.preflight import prepare_run
from raysemi.errors import ConfigError
from raysemi.methods.supervised import Supervised
from tests.conftest import fast_config


def test_each_worker_takes_an_equal_share_and_local_mode_takes_all():
    assert [worker_batch(12, n) for n in (0, 1, 2, 3, 4, 6)] == [12, 12, 6, 4, 3, 2]
    with pytest.raises(ValueError, match=r"batch_size=8 is the global batch and must divide by "
                                         r"scaling.num_workers=3; accepted: batch_size=6 or 9"):
        worker_batch(8, 3)


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.batch_size=8", "scaling.num_workers=3"],
     "train.batch_size=8 is the global batch and must divide by scaling.num_workers=3; accepted: "
     "train.batch_size=6 or 9, or scaling.num_workers in 1, 2, 4, 8"),
    (["train.unlabeled_batch_size=5", "scaling.num_workers=2", "train.batch_size=4"],
     "train.unlabeled_batch_size=5 is the global batch and must divide by scaling.num_workers=2; accepted: "
     "train.unlabeled_batch_size=4 or 6, or scaling.num_workers in 1, 5"),
    (["train.batch_size=2", "scaling.num_workers=4"],  # no smaller multiple of 4 than 4 itself
     "train.batch_size=2 is the global batch and must divide by scaling.num_workers=4; accepted: "
     "train.batch_size=4, or scaling.num_workers in 1, 2"),
])
def test_a_global_batch_that_does_not_divide_is_refused_with_the_accepted_values(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_stream_batch_the_method_derives_is_checked_in_preflight(synthetic_root, tmp_path, monkeypatch):
    # train.batch_size=4 passes the config check; a method whose stream asks for 5 images over 2 workers must not
    # reach Ray Data (which would hand each worker 2 and train on 4 images a step)
    monkeypatch.setattr(Supervised, "streams", lambda self: {"labeled": StreamSpec("labeled", 5)})
    cfg = fast_config(synthetic_root, tmp_path / "run", "scaling.num_workers=2")
    with pytest.raises(ConfigError, match=r"method supervised's 'labeled' stream batch_size=5 is the global batch "
                                          r"and must divide by scaling.num_workers=2; accepted: .*=4 or 6"):
        prepare_run(cfg)
    assert not (tmp_path / "run").exists()


def test_the_worker_loop_asks_each_shard_for_the_share_the_dataset_build_uses():
    from raysemi.ray.train import open_streams

    asked = {}

    class Shard:
        def __init__(self, name):
            self.name = name

        def iter_torch_batches(self, batch_size, drop_last, prefetch_batches):
            asked[self.name] = (batch_size, drop_last)
            return (batch for batch in ())

    specs = {"labeled": StreamSpec("labeled", 9), "unlabeled": StreamSpec("unlabeled", 12)}
    with contextlib.ExitStack() as stack:
        open_streams(stack, specs, Shard, world_size=3)
    assert asked == {"labeled": (3, True), "unlabeled": (4, True)}
    assert [spec.per_worker_batch(3) for spec in specs.values()] == [3, 4]  # what build_datasets uses
