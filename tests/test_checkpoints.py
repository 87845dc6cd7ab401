"""The final model's save (llmforge.training.checkpoints): where generation stops."""

from __future__ import annotations

import json

from conftest import tiny_gpt2
from llmforge.training.checkpoints import save_final, stop_ids


def test_stop_ids_put_the_asked_ones_first_and_keep_the_models_own():
    assert stop_ids([7, 3], [3, 9, 10]) == [7, 3, 9, 10]  # a Llama-3-style base keeps its own list
    assert stop_ids(3, 3) == 3 and stop_ids(3, None) == 3  # one id stays one id
    assert stop_ids(3, [3, 4]) == [3, 4] and stop_ids(None, None) is None


class _Trainer:
    def __init__(self, model) -> None:
        self.model = model

    def save_model(self, path: str) -> None:
        self.model.save_pretrained(path)


class _Tok:
    eos_token_id, pad_token_id = 0, 1

    def save_pretrained(self, path: str) -> None:
        pass


def test_the_saved_generation_config_stops_at_the_turn_end_and_at_the_bases_own_ids(tmp_path):
    model = tiny_gpt2()
    model.generation_config.eos_token_id = [0, 42]  # what the base stopped at: EOS and a second id of its own
    save_final(_Trainer(model), _Tok(), tmp_path / "final", "fp", {"steps": 1}, eos_token_id=[7, 0])
    saved = json.loads((tmp_path / "final" / "generation_config.json").read_text())
    assert saved["eos_token_id"] == [7, 0, 42] and saved["pad_token_id"] == 1
