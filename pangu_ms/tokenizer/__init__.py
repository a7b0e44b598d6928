"""The PanGu-alpha tokenizer: jieba precise mode, then SentencePiece (the released id layout).

- `tokenizer`: `PanguTokenizer` (encode/decode, batch encoding over worker processes),
  `segment`/`segment_batch`, the special ids, `save_tokenizer`.
- `fast_jieba`: `FastJieba`, an exact and faster jieba precise-mode segmenter.
- `train`: `train_tokenizer` from segmented documents.
- `code`: `CodeTokenizer` (PanGu-Coder: exact round trip of source code), `train_code_tokenizer`,
  and `load_tokenizer`, which picks the class a tokenizer directory was trained as.
"""
from pangu_ms.tokenizer.tokenizer import (BOS_ID, EOD_ID, EOS_ID, EOT_ID, INFO_FILE, MASK_ID, MODEL_FILE, NEWLINE,
                                          NEWLINE_ID, PAD_ID, SEP_ID, SOURCES, SPACE, SPACE_ID, SPECIAL_PIECES,
                                          UNK_ID, PanguTokenizer, file_sha256, resolve_workers, save_tokenizer,
                                          segment, segment_batch)
from pangu_ms.tokenizer.train import train_tokenizer
from pangu_ms.tokenizer.code import CodeTokenizer, load_tokenizer, train_code_tokenizer

__all__ = ["CodeTokenizer", "load_tokenizer", "train_code_tokenizer", "BOS_ID", "EOD_ID", "EOS_ID", "EOT_ID", "INFO_FILE", "MASK_ID", "MODEL_FILE", "NEWLINE", "NEWLINE_ID",
           "PAD_ID", "SEP_ID", "SOURCES", "SPACE", "SPACE_ID", "SPECIAL_PIECES", "UNK_ID", "PanguTokenizer",
           "file_sha256", "resolve_workers", "save_tokenizer", "segment", "segment_batch", "train_tokenizer"]
