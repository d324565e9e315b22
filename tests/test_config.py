import pytest

from genrec.config import ConfigError, RunConfig, preset


@pytest.mark.parametrize("dataset, model, shape", [
    ("ml-1m", "hstu", (50, 2, 1, 50)),
    ("ml-1m", "hstu-large", (50, 8, 2, 25)),
    ("ml-20m", "hstu-large", (256, 16, 8, 32)),
    ("amzn-books", "hstu-large", (64, 16, 8, 8)),
])
def test_presets_match_the_papers_table(dataset, model, shape):
    m = preset(dataset, model).model
    assert (m.embedding_dim, m.num_layers, m.num_heads, m.attention_dim) == shape
    assert m.attention_dim == m.linear_dim


def test_books_preset_uses_its_own_length_negatives_and_dropout():
    cfg = preset("amzn-books", "hstu-large")
    assert cfg.data.max_seq_len == 50 and cfg.model.max_seq_len == 50
    assert cfg.train.num_negatives == 512 and cfg.model.dropout == 0.5


def test_reference_training_settings():
    t = preset("ml-1m", "sasrec").train
    assert (t.epochs, t.lr, t.betas, t.weight_decay, t.batch_size) == (101, 1e-3, (0.9, 0.98),
                                                                       0.0, 128)
    assert (t.num_negatives, t.temperature, t.loss) == (128, 0.05, "sampled_softmax")


def test_hstu_presets_evaluate_512_users_per_batch_sasrec_128():
    assert preset("ml-1m", "hstu").eval.batch_size == 512
    assert preset("ml-20m", "hstu-large").eval.batch_size == 512
    assert preset("ml-1m", "sasrec").eval.batch_size == 128


def test_yaml_round_trip(tmp_path):
    cfg = preset("ml-1m", "hstu-large")
    cfg.train.stochastic_length_alpha = 1.6
    cfg.to_yaml(tmp_path / "c.yaml")
    assert RunConfig.from_yaml(tmp_path / "c.yaml") == cfg


def test_yaml_base_preset_with_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("base: ml-20m/hstu-large\ntrain:\n  epochs: 7\n")
    cfg = RunConfig.from_yaml(tmp_path / "c.yaml")
    assert cfg.train.epochs == 7 and cfg.model.num_layers == 16


@pytest.mark.parametrize("text, field", [
    ("model:\n  layers: 2\n", "layers"),
    ("train: 3\n", "train"),
    ("eval:\n  protocol: loose\n", "eval.protocol"),
    ("train:\n  stochastic_length_alpha: 3.0\n", "stochastic_length_alpha"),
])
def test_bad_fields_are_named(tmp_path, text, field):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=field):
        RunConfig.from_yaml(tmp_path / "c.yaml").resolved()


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match="ml-1m"):
        preset("ml-2m")
