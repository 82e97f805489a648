import pytest

from instructrec.backbone import load_backbone
from instructrec.config import load_config
from instructrec.model import InstructRecScorer, ScorerConfig
from instructrec.prepare import prepare
from instructrec.sources import fetch_raw, read_tables
from instructrec.snapshot import snapshot_raw
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
    return prepare(tiny_cfg, tables.interactions.drop("_row"), tables.items.drop("_row"), tables.item_noun)


def build_model(cfg, prepared, seed=0):
    bert, tok = load_backbone("tiny", seed=seed)
    m = cfg.model
    model = InstructRecScorer(ScorerConfig(n_items=prepared.catalogue.n_items, max_history=cfg.data.max_history, dim=m.dim,
                                           n_layers=m.n_layers, n_heads=m.n_heads, dropout=m.dropout,
                                           max_text_tokens=m.max_text_tokens), bert)
    model.set_catalogue(tok, prepared.catalogue.texts)
    return model, tok
