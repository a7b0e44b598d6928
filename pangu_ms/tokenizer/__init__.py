"""The PanGu-alpha tokenizer: jieba precise mode, then SentencePiece (the released id layout).

- `tokenizer`: `PanguTokenizer` (encode/decode, batch encoding over worker processes),
  `segment`/`segment_batch`, the special ids, `save_tokenizer`.
- `fast_jieba`: `FastJieba`, an exact and faster jieba precise-mode segmenter.
- `train`: `train_tokenizer` from segmented documents.
"""
from pangu_ms.tokenizer.tokenizer import (BOS_ID, EOD_ID, EOS_ID, EOT_ID, INFO_FILE, MASK_ID, MODEL_FILE, NEWLINE,
                                          NEWLINE_ID, PAD_ID, SEP_ID, SOURCES, SPACE, SPACE_ID, SPECIAL_PIECES,
                                          UNK_ID, PanguTokenizer, file_sha256, resolve_workers, save_tokenizer,
                                          segment, segment_batch)
from pangu_ms.tokenizer.train import train_tokenizer

__all__ = ["BOS_ID", "EOD_ID", "EOS_ID", "EOT_ID", "INFO_FILE", "MASK_ID", "MODEL_FILE", "NEWLINE", "NEWLINE_ID",
           "PAD_ID", "SEP_ID", "SOURCES", "SPACE", "SPACE_ID", "SPECIAL_PIECES", "UNK_ID", "PanguTokenizer",
           "file_sha256", "resolve_workers", "save_tokenizer", "segment", "segment_batch", "train_tokenizer"]
