"""Tiny multilingual tokenizer and encoder, built locally in seconds (no hub), for tests.

`make_tiny_tokenizer` trains an XLM-R-style Unigram tokenizer on a built-in list of English, German,
French, Russian and Japanese lines; `make_tiny_model` saves a randomly initialised 2-layer encoder
(hidden size 32) and the tokenizer into one folder, loadable with `AutoModel` / `AutoTokenizer`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertModel,
    PreTrainedTokenizerBase,
    XLMRobertaConfig,
    XLMRobertaModel,
    XLMRobertaTokenizerFast,
)

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
MAX_LEN = 128
"""Tokens per sequence; XLM-R positions start after the padding index, hence 130 position embeddings."""

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Where is the nearest train station?",
    "Dense retrieval encodes queries and passages into vectors.",
    "The file could not be opened because it does not exist.",
    "Press any key to continue, or Escape to cancel.",
    "Language-agnostic representations help cross-lingual search.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Wo ist der nächste Bahnhof?",
    "Die Datei konnte nicht geöffnet werden, weil sie nicht existiert.",
    "Drücken Sie eine beliebige Taste, um fortzufahren.",
    "Mehrsprachige Suche braucht gute Satzvektoren.",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "Où se trouve la gare la plus proche ?",
    "Le fichier n'a pas pu être ouvert car il n'existe pas.",
    "Appuyez sur une touche pour continuer ou sur Échap pour annuler.",
    "La recherche multilingue repose sur des représentations communes.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "Где находится ближайший вокзал?",
    "Не удалось открыть файл, потому что он не существует.",
    "Нажмите любую клавишу, чтобы продолжить.",
    "Многоязычный поиск использует общие представления.",
    "素早い茶色の狐が怠け者の犬を飛び越える。",
    "一番近い駅はどこですか？",
    "ファイルが存在しないため開けませんでした。",
    "続行するには任意のキーを押してください。",
    "多言語検索は共通の表現を使います。",
]


def make_tiny_tokenizer(path: str | Path, vocab_size: int = 400) -> PreTrainedTokenizerBase:
    """Train a Unigram tokenizer (XLM-R specials <s> <pad> </s> <unk> <mask>, ids 0-4) and save it to `path`."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, unk_token="<unk>")
    tok.train_from_iterator(TEXTS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    wrapped = XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                      cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
                                      mask_token="<mask>", model_max_length=MAX_LEN)
    wrapped.save_pretrained(path)
    return wrapped


def make_tiny_model(path: str | Path, tokenizer: PreTrainedTokenizerBase, model_type: str = "xlm-roberta",
                    seed: int = 0) -> torch.nn.Module:
    """A 2-layer encoder (hidden 32, 2 heads) with `vocab_size=len(tokenizer)`, seeded; saved with the tokenizer."""
    shape = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=MAX_LEN + 2, pad_token_id=tokenizer.pad_token_id)
    if model_type == "xlm-roberta":
        config = XLMRobertaConfig(**shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        model_cls = XLMRobertaModel
    elif model_type == "bert":
        config, model_cls = BertConfig(**shape), BertModel
    else:
        raise ValueError(f"model_type: expected 'xlm-roberta' or 'bert', got {model_type!r}")
    torch.manual_seed(seed)
    model = model_cls(config, add_pooling_layer=False)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


def copy_without_dropout(source: Path, target: Path):
    """Copy the tiny model folder `source` to `target` with dropout off; returns the loaded encoder, for
    the caller to reshape its weights and save again."""
    import json
    import shutil

    from transformers import AutoModel

    shutil.copytree(source, target, dirs_exist_ok=True)
    config = json.loads((target / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (target / "config.json").write_text(json.dumps(config))
    return AutoModel.from_pretrained(target)
