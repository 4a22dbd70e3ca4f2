"""Tiny random-weight XLM-RoBERTa models saved to a folder, for the FlagEmbedding backends.

Built at test time, nothing downloaded: a Unigram tokenizer trained on a few sentences and a
2-layer, 32-wide model in bge-m3's layout (plus the colbert/sparse heads `BGEM3FlagModel`
looks for) and in bge-reranker's (sequence classification, one label). The loading, batching
and scoring code of FlagEmbedding runs for real; only the weights are toys.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
    XLMRobertaModel,
    XLMRobertaTokenizerFast,
)

TINY_HIDDEN = 32
# XLM-R's order, so pad=1 and the position ids (which start after padding_idx) line up.
_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
_CORPUS = [
    "用户在产后恢复期需要注意饮食和休息",
    "客户最近购买了跑步鞋、运动手表和蛋白粉",
    "聊天记录显示用户关心价格、优惠券和售后服务",
    "会员等级：金卡，近三十天浏览母婴用品十二次",
    "退货原因：尺码不合适，希望换大一号",
    "The quick brown fox jumps over the lazy dog, 0123456789.",
]


class TinyModels(BaseModel):
    embedder_dir: Path
    reranker_dir: Path
    hidden_size: int = TINY_HIDDEN


def tiny_tokenizer() -> XLMRobertaTokenizerFast:
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=_SPECIALS, unk_token="<unk>")
    tok.train_from_iterator(_CORPUS * 3, trainer)
    # "<s> A </s></s> B </s>", as XLM-R and the bge models expect.
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return XLMRobertaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=512,
    )


def _config(vocab_size: int, **extra: int) -> XLMRobertaConfig:
    return XLMRobertaConfig(
        vocab_size=vocab_size,
        hidden_size=TINY_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        # 512 tokens + padding_idx offset, so FlagEmbedding's default max_length of 512 fits.
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        **extra,
    )


def build_tiny_models(root: Path, seed: int = 0) -> TinyModels:
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    vocab = len(tokenizer)

    embedder_dir = root / "tiny-bge-m3"
    XLMRobertaModel(_config(vocab)).save_pretrained(embedder_dir)
    tokenizer.save_pretrained(embedder_dir)
    # Without these two files BGEM3FlagModel initialises the heads at random and logs that
    # it is not fit for inference; with them it takes the real loading path.
    torch.save(
        torch.nn.Linear(TINY_HIDDEN, TINY_HIDDEN).state_dict(), embedder_dir / "colbert_linear.pt"
    )
    torch.save(torch.nn.Linear(TINY_HIDDEN, 1).state_dict(), embedder_dir / "sparse_linear.pt")

    reranker_dir = root / "tiny-bge-reranker"
    XLMRobertaForSequenceClassification(_config(vocab, num_labels=1)).save_pretrained(reranker_dir)
    tokenizer.save_pretrained(reranker_dir)
    return TinyModels(embedder_dir=embedder_dir, reranker_dir=reranker_dir)
