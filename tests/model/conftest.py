import pytest

from instructrec.config import load_config
from instructrec.prepare import prepare
from instructrec.snapshot import snapshot_raw
from instructrec.sources import fetch_raw, read_tables
from instructrec.train import new_scorer
from tests.conftest import write_dataset


@pytest.fixture(scope="session")
def tiny_cfg(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    return load_config("tiny", environ={"INSTRUCTREC_HOME": str(home)})


@pytest.fixture(scope="session")
def prepared(tiny_cfg, tmp_path_factory):
    root = write_dataset(tmp_path_factory.mktemp("data"))
    snap = snapshot_raw(fetch_raw(str(root), tiny_cfg.paths.downloads), tiny_cfg.paths.snapshots)
    tables = read_tables(snap.kind, snap.raw_dir)
    return prepare(tiny_cfg, tables.interactions, tables.items, tables.item_noun)


def build_model(cfg, prepared, seed=0):
    return new_scorer(cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": seed})}), prepared.catalogue)
